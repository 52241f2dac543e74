"""``tunelab report``: (re)generate a run's self-contained report.html from its results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli._common import console, get_config

RunArg = Annotated[
    Path,
    typer.Argument(
        help="A run folder (runs/<name>), or the YAML config that wrote it.", show_default=False
    ),
]


def report(run: RunArg) -> None:
    """Write RUN/report.html from results.json, metrics.jsonl and the resolved config."""
    from tunelab.report import build_report  # matplotlib loads only for this verb

    run_dir = run_folder(run)
    path = build_report(run_dir)
    console.print(f"report: {path}", markup=False, highlight=False, soft_wrap=True)


def run_folder(path: Path) -> Path:
    """The run folder named by ``path``: itself, or the ``run_dir`` of a YAML config."""
    if path.suffix.lower() in {".yaml", ".yml"}:
        return get_config(path, None).run_dir
    return path
