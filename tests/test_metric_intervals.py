"""Bootstrap intervals: the resampled statistics against sacrebleu, sklearn and the point
metrics, the normal-approximation width of a proportion, and the registry contract."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import sacrebleu
from sklearn.metrics import f1_score, precision_score, recall_score

from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.metrics import METRICS, compute_metrics, get_metric
from tunelab.evaluation.metrics.intervals import bootstrap_weights, metric_intervals, resampler

WORDS = [
    *("the", "cat", "sat", "on", "a", "mat", "dog", "ran", "in", "park"),
    *("quick", "brown", "fox", "jumps", "over", "lazy", "red", "blue"),
]
LABELS = ["a", "b", "c", "d"]


def generation(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n (prediction, reference) pairs; each predicted word is right with probability 0.7."""
    rng = random.Random(seed)
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(4, 15))) for _ in range(n)]
    preds = [
        " ".join(w if rng.random() < 0.7 else rng.choice(WORDS) for w in r.split()) for r in refs
    ]
    return preds, refs


def classification(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n (prediction, reference) pairs, 70% right, some predictions outside LABELS."""
    rng = random.Random(seed)
    refs = [rng.choice(LABELS) for _ in range(n)]
    preds = [r if rng.random() < 0.7 else rng.choice([*LABELS, "other"]) for r in refs]
    return preds, refs


def full_sample(
    name: str, preds: list[str], refs: list[str], labels: list[str] | None = None
) -> dict[str, float]:
    """The statistics of the resampler on the weights of the full sample (every example once)."""
    resample = resampler(get_metric(name), preds, refs, labels)
    assert resample is not None
    return {key: float(values[0]) for key, values in resample(np.ones((1, len(refs)))).items()}


def width(interval: list[float]) -> float:
    return interval[1] - interval[0]


@pytest.mark.parametrize(
    ("name", "reference"), [("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)]
)
def test_sacrebleu_statistics_reproduce_the_corpus_score_exactly(
    name: str, reference: Callable[..., Any]
) -> None:
    preds, refs = generation(300)
    expected = reference(preds, [refs]).score
    assert full_sample(name, preds, refs) == {name: expected}  # exact, not approx
    assert compute_metrics([name], preds, refs) == {name: expected}


def test_classification_statistics_match_sklearn_and_the_point_metrics() -> None:
    preds, refs = classification(500)
    labels = [*LABELS, "e"]  # "e" never occurs: macro averages count it as 0, as sklearn
    ref = {"labels": labels, "zero_division": 0}
    expected = {
        "f1_macro": f1_score(refs, preds, average="macro", **ref),
        "f1_micro": f1_score(refs, preds, average="micro", **ref),
        "precision_macro": precision_score(refs, preds, average="macro", **ref),
        "recall_macro": recall_score(refs, preds, average="macro", **ref),
    }
    got = {
        **full_sample("f1", preds, refs, labels),
        **full_sample("precision", preds, refs, labels),
        **full_sample("recall", preds, refs, labels),
    }
    assert got == pytest.approx(expected, rel=1e-12)
    point = compute_metrics(["f1", "precision", "recall"], preds, refs, labels)
    assert got == pytest.approx({k: point[k] for k in expected}, rel=1e-12)


@pytest.mark.parametrize("name", ["accuracy", "exact_match", "rouge"])
def test_mean_statistics_match_the_point_metrics(name: str) -> None:
    preds, refs = classification(200) if name == "accuracy" else generation(100)
    point = get_metric(name).compute(preds, refs)
    assert full_sample(name, preds, refs) == pytest.approx(point, rel=1e-12)


def test_every_scalar_output_gets_an_interval_containing_its_point_estimate() -> None:
    preds, refs = generation(200)
    names = ["exact_match", "bleu", "chrf", "rouge"]
    point = compute_metrics(names, preds, refs)
    intervals = metric_intervals(names, preds, refs, resamples=300)
    assert set(intervals) == set(point)
    for key, (lo, hi) in intervals.items():
        assert lo <= point[key] <= hi, key
        assert lo < hi, key

    preds, refs = classification(300)
    names = ["accuracy", "f1", "precision", "recall", "confusion_matrix"]
    point = compute_metrics(names, preds, refs, LABELS)
    intervals = metric_intervals(names, preds, refs, LABELS, resamples=300)
    scalars = {k for k, v in point.items() if isinstance(v, float)}
    assert set(intervals) == scalars  # per_class and confusion_matrix get none
    for key, (lo, hi) in intervals.items():
        assert lo <= point[key] <= hi, key


@pytest.mark.parametrize("key", sorted(METRICS))
def test_registry_contract_an_interval_for_each_scalar_output(key: str) -> None:
    preds, refs = generation(20) if METRICS[key].task == "generation" else classification(20)
    point = METRICS[key].compute(preds, refs, LABELS)
    intervals = metric_intervals([key], preds, refs, LABELS, resamples=50)
    assert set(intervals) == {k for k, v in point.items() if isinstance(v, float)}
    for lo, hi in intervals.values():
        assert type(lo) is float and type(hi) is float and lo <= hi


@pytest.mark.parametrize(("name", "data"), [("accuracy", classification), ("bleu", generation)])
def test_width_shrinks_as_the_sample_grows(
    name: str, data: Callable[[int], tuple[list[str], list[str]]]
) -> None:
    small = metric_intervals([name], *data(50), LABELS, resamples=500)
    large = metric_intervals([name], *data(2000), LABELS, resamples=500)
    # 40x the examples: about sqrt(40) = 6.3x narrower; ask for 3x
    assert width(large[name]) * 3 < width(small[name])


def test_constant_per_example_score_gives_zero_width() -> None:
    _, refs = generation(50)
    assert metric_intervals(["exact_match", "bleu", "chrf"], refs, refs) == {
        "exact_match": [1.0, 1.0],
        "bleu": [100.0, 100.0],
        "chrf": [100.0, 100.0],
    }
    assert metric_intervals(["accuracy"], ["a"] * 30, ["b"] * 30, ["a", "b"]) == {
        "accuracy": [0.0, 0.0]
    }


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    preds, refs = classification(300)
    first = metric_intervals(["accuracy", "f1"], preds, refs, LABELS, seed=1)
    assert metric_intervals(["accuracy", "f1"], preds, refs, LABELS, seed=1) == first
    assert metric_intervals(["accuracy", "f1"], preds, refs, LABELS, seed=2) != first


def test_intervals_are_paired_across_metrics() -> None:
    # Without out-of-label predictions micro F1 equals accuracy on every resample, so paired
    # resamples give identical intervals (unpaired ones would differ by the draw).
    rng = random.Random(3)
    refs = [rng.choice(LABELS) for _ in range(300)]
    preds = [r if rng.random() < 0.7 else rng.choice(LABELS) for r in refs]
    intervals = metric_intervals(["accuracy", "f1"], preds, refs, LABELS)
    assert intervals["f1_micro"] == intervals["accuracy"]


def test_accuracy_width_matches_the_normal_approximation() -> None:
    # Bernoulli(0.7), N = 400: the 95% normal-approximation interval is 2 * 1.96 * sqrt(p(1-p)/N)
    # = 2 * 1.96 * sqrt(0.21 / 400) = 0.0898 wide; the bootstrap should agree within 25%.
    rng = np.random.default_rng(7)
    correct = rng.random(400) < 0.7
    refs = ["a"] * 400
    preds = ["a" if c else "b" for c in correct]
    got = width(metric_intervals(["accuracy"], preds, refs, ["a", "b"])["accuracy"])
    assert got == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 400), rel=0.25)


def test_perplexity_interval_contains_the_pooled_perplexity() -> None:
    rng = random.Random(0)
    preds, refs = generation(300)
    tokens = [rng.randint(1, 30) for _ in refs]
    nll = [t * rng.uniform(0.5, 3.0) for t in tokens]
    intervals = metric_intervals([], preds, refs, nll=nll, tokens=tokens)
    lo, hi = intervals["perplexity"]
    assert lo < math.exp(sum(nll) / sum(tokens)) < hi
    both = metric_intervals(["perplexity", "bleu"], preds, refs, nll=nll, tokens=tokens)
    assert set(both) == {"perplexity", "bleu"}  # "perplexity" as a name is accepted and ignored


def test_zero_resamples_returns_nothing() -> None:
    preds, refs = generation(10)
    assert metric_intervals(["bleu", "rouge"], preds, refs, resamples=0) == {}


def test_bootstrap_weights_count_the_draws_of_one_index_matrix() -> None:
    weights = bootstrap_weights(7, 5, seed=3)
    index = np.random.default_rng(3).integers(0, 7, size=(5, 7))
    assert weights.tolist() == [np.bincount(row, minlength=7).tolist() for row in index]


@pytest.mark.parametrize("name", ["accuracy", "f1", "bleu", "rouge"])
def test_mismatched_or_empty_inputs_raise_data_error(name: str) -> None:
    with pytest.raises(DataError):
        metric_intervals([name], ["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(DataError):
        metric_intervals([name], [], [], ["a", "b"])


@pytest.mark.parametrize(
    ("nll", "tokens"),
    [([1.0, 2.0], None), ([1.0], [1, 1]), ([1.0, -2.0], [1, 1]), ([0.0, 0.0], [0, 0])],
)
def test_bad_perplexity_inputs_raise_data_error(nll: list[float], tokens: list[int] | None) -> None:
    with pytest.raises(DataError):
        metric_intervals([], ["a", "b"], ["a", "b"], nll=nll, tokens=tokens)


def test_unknown_metric_and_negative_resamples_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown metric 'bleau'"):
        metric_intervals(["bleau"], ["a"], ["a"])
    with pytest.raises(ConfigError, match="resamples"):
        metric_intervals(["bleu"], ["a"], ["a"], resamples=-1)
