"""Multi-task mixtures: how many training rows each task contributes, and which.

Two ways to set the shares ``p_i`` of tasks with ``n_i`` training rows each:

- ``weights``: ``p_i = w_i / sum(w)`` from each task's ``weight``;
- ``size``: ``p_i = n_i^(1/T) / sum_j n_j^(1/T)``. ``T = 1`` is proportional to size;
  a larger temperature flattens the mixture towards uniform, so small tasks are not
  drowned (the temperature-scaled mixing of T5, Raffel et al. 2020, section 3.5.2).

The mixture has as many rows as the tasks have together (``N = sum(n_i)``, or a cap), so
task ``i`` gets ``round(p_i * N)`` rows (largest remainders, so they add up to ``N``). A
task asked for fewer rows than it has is sampled without replacement; one asked for more
is repeated whole as often as fits, plus a sample of the rest. Pure and seeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, TypeVar

import numpy as np

__all__ = ["mixture_shares", "mixture_sizes", "sample_rows"]

T = TypeVar("T")


def mixture_shares(
    sizes: Mapping[str, int],
    weights: Mapping[str, float],
    mixing: Literal["weights", "size"],
    temperature: float = 1.0,
) -> dict[str, float]:
    """The share ``p_i`` of each task (they sum to 1); tasks without rows get 0."""
    if mixing == "weights":
        raw = {name: weights[name] if sizes[name] else 0.0 for name in sizes}
    else:
        raw = {name: n ** (1.0 / temperature) if n else 0.0 for name, n in sizes.items()}
    total = sum(raw.values())
    return {name: (value / total if total else 0.0) for name, value in raw.items()}


def mixture_sizes(shares: Mapping[str, float], total: int) -> dict[str, int]:
    """``round(p_i * total)`` per task by largest remainders, so the sizes add up to total."""
    exact = {name: p * total for name, p in shares.items()}
    sizes = {name: math.floor(x) for name, x in exact.items()}
    left = total - sum(sizes.values())
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - sizes[name]), name))
    for name in by_remainder[:left]:
        sizes[name] += 1
    return sizes


def sample_rows(items: Sequence[T], size: int, seed: int) -> list[T]:
    """``size`` items: a seeded sample without replacement, or every item repeated
    ``size // len(items)`` times plus a sample of ``size % len(items)``; in random order."""
    if not items or size <= 0:
        return []
    rng = np.random.default_rng(seed)
    whole, rest = divmod(size, len(items))
    chosen = [i for _ in range(whole) for i in range(len(items))]
    chosen += rng.permutation(len(items))[:rest].tolist()
    return [items[chosen[i]] for i in rng.permutation(len(chosen))]
