"""Pre-tokenised splits cached on disk: a second run with the same data does no tokenisation.

The key covers everything that changes token ids: the prepared data's hash, the tokenizer
(its full serialisation, chat template and EOS), whether the chat template is used and the
maximum length. Entries are ``.npz`` files (ids concatenated + offsets) under
``$TUNELAB_CACHE/tokenized/``, written atomically.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.assets import cache_dir
from tunelab.data.tokenize import Encoded

__all__ = ["cached_encode", "tokenizer_fingerprint"]

VERSION = "1"  # bump when Encoded or the encoding rules change


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(tokenizer)).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    digest.update(str(tokenizer.eos_token).encode())
    return digest.hexdigest()[:16]


def cached_encode(
    splits: Mapping[str, Sequence[Any]],
    encode_one: Callable[[Any], Encoded],
    *,
    key_parts: Sequence[str],
    folder: Path | None = None,
) -> tuple[dict[str, list[Encoded]], bool]:
    """Encoded splits and whether they came from the cache."""
    key = hashlib.sha256("|".join([VERSION, *key_parts]).encode()).hexdigest()[:24]
    path = (folder or cache_dir("tokenized")) / f"{key}.npz"
    if path.is_file():
        try:
            return _load(path), True
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged entry is rebuilt
    encoded = {name: [encode_one(x) for x in items] for name, items in splits.items()}
    _save(path, encoded)
    return encoded, False


def _save(path: Path, encoded: dict[str, list[Encoded]]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, items in encoded.items():
        lengths = np.array([e.length for e in items], dtype=np.int64)
        arrays[f"{name}.ids"] = np.array([t for e in items for t in e.input_ids], dtype=np.int64)
        arrays[f"{name}.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays[f"{name}.prompt_len"] = np.array([e.prompt_len for e in items], dtype=np.int64)
        arrays[f"{name}.class_index"] = np.array([e.class_index for e in items], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stubs type kwargs as allow_pickle
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, list[Encoded]]:
    with np.load(path) as data:
        names = sorted({k.split(".")[0] for k in data.files})
        out: dict[str, list[Encoded]] = {}
        for name in names:
            ids, offsets = data[f"{name}.ids"].tolist(), data[f"{name}.offsets"].tolist()
            prompt_len = data[f"{name}.prompt_len"].tolist()
            class_index = data[f"{name}.class_index"].tolist()
            out[name] = [
                Encoded(ids[offsets[i] : offsets[i + 1]], prompt_len[i], class_index[i])
                for i in range(len(prompt_len))
            ]
    return out
