"""Bootstrap 95% intervals for every scalar metric output.

Percentile bootstrap over examples (Efron & Tibshirani, *An Introduction to the Bootstrap*,
1993, ch. 13): draw B resamples of the N test examples with replacement, recompute each
statistic on every resample and report its 2.5th and 97.5th percentiles. All metrics share
one index matrix ``np.random.default_rng(seed).integers(0, N, size=(B, N))``, so the
intervals are paired: resample b is the same multiset of examples for every metric, and the
same ``seed`` gives the same intervals.

No metric is recomputed from text B times. Each one is reduced once to per-example
sufficient statistics, a matrix S of shape (N, K), and the statistics of resample b are the
weighted sum ``(W @ S)[b]``, with ``W[b, i]`` the number of times example i was drawn
(shape (B, N), rows summing to N):

- accuracy, exact_match, rouge1/2/L/Lsum: the per-example scores; statistic = their mean.
- f1, precision, recall: per-example reference and prediction label indicators, summed to
  TP, predicted and support counts per label; then the formulas of ``_classification``.
- bleu, chrf: sacrebleu's per-sentence match statistics (n-gram matches and totals,
  lengths), summed and scored by sacrebleu's own ``_compute_score_from_stats``, exactly as
  ``corpus_bleu`` / ``corpus_chrf`` score the full corpus (the statistics sacrebleu's
  ``--confidence`` bootstrap resamples too).
- perplexity: per-example summed NLL and scored-token count; PPL = exp(Σ nll / Σ tokens).

Non-scalar outputs (``per_class``, ``confusion_matrix``) get no interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric as SacreMetric

from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.metrics import Metric, get_metric
from tunelab.evaluation.metrics._checks import check_inputs
from tunelab.evaluation.metrics._classification import resolve_labels
from tunelab.evaluation.metrics.perplexity import perplexity

__all__ = ["bootstrap_weights", "metric_intervals", "resampler"]

Floats = npt.NDArray[np.float64]
Resampler = Callable[[Floats], dict[str, Floats]]
"""Maps the weights W (B, N) to ``{output key: statistic of each resample (B,)}``."""


@runtime_checkable
class PerExampleMetric(Protocol):
    """A metric whose scalar outputs are means of per-example scores."""

    def per_example(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        labels: Sequence[str] | None = None,
    ) -> dict[str, list[float]]: ...


def metric_intervals(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    nll: Sequence[float] | None = None,
    tokens: Sequence[int] | None = None,
) -> dict[str, list[float]]:
    """``{scalar output key: [lo, hi]}``, the 2.5/97.5 percentiles over ``resamples``
    bootstrap resamples of the examples, rounded to 6 digits.

    ``names`` are registry names as in ``compute_metrics`` (``"perplexity"`` is accepted and
    ignored there); a ``perplexity`` interval comes with ``nll`` (per-example summed NLL,
    natural log) and ``tokens`` (per-example scored-token counts), aligned with
    ``references``. ``resamples=0`` returns ``{}``. Raises ``ConfigError`` for an unknown
    name and ``DataError`` for empty or misaligned inputs.
    """
    if resamples < 0:
        raise ConfigError(f"resamples must be >= 0, got {resamples}", hint="0 turns intervals off")
    metrics = [get_metric(name) for name in names if name != "perplexity"]
    if metrics or nll is not None or tokens is not None:
        check_inputs(metrics[0].name if metrics else "perplexity", predictions, references)
    if resamples == 0:
        return {}
    resamplers = [r for m in metrics if (r := resampler(m, predictions, references, labels))]
    if nll is not None or tokens is not None:
        resamplers.append(_perplexity(nll, tokens, len(references)))
    if not resamplers:
        return {}
    weights = bootstrap_weights(len(references), resamples, seed)
    return {
        key: percentile_interval(values)
        for resample in resamplers
        for key, values in resample(weights).items()
    }


def bootstrap_weights(n: int, resamples: int, seed: int) -> Floats:
    """W (resamples, n): ``W[b, i]`` = times example i is drawn in resample b.

    Built from the index matrix ``default_rng(seed).integers(0, n, size=(resamples, n))``.
    """
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (B, N)
    flat = (index + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    return counts.astype(np.float64)


def percentile_interval(values: Floats) -> list[float]:
    """``[2.5th, 97.5th]`` percentile (linear interpolation), rounded to 6 digits."""
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), 6), round(float(hi), 6)]


def resampler(
    metric: Metric,
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> Resampler | None:
    """The metric's statistics on any weights W; ``None`` when it has no scalar output.

    ``resampler(...)(np.ones((1, N)))`` is the full-sample point estimate.
    """
    if isinstance(metric, PerExampleMetric):
        return _means(metric.per_example(predictions, references, labels))
    if metric.name in _FROM_COUNTS:
        counts = _label_counts(metric.name, predictions, references, labels)
        from_counts = _FROM_COUNTS[metric.name]
        return lambda weights: from_counts(*counts(weights))
    if metric.name in _SACREBLEU:
        check_inputs(metric.name, predictions, references)
        return _sacrebleu(metric.name, _SACREBLEU[metric.name](), predictions, references)
    return None


def _means(scores: dict[str, list[float]]) -> Resampler:
    """Weighted mean of per-example scores: Σ_i W[b, i] s_i / Σ_i W[b, i]."""
    keys = list(scores)
    matrix = np.array([scores[k] for k in keys], dtype=np.float64).T  # (N, K)

    def resample(weights: Floats) -> dict[str, Floats]:
        means = weights @ matrix / weights.sum(axis=1, keepdims=True)  # (B, K)
        return {key: means[:, j] for j, key in enumerate(keys)}

    return resample


def _label_counts(
    name: str,
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None,
) -> Callable[[Floats], tuple[Floats, Floats, Floats]]:
    """Weights → (TP, predicted, support), each (B, C) over the label order.

    A prediction outside the labels is nobody's prediction: it adds to no ``predicted``
    count, as it has no column in ``_classification.confusion``.
    """
    check_inputs(name, predictions, references)
    order = resolve_labels(name, references, labels)
    index = {label: i for i, label in enumerate(order)}
    ref = np.array([index[r] for r in references])  # (N,)
    pred = np.array([index.get(p, -1) for p in predictions])  # (N,), -1 = outside the labels
    in_labels = pred >= 0
    column = np.where(in_labels, pred, 0)
    hit = pred == ref
    everyone = np.ones_like(hit)
    c = len(order)

    def counts(weights: Floats) -> tuple[Floats, Floats, Floats]:
        offset = c * np.arange(len(weights))[:, None]  # (B, 1): resample b's first bin

        def count(label: npt.NDArray[np.int_], mask: npt.NDArray[np.bool_]) -> Floats:
            """(B, C): Σ_i W[b, i] over the examples with ``mask`` and this label."""
            bins = np.broadcast_to(offset + label, weights.shape).ravel()
            total = np.bincount(bins, weights=(weights * mask).ravel(), minlength=offset.size * c)
            return total.reshape(-1, c).astype(np.float64, copy=False)

        return count(ref, hit), count(column, in_labels), count(ref, everyone)

    return counts


def _ratio(num: Floats, den: Floats) -> Floats:
    """num / den elementwise, 0 where den = 0 (as ``_classification._ratio``)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _per_label(tp: Floats, predicted: Floats, support: Floats) -> tuple[Floats, Floats, Floats]:
    """Per-label precision TP / predicted, recall TP / support and F1 = 2PR / (P + R)."""
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    return precision, recall, _ratio(2 * precision * recall, precision + recall)


