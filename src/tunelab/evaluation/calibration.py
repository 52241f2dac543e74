"""Confidence calibration of label scores: temperature scaling and the metrics that judge it.

Inputs are label log-scores ``scores`` of shape (N, C), as ``scoring.label_logits`` returns
them (softmax over dim 1 gives the label probabilities), and ``targets`` of shape (N,): the
index of the true label of each example. Everything here is a pure function of tensors.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides
every score by one scalar T > 0 fitted on held-out data: T > 1 softens over-confident
predictions, T < 1 sharpens under-confident ones. Dividing by a positive constant keeps the
order of each row, so the predicted labels (and accuracy) never change.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.errors import ConfigError, DataError

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "apply_temperature",
    "brier",
    "calibration_report",
    "ece",
    "fit_temperature",
    "nll",
    "reliability",
]

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
PROB_FLOOR = 1e-12  # -log p is capped at about 27.6 nats per example
ROW_SUM_TOLERANCE = 1e-3
DIGITS = 6  # rounding of every float in calibration_report


def _check_targets(name: str, n: int, c: int, targets: torch.Tensor) -> None:
    """Raise ``DataError`` unless ``targets`` is (N,) of integer class indices in [0, C)."""
    if n == 0:
        raise DataError(
            f"{name}: no examples to calibrate on",
            hint="check that the validation and test splits are not empty",
        )
    if targets.dim() != 1 or targets.shape[0] != n:
        raise DataError(
            f"{name}: {n} rows of scores but targets of shape {tuple(targets.shape)}",
            hint="pass one target class index per row, as a 1-D tensor",
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise DataError(
            f"{name}: targets must be integer class indices, got dtype {targets.dtype}",
            hint="convert with targets.long()",
        )
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= c:
        bad = low if low < 0 else high
        raise DataError(
            f"{name}: target {bad} is out of range for {c} classes",
            hint=f"targets are column indices into the scores, so 0 <= target < {c}",
        )


def _check_scores(name: str, scores: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ``DataError`` unless ``scores`` is a finite (N, C) float matrix fitting ``targets``."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise DataError(
            f"{name}: scores must have shape (N, C) with C >= 1, got {tuple(scores.shape)}",
            hint="pass one row of label scores per example",
        )
    if not scores.dtype.is_floating_point:
        raise DataError(
            f"{name}: scores must be floating point, got dtype {scores.dtype}",
            hint="convert with scores.float()",
        )
    _check_targets(name, scores.shape[0], scores.shape[1], targets)
    if not bool(torch.isfinite(scores).all()):
        raise DataError(
            f"{name}: scores contain NaN or infinite values",
            hint="compute label scores in float32; an infinite log-score has no temperature",
        )


def _check_bins(bins: int) -> None:
    """Raise ``ConfigError`` unless there is at least one confidence bin."""
    if bins < 1:
        raise ConfigError(
            f"calibration bins must be at least 1, got {bins}",
            hint="15 equal-width bins is the usual choice (Guo et al., 2017)",
        )


def _check_probs(name: str, probs: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ``DataError`` unless ``probs`` is (N, C), in [0, 1], and each row sums to 1."""
    _check_scores(name, probs, targets)
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise DataError(
            f"{name}: probabilities must lie in [0, 1]",
            hint="pass softmax(scores) (see apply_temperature), not raw scores",
        )
    worst = float((probs.double().sum(dim=1) - 1).abs().max())
    if worst > ROW_SUM_TOLERANCE:
        raise DataError(
            f"{name}: a row of probabilities sums to 1 {worst:+.3g}, not 1",
            hint="pass softmax(scores) (see apply_temperature), not raw scores",
        )


