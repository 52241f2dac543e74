"""Exact and near duplicates, and conflicting labels."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.data.dedupe import (
    ExactIndex,
    NearIndex,
    band_layout,
    dedupe_key,
    find_conflicts,
    resolve_conflicts,
)

_RNG = random.Random(0)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VOCAB = ["".join(_RNG.choices(_LETTERS, k=_RNG.randint(2, 9))) for _ in range(3000)]


def _sentence(rng: random.Random, n_words: int) -> list[str]:
    return rng.sample(_VOCAB, n_words)


def _shingles(text: str, n: int = 5) -> set[str]:
    key = dedupe_key(text)
    return {key} if len(key) < n else {key[i : i + n] for i in range(len(key) - n + 1)}


def _jaccard(a: str, b: str) -> float:
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / len(x | y)


# --- exact ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Hello World", "  hello   WORLD\n"),
        ("tab\tand\nnewline", "TAB AND NEWLINE"),
        ("ﬁne ｆｕｌｌ\u00a0width", "fine full width"),  # NFKC: ligature, full width, nbsp
        ("Straße", "STRASSE"),  # case folding, not lower()
        ("soft\u00adhyphen zero\u200bwidth", "softhyphen zerowidth"),  # default-ignorables
        ("cafe\u0301", "café"),
    ],
)
def test_dedupe_key_equal(a: str, b: str) -> None:
    assert dedupe_key(a) == dedupe_key(b)


@pytest.mark.parametrize(("a", "b"), [("2.5", "25"), ("a - b", "a b"), ("Yes.", "Yes?")])
def test_dedupe_key_keeps_punctuation(a: str, b: str) -> None:
    assert dedupe_key(a) != dedupe_key(b)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_dedupe_key_is_idempotent(text: str) -> None:
    assert dedupe_key(dedupe_key(text)) == dedupe_key(text)


def test_exact_index() -> None:
    index = ExactIndex()
    assert index.add(dedupe_key("Same text"), 0) is None
    assert index.add(dedupe_key("other"), 1) is None
    assert index.find(dedupe_key("SAME   text ")) == 0
    assert index.add(dedupe_key("same text"), 2) == 0  # the first item, not recorded again
    assert index.find(dedupe_key("never added")) is None
    assert len(index) == 2


# --- near: signatures ----------------------------------------------------------------------


def _reference_signature(text: str, n: int = 5, num_perm: int = 64, seed: int = 1) -> np.ndarray:
    """datasketch's own MinHash fed the documented shingle hash, computed in plain Python."""

    def shingle_hash(codes: list[int]) -> int:
        h = 0
        for c in codes:
            h = (h * 0x9E3779B1 + c) % 2**32
        return h

    minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=lambda x: x, scheme="affine32")
    codes = [ord(c) for c in dedupe_key(text)]
    if codes:
        codes = [0x110000] * (n - len(codes)) + codes  # short keys: one padded shingle
        minhash.update_batch([shingle_hash(codes[i : i + n]) for i in range(len(codes) - n + 1)])
    return minhash.hashvalues


def test_signatures_match_datasketch() -> None:
    rng = random.Random(1)
    texts = ["", " ", "a", "abcd", "abcde", "Hello, World!", "é😀日本語", "surrogate \ud800 kept"]
    texts += [" ".join(_sentence(rng, rng.randint(1, 60))) for _ in range(40)]
    texts += ["".join(rng.choices("abc de", k=20_000))]  # longer than one vectorised step
    index = NearIndex()
    batch = index.signatures(texts)
    for text, sig in zip(texts, batch, strict=True):
        reference = _reference_signature(text)
        np.testing.assert_array_equal(sig, reference)
        single = index.signature(text)
        np.testing.assert_array_equal(reference if single is None else single, reference)
    assert index.signature(" \n ") is None


def test_band_layout_never_misses_an_accepted_pair() -> None:
    assert band_layout(0.85, 64) == (10, 6)
    for num_perm in (16, 32, 64, 128, 256):
        for threshold in (0.8, 0.85, 0.9, 0.95, 1.0):
            bands, rows = band_layout(threshold, num_perm)
            misses = num_perm - int(np.ceil(threshold * num_perm - 1e-9))
            assert bands * rows <= num_perm and rows >= 4
            assert bands > misses  # pigeonhole: some band has no differing value


# --- near: behaviour -----------------------------------------------------------------------


def test_one_word_changed_is_found_unrelated_is_not() -> None:
    rng = random.Random(2)
    words = _sentence(rng, 40)
    edited = list(words)
    edited[17] = "replaced"
    assert _jaccard(" ".join(words), " ".join(edited)) > 0.85
    index = NearIndex()
    assert index.add(" ".join(words), 10) is None
    assert index.add(" ".join(_sentence(rng, 40)), 11) is None  # unrelated
    assert index.add(" ".join(edited).upper(), 12) == 10
    assert len(index) == 2  # the duplicate is not kept


def test_threshold_is_respected() -> None:
    # Pairs whose true Jaccard (computed on the shingle sets) is well above or well below
    # 0.85; MinHash with 64 values estimates within ~0.1 of it with overwhelming odds.
    rng = random.Random(3)
    above: list[tuple[str, str]] = []
    below: list[tuple[str, str]] = []
    while len(above) < 20 or len(below) < 20:
        words = _sentence(rng, rng.randint(30, 80))
        edited = list(words)
        for _ in range(rng.randint(1, 12)):
            edited[rng.randrange(len(edited))] = rng.choice(_VOCAB)
        a, b = " ".join(words), " ".join(edited)
        j = _jaccard(a, b)
        if j >= 0.95 and len(above) < 20:
            above.append((a, b))
        elif j <= 0.7 and len(below) < 20:
            below.append((a, b))
    for pairs, expected in ((above, True), (below, False)):
        for a, b in pairs:
            index = NearIndex(threshold=0.85)
            index.add(a, 0)
            assert (index.query(b) == 0) is expected, _jaccard(a, b)


