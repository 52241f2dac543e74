"""Scaling measurements for docs/performance.md: per-epoch time and memory vs data size,
and peak memory vs sequence length. Every measurement runs in a child process of its own
(so each peak RSS is its own) and is appended to a JSON-lines file.

    .venv/bin/python scripts/bench_scaling.py data 1000 10000 100000   # prepare + tokenise
    .venv/bin/python scripts/bench_scaling.py epoch 1000                # train 1 epoch (after data)
    .venv/bin/python scripts/bench_scaling.py seqlen 128 256 512 1024 2048

Results go to runs/bench/scaling.jsonl (override with SCALING_OUT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("SCALING_OUT", "runs/bench/scaling.jsonl"))
MODEL = "smollm2-135m-instruct"


def _config(n: int, folder: Path) -> dict:
    return {
        "name": f"scale-{n}", "output_dir": str(folder),
        "model": {"base": MODEL, "max_length": 512},
        "data": {"source": str(folder / f"rows-{n}.jsonl"), "format": "instruction",
                 "template": "instruction", "split": {"val": 0.05, "test": 0.05}},
        "method": {"kind": "lora", "lora": {"targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "train": {"batch_size": 8, "epochs": 1, "eval_every": 10**6, "val_max_examples": 16},
        "eval": {"base": False},
    }  # fmt: skip


def child_data(n: int) -> dict:
    """Generate n rows, then prepare + tokenise them as `tunelab prepare` would."""
    from tunelab.recipes.bench.synthetic import write_rows
    from tunelab.config import Config
    from tunelab.models.loading import load_tokenizer
    from tunelab.results import peak_rss_mb
    from tunelab.recipes.setup import encode_splits, prepare_stage

    folder = OUT.parent / "scaling"
    start = time.perf_counter()
    write_rows(folder / f"rows-{n}.jsonl", n, seed=0)
    generated = time.perf_counter()
    cfg = Config.model_validate(_config(n, folder))
    prep = prepare_stage(cfg, cfg.run_dir, reuse=False)
    prepared = time.perf_counter()
    task = encode_splits(cfg, prep, load_tokenizer(MODEL))
    done = time.perf_counter()
    train = task.encoded["train"]
    return {"kind": "data", "rows": n, "train_rows": len(train),
            "train_real_tokens": sum(e.length for e in train),
            "generate_s": round(generated - start, 1), "prepare_s": round(prepared - generated, 1),
            "tokenise_s": round(done - prepared, 1), "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def child_epoch(n: int) -> dict:
    """One epoch of LoRA training (batch 8) on the prepared rows, through run_pipeline."""
    from tunelab.config import Config
    from tunelab.results import peak_rss_mb
    from tunelab.recipes.run import Stages, run_pipeline

    folder = OUT.parent / "scaling"
    cfg = Config.model_validate(_config(n, folder))
    start = time.perf_counter()
    res = run_pipeline(cfg, stages=Stages(base_eval=False, train=True, tuned_eval=False))
    return {"kind": "epoch", "rows": n, "wall_s": round(time.perf_counter() - start, 1),
            "training": res.training.to_json() if res.training else None,
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def child_seqlen(length: int, cap: str) -> dict:
    """Peak RSS of one LoRA training step on 4 rows of ``length`` tokens (response = half)."""
    import tempfile

    import torch

    from tunelab.data.tokenize import Encoded
    from tunelab.models.loading import load_base
    from tunelab.models.task_model import build_task_model
    from tunelab.results import peak_rss_mb
    from tunelab.training.loop import LoopSettings, fit
    from tunelab.training.metrics_log import MetricsLog

    torch.manual_seed(0)
    rows = [Encoded(torch.randint(100, 40000, (length,)).tolist(), length // 2)
            for _ in range(4)]  # fmt: skip
    model = build_task_model(load_base(MODEL), kind="lora", head="lm",
                             lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"])  # fmt: skip
    before = peak_rss_mb()
    s = LoopSettings(batch_size=4, grad_accum=1, epochs=1.0, max_steps=1, lr=1e-4,
                     schedule="constant", warmup=0, weight_decay=0.0, max_grad_norm=1.0,
                     precision="fp32", eval_every=10**6, log_every=1, patience=None,
                     min_delta=0.0, seed=0, keep_checkpoints=1, pad_id=0,
                     max_batch_tokens=None if cap == "none" else int(cap))  # fmt: skip
    work = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    fit(model, rows, rows[:1], s, checkpoints=work / "c", config_yaml="",
        log=MetricsLog(work, tensorboard=False))  # fmt: skip
    return {"kind": "seqlen", "length": length, "max_batch_tokens": cap,
            "rss_after_load_mb": before, "peak_rss_mb": peak_rss_mb(),
            "seconds_1_step": round(time.perf_counter() - start, 1)}  # fmt: skip


def main() -> None:
    if sys.argv[1] == "child":
        kind, args = sys.argv[2], sys.argv[3:]
        fn = {"data": child_data, "epoch": child_epoch, "seqlen": child_seqlen}[kind]
        print(json.dumps(fn(*[int(a) if a.isdigit() else a for a in args])))
        return
    kind = sys.argv[1]
    jobs = [[a] for a in sys.argv[2:]]
    if kind == "seqlen":
        # without a cap, 4 x 2,048 tokens in one piece would need ~11 GB: measured to 1,024
        jobs = [[a, "512"] for a in sys.argv[2:]]
        jobs += [[a, "none"] for a in sys.argv[2:] if int(a) <= 1024]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        proc = subprocess.run([sys.executable, __file__, "child", kind, *job],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        line = proc.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        with OUT.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
