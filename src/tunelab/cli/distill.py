"""``tunelab distill``: train a smaller student from the fine-tuned teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.cli._progress import training_progress
from tunelab.recipes.distill import distill_stage
from tunelab.recipes.distill_student import DistillSettings, Keep

D = DistillSettings()  # the defaults shown in --help


def distill(
    config: ConfigArg = None,
    set_: SetOpt = None,
    teacher: Annotated[
        Path | None,
        typer.Option(help="The teacher's run or model folder; default: the config's run."),
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(
            help="Teacher layers the student keeps: every-other (the default) or "
            "indices such as 0,2,4."
        ),
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(
            help="A smaller model with the teacher's tokenizer (alias, folder, "
            "hub id) instead of cutting layers."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help=f"Optimizer steps [{D.steps}].")] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help=f"Weight of the KL term; 1-alpha weighs the CE [{D.alpha}]."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help=f"Softmax temperature of the soft targets [{D.temperature}]."),
    ] = None,
    general: Annotated[
        float | None, typer.Option(help=f"Share of each batch from general data [{D.general}].")
    ] = None,
    lr: Annotated[float | None, typer.Option(help=f"Peak learning rate [{D.lr:g}].")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=f"Examples per step [{D.batch_size}].")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for student/ and distill.json; default: the config's run."),
    ] = None,
) -> None:
    """Distil the fine-tuned model into a smaller student; compare teacher and student."""
    cfg = get_config(config, set_)
    knobs = {"steps": steps, "alpha": alpha, "temperature": temperature, "general": general,
             "lr": lr, "batch_size": batch_size}  # fmt: skip
    with training_progress() as progress:
        result = distill_stage(
            cfg, teacher=teacher, out=out, keep=parse_keep(keep), student=student,
            overrides=knobs, progress=progress, say=lambda m: console.print(f"• {m}"),
        )  # fmt: skip
    console.print(comparison_table(result))
    kl = result["student"].get("val_kl") or {}
    if kl:
        console.print(
            f"KL(teacher ‖ student) on val: {kl['before']:.4f} before, {kl['after']:.4f} after "
            f"distillation; student in {result['student']['path']}"
        )


def parse_keep(text: str | None) -> Keep | None:
    """``every-other`` or comma-separated layer indices."""
    if text is None:
        return None
    if text == "every-other":
        return "every-other"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither every-other nor comma-separated integers", param_hint="--keep"
        ) from None


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
