"""Batch order and collation.

Training batches are grouped by length so little compute goes to padding: indices are
shuffled (seeded by seed and epoch), cut into pools of ``pool`` batches, each pool sorted
by length and cut into batches, and the batch order shuffled again. The order is a pure
function of (lengths, batch_size, seed, epoch), which is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tunelab.data.tokenize import IGNORE, Encoded

__all__ = ["collate", "eval_batches", "train_batches"]


def train_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, pool: int = 32
) -> list[list[int]]:
    """Length-grouped, shuffled batches of indices for one epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span].tolist(), key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of similar length, longest first (memory peaks early), deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors.

    input_ids, attention_mask, labels: (B, T); prompt_len, class_index: (B,).
    ``labels`` holds IGNORE on prompt and padding positions.
    """
    width = max(e.length for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        ids[row, : e.length] = torch.tensor(e.input_ids)
        labels[row, : e.length] = torch.tensor(e.labels)
        mask[row, : e.length] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "prompt_len": torch.tensor([e.prompt_len for e in items]),
        "class_index": torch.tensor([e.class_index for e in items]),
    }
