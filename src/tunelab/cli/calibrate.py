"""``tunelab calibrate``: temperature scaling of a fine-tuned classifier's confidences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.recipes.stages import calibrate_stage


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


def print_calibration(report: dict[str, Any]) -> None:
    out = Table(
        title=f"calibration: temperature {report['temperature']:.3f} fitted on "
        f"{report['n_fit']} val examples; test split ({report['n_test']} examples)"
    )
    out.add_column("")
    for key in ("ece", "brier", "nll", "accuracy", "mean_confidence"):
        out.add_column(key, justify="right")
    for side in ("before", "after"):
        values = report[side]
        out.add_row(side, *(f"{values[k]:.4f}" for k in ("ece", "brier", "nll", "accuracy",
                                                          "mean_confidence")))  # fmt: skip
    console.print(out)
