"""``tunelab compare``: base zero-/few-shot prompting vs the fine-tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.recipes.stages import compare_stage
from tunelab.results import CompareTable


def compare(
    config: ConfigArg = None,
    set_: SetOpt = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="A run or model folder; default: the run's model/."),
    ] = None,
) -> None:
    """Score the base model zero-shot and k-shot (`compare.shots`) and the fine-tuned model
    on the same test sample: metrics with 95% intervals, prompt tokens, latency, verdict."""
    cfg = get_config(config, set_)
    table = compare_stage(cfg, model, say=lambda m: console.print(f"• {m}"))
    print_compare(table)
    console.print(f"saved: {cfg.run_dir / 'compare.json'}")


def print_compare(table: CompareTable) -> None:
    primary, rows = table.primary, table.rows
    names = [k for k in rows[0].metrics if k != primary] if rows else []
    out = Table(title=f"compare on {table.n} test examples (95% intervals)")
    out.add_column("approach")
    out.add_column(primary, justify="right")
    for name in names:
        out.add_column(name, justify="right")
    out.add_column("prompt tokens", justify="right")
    out.add_column("ms/request", justify="right")
    for r in rows:
        lo, hi = r.ci95.get(primary, (None, None))
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        latency = r.latency_ms if r.latency_ms is not None else r.ms_per_example
        out.add_row(
            r.name, f"{r.metrics[primary]:.3f}{ci}",
            *(f"{r.metrics.get(n, float('nan')):.3f}" for n in names),
            f"{r.prompt_tokens:.0f}", "-" if latency is None else f"{latency:.0f}",
        )  # fmt: skip
    console.print(out)
    for note in table.skipped:
        console.print(f"[yellow]skipped[/] {note}")
    console.print(f"[bold]{table.conclusion}[/]")