def test_returns_the_most_similar_kept_item() -> None:
    # a and b are both kept (their estimated similarity is below the threshold); the query
    # is above it with both and closer to b, so b wins over the earlier a
    words = _sentence(random.Random(4), 60)
    a = " ".join([f"qa{i}" for i in range(14)] + words[14:])
    b = " ".join([*words[:58], "qb1", "qb2"])
    query = " ".join(words)
    index = NearIndex(threshold=0.6)

    def estimate(x: str, y: str) -> float:
        return float(np.mean(index.signature(x) == index.signature(y)))

    assert estimate(a, b) < 0.6 <= estimate(a, query) < estimate(b, query)
    assert index.add(a, 0) is None and index.add(b, 1) is None
    assert index.query(query) == 1


def test_query_does_not_record() -> None:
    index = NearIndex()
    text = " ".join(_sentence(random.Random(5), 30))
    assert index.query(text) is None
    assert index.query(text) is None and len(index) == 0
    assert index.add(text, 7) is None
    assert index.query(text + " extra") == 7 and len(index) == 1


def test_short_and_empty_texts() -> None:
    index = NearIndex()
    assert index.add("ok", 0) is None
    assert index.add(" OK ", 1) == 0  # same key: one shingle, the same one
    assert index.add("ok!", 2) is None  # another short key is another shingle
    assert index.add("", 3) is None and index.add("  \n", 4) is None  # empty: never kept
    assert index.add("", 5) is None and len(index) == 2


def test_deterministic_and_seeded() -> None:
    rng = random.Random(6)
    texts = [" ".join(_sentence(rng, 25)) for _ in range(30)]
    texts += [t.replace(t.split()[3], "zz") for t in texts[:10]]
    first, second = NearIndex(), NearIndex()
    results = [first.add(t, i) for i, t in enumerate(texts)]
    assert results == [second.add(t, i) for i, t in enumerate(texts)]
    assert sum(r is not None for r in results) >= 8
    np.testing.assert_array_equal(first.signatures(texts), second.signatures(texts))
    assert not np.array_equal(first.signatures(texts), NearIndex(seed=2).signatures(texts))


def test_batched_paths_match_one_at_a_time() -> None:
    rng = random.Random(7)
    texts = [" ".join(_sentence(rng, rng.randint(0, 50))) for _ in range(300)]
    texts += [t + " tail" for t in texts[::7]] + ["", "ab"] + texts[:5]
    rng.shuffle(texts)
    items = list(range(100, 100 + len(texts)))
    one = NearIndex()
    expected = [one.add(t, i) for t, i in zip(texts, items, strict=True)]
    batched = NearIndex()
    assert batched.add_many(texts, items) == expected
    assert batched.query_many(texts) == [one.query(t) for t in texts]
    sigs = NearIndex().signatures(texts)
    by_signature = NearIndex()
    got = [by_signature.add_signature(s, i) for s, i in zip(sigs, items, strict=True)]
    assert got == expected and len(by_signature) == len(one)


def test_invalid_parameters() -> None:
    for kwargs in ({"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 1}, {"ngram": 0}):
        with pytest.raises(ValueError):
            NearIndex(**kwargs)
    with pytest.raises(ValueError):
        NearIndex().add_many(["a", "b"], [1])


# --- conflicting labels --------------------------------------------------------------------

_ROWS = [
    (0, "k1", "pos"), (1, "k1", "neg"), (2, "k1", "pos"),  # 2 pos : 1 neg
    (3, "k2", "pos"), (4, "k2", "pos"),  # agrees: no conflict
    (5, "k3", "a"), (6, "k3", "b"),  # 1 : 1 tie
    (7, "k4", "x"),
]  # fmt: skip


def test_find_conflicts() -> None:
    assert find_conflicts(_ROWS) == {
        "k1": {"pos": [0, 2], "neg": [1]},
        "k3": {"a": [5], "b": [6]},
    }
    assert find_conflicts([]) == {}


def test_resolve_conflicts_policies() -> None:
    conflicts = find_conflicts(_ROWS)
    dropped = resolve_conflicts(conflicts, "drop")
    assert dropped == dict.fromkeys([0, 1, 2, 5, 6], "conflicting labels")
    majority = resolve_conflicts(conflicts, "majority")
    assert sorted(majority) == [1, 5, 6]  # the minority row, and both rows of the tie
    assert "majority label 'pos'" in majority[1] and "no majority" in majority[5]
    assert resolve_conflicts(conflicts, "keep") == {}
    with pytest.raises(ValueError):
        resolve_conflicts(conflicts, "vote")  # type: ignore[arg-type]


def test_majority_needs_strictly_more_rows_than_any_other_label() -> None:
    conflicts = {"k": {"a": [0, 1], "b": [2], "c": [3]}, "t": {"a": [4, 5], "b": [6, 7], "c": [8]}}
    assert sorted(resolve_conflicts(conflicts, "majority")) == [2, 3, 4, 5, 6, 7, 8]
