"""Choosing few-shot demonstrations for each query from a pool of training examples.

Two methods:

* ``"random"``: a seeded uniform draw per query; with ``pool_labels``, stratified so the
  prompt shows every label (what classification prompts normally need).
* ``"similar"``: the k pool items nearest the query by TF-IDF cosine similarity
  (Liu et al., 2022, "What Makes Good In-Context Examples for GPT-3?").

Either way a pool item whose text equals the query (after ``strip().casefold()``) is never
chosen: a test example that also sits in the training pool would otherwise be shown to the
model together with its answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from tunelab.errors import ConfigError, DataError

__all__ = ["select_shots"]

Method = Literal["random", "similar"]
METHODS = ("random", "similar")
SIMILARITY_CELLS = 2_000_000  # (queries × pool) similarities held at once: 16 MB dense


def _key(text: str) -> str:
    return text.strip().casefold()


def _excluded(
    pool_texts: Sequence[str], query_texts: Sequence[str], exclude_identical: bool
) -> list[list[int]]:
    """For each query, the pool indices whose text equals the query's (none if not excluding)."""
    if not exclude_identical:
        return [[] for _ in query_texts]
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(pool_texts):
        by_text.setdefault(_key(text), []).append(i)
    return [by_text.get(_key(q), []) for q in query_texts]


def _check_k(k: int, pool_size: int, excluded: list[list[int]]) -> None:
    """Raise ``ConfigError`` when k is negative or some query has fewer than k usable items."""
    if k < 0:
        raise ConfigError(
            f"compare.shots must be >= 0, got {k}", hint="use 0 for zero-shot prompts"
        )
    if k > pool_size:
        raise ConfigError(
            f"compare.shots = {k} demonstrations per query, but the pool holds only "
            f"{pool_size} examples",
            hint=f"lower compare.shots to at most {pool_size}, or use a larger training split",
        )
    worst = max(range(len(excluded)), key=lambda q: len(excluded[q]), default=None)
    if worst is None or k <= pool_size - len(excluded[worst]):
        return
    usable = pool_size - len(excluded[worst])
    raise ConfigError(
        f"compare.shots = {k} demonstrations per query, but query {worst} has only {usable} "
        f"usable: the pool holds {pool_size} examples and {len(excluded[worst])} of them "
        "are identical to the query",
        hint=f"lower compare.shots to at most {usable}, or deduplicate the training split",
    )


def _sample_excluding(rng: random.Random, n: int, k: int, excluded: Sequence[int]) -> list[int]:
    """k distinct indices drawn uniformly from range(n) minus ``excluded``, in draw order.

    Draws k + |excluded| distinct indices and drops the excluded ones: a uniform random
    ordered k-subset of the allowed indices, in O(k + |excluded|) rather than O(n).
    """
    banned = set(excluded)
    drawn = rng.sample(range(n), min(n, k + len(banned)))
    return [i for i in drawn if i not in banned][:k]


def _random_shots(pool_size: int, k: int, excluded: list[list[int]], seed: int) -> list[list[int]]:
    """A uniform draw per query; one seeded generator walks the queries in order."""
    rng = random.Random(seed)
    return [_sample_excluding(rng, pool_size, k, banned) for banned in excluded]


def _label_counts(order: list[str], capacity: dict[str, int], k: int) -> dict[str, int]:
    """Shots per label, dealt one per label per round in ``order``, skipping full labels.

    Needs k <= Σ capacity (checked by the caller).
    """
    counts = dict.fromkeys(order, 0)
    dealt = 0
    while dealt < k:
        for label in order:
            if dealt < k and counts[label] < capacity[label]:
                counts[label] += 1
                dealt += 1
    return counts


def _stratified_shots(
    pool_labels: Sequence[str], k: int, excluded: list[list[int]], seed: int
) -> list[list[int]]:
    """A draw per query that covers every label when k >= the number of labels.

    Per query: shuffle the labels, deal the k shots round-robin over them (one per label
    per round, skipping labels with no usable item left), so label counts differ by at
    most one where the pool allows; draw that many items of each label uniformly; then
    shuffle the chosen shots so the order of labels in the prompt carries no pattern (the
    label of the last demonstration biases the answer; Zhao et al., 2021). With k below the
    number of labels, k distinct labels are chosen at random.
    """
    rng = random.Random(seed)
    members: dict[str, list[int]] = {}
    for i, label in enumerate(pool_labels):
        members.setdefault(label, []).append(i)
    labels = sorted(members)
    shots: list[list[int]] = []
    for banned in excluded:
        banned_by_label: dict[str, list[int]] = {label: [] for label in labels}
        for i in banned:
            banned_by_label[pool_labels[i]].append(i)
        order = labels.copy()
        rng.shuffle(order)
        capacity = {label: len(members[label]) - len(banned_by_label[label]) for label in order}
        chosen: list[int] = []
        for label, count in _label_counts(order, capacity, k).items():
            # positions within the label's member list, excluding the banned members
            group = members[label]
            banned_pos = [group.index(i) for i in banned_by_label[label]]
            picks = _sample_excluding(rng, len(group), count, banned_pos)
            chosen.extend(group[p] for p in picks)
        rng.shuffle(chosen)
        shots.append(chosen)
    return shots


