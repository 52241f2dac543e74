"""``tunelab bench``: measured speed on this machine, written to JSON."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import torch
import typer

from tunelab import __version__
from tunelab.bench.eval_speed import bench_eval
from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.errors import ConfigError
from tunelab.models.loading import load_base
from tunelab.models.task_model import TaskModel
from tunelab.results import write_json
from tunelab.workflow import setup

app = typer.Typer(help="Benchmarks (speed and memory) on this machine.", no_args_is_help=True)


@app.command("eval")
def eval_(
    config: ConfigArg = None,
    set_: SetOpt = None,
    n: Annotated[int, typer.Option(min=1, help="Test examples to time.")] = 100,
    out: Annotated[
        Path | None, typer.Option(help="JSON file; default <run>/bench_eval.json.")
    ] = None,
) -> None:
    """Label scoring (batched) vs a per-example generate loop, same model and examples."""
    cfg = get_config(config, set_)
    env = setup(cfg, reuse_data=True, threads=cfg.eval.threads)
    if env.prep.words is None or env.task.label_ids is None:
        raise ConfigError("bench eval needs classification data", hint="check data.source/format")
    items = env.task.encoded["test"][:n]
    model = TaskModel(load_base(cfg.model.base), "lm").to(env.device)
    result = bench_eval(
        model, env.tokenizer, items, env.prep.words, env.task.label_ids,
        batch_size=cfg.eval.batch_size, precision=env.precision,
    )  # fmt: skip
    result["environment"] = {"tunelab": __version__, "torch": torch.__version__,
                             "python": platform.python_version(), "threads": env.threads,
                             "device": str(env.device), "precision": env.precision,
                             "model": cfg.model.base}  # fmt: skip
    path = out or cfg.run_dir / "bench_eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    ls, gl = result["label_scoring"], result["generate_loop"]
    console.print(
        f"label scoring: {ls['examples_per_second']} ex/s (acc {ls['accuracy']:.3f}); "
        f"generate loop: {gl['examples_per_second']} ex/s (acc {gl['accuracy']:.3f}, "
        f"{gl['unparseable']} unparseable); speed-up {result['speedup']}x; "
        f"agreement {result['agreement_all']:.3f}"
    )
    console.print(f"written: {path}")
