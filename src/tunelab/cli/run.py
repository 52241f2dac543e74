"""``tunelab run``: the whole pipeline."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config, interrupted
from tunelab.cli._progress import training_progress
from tunelab.cli.calibrate import print_calibration
from tunelab.cli.compare import print_compare
from tunelab.cli.forgetting import print_report
from tunelab.recipes.run import run_pipeline
from tunelab.results import Results


def run(
    config: ConfigArg = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run.")] = False,
) -> None:
    """Prepare data, evaluate the base model, fine-tune, evaluate the best checkpoint."""
    cfg = get_config(config, set_)
    console.print(f"[bold]tunelab run[/] → {cfg.run_dir}")
    try:
        with training_progress() as progress:
            results = run_pipeline(
                cfg, resume=resume, progress=progress, events=lambda m: console.print(f"• {m}")
            )
    except KeyboardInterrupt:
        raise interrupted(cfg, "run", config) from None
    print_summary(results)
    console.print(f"run folder: [bold]{cfg.run_dir}[/]  (results.json, report.html, model/)")


def print_summary(results: Results) -> None:
    base = results.base.metrics if results.base else {}
    tuned = results.tuned.metrics if results.tuned else {}
    table = Table(title="test split: base (zero-shot) vs fine-tuned")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("fine-tuned", justify="right")
    table.add_column("change", justify="right")
    for key in sorted(set(base) | set(tuned)):
        b, t = base.get(key), tuned.get(key)
        change = f"{t - b:+.4f}" if b is not None and t is not None else ""
        table.add_row(key, _fmt(b), _fmt(t), change)
    console.print(table)
    if results.compare is not None:
        print_compare(results.compare)
    if results.calibration is not None:
        print_calibration(results.calibration)
    if results.forgetting is not None:
        print_report(results.forgetting)
    training = results.training
    if training:
        console.print(
            f"trained {training.steps} steps ({training.stopped}), best step "
            f"{training.best_step}, {training.tokens_per_second} tokens/s; "
            f"wall {results.wall_seconds} s, peak RSS {results.peak_rss_mb} MiB"
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
