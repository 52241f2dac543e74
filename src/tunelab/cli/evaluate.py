"""``tunelab eval``: task metrics of a base model or a fine-tuned one on a split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.recipes.stages import evaluate_stage


def eval_(
    config: ConfigArg = None,
    set_: SetOpt = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="A run folder or model folder; default: the base."),
    ] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Evaluate the base model (zero-shot) or a fine-tuned model on the config's data."""
    if split not in ("train", "val", "test"):
        raise typer.BadParameter("split must be train, val or test", param_hint="--split")
    cfg = get_config(config, set_)
    result = evaluate_stage(cfg, model, split=split)
    if json_out:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return
    table = Table(title=f"{result.model} on {split} ({result.n} examples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for key, value in result.metrics.items():
        lo, hi = result.ci95.get(key, (None, None))
        ci = f"[{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
        table.add_row(key, f"{value:.4f}", ci)
    console.print(table)
    temperature = result.temperature if result.temperature is not None else 1.0
    note = f"; confidences at calibration temperature {temperature:.3f}"
    console.print(f"{result.seconds} s{note if temperature != 1 else ''}")
