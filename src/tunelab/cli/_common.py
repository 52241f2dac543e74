"""What every verb shares: the console, config loading from CLI options, quiet libraries."""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunelab.config import Config, load_config
from tunelab.errors import TrainingError
from tunelab.training.checkpoint import read_pointer
from tunelab.training.distributed import launch_command, launched_world_size

__all__ = [
    "ConfigArg",
    "SetOpt",
    "console",
    "err_console",
    "get_config",
    "interrupted",
    "quiet_libraries",
]

console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="YAML config; omitted: the packaged quickstart (embedded model and data).",
                   show_default=False),
]  # fmt: skip
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key, e.g. --set train.lr=1e-4 (repeatable)."),
]  # fmt: skip


QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def get_config(path: Path | None, overrides: list[str] | None) -> Config:
    """The given config, or with none the packaged quickstart (the embedded defaults)."""
    return load_config(path if path is not None else QUICKSTART, overrides or [])


def quiet_libraries(debug: bool) -> None:
    """Silence progress bars and advisory warnings of the ML libraries unless --debug."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if debug:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def interrupted(cfg: Config, verb: str, config: Path | None) -> TrainingError:
    """The error a Ctrl-C during training becomes: what is safe and how to go on."""
    folder = cfg.run_dir / "checkpoints"
    last = read_pointer(folder).get("last") if folder.is_dir() else None
    saved = f"the last checkpoint ({last}) is intact" if last else "no checkpoint was saved yet"
    command = " ".join(["tunelab", verb, *([str(config)] if config else []), "--resume"])
    return TrainingError(f"interrupted; {saved} in {folder}", hint=f"continue with `{command}`")


def relaunched(nproc: int, args: list[str]) -> bool:
    """``--nproc N`` outside a distributed launch: run ``tunelab ARGS`` in N processes
    (``accelerate launch``), wait for them and return True; False when this process is to
    do the work itself (one process, or already one rank of a launch)."""
    if nproc <= 1 or launched_world_size() != 1:
        return False
    console.print(f"• launching {nproc} processes: accelerate launch -m tunelab {' '.join(args)}")
    code = subprocess.call(launch_command(nproc, args))
    if code:
        raise typer.Exit(code)
    return True
