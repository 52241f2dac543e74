"""``tunelab train``: fine-tune from a config (prepares data if needed)."""

from __future__ import annotations

from typing import Annotated

import typer

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config, interrupted
from tunelab.cli._progress import training_progress
from tunelab.workflow import Stages, run_pipeline


def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint.")
    ] = False,
) -> None:
    """Fine-tune only (no evaluation); the best checkpoint is exported to <run>/model."""
    cfg = get_config(config, set_)
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
    t = results["training"]
    console.print(
        f"done: {t['steps']} steps ({t['stopped']}), best val loss {t['best_val_loss']:.4f} "
        f"at step {t['best_step']}; model in {cfg.run_dir / 'model'}"
    )
