"""Calibration: hand-computed ECE, sklearn references for Brier and NLL, temperature recovery
on synthetic data drawn at a known temperature, and the label-preservation property."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import brier_score_loss, log_loss

from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.calibration import (
    MIN_TEMPERATURE,
    apply_temperature,
    brier,
    calibration_report,
    ece,
    fit_temperature,
    nll,
    reliability,
)

# Hand-computed case, 3 classes, 2 bins: (0, 0.5] and (0.5, 1].
#   row 0: conf 0.9, pred 0, target 0 -> right   bin 1
#   row 1: conf 0.7, pred 0, target 1 -> wrong   bin 1
#   row 2: conf 0.4, pred 0, target 0 -> right   bin 0
#   row 3: conf 0.4, pred 2, target 0 -> wrong   bin 0
# bin 1: acc 1/2, conf 0.8 -> 2/4 * 0.3 = 0.15;  bin 0: acc 1/2, conf 0.4 -> 2/4 * 0.1 = 0.05
# ECE = 0.2
HAND_PROBS = torch.tensor([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.3, 0.3, 0.4]])
HAND_TARGETS = torch.tensor([0, 1, 0, 0])


def draw(seed: int, t_true: float, scale: float, n: int = 20_000, c: int = 4):
    """Logits z ~ N(0, scale²) of shape (n, c) and labels sampled from softmax(z / t_true)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * scale
    y = torch.multinomial(torch.softmax(z / t_true, dim=1), 1, generator=g).squeeze(1)
    return z, y


def test_ece_hand_computed() -> None:
    assert ece(HAND_PROBS, HAND_TARGETS, bins=2) == pytest.approx(0.2)
    # one bin: acc 2/4, mean conf (0.9 + 0.7 + 0.4 + 0.4)/4 = 0.6 -> |0.5 - 0.6| = 0.1
    assert ece(HAND_PROBS, HAND_TARGETS, bins=1) == pytest.approx(0.1)


def test_reliability_hand_computed() -> None:
    rows = reliability(HAND_PROBS, HAND_TARGETS, bins=2)
    assert [(r["lo"], r["hi"], r["count"]) for r in rows] == [(0.0, 0.5, 2), (0.5, 1.0, 2)]
    assert rows[0]["confidence"] == pytest.approx(0.4)
    assert rows[0]["accuracy"] == pytest.approx(0.5)
    assert rows[1]["confidence"] == pytest.approx(0.8)
    assert rows[1]["accuracy"] == pytest.approx(0.5)
    empty = reliability(HAND_PROBS, HAND_TARGETS, bins=10)[0]  # (0, 0.1]: no row
    assert empty == {"lo": 0.0, "hi": 0.1, "count": 0, "confidence": None, "accuracy": None}


def test_bins_are_closed_on_the_right() -> None:
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    rows = reliability(probs, torch.tensor([0, 0]), bins=2)
    assert [r["count"] for r in rows] == [1, 1]  # 0.5 -> (0, 0.5]; 1.0 -> (0.5, 1]


def test_ece_small_on_perfectly_calibrated_data() -> None:
    z, y = draw(0, t_true=1.0, scale=2.0)  # labels sampled from the model's own probabilities
    assert ece(torch.softmax(z, dim=1), y) < 0.02


def test_brier_and_nll_match_sklearn() -> None:
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(500, 3, generator=g, dtype=torch.float64), dim=1)
    y = torch.multinomial(probs, 1, generator=g).squeeze(1)
    labels = [0, 1, 2]
    expected = brier_score_loss(y.numpy(), probs.numpy(), labels=labels, scale_by_half=False)
    assert brier(probs, y) == pytest.approx(expected)
    assert nll(probs, y) == pytest.approx(log_loss(y.numpy(), probs.numpy(), labels=labels))


def test_binary_brier_is_twice_sklearn_positive_class() -> None:
    g = torch.Generator().manual_seed(2)
    p = torch.rand(400, generator=g, dtype=torch.float64)
    y = torch.bernoulli(p, generator=g).long()
    probs = torch.stack([1 - p, p], dim=1)  # (N, 2)
    # sklearn's binary Brier is (1/N) Σ (p - y)²; the multi-class sum counts the error twice
    assert brier(probs, y) == pytest.approx(2 * brier_score_loss(y.numpy(), p.numpy()))
    assert nll(probs, y) == pytest.approx(log_loss(y.numpy(), p.numpy()))


def test_nll_floor_keeps_it_finite() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert nll(probs, torch.tensor([1, 0])) == pytest.approx((-math.log(1e-12) + math.log(2)) / 2)


