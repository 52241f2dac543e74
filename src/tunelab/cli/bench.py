"""``tunelab bench``: measured speed on this machine, written to JSON."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import torch
import typer

from tunelab import __version__
from tunelab.bench.eval_speed import bench_eval
from tunelab.bench.synthetic import write_rows
from tunelab.bench.train_speed import ENGINES, TrainBenchSpec, bench_train
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


@app.command("train")
def train(
    method: Annotated[str, typer.Option(help="lora or full.")] = "lora",
    peers: Annotated[
        str, typer.Option(help="Comma-separated peers: hf (Trainer + PEFT, fp32), hf-bf16.")
    ] = "hf",
    examples: Annotated[int, typer.Option(min=8, help="Training rows (one epoch).")] = 128,
    val_examples: Annotated[int, typer.Option(min=1, help="Held-out rows for the loss.")] = 48,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_length: Annotated[int, typer.Option(min=16)] = 512,
    max_batch_tokens: Annotated[
        int, typer.Option(min=16, help="tunelab's train.max_batch_tokens.")
    ] = 512,
    packing: Annotated[bool, typer.Option(help="tunelab's train.packing.")] = False,
    length_grouping: Annotated[
        int, typer.Option(min=1, help="tunelab's train.length_grouping.")
    ] = 4,
    data: Annotated[
        Path | None,
        typer.Option(help="Instruction JSONL; default: generated rows (see `bench data`)."),
    ] = None,
    model: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m-instruct",
    threads: Annotated[int, typer.Option(min=0, help="0: every core.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for the result JSON.")] = Path("runs/bench"),
) -> None:
    """tunelab's loop vs Hugging Face Trainer + PEFT: tokens/s, peak RSS, held-out loss."""
    if method not in ("lora", "full"):
        raise ConfigError(f"--method {method!r} is not known", hint="use lora or full")
    engines = ["tunelab", *[p.strip() for p in peers.split(",") if p.strip()]]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown peer(s): {', '.join(unknown)}", hint="use hf or hf-bf16")
    spec = TrainBenchSpec(
        data=str(data or out / "rows.jsonl"), out_dir=str(out), model=model, method=method,
        examples=examples, val_examples=val_examples, batch_size=batch_size,
        max_length=max_length, max_batch_tokens=max_batch_tokens, packing=packing,
        length_grouping=length_grouping,
        threads=threads,
    )  # fmt: skip
    result = bench_train(spec, engines, log=console.print)
    vs = result.get("versus_best_peer")
    if vs:
        console.print(
            f"tunelab vs {vs['peer']}: {vs['speedup']}x real tokens/s at "
            f"{vs['rss_ratio']}x peak RSS; held-out loss delta {vs['heldout_loss_delta']:+}"
        )
    console.print(f"written: {out / f'bench_train_{method}.json'}")


@app.command("data")
def data_(
    out: Annotated[Path, typer.Argument(help="JSONL file to write.")],
    n: Annotated[int, typer.Option(min=1, help="Rows.")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Instruction rows with a realistic long-tailed length spread (the benchmark's data)."""
    write_rows(out, n, seed)
    console.print(f"written: {out} ({n} rows)")
