"""fp32 vs int8 export of a run: size on disk, load time, decoding speed, test accuracy.

Both folders are written by :func:`tunelab.export.folder.export_model` and loaded with plain
``transformers``; the test accuracy is label scoring on the run's own test split (the same
items and label ids as ``tunelab eval``), so the fp32 row reproduces the run's number.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from tunelab import __version__
from tunelab.config import load_config
from tunelab.evaluation.scoring import label_logits
from tunelab.export.folder import export_model
from tunelab.models.loading import tokenizer_from
from tunelab.models.saved import load_trained
from tunelab.models.task_model import TaskModel
from tunelab.recipes.setup import setup
from tunelab.results import read_results, write_json

__all__ = ["GEN_PROMPTS", "bench_export", "cold_load", "logit_agreement"]

GEN_PROMPTS = (
    "Write a short review of a film you enjoyed.",
    "What makes a movie worth watching twice?",
    "Describe a rainy afternoon in three sentences.",
    "Give me two tips for learning to cook.",
    "Explain what a review aggregator does.",
)

# Loads one folder with plain transformers in a fresh interpreter that never imports
# tunelab or peft; prints the import and load seconds as JSON.
_COLD_LOAD = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM
    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    t2 = time.perf_counter()
    assert "tunelab" not in sys.modules and "peft" not in sys.modules
    print(json.dumps({"import_seconds": t1 - t0, "load_seconds": t2 - t1}))
    """
)