def _f1(tp: Floats, predicted: Floats, support: Floats) -> dict[str, Floats]:
    """f1_macro = mean per-label F1; f1_micro from pooled counts, P = ΣTP / Σpredicted,
    R = ΣTP / N."""
    _, _, f1 = _per_label(tp, predicted, support)
    p = _ratio(tp.sum(axis=1), predicted.sum(axis=1))
    r = _ratio(tp.sum(axis=1), support.sum(axis=1))
    return {"f1_macro": f1.mean(axis=1), "f1_micro": _ratio(2 * p * r, p + r)}


def _precision(tp: Floats, predicted: Floats, support: Floats) -> dict[str, Floats]:
    return {"precision_macro": _per_label(tp, predicted, support)[0].mean(axis=1)}


def _recall(tp: Floats, predicted: Floats, support: Floats) -> dict[str, Floats]:
    return {"recall_macro": _per_label(tp, predicted, support)[1].mean(axis=1)}


_FROM_COUNTS: dict[str, Callable[[Floats, Floats, Floats], dict[str, Floats]]] = {
    "f1": _f1,
    "precision": _precision,
    "recall": _recall,
}

# The same settings as the registered metrics: sacrebleu's defaults, as in corpus_bleu/chrf.
_SACREBLEU: dict[str, Callable[[], SacreMetric]] = {"bleu": BLEU, "chrf": CHRF}


def _sacrebleu(
    key: str, scorer: SacreMetric, predictions: Sequence[str], references: Sequence[str]
) -> Resampler:
    """Score the summed per-sentence statistics of each resample with sacrebleu itself."""
    rows = scorer._extract_corpus_statistics(list(predictions), [list(references)])
    stats = np.array(rows, dtype=np.float64)  # (N, K) integer counts, exact in float64

    def resample(weights: Floats) -> dict[str, Floats]:
        sums = np.rint(weights @ stats).astype(np.int64).tolist()  # (B, K) as Python ints
        return {key: np.array([scorer._compute_score_from_stats(s).score for s in sums])}

    return resample


def _perplexity(nll: Sequence[float] | None, tokens: Sequence[int] | None, n: int) -> Resampler:
    """PPL = exp(Σ W[b, i] nll_i / Σ W[b, i] tokens_i); resamples with no token are dropped."""
    if nll is None or tokens is None:
        raise DataError(
            "a perplexity interval needs both nll and tokens",
            hint="pass the per-example summed NLL and the per-example scored-token counts",
        )
    if len(nll) != n or len(tokens) != n:
        raise DataError(
            f"perplexity interval: {len(nll)} nll values and {len(tokens)} token counts "
            f"for {n} examples",
            hint="pass one nll and one token count per example, in the order of the references",
        )
    nll_arr = np.asarray(nll, dtype=np.float64)
    tok_arr = np.asarray(tokens, dtype=np.float64)
    if not (np.all(nll_arr >= 0) and np.all(tok_arr >= 0)):  # also catches NaN
        raise DataError("per-example nll and tokens must be non-negative numbers")
    perplexity(float(nll_arr.sum()), int(tok_arr.sum()))  # the full-sample checks

    def resample(weights: Floats) -> dict[str, Floats]:
        total_nll, total_tokens = weights @ nll_arr, weights @ tok_arr  # (B,), (B,)
        scored = total_tokens > 0
        with np.errstate(over="ignore"):
            return {"perplexity": np.exp(total_nll[scored] / total_tokens[scored])}

    return resample