@pytest.mark.parametrize(
    ("t_true", "scale"),
    [(2.5, 3.0), (0.5, 2.0)],  # over-confident scores, then under-confident ones
)
def test_fit_temperature_recovers_known_temperature(t_true: float, scale: float) -> None:
    z, y = draw(0, t_true=t_true, scale=scale)
    t = fit_temperature(z, y)
    assert t == pytest.approx(t_true, rel=0.05)
    # independent reference: scipy's bounded scalar search on the same objective
    zz, yy = z.double().numpy(), y.numpy()

    def mean_nll(log_t: float) -> float:
        return float(-log_softmax(zz / math.exp(log_t), axis=1)[np.arange(len(yy)), yy].mean())

    found = minimize_scalar(mean_nll, bounds=(math.log(0.05), math.log(20)), method="bounded")
    assert t == pytest.approx(math.exp(found.x), rel=1e-3)


def test_fit_temperature_clamps_when_every_prediction_is_right() -> None:
    z = torch.randn(200, 3, generator=torch.Generator().manual_seed(3))
    assert fit_temperature(z, z.argmax(dim=1)) == MIN_TEMPERATURE  # optimum is T -> 0


def test_calibration_lowers_test_ece_when_overconfident() -> None:
    val_z, val_y = draw(1, t_true=2.5, scale=3.0)
    test_z, test_y = draw(2, t_true=2.5, scale=3.0)  # an independent draw
    report = calibration_report(val_z, val_y, test_z, test_y)
    assert report["after"]["ece"] < report["before"]["ece"]
    assert report["after"]["nll"] < report["before"]["nll"]
    assert report["after"]["mean_confidence"] < report["before"]["mean_confidence"]


def test_calibration_report_layout() -> None:
    val_z, val_y = draw(4, t_true=2.0, scale=2.0, n=300, c=3)
    test_z, test_y = draw(5, t_true=2.0, scale=2.0, n=200, c=3)
    report = calibration_report(val_z, val_y, test_z, test_y, bins=10)
    assert list(report) == [
        "temperature",
        "bins",
        "n_fit",
        "n_test",
        "before",
        "after",
        "reliability",
    ]
    assert (report["bins"], report["n_fit"], report["n_test"]) == (10, 300, 200)
    keys = ["ece", "brier", "nll", "accuracy", "mean_confidence"]
    assert list(report["before"]) == keys and list(report["after"]) == keys
    assert report["before"]["accuracy"] == report["after"]["accuracy"]
    assert report["temperature"] == round(fit_temperature(val_z, val_y), 6)
    for when in ("before", "after"):
        rows = report["reliability"][when]
        assert len(rows) == 10 and sum(r["count"] for r in rows) == 200
        assert all(set(r) == {"lo", "hi", "count", "confidence", "accuracy"} for r in rows)
    before = ece(apply_temperature(test_z, 1.0), test_y, bins=10)
    assert report["before"]["ece"] == round(before, 6)
    floats = [v for part in ("before", "after") for v in report[part].values()]
    assert all(v == round(v, 6) for v in floats)
    assert json.loads(json.dumps(report)) == report


@pytest.mark.parametrize("t", [0.05, 0.3, 1.0, 2.5, 20.0])
def test_temperature_never_changes_predictions(t: float) -> None:
    z = torch.randn(1000, 5, generator=torch.Generator().manual_seed(6)) * 4
    assert torch.equal(apply_temperature(z, t).argmax(dim=1), z.argmax(dim=1))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 12).flatmap(
        lambda c: st.lists(st.lists(st.integers(-4000, 4000), min_size=c, max_size=c), min_size=1)
    ),
    t=st.floats(MIN_TEMPERATURE, 20.0),
)
def test_temperature_never_changes_predictions_property(rows: list[list[int]], t: float) -> None:
    # log-scores on a 0.01 grid; exact ties tie identically before and after scaling
    z = torch.tensor(rows, dtype=torch.float32) / 100
    assert torch.equal(apply_temperature(z, t).argmax(dim=1), z.argmax(dim=1))


@pytest.mark.parametrize(
    ("scores", "targets", "match"),
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "no examples"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "targets of shape"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), "target 3 is out of range"),
        (torch.zeros(4, 3), torch.tensor([0, -1, 2, 2]), "target -1 is out of range"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"shape \(N, C\)"),
        (torch.zeros(4, 3), torch.zeros(4), "integer class indices"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), "NaN"),
    ],
)
def test_bad_input_raises_data_error(
    scores: torch.Tensor, targets: torch.Tensor, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        fit_temperature(scores, targets)
    probs = torch.softmax(scores, dim=-1) if scores.numel() else scores
    for metric in (ece, brier, nll, reliability):
        with pytest.raises(DataError, match=match):
            metric(probs, targets)


def test_metrics_reject_scores_passed_as_probabilities() -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ece(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(DataError, match="sums to"):
        brier(torch.tensor([[0.2, 0.2]]), torch.tensor([0]))


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        apply_temperature(torch.zeros(2, 2), 0.0)
    with pytest.raises(ConfigError, match="bins"):
        ece(HAND_PROBS, HAND_TARGETS, bins=0)
    with pytest.raises(DataError, match="same label set"):
        calibration_report(torch.zeros(2, 2), torch.tensor([0, 1]), HAND_PROBS, HAND_TARGETS)