def bench_export(
    run: Path,
    out_dir: Path,
    *,
    threads: int = 2,
    new_tokens: int = 64,
    prompts: Sequence[str] = GEN_PROMPTS,
    loads: int = 3,
) -> dict[str, Any]:
    """Export ``run`` as fp32 and int8 into ``out_dir`` and measure both; writes
    ``out_dir/bench_export.json`` and returns its content.

    Per variant: ``bytes`` on disk, ``cold_load`` (a fresh interpreter: import + load),
    ``load_seconds`` (median of ``loads`` in-process loads), greedy decoding ``tokens/s``
    (``len(prompts)`` prompts x ``new_tokens`` tokens, batch 1), test accuracy by label
    scoring, and the logits' distance to fp32 (and fp32's to the unmerged tunelab model).
    """
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(run / "config.resolved.yaml",
                      [f"output_dir={run.parent}", f"name={run.name}"])  # fmt: skip
    tokenizer = tokenizer_from(run / "model")
    env = setup(cfg, reuse_data=True, threads=threads, tokenizer=tokenizer)
    items, label_ids = env.task.encoded["test"], env.task.label_ids
    if label_ids is None:
        raise ValueError(f"{run}: bench_export needs a classification run (label scoring)")
    texts = [_chat(tokenizer, p) for p in prompts]
    probe_ids = [tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
                 for t in texts]  # fmt: skip

    unmerged, _tok, _info = load_trained(run)
    reference = _logits(unmerged.lm, probe_ids)
    del unmerged

    variants: dict[str, dict[str, Any]] = {}
    logits: dict[str, list[torch.Tensor]] = {}
    for name, quantize in (("fp32", None), ("int8", "int8")):
        facts = export_model(run, out_dir / name, quantize=quantize, overwrite=True)
        folder = out_dir / name
        cold = cold_load(folder)
        seconds = []
        for _ in range(loads):
            started = time.perf_counter()
            lm = AutoModelForCausalLM.from_pretrained(folder)
            seconds.append(time.perf_counter() - started)
        lm.eval()
        started = time.perf_counter()
        scores = label_logits(TaskModel(lm, "lm"), items, label_ids, pad_id=tokenizer.pad_token_id,
                              batch_size=cfg.eval.batch_size, precision="fp32")  # fmt: skip
        score_seconds = time.perf_counter() - started
        gold = torch.tensor([e.class_index for e in items])
        logits[name] = _logits(lm, probe_ids)
        variants[name] = {
            "export_seconds": facts["seconds"],
            "bytes": facts["bytes"],
            "weights_bytes": (folder / "model.safetensors").stat().st_size,
            "cold_load": cold,
            "load_seconds": round(statistics.median(seconds), 3),
            "decode": _decode_speed(lm, tokenizer, texts, new_tokens),
            "test_accuracy": round((scores.argmax(-1) == gold).float().mean().item(), 4),
            "test_examples": len(items),
            "label_scoring_seconds": round(score_seconds, 2),
            "predictions": scores.argmax(-1).tolist(),
            "label_logprobs": scores,
        }
        del lm

    fp32, int8 = variants["fp32"], variants["int8"]
    hidden = ("predictions", "label_logprobs")
    same = sum(a == b for a, b in zip(fp32["predictions"], int8["predictions"], strict=True))
    logprob_diff = (fp32["label_logprobs"] - int8["label_logprobs"]).abs().max().item()
    result = {
        "run": str(run),
        "recorded_test_accuracy": _recorded_accuracy(run),
        "variants": {
            k: {n: x for n, x in v.items() if n not in hidden} for k, v in variants.items()
        },
        "size_ratio_int8_vs_fp32": round(int8["bytes"] / fp32["bytes"], 4),
        "int8_vs_fp32": {
            **logit_agreement(logits["fp32"], logits["int8"]),
            "test_prediction_agreement": round(same / len(items), 4),
            "label_logprob_max_abs_diff": round(logprob_diff, 6),
        },
        "fp32_vs_unmerged": logit_agreement(reference, logits["fp32"]),
        "settings": {
            "threads": threads,
            "new_tokens": new_tokens,
            "prompts": list(prompts),
            "batch_size": 1,
            "decoding": "greedy, repetition penalty 1.1, EOS suppressed",
            "label_scoring_batch_size": cfg.eval.batch_size,
            "loads": loads,
        },
        "environment": {
            "tunelab": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            # other processes share this machine: 1-minute load before and after the bench
            "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    write_json(out_dir / "bench_export.json", result)
    return result


def cold_load(folder: Path) -> dict[str, float]:
    """Import + load seconds of ``folder`` in a fresh interpreter without tunelab or peft."""
    done = subprocess.run(
        [sys.executable, "-c", _COLD_LOAD, str(folder)],
        capture_output=True, text=True, check=True, cwd=folder,
    )  # fmt: skip
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: round(float(v), 3) for k, v in times.items()}


def logit_agreement(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Max / mean absolute difference and top-1 agreement of two lists of (T, V) logits."""
    diffs = [(x - y).abs() for x, y in zip(a, b, strict=True)]
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    positions = sum(x.shape[0] for x in a)
    return {
        "positions": positions,
        "max_abs_diff": float(max(d.max() for d in diffs)),
        "mean_abs_diff": float(sum(d.sum() for d in diffs) / sum(d.numel() for d in diffs)),
        "top1_agreement": round(same / positions, 4),
    }


@torch.no_grad()
def _logits(lm: Any, probe_ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """(T, V) logits of each prompt, one at a time (no padding)."""
    lm.eval()
    return [lm(input_ids=ids).logits[0].float() for ids in probe_ids]


@torch.no_grad()
def _decode_speed(lm: Any, tokenizer: Any, texts: Sequence[str], new_tokens: int) -> dict[str, Any]:
    """Greedy decoding of exactly ``new_tokens`` per prompt (EOS suppressed), batch 1."""
    encoded = [tokenizer(t, return_tensors="pt", add_special_tokens=False) for t in texts]
    lm.generate(**encoded[0], max_new_tokens=4, min_new_tokens=4)  # warm-up
    started = time.perf_counter()
    for enc in encoded:
        lm.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    seconds = time.perf_counter() - started
    total = new_tokens * len(texts)
    return {"tokens": total, "seconds": round(seconds, 3),
            "tokens_per_second": round(total / seconds, 2)}  # fmt: skip


def _chat(tokenizer: Any, prompt: str) -> str:
    messages = [{"role": "user", "content": prompt}]
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def _recorded_accuracy(run: Path) -> float | None:
    path = run / "results.json"
    if not path.is_file():
        return None
    tuned = read_results(path).tuned
    return tuned.metrics.get("accuracy") if tuned else None
