"""``tunelab sweep``: hyperparameter search with Optuna, tuned on the validation split."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.errors import ConfigError, TrainingError


def sweep(
    ctx: typer.Context,
    config: ConfigArg = None,
    set_: SetOpt = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", min=1, help="Trials the study should hold (sweep.trials)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.1, help="Start no trial after this many minutes."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the study in <run>/sweep (what a second start does anyway); an "
            "error if there is none.",
        ),
    ] = False,
) -> None:
    """Search the config's `sweep.space` with Optuna: each trial trains and is scored on the
    validation split (never test), poor trials are pruned; writes <run>/sweep/ (study.db,
    trials.csv, best.yaml). Assess the winner on test with `tunelab run <run>/sweep/best.yaml`."""
    import optuna

    from tunelab.recipes.sweep import run_sweep

    root = ctx.find_root()
    debug = bool(root.params.get("debug")) if root is not None else False
    optuna.logging.set_verbosity(optuna.logging.INFO if debug else optuna.logging.ERROR)
    cfg = get_config(config, set_)
    if cfg.sweep is None:
        raise ConfigError(
            f"{config or 'the quickstart config'} has no `sweep:` section: nothing to search",
            hint="add one with a `space` (docs/sweep.md), or try examples/sweep.yaml",
        )
    if trials is not None:
        cfg.sweep.trials = trials
    if timeout is not None:
        cfg.sweep.timeout_minutes = timeout
    try:
        with _trial_progress() as progress:
            summary = run_sweep(
                cfg, resume=resume, progress=progress, events=lambda m: console.print(f"• {m}")
            )
    except KeyboardInterrupt:
        command = " ".join(["tunelab sweep", *([str(config)] if config else [])])
        raise TrainingError(
            f"interrupted; finished trials are kept in {cfg.run_dir / 'sweep' / 'study.db'}",
            hint=f"continue with `{command}` (the interrupted trial runs again)",
        ) from None
    console.print(_table(summary, list(cfg.sweep.space)))
    counts, best = summary["counts"], summary["best"]
    console.print(
        f"{counts['total']} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed) in {summary.get('wall_seconds', 0):.0f}s"
    )
    if best is None:
        console.print("no trial completed: no best config yet")
        return
    console.print(
        f"best: trial {best['trial']}, {summary['metric']} {best['value']:.4f} (validation "
        f"split); config in {best['config']}\nassess it on the test split with: "
        f"[bold]tunelab run {best['config']}[/]",
        soft_wrap=True,
    )


def _table(summary: dict[str, Any], keys: list[str]) -> Table:
    best = summary["best"]["trial"] if summary["best"] else None
    table = Table(title=f"sweep: {summary['direction']} {summary['metric']} (validation split)")
    for name in ["trial", "state", summary["metric"], "best step", "steps", "seconds", *keys]:
        table.add_column(name, justify="left" if name in {"state", *keys} else "right")
    for r in summary["rows"]:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        cells = [str(r["number"]), r["state"], value, _text(r["best_step"]), _text(r["steps"]),
                 _text(r["seconds"]), *[_text(r["params"].get(k)) for k in keys]]  # fmt: skip
        table.add_row(*cells, style="bold green" if r["number"] == best else None)
    return table


def _text(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@contextmanager
def _trial_progress() -> Iterator[Any]:
    """A progress bar per trial, fed by the training loop's progress dicts."""
    bar = Progress(
        TextColumn("[bold]trial {task.fields[trial]:03d}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
        console=console,
        transient=True,
    )
    current: dict[str, Any] = {"trial": None, "task": None}

    def update(info: dict[str, Any]) -> None:
        if info["trial"] != current["trial"]:
            if current["task"] is not None:
                bar.remove_task(current["task"])
            current["trial"] = info["trial"]
            current["task"] = bar.add_task(
                "trial", total=info["total"], trial=info["trial"], loss="-", val="-"
            )
        fields: dict[str, Any] = {}
        if "loss" in info:
            fields["loss"] = f"{info['loss']:.4f}"
        elif info.get("val_loss") is not None:
            fields["val"] = f"{info['val_loss']:.4f}"
        bar.update(current["task"], completed=info["step"], **fields)

    with bar:
        yield update
