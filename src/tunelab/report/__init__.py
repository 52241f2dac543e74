"""The run report: results.json (+ metrics.jsonl, config) → one self-contained report.html.

build_report(run_dir)      write run_dir/report.html and return its path
loss_curves(records)       PNG: train/val loss by step, best step, generation metrics
reliability_diagram(cal)   PNG: accuracy per confidence bin before/after temperature
compare_chart(compare)     PNG: the primary metric per compare row with its 95% interval
"""

from __future__ import annotations

from tunelab.report.html import build_report, render_report
from tunelab.report.plots import compare_chart, loss_curves, reliability_diagram

__all__ = ["build_report", "compare_chart", "loss_curves", "reliability_diagram", "render_report"]