def fit_temperature(scores: torch.Tensor, targets: torch.Tensor, *, max_iter: int = 200) -> float:
    """The temperature T minimising the mean NLL of softmax(scores / T) (Guo et al., 2017).

        T* = argmin_T  -(1/N) Σ_i log softmax(s_i / T)[y_i]

    ``scores`` (N, C), ``targets`` (N,). The search runs over log T (so T stays positive)
    with L-BFGS and a strong-Wolfe line search in float64, starting at T = 1. The NLL is
    convex in 1/T, hence unimodal in log T, so restricting the search to
    [MIN_TEMPERATURE, MAX_TEMPERATURE] = [0.05, 20] returns the constrained optimum: the
    result always lies in that range. The bounds keep the result usable: when every
    validation prediction is right, the NLL keeps falling as T → 0 (confidence → 1) and the
    unconstrained optimum does not exist; the clamp returns 0.05 instead. When the scores
    carry no information about the targets the optimum is T → ∞ (uniform probabilities)
    and the clamp returns 20.

    Raises ``DataError`` when N == 0, the shapes disagree, a target is not in [0, C), or a
    score is not finite.
    """
    _check_scores("fit_temperature", scores, targets)
    if max_iter < 1:
        raise ConfigError(
            f"fit_temperature: max_iter must be at least 1, got {max_iter}",
            hint="the default of 200 L-BFGS iterations is plenty for one parameter",
        )
    z = scores.detach().to(torch.float64)  # (N, C)
    y = targets.detach().long()  # (N,)
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # clamping inside the objective makes it flat outside the bounds, so L-BFGS stops
        # at a bound instead of running T to 0 (or infinity) and overflowing
        loss = F.cross_entropy(z * torch.exp(-log_t.clamp(low, high)), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    t = math.exp(float(log_t.detach()))
    return min(max(t, MIN_TEMPERATURE), MAX_TEMPERATURE) if math.isfinite(t) else 1.0


def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities softmax(scores / T) over dim 1, as float64 (N, C).

    float64 keeps scores that differ slightly distinguishable after softmax, so the argmax
    of the result is the argmax of ``scores`` (temperature scaling never changes labels).
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(
            f"temperature must be a finite number > 0, got {temperature}",
            hint="fit one with fit_temperature on held-out scores",
        )
    if scores.dim() != 2:
        raise DataError(
            f"apply_temperature: scores must have shape (N, C), got {tuple(scores.shape)}",
            hint="pass one row of label scores per example",
        )
    return torch.softmax(scores.detach().to(torch.float64) / temperature, dim=1)


def _bin_stats(
    probs: torch.Tensor, targets: torch.Tensor, bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count, Σ confidence, Σ correct), each (bins,) float64.

    Confidence is the max probability of a row; row i falls in bin ceil(conf_i · bins) − 1,
    clamped to [0, bins − 1], so bin b covers (b/bins, (b+1)/bins] and a confidence of 0
    joins the first bin.
    """
    p = probs.detach().to(torch.float64)  # (N, C)
    conf, pred = p.max(dim=1)  # (N,), (N,)
    correct = (pred == targets.long()).to(torch.float64)  # (N,)
    index = (torch.ceil(conf * bins) - 1).clamp(0, bins - 1).long()  # (N,)
    count = torch.bincount(index, minlength=bins).to(torch.float64)
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    return count, conf_sum, correct_sum


def ece(probs: torch.Tensor, targets: torch.Tensor, *, bins: int = 15) -> float:
    """Expected calibration error over equal-width confidence bins (Naeini et al., 2015).

        ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|

    where conf is the max probability of a row, B_b the rows with conf in
    (b/bins, (b+1)/bins], acc(B_b) the fraction of them predicted right (argmax = target)
    and conf(B_b) their mean confidence. ``probs`` (N, C), ``targets`` (N,).
    """
    _check_probs("ece", probs, targets)
    _check_bins(bins)
    _, conf_sum, correct_sum = _bin_stats(probs, targets, bins)
    # |B_b|/N · |acc − conf| = |Σ correct − Σ conf| / N
    return float((correct_sum - conf_sum).abs().sum() / probs.shape[0])


def brier(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-class Brier score (Brier, 1950), in [0, 2].

        Brier = (1/N) Σ_i Σ_c (p_ic − 1[c = y_i])²

    With two classes this is twice the binary Brier score on the positive-class
    probability, (1/N) Σ_i (p_i − y_i)², that ``sklearn.metrics.brier_score_loss`` returns.
    """
    _check_probs("brier", probs, targets)
    p = probs.detach().to(torch.float64)  # (N, C)
    onehot = F.one_hot(targets.long(), num_classes=p.shape[1]).to(torch.float64)  # (N, C)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the targets, in nats.

        NLL = −(1/N) Σ_i log max(p_{i, y_i}, 1e-12)

    The floor keeps one confidently wrong example from making the mean infinite.
    """
    _check_probs("nll", probs, targets)
    p = probs.detach().to(torch.float64)  # (N, C)
    p_true = p.gather(1, targets.long().unsqueeze(1)).squeeze(1)  # (N,)
    return float(-torch.log(p_true.clamp_min(PROB_FLOOR)).mean())


def reliability(
    probs: torch.Tensor, targets: torch.Tensor, *, bins: int = 15
) -> list[dict[str, Any]]:
    """The reliability diagram: one dict per equal-width confidence bin, lowest first.

    Each is ``{"lo", "hi", "count", "confidence", "accuracy"}``: the bin covers
    (lo, hi] (the first also takes a confidence of 0), ``confidence`` is the mean max
    probability of its rows and ``accuracy`` the fraction predicted right; both are
    ``None`` for an empty bin. Binning as in :func:`ece`.
    """
    _check_probs("reliability", probs, targets)
    _check_bins(bins)
    count, conf_sum, correct_sum = _bin_stats(probs, targets, bins)
    rows: list[dict[str, Any]] = []
    for b in range(bins):
        n = int(count[b])
        rows.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": n,
                "confidence": float(conf_sum[b] / n) if n else None,
                "accuracy": float(correct_sum[b] / n) if n else None,
            }
        )
    return rows


def _summary(probs: torch.Tensor, targets: torch.Tensor, bins: int) -> dict[str, float]:
    """ECE, Brier, NLL, accuracy and mean confidence of ``probs``, rounded."""
    conf, pred = probs.max(dim=1)
    values = {
        "ece": ece(probs, targets, bins=bins),
        "brier": brier(probs, targets),
        "nll": nll(probs, targets),
        "accuracy": float((pred == targets.long()).double().mean()),
        "mean_confidence": float(conf.mean()),
    }
    return {key: round(value, DIGITS) for key, value in values.items()}


def _rounded_bins(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {key: round(v, DIGITS) if isinstance(v, float) else v for key, v in row.items()}
        for row in rows
    ]


def calibration_report(
    val_scores: torch.Tensor,
    val_targets: torch.Tensor,
    test_scores: torch.Tensor,
    test_targets: torch.Tensor,
    *,
    bins: int = 15,
) -> dict[str, Any]:
    """Fit T on the validation scores and measure calibration on test before and after.

    Returns a JSON-ready dict, every float rounded to 6 digits::

        {"temperature": T, "bins": bins, "n_fit": N_val, "n_test": N_test,
         "before": {"ece", "brier", "nll", "accuracy", "mean_confidence"},  # at T = 1
         "after":  {same keys},                                              # at T
         "reliability": {"before": [bin, ...], "after": [bin, ...]}}        # see reliability

    Accuracy is the same before and after: temperature scaling never changes a prediction.
    """
    _check_bins(bins)
    _check_scores("calibration_report (test)", test_scores, test_targets)
    if val_scores.dim() == 2 and val_scores.shape[1] != test_scores.shape[1]:
        raise DataError(
            f"calibration_report: validation scores have {val_scores.shape[1]} labels "
            f"but test scores have {test_scores.shape[1]}",
            hint="score both splits against the same label set, in the same order",
        )
    temperature = fit_temperature(val_scores, val_targets)
    before = apply_temperature(test_scores, 1.0)
    after = apply_temperature(test_scores, temperature)
    return {
        "temperature": round(temperature, DIGITS),
        "bins": bins,
        "n_fit": int(val_scores.shape[0]),
        "n_test": int(test_scores.shape[0]),
        "before": _summary(before, test_targets, bins),
        "after": _summary(after, test_targets, bins),
        "reliability": {
            "before": _rounded_bins(reliability(before, test_targets, bins=bins)),
            "after": _rounded_bins(reliability(after, test_targets, bins=bins)),
        },
    }
