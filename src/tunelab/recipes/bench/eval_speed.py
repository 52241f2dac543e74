"""Label scoring vs a per-example ``generate`` loop on the same classification examples.

The per-example loop is what a generic evaluation harness does: decode greedily for each
prompt alone and match the text against the label words. Label scoring reads every label's
log-likelihood from one batched forward pass. Both run in this process on the same model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from tunelab.data.tokenize import Encoded
from tunelab.evaluation.scoring import label_logits
from tunelab.models.task_model import TaskModel

__all__ = ["bench_eval", "match_label"]


def match_label(text: str, words: Sequence[str]) -> int | None:
    """Index of the label word that ``text`` starts with (case-insensitive), else None."""
    cleaned = text.strip().lower()
    for i, word in enumerate(words):
        if cleaned.startswith(word.lower()):
            return i
    return None


@torch.no_grad()
def bench_eval(
    model: TaskModel,
    tokenizer: Any,
    items: Sequence[Encoded],
    words: Sequence[str],
    label_ids: Sequence[Sequence[int]],
    *,
    batch_size: int,
    precision: str,
) -> dict[str, Any]:
    """Time both ways over ``items``; report throughput, speed-up and agreement."""
    model.eval()
    started = time.perf_counter()
    scores = label_logits(
        model, items, label_ids, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
        precision=precision,
    )  # fmt: skip
    scored_seconds = time.perf_counter() - started
    scored = scores.argmax(-1).tolist()

    max_new = max(len(ids) for ids in label_ids)
    generated: list[int | None] = []
    started = time.perf_counter()
    for e in items:
        ids = torch.tensor([e.input_ids[: e.prompt_len]])
        out = model.lm.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
            do_sample=False, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        generated.append(match_label(tokenizer.decode(out[0, ids.shape[1] :]), words))
    generate_seconds = time.perf_counter() - started

    gold = [e.class_index for e in items]
    n = len(items)
    return {
        "examples": n,
        "label_scoring": {
            "seconds": round(scored_seconds, 6),
            "examples_per_second": round(n / scored_seconds, 2),
            "accuracy": sum(p == g for p, g in zip(scored, gold, strict=True)) / n,
            "batch_size": batch_size,
        },
        "generate_loop": {
            "seconds": round(generate_seconds, 6),
            "examples_per_second": round(n / generate_seconds, 2),
            "accuracy": sum(p == g for p, g in zip(generated, gold, strict=True)) / n,
            "unparseable": sum(p is None for p in generated),
        },
        "speedup": round(generate_seconds / scored_seconds, 2),
        # where greedy decoding emitted a label word, does it pick the same label?
        "agreement_where_parseable": _agreement(scored, generated),
        "agreement_all": sum(p == g for p, g in zip(scored, generated, strict=True)) / n,
    }


def _agreement(scored: list[int], generated: list[int | None]) -> float | None:
    pairs = [(s, g) for s, g in zip(scored, generated, strict=True) if g is not None]
    return sum(s == g for s, g in pairs) / len(pairs) if pairs else None
