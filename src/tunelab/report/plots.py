"""The report's figures, as PNG bytes: loss curves, reliability diagram, compare chart.

Each function takes plain values (metrics.jsonl records) or a typed part of the results
(the calibration, the compare table) and returns a PNG. Figures are built on matplotlib's
Agg canvas directly, without pyplot, so no global figure registry is touched and nothing
is left open (no leaks, safe in threads and servers, no display needed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tunelab.results import Calibration, CompareTable, Interval

__all__ = ["compare_chart", "generation_metric_keys", "loss_curves", "reliability_diagram"]

DPI = 100
TRAIN_COLOR, VAL_COLOR, BEST_COLOR = "#1f77b4", "#d62728", "#2ca02c"
BEFORE_COLOR, AFTER_COLOR = "#b0b0b0", "#1f77b4"


def loss_curves(records: Iterable[Mapping[str, Any]], best_step: int | None = None) -> bytes:
    """Train ``loss`` and ``val_loss`` against step, with the best step marked.

    ``records`` are metrics.jsonl lines. ``best_step`` is the kept checkpoint (early-stopping
    point); when None it is the step of the lowest ``val_loss``. Generation metrics logged
    during training (``val_<metric>`` keys other than ``val_loss``) go on a second panel.
    """
    rows = [r for r in records if isinstance(r.get("step"), int | float)]
    train = _series(rows, "loss")
    val = _series(rows, "val_loss")
    generation = {k: _series(rows, k) for k in generation_metric_keys(rows)}
    if best_step is None and val[0]:
        best_step = int(val[0][val[1].index(min(val[1]))])

    panels = 2 if generation else 1
    fig = Figure(figsize=(8, 3.4 * panels), dpi=DPI, layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    if train[0]:
        ax.plot(*train, color=TRAIN_COLOR, label="train loss")
    if val[0]:
        ax.plot(*val, color=VAL_COLOR, marker="o", label="val loss")
    if not (train[0] or val[0]):
        ax.text(0.5, 0.5, "no loss was logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("loss")
    ax.set_title("training and validation loss")
    for panel in axes:
        if best_step is not None:
            panel.axvline(
                best_step,
                color=BEST_COLOR,
                linestyle="--",
                linewidth=1.2,
                label=f"best step {best_step}" if panel is ax else None,
            )
        panel.grid(alpha=0.3)
    if generation:
        second = axes[1]
        for key, (steps, values) in generation.items():
            second.plot(steps, values, marker="o", label=key)
        second.set_ylabel("generation metric")
        second.set_title("metrics of generated answers on val")
        second.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    return _png(fig)


NOT_METRICS = {"val_loss", "val_seconds"}


def generation_metric_keys(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The numeric ``val_<metric>`` keys, in first-seen order; not ``val_loss`` (drawn with
    the train loss) nor ``val_seconds`` (the time the scoring took, not a metric)."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith("val_") and key not in NOT_METRICS and _is_number(value):
                keys[key] = None
    return list(keys)


def reliability_diagram(calibration: Calibration) -> bytes:
    """Accuracy per confidence bin before and after temperature scaling, against the diagonal.

    A perfectly calibrated model has every bar on the diagonal (accuracy = confidence in
    each bin); ECE is the count-weighted mean gap (Guo et al. 2017, "On Calibration of
    Modern Neural Networks"). Without reliability bins the panels show the diagonal only.
    """
    reliability = calibration.reliability
    temperature = calibration.temperature
    fig = Figure(figsize=(8, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    stages = (
        ("before", BEFORE_COLOR, reliability.before if reliability else [], calibration.before),
        ("after", AFTER_COLOR, reliability.after if reliability else [], calibration.after),
    )
    for ax, (stage, color, all_bins, summary) in zip(axes, stages, strict=True):
        bins = [(b.lo, b.hi, b.accuracy) for b in all_bins if _is_number(b.accuracy)]
        label = f"accuracy (ECE {summary.ece:.3f})" if _is_number(summary.ece) else "accuracy"
        ax.bar(
            [lo for lo, _, _ in bins],
            [acc for _, _, acc in bins],
            width=[hi - lo for lo, hi, _ in bins],
            align="edge",
            color=color,
            edgecolor="black",
            linewidth=0.5,
            label=label,
        )
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
        if stage == "before":
            ax.set_title("before (T = 1)")
        else:
            ax.set_title(f"after (T = {temperature:.2f})" if _is_number(temperature) else "after")
    axes[0].set_ylabel("accuracy")
    return _png(fig)


def compare_chart(compare: CompareTable) -> bytes:
    """The primary metric of each compare row as a horizontal bar, with its 95% interval."""
    primary = compare.primary or "accuracy"
    rows = [r for r in compare.rows if _is_number(r.metrics.get(primary))]
    names = [r.name for r in rows]
    values = [r.metrics[primary] for r in rows]
    low, high = [], []
    for row, value in zip(rows, values, strict=True):
        lo, hi = _interval(row.ci95.get(primary), value)
        low.append(max(0.0, value - lo))
        high.append(max(0.0, hi - value))
    fig = Figure(figsize=(8, 0.6 * max(len(rows), 1) + 1.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    positions = list(range(len(rows)))
    colors = [AFTER_COLOR if r.model == "tuned" else BEFORE_COLOR for r in rows]
    ax.barh(
        positions,
        values,
        xerr=[low, high],
        color=colors,
        edgecolor="black",
        linewidth=0.5,
        capsize=4,
    )
    for y, value, up in zip(positions, values, high, strict=True):
        ax.text(value + up, y, f"  {value:.3f}", va="center", ha="left", fontsize="small")
    ax.set_xlim(0, max([v + h for v, h in zip(values, high, strict=True)] or [1.0]) * 1.15)
    ax.set_yticks(positions, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"{primary} (bars: 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _interval(ci: Interval | None, value: float) -> tuple[float, float]:
    """``ci`` as ``(lo, hi)``, or ``(value, value)`` (no error bar) when it is undefined."""
    lo, hi = ci if ci is not None else (None, None)
    if _is_number(lo) and _is_number(hi):
        return float(lo), float(hi)
    return value, value


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r["step"]), float(r[key])) for r in rows if _is_number(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches the Agg canvas: explicit, no pyplot, no display
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()
    return buffer.getvalue()
