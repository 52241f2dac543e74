"""The loop's numbers pinned: same seed, same settings → the same per-step losses, gradient
norms, val losses and final weights, bit for bit, as the loop before objectives.

``loop_golden.json`` was recorded with the loop at commit aad8b0c (``fit`` with its
22-field ``LoopSettings``, before ``training/objectives/`` and ``training/setup.py``), on
the tiny conftest model, torch 2.13.0 CPU, fp32, one thread, by running these same cases
(the recording script was this file's ``_run`` with the old signature). Floats are compared
with ``==`` and the weights by a SHA-256 of their bytes: a change to what the loop
computes, or to its order of operations, fails here. (Another CPU or torch build may round
differently; re-record there from the old commit, never from the code under test.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.config.forgetting_section import L2spConfig
from tunelab.config.schema import TrainConfig
from tunelab.data.tokenize import Encoded
from tunelab.forgetting.mitigations.l2sp import L2SP
from tunelab.models.task_model import build_task_model
from tunelab.training.hooks import Context
from tunelab.training.metrics_log import MetricsLog, read_metrics
from tunelab.training.setup import LoopSettings, train

GOLDEN = json.loads((Path(__file__).parent / "loop_golden.json").read_text())

# cosine with warmup, weight decay, clipping, accumulation over 2 micro-batches, pieces
# capped at 24 padded tokens, length grouping, 7 steps over 14 examples (an epoch boundary)
BASE: dict[str, Any] = dict(
    batch_size=2, grad_accum=2, max_steps=7, lr=3e-3, schedule="cosine", warmup=0.2,
    weight_decay=0.01, max_grad_norm=1.0, eval_every=3, log_every=1, early_stopping=None,
    seed=3, keep_checkpoints=1, max_batch_tokens=24,
)  # fmt: skip
CASES: dict[str, dict[str, Any]] = {
    "lora-lm": dict(kind="lora", head="lm"),  # LoRA dropout 0.1: the RNG stream is pinned too
    "full-lm-packed": dict(
        kind="full",
        head="lm",
        over={"packing": True, "max_batch_tokens": 64, "grad_accum": 1},
        row_tokens=32,
    ),
    "frozen-classifier": dict(kind="frozen", head="classifier", over={"lr": 5e-2}),
    "lora-lm-l2sp": dict(kind="lora", head="lm", l2sp=True),
}


def _items(n: int, seed: int) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        ids = torch.randint(3, 150, (length,), generator=g).tolist()
        prompt = int(torch.randint(2, length - 1, (1,), generator=g))
        out.append(Encoded(ids, prompt_len=prompt, class_index=i % 2))
    return out


def _run(folder: Path, model_dir: Path, case: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    model = build_task_model(lm, kind=case["kind"], head=case["head"], label_token_ids=[5, 9],
                             lora_r=4, lora_alpha=8, lora_dropout=0.1)  # fmt: skip
    items, val = _items(14, 0), _items(5, 1)
    if case["head"] == "classifier":
        items, val = [e.prompt_only() for e in items], [e.prompt_only() for e in val]
    section = TrainConfig(**{**BASE, **case.get("over", {})})
    s = LoopSettings(section, "fp32", 0, row_tokens=case.get("row_tokens"))
    extra: dict[str, Any] = {}
    if case.get("l2sp"):
        ctx = Context(general=[], pad_id=0, batch_size=2, precision="fp32", seed=3)
        extra = {"mitigations": [L2SP(L2spConfig(strength=5.0))], "ctx": ctx}
    state = train(model, items, val, s, checkpoints=folder / "checkpoints", config_yaml="",
                  log=MetricsLog(folder, tensorboard=False), **extra)  # fmt: skip
    lines = read_metrics(folder / "metrics.jsonl")
    digest = hashlib.sha256()
    for name, value in sorted(model.trainable_state().items()):
        digest.update(name.encode())
        digest.update(value.contiguous().numpy().tobytes())
    out = {
        "losses": [m["loss"] for m in lines if "loss" in m],
        "val": [m["val_loss"] for m in lines if "val_loss" in m],
        "grad_norms": [m["grad_norm"] for m in lines if "loss" in m],
        "best_step": state.best_step, "tokens": state.tokens, "padded": state.padded_tokens,
        "weights_sha256": digest.hexdigest(),
    }  # fmt: skip
    if case.get("l2sp"):
        out["penalties"] = [m.get("penalty.l2sp") for m in lines if "loss" in m]
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_the_loop_reproduces_the_recorded_run_bit_for_bit(tmp_path, tiny_model_dir, name):
    torch.set_num_threads(1)
    got = _run(tmp_path / name, tiny_model_dir, CASES[name])
    assert got == GOLDEN[name]
    assert len(got["losses"]) == 7 and len(got["val"]) == 3  # steps 3, 6 and the last
