"""``tunelab train``: fine-tune from a config (prepares data if needed)."""

from __future__ import annotations

from typing import Annotated

import typer

from tunelab.cli._common import (
    ConfigArg,
    SetOpt,
    console,
    get_config,
    interrupted,
    relaunched,
)
from tunelab.cli._progress import training_progress
from tunelab.recipes.run import Stages, run_pipeline
from tunelab.training.distributed import current


def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint.")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Data-parallel processes on this machine, started by `accelerate launch` "
            "(one per GPU; on a CPU, gloo). Same as `accelerate launch -m tunelab train`. "
            "DDP, or FSDP with train.parallel: fsdp.",
        ),
    ] = 1,
) -> None:
    """Fine-tune only (no evaluation); the best checkpoint is exported to <run>/model."""
    cfg = get_config(config, set_)  # a config error shows once, before any launch
    args = ["train", *([str(config)] if config else [])]
    args += [f"--set={item}" for item in set_ or []] + (["--resume"] if resume else [])
    if relaunched(nproc, args):
        return
    try:
        with training_progress() as progress:
            results = run_pipeline(
                cfg,
                stages=Stages(base_eval=False, train=True, tuned_eval=False),
                resume=resume,
                progress=progress,
                events=lambda m: console.print(f"• {m}"),
            )
    except KeyboardInterrupt:
        raise interrupted(cfg, "train", config) from None
    if not current().is_main:
        return
    t = results.training
    assert t is not None and t.best_val_loss is not None  # run_pipeline trained on rank 0
    console.print(
        f"done: {t.steps} steps ({t.stopped}), best val loss {t.best_val_loss:.4f} "
        f"at step {t.best_step}; model in {cfg.run_dir / 'model'}"
    )
