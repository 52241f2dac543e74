"""Few-shot demonstration selection: determinism, no duplicates, nearest-last ordering,
leakage exclusion, label coverage, and the errors for an impossible k."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.fewshot import select_shots

POOL = [f"training example number {i} about topic {i % 7}" for i in range(40)]
QUERIES = [f"query about topic {i}" for i in range(10)]


def test_random_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = select_shots(POOL, QUERIES, 4, method="random", seed=1)
    assert first == select_shots(POOL, QUERIES, 4, method="random", seed=1)
    assert first != select_shots(POOL, QUERIES, 4, method="random", seed=2)
    assert len({tuple(s) for s in first}) > 1  # a different draw per query


@pytest.mark.parametrize("labels", [None, [f"label{i % 3}" for i in range(len(POOL))]])
def test_random_shots_are_distinct_valid_indices(labels: list[str] | None) -> None:
    for k in (1, 5, len(POOL)):
        shots = select_shots(POOL, QUERIES, k, method="random", seed=3, pool_labels=labels)
        assert len(shots) == len(QUERIES)
        for s in shots:
            assert len(s) == k and len(set(s)) == k
            assert all(0 <= i < len(POOL) for i in s)


def test_similar_puts_the_near_copy_last() -> None:
    pool = [
        "stock prices fell sharply today",
        "the cat sat on a mat",  # the near-copy
        "a recipe for lemon cake",
        "the dog slept on the sofa",  # shares "the", "on"
        "rain is expected tomorrow",
    ]
    shots = select_shots(pool, ["the cat sat on the mat"], 3, method="similar")
    assert shots[0][-1] == 1
    assert shots[0][-2] == 3
    assert select_shots(pool, ["the cat sat on the mat"], 3, method="similar") == shots


def test_similar_breaks_ties_by_lower_index() -> None:
    pool = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    # no shared word: every similarity is 0, so the lowest indices win (best last)
    assert select_shots(pool, ["omega"], 2, method="similar") == [[1, 0]]


@pytest.mark.parametrize("method", ["random", "similar"])
def test_exclude_identical_never_picks_the_query_itself(method: str) -> None:
    pool = ["The cat sat on the mat", "the cat sat on a mat", "dogs bark", "fish swim"]
    query = "  the CAT sat on the mat "  # equal to pool[0] after strip().casefold()
    for seed in range(20):
        shots = select_shots(pool, [query], 3, method=method, seed=seed)  # type: ignore[arg-type]
        assert 0 not in shots[0]
    kept = select_shots(pool, [query], 1, method="similar", exclude_identical=False)
    assert kept == [[0]]  # without the guard the leaked copy is the nearest item


def test_pool_labels_cover_every_label() -> None:
    rng = random.Random(0)
    # skewed pool: label "a" is 90% of it, so an unstratified draw often misses a label
    labels = ["a"] * 90 + ["b"] * 6 + ["c"] * 4
    rng.shuffle(labels)
    pool = [f"text {i}" for i in range(len(labels))]
    queries = [f"query {i}" for i in range(200)]
    for k in (3, 4, 7):
        shots = select_shots(pool, queries, k, method="random", seed=5, pool_labels=labels)
        for s in shots:
            counts = Counter(labels[i] for i in s)
            assert set(counts) == {"a", "b", "c"}
            assert max(counts.values()) - min(counts.values()) <= 1  # round-robin
    few = select_shots(pool, queries, 2, method="random", seed=5, pool_labels=labels)
    assert all(len({labels[i] for i in s}) == 2 for s in few)  # k < labels: distinct ones
    last = Counter(
        labels[s[-1]]
        for s in select_shots(pool, queries, 3, method="random", seed=5, pool_labels=labels)
    )
    assert len(last) == 3  # the prompt order is shuffled, not a fixed label pattern


def test_pool_labels_respect_a_small_label_and_exclusion() -> None:
    labels = ["a", "a", "a", "a", "b"]
    pool = ["one", "two", "three", "four", "five"]
    shots = select_shots(pool, ["five"], 4, method="random", pool_labels=labels)
    assert sorted(shots[0]) == [0, 1, 2, 3]  # the only "b" item is the query itself


def test_k_zero_gives_empty_lists() -> None:
    assert select_shots(POOL, QUERIES[:3], 0, method="similar") == [[], [], []]
    assert select_shots([], ["q"], 0, method="random") == [[]]


def test_k_larger_than_pool_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"compare\.shots.*pool holds only 40"):
        select_shots(POOL, QUERIES, 41, method="random")
    with pytest.raises(ConfigError, match=r"compare\.shots.*query 1 has only 39 usable"):
        select_shots(POOL, ["unrelated", POOL[3]], 40, method="similar")
    with pytest.raises(ConfigError, match=r"compare\.shots must be >= 0"):
        select_shots(POOL, QUERIES, -1, method="random")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown few-shot selection method"):
        select_shots(POOL, QUERIES, 1, method="nearest")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="pool labels"):
        select_shots(POOL, QUERIES, 1, method="random", pool_labels=["a"])


def test_large_pool_runs() -> None:
    # 10k pool x 2k queries; wall-clock is not asserted (about 1 s on a 2-core machine)
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    weights = [1 / (r + 1) for r in range(len(vocab))]  # Zipf-like word frequencies

    def text() -> str:
        return " ".join(rng.choices(vocab, weights, k=rng.randint(10, 40)))

    pool = [text() for _ in range(10_000)]
    queries = pool[:50] + [text() for _ in range(1_950)]
    shots = select_shots(pool, queries, 8, method="similar")
    assert len(shots) == 2_000 and all(len(s) == 8 for s in shots)
    assert all(i not in s for i, s in enumerate(shots[:50]))  # leaked copies excluded
