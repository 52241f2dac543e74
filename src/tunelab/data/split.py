"""Deterministic train/val/test splits and seeded samples.

Both functions depend only on the input sequence and the seed (a NumPy ``Generator`` from
``numpy.random.default_rng(seed)``): the same items in the same order with the same seed
give the same result on every platform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from tunelab.errors import ConfigError

__all__ = ["as_fractions", "sample", "split_counts", "split_groups", "split_records"]

T = TypeVar("T")


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """``(train, val, test)`` sizes for ``n`` items.

    Each of val and test is ``n * fraction`` rounded half up. When ``n >= 3`` a fraction
    above zero gets at least one item, and train always keeps at least one item (the larger
    of val/test gives way first). For ``n < 3`` plain rounding applies, e.g. one item goes
    to train.
    """
    n_val = math.floor(n * val + 0.5)
    n_test = math.floor(n * test + 0.5)
    if n >= 3:
        n_val = max(n_val, 1) if val > 0 else 0
        n_test = max(n_test, 1) if test > 0 else 0
    while n > 0 and n_val + n_test > n - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def as_fractions(n: int, val: float, test: float) -> tuple[float, float]:
    """Sizes given as fractions (< 1) or row counts (>= 1) as fractions of ``n`` rows.

    A count larger than what ``n`` rows allow raises ConfigError naming the key.
    """
    sizes = []
    for name, value in (("val", val), ("test", test)):
        if value < 1:
            sizes.append(float(value))
            continue
        if n and value > n:
            raise ConfigError(
                "split size larger than the data",
                problems=[(f"data.split.{name}", f"{int(value)} rows asked, {n} available")],
                hint="ask for fewer rows, or a fraction such as 0.1",
            )
        sizes.append(int(value) / n if n else 0.0)
    if n and sum(sizes) >= 1.0:
        raise ConfigError(
            "split sizes leave no training data",
            problems=[("data.split", f"val {val:g} + test {test:g} of {n} rows")],
            hint="lower data.split.val / data.split.test",
        )
    return sizes[0], sizes[1]


def split_groups(
    records: Sequence[T], *, val: float, test: float, seed: int, group: Callable[[T], str]
) -> tuple[list[T], list[T], list[T]]:
    """Split so that all records of one group land in the same split.

    Groups are shuffled (seeded); whole groups go to test until it holds at least
    ``test`` (a fraction of the records, or a count), then to val likewise; the rest is
    train. Sizes are therefore approximate: they overshoot by less than one group. With
    fewer than 3 groups a split may stay empty.
    """
    val, test = as_fractions(len(records), val, test)
    by_group: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_group.setdefault(group(record), []).append(index)
    names = sorted(by_group)
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    targets = (math.floor(len(records) * test + 0.5), math.floor(len(records) * val + 0.5))
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    filling = 0  # 0: test, 1: val, 2: train
    for i, name in enumerate(order):
        while filling < 2 and len(parts[2 - filling]) >= targets[filling]:
            filling += 1
        if filling < 2 and len(order) - i <= 1:  # keep the last group for training
            filling = 2
        parts[2 - filling].extend(by_group[name])
    train, val_part, test_part = (
        [records[part[i]] for i in rng.permutation(len(part))] for part in parts
    )
    return train, val_part, test_part


def split_records(
    records: Sequence[T],
    *,
    val: float,
    test: float,
    seed: int,
    key: Callable[[T], str] | None = None,
) -> tuple[list[T], list[T], list[T]]:
    """Split ``records`` into ``(train, val, test)`` lists.

    ``val`` and ``test`` are fractions (< 1) or row counts (>= 1, see :func:`as_fractions`).
    Without ``key`` the records are shuffled and cut by :func:`split_counts`. With ``key``
    the split is stratified: each class (in sorted key order) is shuffled and cut on its
    own, so every class with at least 3 items has at least one val and one test item when
    the fractions are above zero, and the class proportions match across splits up to
    rounding. Each split is then shuffled, so classes are interleaved. The splits are
    disjoint and together hold every record exactly once.
    """
    val, test = as_fractions(len(records), val, test)
    problems = [
        (f"data.split.{name}", f"{value:g} must be in [0, 1)")
        for name, value in (("val", val), ("test", test))
        if not 0.0 <= value < 1.0
    ]
    if not problems and val + test >= 1.0:
        problems.append(("data.split", f"val + test = {val + test:g} leaves no training data"))
    if problems:
        raise ConfigError("invalid split fractions", problems=problems)

    rng = np.random.default_rng(seed)
    if key is None:
        groups = [list(range(len(records)))]
    else:
        by_class: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            by_class.setdefault(key(record), []).append(index)
        groups = [by_class[name] for name in sorted(by_class)]

    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for group in groups:
        order = [group[i] for i in rng.permutation(len(group))]
        n_train, n_val, _ = split_counts(len(group), val, test)
        parts[0].extend(order[:n_train])
        parts[1].extend(order[n_train : n_train + n_val])
        parts[2].extend(order[n_train + n_val :])
    train, val_part, test_part = (
        [records[part[i]] for i in rng.permutation(len(part))] for part in parts
    )
    return train, val_part, test_part


def sample(items: Sequence[T], n: int, seed: int) -> list[T]:
    """``n`` items chosen at random with ``seed``, in their original order.

    All items (as a list) when ``n >= len(items)``. Samples are nested: for the same items
    and seed, a smaller sample is a subset of a larger one.
    """
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    if n >= len(items):
        return list(items)
    chosen = np.random.default_rng(seed).permutation(len(items))[:n]
    return [items[i] for i in sorted(chosen.tolist())]