def _similar_shots(
    pool_texts: Sequence[str], query_texts: Sequence[str], k: int, excluded: list[list[int]]
) -> list[list[int]]:
    """The k pool items most TF-IDF-cosine-similar to each query, most similar last.

    TF-IDF (sublinear tf: 1 + log tf) is fitted on pool + queries; its rows are L2
    normalised, so cosine similarity is the sparse dot product. Queries go in chunks of
    about SIMILARITY_CELLS / pool_size so the dense (chunk, pool) block stays ~16 MB.
    Ties are broken by the lower pool index (also for a query sharing no term with the
    pool, where every similarity is 0).
    """
    vectorizer = TfidfVectorizer(sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform([*pool_texts, *query_texts]).tocsr()
    except ValueError as e:  # every text is empty or made only of stop characters
        raise DataError(
            f"few-shot selection by similarity found no words in the texts ({e})",
            hint="use method 'random' for these texts",
        ) from e
    n = len(pool_texts)
    pool_t = matrix[:n].T.tocsc()  # (V, P)
    queries = matrix[n:]  # (Q, V)
    chunk = max(1, SIMILARITY_CELLS // max(n, 1))
    shots: list[list[int]] = []
    for start in range(0, len(query_texts), chunk):
        sims = (queries[start : start + chunk] @ pool_t).toarray()  # (chunk, P)
        for row, banned in enumerate(excluded[start : start + chunk]):
            sims[row, banned] = -np.inf
        # the k-th largest value, then every item at least that similar (ties included)
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]  # (chunk,)
        for row in range(sims.shape[0]):
            candidates = np.flatnonzero(sims[row] >= kth[row])
            # best first: similarity descending, then index ascending
            best = candidates[np.lexsort((candidates, -sims[row, candidates]))][:k]
            shots.append([int(i) for i in best[::-1]])
    return shots


def select_shots(
    pool_texts: Sequence[str],
    query_texts: Sequence[str],
    k: int,
    *,
    method: Method,
    seed: int = 0,
    exclude_identical: bool = True,
    pool_labels: Sequence[str] | None = None,
) -> list[list[int]]:
    """For each query, the indices into ``pool_texts`` of its k demonstrations, in prompt order.

    * ``"random"``: k distinct items drawn uniformly per query from ``random.Random(seed)``
      (a different draw for each query, the same draws for the same inputs). With
      ``pool_labels`` (one label per pool item) the draw is stratified: every label appears
      at least once when k >= the number of labels (see ``_stratified_shots``).
    * ``"similar"``: the k items with the highest TF-IDF cosine similarity to the query,
      ordered most similar LAST, so the closest example sits right before the query: models
      weigh the most recent demonstrations most (Zhao et al., 2021; Liu et al., 2022).
      Deterministic; ``seed`` and ``pool_labels`` play no part.

    ``exclude_identical`` drops pool items whose ``strip().casefold()`` text equals the
    query's. ``k == 0`` gives one empty list per query. Raises ``ConfigError`` when k is
    negative or exceeds the usable pool, ``DataError`` when ``pool_labels`` does not match
    the pool.
    """
    if method not in METHODS:
        raise ConfigError(
            f"unknown few-shot selection method {method!r}",
            hint=f"use one of: {', '.join(METHODS)}",
        )
    if pool_labels is not None and len(pool_labels) != len(pool_texts):
        raise DataError(
            f"{len(pool_labels)} pool labels for {len(pool_texts)} pool texts",
            hint="pass exactly one label per pool example, in the same order",
        )
    excluded = _excluded(pool_texts, query_texts, exclude_identical)
    _check_k(k, len(pool_texts), excluded)
    if k == 0 or not query_texts:
        return [[] for _ in query_texts]
    if method == "similar":
        return _similar_shots(pool_texts, query_texts, k, excluded)
    if pool_labels is not None:
        return _stratified_shots(pool_labels, k, excluded, seed)
    return _random_shots(len(pool_texts), k, excluded, seed)
