"""The data stage: load → render with the template → split → cap, plus a data card.

``prepare`` is pure apart from reading the source files; ``write_prepared`` and
``read_prepared`` are the I/O edges (``<run>/data/``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.recipes import RECIPES, load_records
from tunelab.data.split import sample, split_records
from tunelab.data.templates import render
from tunelab.data.types import Example, Format
from tunelab.errors import DataError

__all__ = ["DataSpec", "Prepared", "prepare", "read_prepared", "write_prepared"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataSpec:
    """The plain values the data stage needs (built from ``config.data``)."""

    source: str | list[str]
    format: str = "auto"
    columns: Mapping[str, str] = field(default_factory=dict)
    labels: Sequence[str] | None = None
    label_words: Mapping[str, str] = field(default_factory=dict)
    template: str | None = None
    system_prompt: str | None = None
    max_rows: int | None = None
    caps: Mapping[str, int | None] = field(default_factory=dict)  # split -> max rows
    val: float = 0.1
    test: float = 0.1
    stratify: bool = True
    seed: int = 0


@dataclass
class Prepared:
    format: Format
    labels: list[str] | None  # canonical labels (classification only)
    label_words: dict[str, str]  # label -> what the model says
    splits: dict[str, list[Example]]
    card: dict[str, Any]

    @property
    def words(self) -> list[str] | None:
        return None if self.labels is None else [self.label_words[x] for x in self.labels]

    @property
    def hash(self) -> str:
        return str(self.card["hash"])


def prepare(spec: DataSpec) -> Prepared:
    records, fmt, note = load_records(spec.source, spec.format, dict(spec.columns))
    n_loaded = len(records)
    if spec.max_rows is not None and len(records) > spec.max_rows:
        records = sample(records, spec.max_rows, spec.seed)
    recipe = RECIPES.get(spec.source) if isinstance(spec.source, str) else None
    template = spec.template or (recipe.default_template if recipe else None)
    label_words = dict(recipe.default_label_words) if recipe else {}
    label_words.update(spec.label_words)

    labels: list[str] | None = None
    if fmt == "classification":
        seen = sorted({str(r.label) for r in records})
        labels = list(spec.labels) if spec.labels else seen
        unknown = sorted(set(seen) - set(labels))
        if unknown:
            raise DataError(
                f"labels {unknown} occur in the data but not in data.labels {labels}",
                field="label",
                hint="add them to data.labels or remove those rows",
            )
        label_words = {x: label_words.get(x, x) for x in labels}
        if len(set(label_words.values())) != len(labels):
            raise DataError(
                f"two labels share a label word: {label_words}", hint="fix data.label_words"
            )

    words = [label_words[x] for x in labels] if labels else []
    key = (lambda r: str(r.label)) if (labels and spec.stratify) else None
    parts = split_records(records, val=spec.val, test=spec.test, seed=spec.seed, key=key)
    splits: dict[str, list[Example]] = {}
    capped: dict[str, int] = {}
    for name, part in zip(SPLITS, parts, strict=True):
        cap = spec.caps.get(name)
        if cap is not None and len(part) > cap:
            capped[name] = len(part) - cap
            part = sample(part, cap, spec.seed)
        splits[name] = [
            render(
                r,
                template,
                labels=words,
                label_words=label_words,
                system_prompt=spec.system_prompt,
            )
            for r in part
        ]
    if not splits["train"]:
        raise DataError("no training rows after splitting", hint="add data or lower split sizes")
    card = _card(note, fmt, n_loaded, len(records), splits, labels, label_words, template, capped)
    return Prepared(fmt, labels, label_words, splits, card)


def _card(
    note: str,
    fmt: Format,
    loaded: int,
    used: int,
    splits: dict[str, list[Example]],
    labels: list[str] | None,
    label_words: dict[str, str],
    template: str | None,
    capped: dict[str, int],
) -> dict[str, Any]:
    digest = hashlib.sha256()
    for name in SPLITS:
        for ex in splits[name]:
            digest.update(json.dumps([name, ex.messages, ex.response, ex.label]).encode())
    card: dict[str, Any] = {
        "format": fmt,
        "format_note": note,
        "rows_loaded": loaded,
        "rows_used": used,
        "dropped_by_max_rows": loaded - used,
        "dropped_by_split_caps": capped,
        "splits": {name: len(splits[name]) for name in SPLITS},
        "template": template or f"default for {fmt}",
        "hash": digest.hexdigest()[:16],
    }
    if labels is not None:
        card["labels"] = labels
        card["label_words"] = label_words
        card["label_balance"] = {
            name: dict(Counter(str(ex.label) for ex in splits[name])) for name in SPLITS
        }
    return card


def write_prepared(prep: Prepared, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for ex in prep.splits[name]:
                row = {"messages": list(ex.messages), "response": ex.response,
                       "label": ex.label, "origin": ex.origin, "raw": ex.raw}  # fmt: skip
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    meta = {"format": prep.format, "labels": prep.labels, "label_words": prep.label_words}
    (folder / "prepared.json").write_text(json.dumps(meta, indent=2))
    (folder / "data_card.json").write_text(json.dumps(prep.card, indent=2, ensure_ascii=False))


def read_prepared(folder: Path) -> Prepared:
    """Load what :func:`write_prepared` wrote (a resumed run reuses the exact same split)."""
    try:
        meta = json.loads((folder / "prepared.json").read_text())
        card = json.loads((folder / "data_card.json").read_text())
        splits = {}
        for name in SPLITS:
            # split on "\n" only: str.splitlines also splits on U+2028 etc. inside JSON strings
            lines = (folder / f"{name}.jsonl").read_text(encoding="utf-8").split("\n")
            splits[name] = [_example(json.loads(line)) for line in lines if line.strip()]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"prepared data in {folder} is unreadable: {exc}") from exc
    return Prepared(meta["format"], meta["labels"], meta["label_words"], splits, card)


def _example(row: dict[str, Any]) -> Example:
    return Example(
        messages=tuple(row["messages"]),
        response=row["response"],
        label=row["label"],
        origin=row["origin"],
        raw=row["raw"],
    )
