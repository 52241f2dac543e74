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

__all__ = ["collate", "collate_packed", "eval_batches", "micro_batches", "pack", "train_batches"]


def train_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, pool: int = 4
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

    input_ids, attention_mask, labels: (B, T); prompt_len, class_index: (B,); and (B,)
    for each of the ``extras`` that every item carries (``Encoded.extras``).
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
        **{
            name: torch.tensor([float(e.extras[name]) for e in items])
            for name in items[0].extras
            if all(name in e.extras for e in items)
        },
    }


def pack(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_tokens`` tokens (first-fit decreasing).

    Deterministic; an example longer than ``max_tokens`` gets a row of its own.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_tokens - lengths[i])
    return rows


def collate_packed(rows: Sequence[Sequence[Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    """Several examples per row, attending only to themselves.

    input_ids, labels, position_ids: (B, L). Position ids restart at 0 for every example;
    with no attention mask, transformers (>= 5) reads the restarts as packed sequences and
    builds a block-diagonal causal mask, so packed examples never see each other. The first
    token of every example is never a target (it would be predicted from the previous
    example). Padding at the end of a row forms its own block and carries no labels.
    """
    width = max(sum(e.length for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for e in row:
            end = start + e.length
            ids[r, start:end] = torch.tensor(e.input_ids)
            target = torch.tensor(e.labels)
            target[0] = IGNORE
            labels[r, start:end] = target
            positions[r, start:end] = torch.arange(e.length)
            start = end
        positions[r, start:] = torch.arange(width - start)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def micro_batches(
    items: Sequence[Encoded],
    pad_id: int,
    *,
    max_tokens: int | None,
    packing: bool = False,
    row_tokens: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """One batch of examples as tensors small enough to run, computing the same loss.

    With ``packing``, examples share rows of at most ``row_tokens`` tokens (no padding
    except at the end of a row; see :func:`collate_packed`). Rows are then grouped, longest
    first, into pieces whose padded size (rows x width) stays within ``max_tokens``; a row
    wider than that is a piece of its own. Summing the loss of the pieces gives the loss of
    the whole batch, so splitting changes memory, never the result.
    """
    if packing:
        width_cap = max(row_tokens or 0, max(e.length for e in items))
        rows = [[items[i] for i in r] for r in pack([e.length for e in items], width_cap)]
    else:
        rows = [[e] for e in items]
    rows.sort(key=lambda r: -_width(r))
    pieces: list[list[list[Encoded]]] = []
    for row in rows:  # widest first, so a piece's first row sets its width
        fits = pieces and (
            max_tokens is None or (len(pieces[-1]) + 1) * _width(pieces[-1][0]) <= max_tokens
        )
        if fits:
            pieces[-1].append(row)
        else:
            pieces.append([row])
    if packing:
        return [collate_packed(p, pad_id) for p in pieces]
    return [collate([r[0] for r in p], pad_id) for p in pieces]


def _width(row: Sequence[Encoded]) -> int:
    return sum(e.length for e in row)
