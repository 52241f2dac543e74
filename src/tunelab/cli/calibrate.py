"""``tunelab calibrate``: temperature scaling of a fine-tuned classifier's confidences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.recipes.stages import calibrate_stage
from tunelab.results import Calibration


def calibrate(
    config: ConfigArg = None,
    set_: SetOpt = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="A run or model folder; default: the config's run."),
    ] = None,
) -> None:
    """Fit a temperature on the val split (min NLL), report ECE, Brier and NLL before and
    after on the test split, save it with the model and draw reliability.png."""
    cfg = get_config(config, set_)
    report = calibrate_stage(cfg, model)
    print_calibration(report)
    console.print(
        f"saved: temperature in model/calibration.json, {cfg.run_dir / 'reliability.png'}"
    )


def print_calibration(report: Calibration) -> None:
    out = Table(
        title=f"calibration: temperature {report.temperature:.3f} fitted on "
        f"{report.n_fit} val examples; test split ({report.n_test} examples)"
    )
    out.add_column("")
    for key in ("ece", "brier", "nll", "accuracy", "mean_confidence"):
        out.add_column(key, justify="right")
    for side, v in (("before", report.before), ("after", report.after)):
        values = (v.ece, v.brier, v.nll, v.accuracy, v.mean_confidence)
        out.add_row(side, *(f"{x:.4f}" for x in values))
    console.print(out)
