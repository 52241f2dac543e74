"""Deterministic, stratified splits and seeded samples."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data.split import sample, split_counts, split_groups, split_records
from tunelab.errors import ConfigError

# 700 "a", 250 "b", 50 "c", and a class of 3 that must still reach val and test
ITEMS = [f"a{i}" for i in range(700)] + [f"b{i}" for i in range(250)]
ITEMS += [f"c{i}" for i in range(50)] + ["d0", "d1", "d2"]


def _cls(item: str) -> str:
    return item[0]


def test_split_is_deterministic_and_seed_dependent() -> None:
    first = split_records(ITEMS, val=0.1, test=0.2, seed=3, key=_cls)
    assert first == split_records(ITEMS, val=0.1, test=0.2, seed=3, key=_cls)
    assert first != split_records(ITEMS, val=0.1, test=0.2, seed=4, key=_cls)


@pytest.mark.parametrize("key", [None, _cls])
def test_splits_are_disjoint_and_complete(key) -> None:
    train, val, test = split_records(ITEMS, val=0.1, test=0.2, seed=0, key=key)
    assert sorted(train + val + test) == sorted(ITEMS)
    assert len(set(train) | set(val) | set(test)) == len(ITEMS)


def test_random_split_sizes() -> None:
    train, val, test = split_records(list(range(1000)), val=0.1, test=0.15, seed=0)
    assert (len(train), len(val), len(test)) == (750, 100, 150)


def test_stratified_proportions() -> None:
    train, val, test = split_records(ITEMS, val=0.1, test=0.2, seed=0, key=_cls)
    counts = [Counter(map(_cls, part)) for part in (train, val, test)]
    # per class: val = round(n * 0.1), test = round(n * 0.2), hand-computed
    assert counts[1] == {"a": 70, "b": 25, "c": 5, "d": 1}
    assert counts[2] == {"a": 140, "b": 50, "c": 10, "d": 1}
    assert counts[0] == {"a": 490, "b": 175, "c": 35, "d": 1}


def test_splits_are_shuffled_across_classes() -> None:
    train, _, _ = split_records(ITEMS, val=0.1, test=0.1, seed=0, key=_cls)
    assert [_cls(x) for x in train[:50]] != sorted(_cls(x) for x in train[:50])


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (10, 0.1, 0.1, (8, 1, 1)),
        (3, 0.01, 0.01, (1, 1, 1)),  # small classes still reach val and test
        (2, 0.1, 0.1, (2, 0, 0)),
        (1, 0.5, 0.4, (1, 0, 0)),  # train keeps at least one
        (4, 0.45, 0.45, (1, 1, 2)),
        (5, 0.0, 0.2, (4, 0, 1)),
        (0, 0.1, 0.1, (0, 0, 0)),
        (25, 0.1, 0.1, (19, 3, 3)),  # 2.5 rounds half up
    ],
)
def test_split_counts(n: int, val: float, test: float, expected: tuple[int, int, int]) -> None:
    assert split_counts(n, val, test) == expected


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.1), (0.1, 2000), (600, 500)])
def test_bad_fractions_are_config_errors(val: float, test: float) -> None:
    with pytest.raises(ConfigError, match=r"data\.split"):
        split_records(ITEMS, val=val, test=test, seed=0)


def test_sample_is_seeded_ordered_and_nested() -> None:
    items = list(range(100))
    small = sample(items, 10, seed=1)
    assert small == sample(items, 10, seed=1)
    assert small != sample(items, 10, seed=2)
    assert small == sorted(small) and len(set(small)) == 10
    assert set(small) <= set(sample(items, 30, seed=1))
    assert sample(items, 500, seed=1) == items
    assert sample(items, 0, seed=1) == []


def test_counts_are_row_counts() -> None:
    train, val, test = split_records(list(range(1000)), val=50, test=200, seed=0)
    assert (len(train), len(val), len(test)) == (750, 50, 200)
    with pytest.raises(ConfigError, match=r"data\.split\.test"):
        split_records(list(range(10)), val=0.1, test=20, seed=0)


def test_group_split_keeps_groups_together() -> None:
    # 40 groups of 1..6 rows; a group never spans two splits
    rows = [(f"g{g}", i) for g in range(40) for i in range(1 + g % 6)]
    parts = split_groups(rows, val=0.1, test=0.2, seed=1, group=lambda r: r[0])
    groups = [{g for g, _ in part} for part in parts]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2])
    assert not (groups[1] & groups[2])
    assert sorted(r for part in parts for r in part) == sorted(rows)
    n = len(rows)
    # whole groups overshoot the target by less than the largest group (6 rows)
    assert round(n * 0.2) <= len(parts[2]) < round(n * 0.2) + 6
    assert round(n * 0.1) <= len(parts[1]) < round(n * 0.1) + 6
    assert parts == split_groups(rows, val=0.1, test=0.2, seed=1, group=lambda r: r[0])
