"""Multi-task mixture shares and sizes, checked by hand-computed cases."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data.mixture import mixture_shares, mixture_sizes, sample_rows


def test_weights_and_temperature_shares() -> None:
    sizes = {"a": 900, "b": 100}
    assert mixture_shares(sizes, {"a": 1, "b": 3}, "weights") == {"a": 0.25, "b": 0.75}
    assert mixture_shares(sizes, {"a": 1, "b": 1}, "size") == pytest.approx({"a": 0.9, "b": 0.1})
    # T = 2: sqrt(900) = 30, sqrt(100) = 10 -> 0.75 / 0.25
    assert mixture_shares(sizes, {}, "size", 2.0) == pytest.approx({"a": 0.75, "b": 0.25})
    assert mixture_shares({"a": 10, "b": 0}, {"a": 1, "b": 5}, "weights") == {"a": 1.0, "b": 0.0}


def test_sizes_add_up_by_largest_remainder() -> None:
    sizes = mixture_sizes({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100)
    assert sum(sizes.values()) == 100
    assert sorted(sizes.values()) == [33, 33, 34]


def test_sample_rows_down_and_up() -> None:
    items = list(range(10))
    down = sample_rows(items, 4, seed=0)
    assert len(down) == 4 and len(set(down)) == 4
    up = sample_rows(items, 25, seed=0)
    counts = Counter(up)
    assert len(up) == 25 and set(counts) == set(items)
    assert sorted(counts.values()) == [2] * 5 + [3] * 5
    assert up == sample_rows(items, 25, seed=0) and up != sample_rows(items, 25, seed=1)
