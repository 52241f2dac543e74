"""Classification by label scoring, and batched greedy generation.

Label scoring ranks each label by log p(label tokens | prompt). When every label word is
a single token (the usual case) one forward pass per batch reads all labels from the last
prompt position; multi-token labels get one row per (example, label). A classifier head
is read directly. Either way the result is an (N, C) matrix of label log-scores.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.data.batching import collate, eval_batches
from tunelab.data.tokenize import Encoded
from tunelab.models.precision import autocast
from tunelab.models.task_model import TaskModel

__all__ = ["generate", "label_logits", "shared_prefix_length"]

MIN_SHARED_PREFIX = 8  # tokens; below this the cache copy costs more than it saves


def shared_prefix_length(prompts: Sequence[Encoded]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own."""
    first = prompts[0].input_ids
    limit = min(e.prompt_len for e in prompts) - 1
    n = 0
    while n < limit and all(e.input_ids[n] == first[n] for e in prompts):
        n += 1
    return n


@torch.no_grad()
def label_logits(
    model: TaskModel,
    items: Sequence[Encoded],
    label_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int,
    precision: str,
) -> torch.Tensor:
    """(N, C) log-likelihood of each label for each item's prompt (fp32, on CPU).

    softmax over dim 1 gives the label probabilities; argmax the prediction.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompts = [e.prompt_only() for e in items]
    single = all(len(ids) == 1 for ids in label_ids)
    if model.head == "classifier" or single:
        out = torch.empty(len(prompts), len(label_ids))
        first = torch.tensor([ids[0] for ids in label_ids], device=device)
        # templated prompts share a prefix (system prompt, instruction): encode it once
        shared = shared_prefix_length(prompts) if len(prompts) > 1 else 0
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        with autocast(precision, device):
            cache = model.prefix_cache(prompts[0].input_ids[:shared]) if shared else None
        suffixes = [Encoded(e.input_ids[shared:], e.prompt_len - shared) for e in prompts]
        for idx in eval_batches([e.length for e in suffixes], batch_size):
            batch = collate([suffixes[i] for i in idx], pad_id)
            mask = batch["attention_mask"].to(device)
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(idx))
                mask = torch.cat([mask.new_ones(len(idx), shared), mask], dim=1)  # (B, P + T)
            with autocast(precision, device):
                hidden = model.hidden(batch["input_ids"].to(device), mask, cache=past)
                last = hidden[torch.arange(len(idx)), batch["prompt_len"].to(device) - 1]  # (B, H)
                if model.classifier is not None:
                    scores = F.log_softmax(model.classifier(last).float(), dim=-1)  # (B, C)
                else:
                    logp = F.log_softmax(model.lm_head(last).float(), dim=-1)  # (B, V)
                    scores = logp[:, first]  # (B, C)
            out[idx] = scores.cpu()
    else:
        out = _multi_token_scores(model, prompts, label_ids, pad_id, batch_size, precision)
    model.train(was_training)
    return out


def _multi_token_scores(
    model: TaskModel,
    prompts: Sequence[Encoded],
    label_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
    precision: str,
) -> torch.Tensor:
    device = next(model.parameters()).device
    rows = [Encoded(p.input_ids + list(ids), p.prompt_len) for p in prompts for ids in label_ids]
    sums = torch.empty(len(rows))
    for idx in eval_batches([r.length for r in rows], batch_size):
        batch = collate([rows[i] for i in idx], pad_id)
        with autocast(precision, device):
            hidden = model.hidden(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            logits = model.lm_head(hidden[:, :-1]).float()  # (B, T-1, V)
        targets = batch["labels"][:, 1:].to(device)  # (B, T-1)
        mask = targets != -100
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1))
        sums[idx] = (logp.squeeze(-1) * mask).sum(dim=1).cpu()
    return sums.view(len(prompts), len(label_ids))


@torch.no_grad()
def generate(
    model: TaskModel,
    tokenizer: Any,
    items: Sequence[Encoded],
    *,
    max_new_tokens: int,
    batch_size: int,
    precision: str,
    repetition_penalty: float = 1.1,
) -> list[str]:
    """Greedy continuations of each item's prompt, batched with left padding and KV cache."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = [""] * len(items)
    pad = tokenizer.pad_token_id
    for idx in eval_batches([e.prompt_len for e in items], batch_size):
        prompts = [items[i].input_ids[: items[i].prompt_len] for i in idx]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        with autocast(precision, device):
            out = model.lm.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                repetition_penalty=repetition_penalty,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    model.train(was_training)
    return outputs
