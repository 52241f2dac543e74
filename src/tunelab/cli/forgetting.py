"""``tunelab forgetting``: retention of any base/checkpoint pair; ``sweep``: WiSE trade-off."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.errors import ConfigError
from tunelab.forgetting.report import format_table
from tunelab.models.loading import load_base
from tunelab.models.precision import resolve_precision
from tunelab.models.saved import load_trained
from tunelab.models.task_model import TaskModel
from tunelab.recipes import forgetting
from tunelab.recipes.forgetting_sweep import task_metric, wise_sweep
from tunelab.results import Retention, write_json

app = typer.Typer(
    help="Measure catastrophic forgetting (the retention suite) and sweep WiSE interpolation.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@app.callback()
def measure(
    ctx: typer.Context,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="A run folder or model folder to compare to its base."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config for the `forgetting` section "
            "(suite, sets, threshold); default: the packaged quickstart's.",
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            "-b",
            help="Compare with this base instead of the one MODEL "
            "was trained from (an alias, folder, .gguf or hub id).",
        ),
    ] = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the report here.")] = None,
) -> None:
    """Retention of MODEL relative to its base model (exit status 3 below min_retention)."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        raise ConfigError(
            "tunelab forgetting needs --model",
            hint="e.g. `tunelab forgetting --model runs/quickstart`, or "
            "`tunelab forgetting sweep CONFIG`",
        )
    cfg = get_config(config, set_)
    tuned, tokenizer, info = load_trained(model)
    cfg.model.base = base or info["base"]
    precision = resolve_precision(cfg.train.precision, next(tuned.parameters()).device)
    settings = forgetting.suite_settings(cfg, precision)
    with tempfile.TemporaryDirectory() as work:
        probes = forgetting.build_probes(cfg, tokenizer, settings, Path(work))
    console.print(f"retention of [bold]{model}[/] against [bold]{cfg.model.base}[/]")
    reference, cached = forgetting.base_measurement(
        cfg, TaskModel(load_base(cfg.model.base), "lm"), tokenizer, probes, settings
    )
    report = forgetting.tuned_report(cfg, tuned, tokenizer, probes, settings, reference)
    report.base_cached = cached
    print_report(report)
    if out is not None:
        write_json(out, report.to_json())
    forgetting.check_retention(report, cfg, out or model)


def print_report(report: Retention) -> None:
    rows = format_table(report.to_json())
    table = Table(title="retention: base vs fine-tuned (95% bootstrap intervals)")
    for name in rows[0]:
        table.add_column(name)
    for row in rows[1:-1]:  # the last row is the score, printed below in full
        table.add_row(*row)
    console.print(table)
    lo, hi = (_fmt(x) for x in report.retention_ci95)
    console.print(
        f"retention score [bold]{_fmt(report.retention_score)}[/] [{lo}, {hi}] "
        "(1.0 = nothing lost; * marks a delta whose 95% interval excludes 0)"
    )
    for note in report.notes:
        console.print(f"note: {note}")


@app.command("sweep")
def sweep(
    config: ConfigArg = None,
    set_: SetOpt = None,
    save: Annotated[
        bool, typer.Option("--save", help="Save the chosen mix to <run>/model-wise.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the table (default <run>/forgetting_sweep.json)."
        ),
    ] = None,
) -> None:
    """Evaluate WiSE mixes of a finished run's best checkpoint with its start (task metric
    and retention for each alpha in forgetting.sweep.alphas) and choose one by the rule."""
    cfg = get_config(config, set_)
    summary = wise_sweep(cfg, out=out, save=save, say=console.print)
    _print_sweep(summary["rows"], summary["chosen_alpha"])
    if save:
        console.print(f"saved alpha {summary['chosen_alpha']} to {cfg.run_dir / 'model-wise'}")


def _print_sweep(rows: list[dict[str, Any]], chosen: float) -> None:
    name = task_metric(rows[0]["metrics"])[0]
    table = Table(title="WiSE sweep: (1 - alpha) * start + alpha * fine-tuned")
    for col in ("alpha", name, "retention", "95% CI", ""):
        table.add_column(col)
    for r in rows:
        lo, hi = (_fmt(x) for x in r["retention_ci95"])
        table.add_row(f"{r['alpha']:.2f}", f"{task_metric(r['metrics'])[1]:.4f}",
                      _fmt(r["retention_score"]), f"[{lo}, {hi}]",
                      "chosen" if r["alpha"] == chosen else "")  # fmt: skip
    console.print(table)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
