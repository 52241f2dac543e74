"""Compare a tuned model's measurement with its base's: deltas, paired bootstrap, retention.

Per probe, the retention ratio r says how much of the base's ability is left (1 = all):

- nll: r = exp(mean_base - mean_tuned) = ppl_base / ppl_tuned
- match_f1, accuracy, rougeL, exact_match: r = mean_tuned / mean_base (0/0 → 1; x/0 with
  x > 0 has no ratio: reported as None and left out of the score, with a note)
- kl: r = exp(-mean_tuned) (the base's KL to itself is 0)
- agreement: r = mean_tuned (the base agrees with itself fully)

The retention score is the mean over probes of min(r, 1): a gain on one probe cannot hide a
loss on another, and the base compared with itself scores exactly 1.

Uncertainty: a paired bootstrap over items (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13, percentile intervals). Each replicate draws every probe's item
indices with replacement, once, and applies them to base and tuned alike; the same draws
give the per-probe delta and retention intervals and the score's interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.forgetting.measure import Measurement
from tunelab.forgetting.probes import HIGHER_IS_BETTER, Probe

__all__ = ["compare", "format_table", "retention_ratio"]

RATIO_METRICS = frozenset({"match_f1", "accuracy", "rougeL", "exact_match"})


def retention_ratio(metric: str, base_mean: np.ndarray, tuned_mean: np.ndarray) -> np.ndarray:
    """r for arrays of (replicate) means; NaN where a ratio metric's base mean is 0 and the
    tuned one is not (the point estimate reports None; replicates count it as no loss)."""
    base_mean, tuned_mean = np.asarray(base_mean, float), np.asarray(tuned_mean, float)
    if metric == "nll":
        return np.exp(base_mean - tuned_mean)
    if metric == "kl":
        return np.exp(-tuned_mean)
    if metric == "agreement":
        return tuned_mean.copy()
    if metric in RATIO_METRICS:
        safe = np.where(base_mean == 0, 1.0, base_mean)
        return np.where(base_mean == 0, np.where(tuned_mean == 0, 1.0, np.nan), tuned_mean / safe)
    raise TunelabError(f"no retention ratio for metric {metric!r}")


def compare(
    base: Measurement,
    tuned: Measurement,
    probes: Sequence[Probe],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The retention report of ``tuned`` against ``base`` on ``probes`` (JSON-ready)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, Any] = {}
    capped_point: list[float] = []
    capped_boot: list[np.ndarray] = []  # (n_boot,) per probe in the score
    notes: list[str] = []
    for probe in probes:
        b, t = _scores(base, probe), _scores(tuned, probe)
        if len(b) != len(t) or len(b) == 0:
            raise TunelabError(
                f"probe '{probe.name}': base has {len(b)} scores, tuned {len(t)}",
                hint="measure both models on the same probes",
            )
        idx = rng.integers(0, len(b), size=(n_boot, len(b)))  # paired: one draw for both
        b_boot, t_boot = b[idx].mean(axis=1), t[idx].mean(axis=1)  # (n_boot,)
        r = float(retention_ratio(probe.metric, np.array(b.mean()), np.array(t.mean())))
        r_boot = retention_ratio(probe.metric, b_boot, t_boot)
        ci = _interval(t_boot - b_boot)
        row: dict[str, Any] = {
            "metric": probe.metric,
            "description": probe.description,
            "n_items": len(b),
            "higher_is_better": HIGHER_IS_BETTER[probe.metric],
            "base": _num(b.mean()),
            "tuned": _num(t.mean()),
            "delta": _num(t.mean() - b.mean()),
            "ci95": ci,
            "significant": _excludes_zero(ci),
            "retention": _num(r),
            "retention_ci95": _interval(r_boot),
        }
        if probe.metric == "nll":
            row["base_ppl"], row["tuned_ppl"] = _num(_exp(b.mean())), _num(_exp(t.mean()))
        rows[probe.name] = row
        if math.isnan(r):
            notes.append(
                f"{probe.name}: the base scores 0 and the tuned model does not, so there is "
                "no ratio; left out of the retention score"
            )
            continue
        capped_point.append(min(r, 1.0))
        capped_boot.append(np.minimum(np.nan_to_num(r_boot, nan=1.0), 1.0))  # x/0: no loss
    score = float(np.mean(capped_point)) if capped_point else math.nan
    boot = np.mean(capped_boot, axis=0) if capped_boot else np.full(n_boot, math.nan)
    return {
        "base_model": base.model,
        "tuned_model": tuned.model,
        "retention_score": _num(score),
        "retention_ci95": _interval(boot),
        "n_probes_in_score": len(capped_point),
        "probes": rows,
        "notes": notes,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "kind": "paired, percentile"},
        "seconds": {"base": base.seconds, "tuned": tuned.seconds},
    }


def format_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows for a CLI table; the first row is the header, the last the retention score."""
    rows = [["probe", "metric", "base", "tuned", "delta [95% CI]", "retention"]]
    # a * marks a delta whose interval excludes 0
    for name, p in report["probes"].items():
        base, tuned = _fmt(p["base"]), _fmt(p["tuned"])
        if p["metric"] == "nll":
            base += f" (ppl {_fmt(p['base_ppl'])})"
            tuned += f" (ppl {_fmt(p['tuned_ppl'])})"
        lo, hi = p["ci95"]
        mark = " *" if p["significant"] else ""
        delta = f"{_fmt(p['delta'], '+')} [{_fmt(lo, '+')}, {_fmt(hi, '+')}]{mark}"
        rows.append([name, p["metric"], base, tuned, delta, _fmt(p["retention"])])
    lo, hi = report["retention_ci95"]
    score = f"{_fmt(report['retention_score'])} [{_fmt(lo)}, {_fmt(hi)}]"
    rows.append(["retention score", "", "", "", "", score])
    return rows


def _scores(m: Measurement, probe: Probe) -> np.ndarray:
    if probe.name not in m.scores:
        raise TunelabError(
            f"the measurement of {m.model} has no scores for probe '{probe.name}'",
            hint="measure both models on the same probes",
        )
    return np.asarray(m.scores[probe.name], dtype=np.float64)


def _interval(values: np.ndarray) -> list[float | None]:
    """2.5th and 97.5th percentiles, ignoring undefined (NaN) replicates."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return [None, None]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [_num(lo), _num(hi)]


def _excludes_zero(ci: list[float | None]) -> bool:
    lo, hi = ci
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def _num(x: Any) -> float | None:
    """A JSON-safe float (6 digits) or None for NaN and infinities."""
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def _fmt(x: float | None, sign: str = "") -> str:
    return "-" if x is None else f"{x:{sign}.4f}"
