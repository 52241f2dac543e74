"""Exact and near duplicate detection, and inputs seen with conflicting labels.

- :func:`dedupe_key` is the text two rows must share to be exact duplicates;
  :class:`ExactIndex` remembers keys by a 16-byte digest.
- :class:`NearIndex` finds rows whose character 5-grams overlap with an earlier row's at a
  Jaccard similarity of 0.85 or more, estimated with MinHash and searched with LSH bands
  (Broder 1997, "On the resemblance and containment of documents"; Leskovec, Rajaraman and
  Ullman, *Mining of Massive Datasets*, ch. 3).
- :func:`find_conflicts` and :func:`resolve_conflicts` handle one input seen with
  different labels.

Everything here is deterministic: no salted ``hash()``, no clock, the same rows in the same
order give the same answers in every process.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
from datasketch import MinHash
from numpy.typing import NDArray

__all__ = [
    "ExactIndex",
    "NearIndex",
    "band_layout",
    "dedupe_key",
    "find_conflicts",
    "resolve_conflicts",
]

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): soft hyphen, zero-width
# spaces and joiners, bidi marks, variation selectors, tags. NFKC_Casefold drops them too.
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def dedupe_key(text: str) -> str:
    """The normalised text that exact duplicates share.

    Default-ignorable code points removed, NFKC (``ﬁ`` = ``fi``, full-width = ASCII, no-break
    space = space), case folded (``Straße`` = ``STRASSE``), NFKC again (case folding can
    leave a text that is not NFKC), every run of whitespace one space, stripped.

    Punctuation is kept: ``2.5`` and ``25``, ``a - b`` and ``a b``, ``Yes.`` and ``Yes?``
    are different examples to a model. Rows that differ only by a few marks are left to
    :class:`NearIndex`, which catches them once the text is long enough for the change
    to be a small share of its 5-grams.
    """
    if text.isascii():
        return " ".join(text.lower().split())
    text = _IGNORABLE.sub("", text)
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())


class ExactIndex:
    """Keys seen so far, each under a 16-byte BLAKE2b digest (about 130 bytes a key).

    Two different keys share a digest with probability about ``n**2 / 2**129`` for ``n``
    keys, which is never in practice.
    """

    def __init__(self) -> None:
        self._first: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._first)

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def add(self, key: str, item: int) -> int | None:
        """The item first added with ``key``, or None after recording ``item`` under it."""
        digest = self._digest(key)
        first = self._first.get(digest)
        if first is None:
            self._first[digest] = item
        return first

    def find(self, key: str) -> int | None:
        """The item first added with ``key``, or None; records nothing."""
        return self._first.get(self._digest(key))


# --- near duplicates -----------------------------------------------------------------------

_POLY_BASE = 0x9E3779B1  # odd: multiplying by it is a bijection mod 2**32
_PAD = 0x110000  # one past the last code point: pads short keys, never part of real text
_BAND_STEP = 0xD6E8FEB86659FD93  # odd multipliers i * step | 1 fold a band into a table key
# Windows per vectorised step. The (num_perm, windows) products go to one reused 2 MB
# buffer and the other temporaries stay under 128 kB: fresh arrays above that come from
# mmap, and their page faults cost more than the arithmetic.
_CHUNK_CHARS = 1 << 13
_MIN_BAND_ROWS = 4  # fewer rows per band lets unrelated texts (J ~ 0.1) collide often
_EMPTY = np.iinfo(np.uint32).max  # every value of an empty set's MinHash


def _fmix32(h: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """MurmurHash3's 32-bit finalizer, in place: the avalanche step datasketch's "affine32"
    scheme applies to every input hash before permuting it."""
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


def _is_empty(sig: NDArray[np.uint32]) -> bool:
    return bool((sig == _EMPTY).all())


def band_layout(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` of the LSH tables for this threshold and signature length.

    A pair is a candidate when all ``rows`` signature values of one band match. A pair that
    verification accepts differs in at most ``num_perm - ceil(threshold * num_perm)``
    values; with one band more than that, some band is untouched (pigeonhole), so LSH
    misses no pair that verification would accept, whatever the bucket hashing. That holds
    while bands keep at least 4 rows (thresholds from 0.77 with 64 values); below, bands are
    capped at ``num_perm // 4`` and a pair at similarity ``s`` becomes a candidate with
    probability ``1 - (1 - s**rows) ** bands`` (MMDS 3.4). 0.85 and 64 give 10 bands of 6.
    """
    allowed_misses = num_perm - math.ceil(threshold * num_perm - 1e-9)
    bands = max(1, min(allowed_misses + 1, num_perm // _MIN_BAND_ROWS))
    return bands, num_perm // bands


class NearIndex:
    """Near duplicates: MinHash over character n-grams of :func:`dedupe_key`, found by LSH.

    A text's *shingles* are the character ``ngram``-grams of its dedupe key (so case and
    spacing do not count). Two texts are near duplicates when the Jaccard similarity
    ``|A ∩ B| / |A ∪ B|`` of their shingle sets, estimated as the share of equal values
    among ``num_perm`` MinHash values (standard error ``sqrt(J(1-J)/num_perm)``, 0.04 at
    0.85), is at least ``threshold``. One word changed in a 40-word sentence gives 0.90-0.96;
    unrelated rows about 0.01, rows that share a long template 0.1-0.3. A key shorter than
    ``ngram`` is a single shingle, so it is only a near duplicate of the very same key; an
    empty key is nobody's near duplicate and is never kept.

    Character 5-grams rather than word n-grams: short rows (a one-line question) have too
    few words for word shingles to estimate anything, and 5-grams see a changed word as a
    few percent of the text. Of 5,000 synthetic rows with 1-3 words replaced, 56% stay at
    0.85 or above with character 5-grams, 40% with word 3-grams.

    Shingle hash (stable across processes and platforms, no salted ``hash()``): Horner's
    polynomial ``h = (...((c_0*B + c_1)*B + c_2)...)*B + c_{n-1} mod 2**32`` over the code
    points of the n-gram (a short key left-padded with 0x110000), ``B = 0x9E3779B1``. The
    signature is exactly datasketch's ``MinHash(num_perm, seed, scheme="affine32")`` fed
    these hashes (``fmix32``, then ``a*x + b mod 2**32``, minimum over the shingles),
    computed with NumPy for all shingles at once.

    LSH tables (:func:`band_layout`) give candidates; each is checked against its kept
    signature and the most similar one (the earliest kept on a tie) is the answer. Only
    kept items are indexed: 256 bytes of signature and 10 table entries, ~1.2 kB each.
    For many texts, :meth:`add_many` / :meth:`query_many`, or :meth:`signatures` with
    :meth:`add_signature` / :meth:`query_signature` when the decision per row must stay
    in a loop, hash a whole batch in one vectorised pass.
    """

    def __init__(
        self, threshold: float = 0.85, num_perm: int = 64, ngram: int = 5, seed: int = 1
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if num_perm < 2 or ngram < 1:
            raise ValueError(f"need num_perm >= 2 and ngram >= 1, got {num_perm}, {ngram}")
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self._a: NDArray[np.uint32] = np.asarray(a, dtype=np.uint32)
        self._b: NDArray[np.uint32] = np.asarray(b, dtype=np.uint32)
        self.bands, self.rows = band_layout(threshold, num_perm)
        self._min_equal = math.ceil(threshold * num_perm - 1e-9)
        self._band_mult = (np.arange(1, self.rows + 1, dtype=np.uint64) * _BAND_STEP) | 1
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._sigs: NDArray[np.uint32] = np.empty((1024, num_perm), dtype=np.uint32)
        self._items: list[int] = []
        self._work: NDArray[np.uint32] | None = None  # (num_perm * _CHUNK_CHARS,) scratch

    def __len__(self) -> int:
        """The number of kept items."""
        return len(self._items)

    # -- one text ----------------------------------------------------------------------------

    def add(self, text: str, item: int) -> int | None:
        """The earlier kept item ``text`` near-duplicates, or None after keeping ``item``."""
        sig = self.signature(text)
        return None if sig is None else self._add(sig, self._band_keys(sig[None, :])[0], item)

    def query(self, text: str) -> int | None:
        """The kept item ``text`` near-duplicates, or None; records nothing."""
        sig = self.signature(text)
        return None if sig is None else self._best(sig, self._band_keys(sig[None, :])[0])

    def signature(self, text: str) -> NDArray[np.uint32] | None:
        """The ``(num_perm,)`` MinHash signature of ``text``; None when its key is empty."""
        return self._key_signature(dedupe_key(text))

    def add_signature(self, sig: NDArray[np.uint32] | None, item: int) -> int | None:
        """:meth:`add` for a signature from :meth:`signature` or :meth:`signatures`."""
        if sig is None or _is_empty(sig):
            return None
        return self._add(sig, self._band_keys(sig[None, :])[0], item)

    def query_signature(self, sig: NDArray[np.uint32] | None) -> int | None:
        """:meth:`query` for a signature from :meth:`signature` or :meth:`signatures`."""
        if sig is None or _is_empty(sig):
            return None
        return self._best(sig, self._band_keys(sig[None, :])[0])

    # -- many texts --------------------------------------------------------------------------

    def add_many(self, texts: Sequence[str], items: Sequence[int]) -> list[int | None]:
        """:meth:`add` for each pair in order (a text can match one kept earlier in the same
        batch), with the hashing vectorised over the batch."""
        if len(texts) != len(items):
            raise ValueError(f"{len(texts)} texts but {len(items)} items")
        found: list[int | None] = []
        for start, sigs in self._signature_chunks(texts):
            empty = (sigs == _EMPTY).all(axis=1).tolist()
            for j, keys in enumerate(self._band_keys(sigs)):
                found.append(None if empty[j] else self._add(sigs[j], keys, items[start + j]))
        return found

    def query_many(self, texts: Sequence[str]) -> list[int | None]:
        """:meth:`query` for each text, with the hashing vectorised; records nothing."""
        found: list[int | None] = []
        for _, sigs in self._signature_chunks(texts):
            empty = (sigs == _EMPTY).all(axis=1).tolist()
            for j, keys in enumerate(self._band_keys(sigs)):
                found.append(None if empty[j] else self._best(sigs[j], keys))
        return found

    def signatures(self, texts: Sequence[str]) -> NDArray[np.uint32]:
        """``(len(texts), num_perm)`` signatures; an empty key's row is all ``2**32 - 1``
        (datasketch's empty MinHash), which :meth:`add_signature` never matches or keeps."""
        parts = [sigs for _, sigs in self._signature_chunks(texts)]
        return np.concatenate(parts) if parts else np.empty((0, self.num_perm), np.uint32)

    # -- hashing -----------------------------------------------------------------------------

    def _key_signature(self, key: str) -> NDArray[np.uint32] | None:
        if not key:
            return None
        codes = np.frombuffer(key.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if len(codes) < self.ngram:
            pad = np.full(self.ngram - len(codes), _PAD, dtype=np.uint32)
            codes = np.concatenate([pad, codes])
        hashes = self._shingle_hashes(codes)
        sig = self._permuted(hashes[:_CHUNK_CHARS]).min(axis=1)
        for start in range(_CHUNK_CHARS, len(hashes), _CHUNK_CHARS):  # very long texts
            part = self._permuted(hashes[start : start + _CHUNK_CHARS]).min(axis=1)
            np.minimum(sig, part, out=sig)
        return sig

    def _shingle_hashes(self, codes: NDArray[np.uint32]) -> NDArray[np.uint32]:
        """``fmix32`` of the polynomial hash of every ``ngram`` window: ``(len - n + 1,)``."""
        n = self.ngram
        m = len(codes) - n + 1
        h = codes[:m].copy()
        for i in range(1, n):
            h *= _POLY_BASE
            h += codes[i : i + m]
        return _fmix32(h)

    def _permuted(self, hashes: NDArray[np.uint32]) -> NDArray[np.uint32]:
        """``a*x + b mod 2**32`` for every permutation and hash, ``(num_perm, W)``, in the
        scratch buffer (valid until the next call); ``W <= _CHUNK_CHARS``."""
        if self._work is None:
            self._work = np.empty(self.num_perm * _CHUNK_CHARS, dtype=np.uint32)
        out = self._work[: self.num_perm * len(hashes)].reshape(self.num_perm, len(hashes))
        np.multiply(self._a[:, None], hashes[None, :], out=out)
        out += self._b[:, None]
        return out

    def _signature_chunks(self, texts: Sequence[str]) -> Iterator[tuple[int, NDArray[np.uint32]]]:
        """``(offset, signatures)`` for runs of texts of at most _CHUNK_CHARS key characters
        (or one longer text), so temporaries stay bounded."""
        keys: list[str] = []
        size = start = 0
        for text in texts:
            key = dedupe_key(text)
            if keys and size + len(key) > _CHUNK_CHARS:
                yield start, self._signature_block(keys)
                start, keys, size = start + len(keys), [], 0
            keys.append(key)
            size += len(key)
        if keys:
            yield start, self._signature_block(keys)

    def _signature_block(self, keys: list[str]) -> NDArray[np.uint32]:
        """Signatures of several keys: their code points joined, every window hashed in
        one pass, the windows that straddle two keys dropped, a minimum per key."""
        if len(keys) == 1:  # maybe one very long text: the sliced path bounds memory
            sig = self._key_signature(keys[0])
            return np.full((1, self.num_perm), _EMPTY, np.uint32) if sig is None else sig[None]
        n = self.ngram
        lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
        codes = np.frombuffer("".join(keys).encode("utf-32-le", "surrogatepass"), np.uint32)
        short = (lengths > 0) & (lengths < n)
        if short.any():  # left-pad short keys to one n-gram
            starts = np.cumsum(lengths) - lengths
            codes = np.insert(codes, np.repeat(starts[short], n - lengths[short]), _PAD)
            lengths[short] = n
        windows = np.maximum(lengths - n + 1, 0)
        sigs = np.full((len(keys), self.num_perm), _EMPTY, dtype=np.uint32)
        has = windows > 0
        if not has.any():
            return sigs
        first = np.cumsum(windows) - windows  # each key's first window among the kept ones
        starts = np.cumsum(lengths) - lengths
        index = np.arange(int(windows.sum())) + np.repeat(starts - first, windows)
        permuted = self._permuted(self._shingle_hashes(codes)[index])  # (P, W)
        sigs[has] = np.minimum.reduceat(permuted, first[has], axis=1).T
        return sigs

    # -- LSH ---------------------------------------------------------------------------------

    def _band_keys(self, sigs: NDArray[np.uint32]) -> list[list[int]]:
        """One 64-bit table key per band, ``sum(value_i * mult_i) mod 2**64``: ``(N, bands)``.

        Two different bands may share a key; that only adds a candidate, which verification
        rejects, so answers never depend on these keys beyond the pigeonhole guarantee.
        """
        used = sigs[:, : self.bands * self.rows].reshape(len(sigs), self.bands, self.rows)
        keys: list[list[int]] = (used.astype(np.uint64) @ self._band_mult).tolist()
        return keys

    def _add(self, sig: NDArray[np.uint32], keys: list[int], item: int) -> int | None:
        first = self._best(sig, keys)
        if first is None:
            self._keep(sig, keys, item)
        return first

    def _best(self, sig: NDArray[np.uint32], keys: list[int]) -> int | None:
        candidates: list[int] = []
        for table, key in zip(self._tables, keys, strict=True):
            slots = table.get(key)
            if slots is None:
                continue
            if isinstance(slots, int):
                candidates.append(slots)
            else:
                candidates.extend(slots)
        if not candidates:
            return None
        if len(candidates) > 1:
            candidates = sorted(set(candidates))
        equal = np.count_nonzero(self._sigs[candidates] == sig, axis=1)
        best = int(np.argmax(equal))  # the first maximum: the earliest kept item on a tie
        return self._items[candidates[best]] if equal[best] >= self._min_equal else None

    def _keep(self, sig: NDArray[np.uint32], keys: list[int], item: int) -> None:
        slot = len(self._items)
        if slot == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[slot] = sig
        self._items.append(item)
        for table, key in zip(self._tables, keys, strict=True):
            slots = table.get(key)
            if slots is None:
                table[key] = slot
            elif isinstance(slots, int):
                table[key] = [slots, slot]
            else:
                slots.append(slot)


# --- conflicting labels --------------------------------------------------------------------


def find_conflicts(items: Iterable[tuple[int, str, str]]) -> dict[str, dict[str, list[int]]]:
    """``{key: {label: [item ids]}}`` for the keys seen with two or more distinct labels.

    ``items`` are ``(item id, dedupe key of the input, label)``; keys, labels and ids keep
    the order they are first seen in.
    """
    by_key: dict[str, dict[str, list[int]]] = {}
    for item, key, label in items:
        by_key.setdefault(key, {}).setdefault(label, []).append(item)
    return {key: labels for key, labels in by_key.items() if len(labels) >= 2}


def resolve_conflicts(
    conflicts: dict[str, dict[str, list[int]]], policy: Literal["drop", "majority", "keep"]
) -> dict[int, str]:
    """``{item id: reason}`` for the rows to remove under ``policy``.

    - ``drop``: every row of a conflicting input;
    - ``majority``: the rows whose label is not the input's majority label, the label with
      strictly more rows than any other (3 ``pos`` and 2 ``neg``: the ``neg`` rows go); a
      tie for the most rows drops every row of that input;
    - ``keep``: none; the conflicts are only reported.
    """
    if policy not in ("drop", "majority", "keep"):
        raise ValueError(f"unknown conflict policy {policy!r}; use drop, majority or keep")
    removed: dict[int, str] = {}
    if policy == "keep":
        return removed
    for by_label in conflicts.values():
        ranked = Counter({label: len(ids) for label, ids in by_label.items()}).most_common()
        if len(ranked) < 2:
            continue
        (top, n_top), (_, n_second) = ranked[:2]
        if policy == "majority" and n_top > n_second:
            minority = f"conflicting labels: not the majority label {top!r}"
            for label, ids in by_label.items():
                if label != top:
                    removed.update(dict.fromkeys(ids, minority))
            continue
        reason = "conflicting labels" if policy == "drop" else "conflicting labels, no majority"
        for ids in by_label.values():
            removed.update(dict.fromkeys(ids, reason))
    return removed
