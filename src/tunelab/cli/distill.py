"""``tunelab distill``: train a smaller student from the fine-tuned teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.cli._common import (
    ConfigArg,
    SetOpt,
    console,
    get_config,
    interrupted,
    relaunched,
)
from tunelab.cli._progress import training_progress
from tunelab.recipes.distill import distill_stage
from tunelab.training.distributed import current


def distill(
    config: ConfigArg = None,
    set_: SetOpt = None,
    teacher: Annotated[
        Path | None,
        typer.Option(help="The teacher's run or model folder; default: the config's run."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for distill/, student/ and distill.json; default: the run."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from <out>/distill's last checkpoint.")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc", min=1,
            help="Data-parallel processes on this machine (`accelerate launch`), as for "
            "`tunelab train`.",
        ),
    ] = 1,
) -> None:  # fmt: skip
    """Distil the fine-tuned model into a smaller student; compare teacher and student.

    The student and its training are the config's `distill` section (docs/distill.md):
    e.g. --set distill.layers=15 --set distill.steps=300 --set distill.alpha=0.8.
    """
    cfg = get_config(config, set_)  # a config error shows once, before any launch
    args = ["distill", *([str(config)] if config else [])]
    args += [f"--set={item}" for item in set_ or []] + (["--resume"] if resume else [])
    args += [f"--teacher={teacher}"] if teacher else []
    args += [f"--out={out}"] if out else []
    if relaunched(nproc, args):
        return
    try:
        with training_progress() as progress:
            result = distill_stage(
                cfg, teacher=teacher, out=out, resume=resume, progress=progress,
                say=lambda m: console.print(f"• {m}"),
            )  # fmt: skip
    except KeyboardInterrupt:
        raise interrupted(cfg, "distill", config) from None
    if not current().is_main:
        return
    console.print(comparison_table(result))
    kl = result["student"].get("val_kl") or {}
    if kl:
        console.print(
            f"KL(teacher ‖ student) on val: {kl['before']:.4f} before, {kl['after']:.4f} after "
            f"distillation; student in {result['student']['path']}"
        )


def comparison_table(result: dict[str, Any]) -> Table:
    t, s = result["teacher"], result["student"]
    table = Table(title=f"teacher vs student ({result['training']['steps']} distillation steps)")
    for name in ("", "teacher", "student", "student / teacher"):
        table.add_column(name, justify="left" if not name else "right")
    rows: list[tuple[str, float, float, str]] = [
        ("layers", t["layers"], s["layers"], "{:.0f}"),
        ("parameters (M)", t["params"] / 1e6, s["params"] / 1e6, "{:.1f}"),
        ("size on disk (MB)", t["size_bytes"] / 1e6, s["size_bytes"] / 1e6, "{:.1f}"),
        ("generation tokens/s", t["tokens_per_second"], s["tokens_per_second"], "{:.1f}"),
    ]
    if t["test"] and s["test"]:
        for key, value in t["test"]["metrics"].items():
            if isinstance(value, int | float):
                rows.append((f"test {key}", value, s["test"]["metrics"][key], "{:.4f}"))
    for name, a, b, fmt in rows:
        table.add_row(name, fmt.format(a), fmt.format(b), f"{b / a:.2f}" if a else "")
    return table
