"""A rich progress bar fed by the training loop's progress callback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.cli._common import console


@contextmanager
def training_progress() -> Iterator[Any]:
    """Yields a callback for :func:`tunelab.training.loop.fit`'s ``progress``."""
    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task_id = None
    fields: dict[str, Any] = {"loss": "-", "val": "-"}

    def update(info: dict[str, Any]) -> None:
        nonlocal task_id
        if task_id is None:
            task_id = bar.add_task("train", total=info["total"], **fields)
        if "loss" in info:
            fields["loss"] = f"{info['loss']:.4f}"
        if info.get("val_loss") is not None and "loss" not in info:
            fields["val"] = f"{info['val_loss']:.4f}"
        bar.update(task_id, completed=info["step"], **fields)

    with bar:
        yield update
