"""``tunelab bench``: measured speed on this machine, written to JSON."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import torch
import typer

from tunelab import __version__
from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.errors import ConfigError
from tunelab.models.loading import load_base
from tunelab.models.task_model import TaskModel
from tunelab.recipes.bench.eval_speed import bench_eval
from tunelab.recipes.bench.prepare_speed import bench_prepare
from tunelab.recipes.bench.synthetic import write_rows
from tunelab.recipes.bench.train_speed import ENGINES, TrainBenchSpec, bench_train
from tunelab.recipes.setup import setup
from tunelab.results import write_json

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


@app.command("prepare")
def prepare_(
    n: Annotated[
        int, typer.Option(min=100, help="Generated rows with planted problems.")
    ] = 100_000,
    gb: Annotated[
        float | None,
        typer.Option(help="Instead: a file of at least this many GB of distinct rows."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    model: Annotated[str, typer.Option(help="Tokenizer of this model.")] = "smollm2-135m-instruct",
    out: Annotated[Path, typer.Option(help="Folder for the result JSON.")] = Path("runs/bench"),
) -> None:
    """The whole data stage on generated messy rows (or a >= N GB file): time, peak RSS."""
    result = bench_prepare(out / "prepare", n=n, gb=gb, seed=seed, model=model)
    name = f"bench_prepare_{gb:g}gb.json" if gb else f"bench_prepare_{n}.json"
    write_json(out / name, result)
    console.print(
        f"{result['rows']:,} rows ({result['file_mb']:,} MB) in {result['seconds']} s "
        f"({result['rows_per_second']:,} rows/s), peak RSS {result['peak_rss_mb']:,} MiB; "
        f"stages {result['stages_s']}; kept {result['rows_kept']:,}"
    )
    console.print(f"written: {out / name}")


@app.command("pii")
def pii(
    n: Annotated[int, typer.Option(min=1, help="Synthetic rows.")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="JSON file to write.")] = Path(
        "runs/bench/bench_pii.json"
    ),
) -> None:
    """PII detection: recall and precision per type on rows with known spans, and speed."""
    import os
    from importlib.metadata import version

    from rich.table import Table

    from tunelab.recipes.bench.pii import bench_pii

    result = bench_pii(n, seed)
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "") if cpuinfo.exists() else ""  # fmt: skip
    result["environment"] = {
        "tunelab": __version__, "python": platform.python_version(),
        "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
        **{pkg: version(pkg) for pkg in ("presidio-analyzer", "phonenumbers", "faker")},
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    table = Table(title=f"PII detection: {n} rows, seed {seed}")
    for column in ("type", "support", "TP", "FP", "FN", "recall", "precision"):
        table.add_column(column, justify="left" if column == "type" else "right")
    for name, m in result["per_type"].items():
        table.add_row(
            name, *(str(m[k]) for k in ("support", "tp", "fp", "fn", "recall", "precision"))
        )
    console.print(table)
    speed = result["anonymizer_rows_per_second"]
    targets = result["targets"]
    console.print(
        f"detector: {result['rows_per_second']:,} rows/s ({result['mean_row_chars']} chars/row); "
        f"anonymiser on 300-char texts: {speed['prose_no_digits']:,} rows/s (prose), "
        f"{speed['numbers_no_pii']:,} (numbers, no PII), {speed['with_pii']:,} (with PII)"
    )
    real = result["real_text"]
    console.print(
        f"real instruction rows ({real['rows']}, {real['mean_row_chars']} chars): "
        f"{real['rows_per_second']:,} rows/s; spans found {real['spans_by_type'] or 'none'}"
    )
    console.print(
        f"targets (recall >= {targets['recall']}, precision >= {targets['precision']}): "
        + ("met" if targets["met"] else "missed: " + "; ".join(targets["missed"]))
    )
    console.print(f"written: {out}")


@app.command("serve")
def serve_(
    url: Annotated[
        str, typer.Option(help="A running `tunelab serve` on this machine (loopback only).")
    ] = "http://127.0.0.1:8000/v1",
    api_key: Annotated[
        str | None, typer.Option(envvar="TUNELAB_API_KEY", help="Bearer key, if one is needed.")
    ] = None,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent clients.")] = 16,
    requests: Annotated[int, typer.Option(min=1, help="Requests in all.")] = 200,
    max_tokens: Annotated[int, typer.Option(min=1, help="Completion tokens per request.")] = 16,
    db: Annotated[
        Path | None,
        typer.Option(help="The server's feedback store: also send feedback and count it stored."),
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON file to write.")] = Path(
        "runs/bench/bench_serve.json"
    ),
) -> None:
    """Load test of a running server: throughput, p50/p99 latency, status counts, feedback
    rows stored (bounded: `requests` in all, loopback only)."""
    from tunelab.recipes.bench.serve_load import run_load

    result = run_load(url, api_key, clients=clients, requests=requests, max_tokens=max_tokens,
                      db=db)  # fmt: skip
    result["environment"] = {"tunelab": __version__, "python": platform.python_version()}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    console.print(result)
    console.print(f"written: {out}")
