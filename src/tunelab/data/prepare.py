"""The data stage: from raw files to clean, anonymised, leak-free splits and a data card.

``prepare(spec, folder, tokenizer)`` runs, for each task, the streaming stages of
:mod:`tunelab.data.ingest` (read, validate, clean, anonymise, length filter, exact and
near dedupe), then on the kept rows: conflicting labels → ``max_rows`` sample → split →
leakage check → split caps → training mixture → render with the templates. It writes to
``folder``: ``train/val/test.jsonl``, ``rejected.jsonl`` (every dropped row with its
file, line, stage and reason), ``prepared.json``, ``data_card.json`` and
``data_card.md``; :func:`read_prepared` loads them back (a resumed run reuses the same
split).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.data.card import balance_warnings, card_markdown, length_summary
from tunelab.data.dedupe import ExactIndex, NearIndex, dedupe_key, find_conflicts
from tunelab.data.dedupe import resolve_conflicts as conflict_removals
from tunelab.data.ingest import (
    CleanSpec,
    Ingested,
    Kept,
    RejectLog,
    Spill,
    TaskSpec,
    content_text,
    ingest_task,
)
from tunelab.data.mixture import mixture_shares, mixture_sizes, sample_rows
from tunelab.data.recipes import RECIPES, Recipe
from tunelab.data.split import sample, split_groups, split_records
from tunelab.data.templates import render
from tunelab.data.types import Example, Format, Rejected
from tunelab.errors import DataError

__all__ = [
    "SPLITS",
    "AnonymizeSpec",
    "DataSpec",
    "Prepared",
    "SplitSpec",
    "prepare",
    "read_prepared",
]

SPLITS = ("train", "val", "test")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "dev": "val", "test": "test", "testing": "test"}  # fmt: skip


@dataclass(frozen=True)
class SplitSpec:
    method: str = "auto"  # auto | random | stratified | group | column
    val: float = 0.1
    test: float = 0.1
    group_by: str | None = None
    column: str | None = None
    seed: int = 0
    leakage: str = "near"  # near | exact | off


@dataclass(frozen=True)
class AnonymizeSpec:
    policy: str = "redact"
    types: tuple[str, ...] | None = None
    name_model: str | None = None


@dataclass(frozen=True)
class DataSpec:
    """The plain values the data stage needs (built from ``config.data``)."""

    tasks: tuple[TaskSpec, ...]
    clean: CleanSpec = field(default_factory=CleanSpec)
    anonymize: AnonymizeSpec | None = field(default_factory=AnonymizeSpec)
    split: SplitSpec = field(default_factory=SplitSpec)
    validation: str = "lenient"
    max_rejected: float = 0.1
    caps: Mapping[str, int | None] = field(default_factory=dict)  # split -> max rows
    mixing: str = "weights"
    temperature: float = 1.0

    @classmethod
    def single(cls, source: str | list[str], **kwargs: Any) -> DataSpec:
        """One task called ``data``: task fields and DataSpec fields in one call."""
        task_keys = {f.name for f in fields(TaskSpec)}
        task = TaskSpec(name="data", source=source,
                        **{k: v for k, v in kwargs.items() if k in task_keys})  # fmt: skip
        return cls(tasks=(task,), **{k: v for k, v in kwargs.items() if k not in task_keys})


@dataclass
class Prepared:
    """What :func:`prepare` wrote. The splits are read from ``folder`` on first use, so
    preparing a large file never holds it in memory."""

    format: str  # a Format, or "mixed" for tasks of different formats
    labels: list[str] | None  # canonical labels (one classification task only)
    label_words: dict[str, str]  # label -> what the model says
    card: dict[str, Any]
    folder: Path
    _splits: dict[str, list[Example]] | None = field(default=None, repr=False)

    @property
    def splits(self) -> dict[str, list[Example]]:
        if self._splits is None:
            self._splits = _read_splits(self.folder)
        return self._splits

    @property
    def words(self) -> list[str] | None:
        return None if self.labels is None else [self.label_words[x] for x in self.labels]

    @property
    def hash(self) -> str:
        return str(self.card["hash"])


@dataclass
class _Task:
    """One task between the streaming stages and the writer."""

    ingested: Ingested
    labels: list[str] | None
    label_words: dict[str, str]
    parts: dict[str, list[Kept]]
    leakage: Counter[str] = field(default_factory=Counter)


def prepare(spec: DataSpec, folder: Path, tokenizer: Any = None) -> Prepared:
    """Prepare ``spec`` into ``folder`` and return what was written (see the module doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prepared.json").unlink(missing_ok=True)  # only a finished stage has one
    log = RejectLog(folder / "rejected.jsonl")
    spill = Spill(folder / ".kept.spill")
    timings: dict[str, float] = {}
    try:
        clock = time.perf_counter()
        anonymizer, pii_note = _anonymizer(spec.anonymize, spec.split.seed)
        tasks = []
        for task in spec.tasks:
            ingested = ingest_task(
                task, spec.clean, anonymize=anonymizer, tokenizer=tokenizer,
                group_column=_group_column(spec.split), log=log, spill=spill,
                strict=spec.validation == "strict", max_rejected=spec.max_rejected,
            )  # fmt: skip
            tasks.append(_post_ingest(ingested, spec, spill, log))
        timings["ingest_clean_dedupe"] = time.perf_counter() - clock
        clock = time.perf_counter()
        # dedupe over all rows before the split already removed every near duplicate the
        # same MinHash index can find, so the near check would find nothing new
        covered = spec.clean.dedupe and spec.clean.near_threshold is not None
        leakage = "exact" if spec.split.leakage == "near" and covered else spec.split.leakage
        for t in tasks:
            _remove_leakage(t, leakage, spec.clean.near_threshold, spill, log)
        timings["leakage"] = time.perf_counter() - clock
        clock = time.perf_counter()
        chosen, repeated = _final_splits(tasks, spec, log)
        card = _write(folder, spec, tasks, chosen, spill, leakage)
        timings["render_write"] = time.perf_counter() - clock
    finally:
        spill.close()
        log.close()
    card.update(
        repeated_in_mixture=repeated, timings_s={k: round(v, 2) for k, v in timings.items()}
    )
    found = sum((t.ingested.pii for t in tasks), Counter())
    policy = spec.anonymize.policy if spec.anonymize else None
    card["pii"] = None if anonymizer is None else {"policy": policy, "found": dict(found),
                                                   "note": pii_note}  # fmt: skip
    _finish_card(card, tasks, chosen)
    (folder / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False))
    (folder / "data_card.md").write_text(card_markdown(card))
    meta = {"format": card["format"], "labels": card.get("labels"),
            "label_words": card.get("label_words", {})}  # fmt: skip
    (folder / "prepared.json").write_text(json.dumps(meta, indent=2))
    return read_prepared(folder)


def _anonymizer(spec: AnonymizeSpec | None, seed: int) -> tuple[Any, str]:
    if spec is None:
        return None, "not scanned"
    from tunelab.data.pii import Anonymizer, PiiDetector

    detector = PiiDetector(types=spec.types, name_model=spec.name_model)
    return Anonymizer(detector, spec.policy, seed=seed), detector.note  # type: ignore[arg-type]


def _group_column(split: SplitSpec) -> str | None:
    if split.method == "group":
        return split.group_by
    return split.column if split.method == "column" else None


def _drop(log: RejectLog, t: Ingested, kept: Kept, stage: str, reason: str, msg: str) -> None:
    log.write(t.task.name, stage, Rejected(kept.file, kept.line, reason, msg))
    t.dropped[(stage, reason)] += 1


def _post_ingest(ing: Ingested, spec: DataSpec, spill: Spill, log: RejectLog) -> _Task:
    """Labels, conflicting labels, the ``max_rows`` sample and the split of one task."""
    task = ing.task
    labels, label_words = _labels(ing)
    kept = ing.kept
    if ing.format == "classification":
        conflicts = find_conflicts((i, k.input_key or "", k.label or "") for i, k in
                                   enumerate(kept))  # fmt: skip
        removals = conflict_removals(conflicts, spec.clean.conflicts)  # type: ignore[arg-type]
        by_key = {i: sorted(by_label) for by_label in conflicts.values() for ids in
                  by_label.values() for i in ids}  # fmt: skip
        for i in sorted(removals):
            _drop(log, ing, kept[i], "dedupe", "conflicting labels",
                  f"the same input also has label(s) {by_key.get(i, [])}")  # fmt: skip
        kept = [k for i, k in enumerate(kept) if i not in removals]
    if task.max_rows is not None and len(kept) > task.max_rows:
        chosen = sample(range(len(kept)), task.max_rows, spec.split.seed)
        chosen_set = set(chosen)
        for i, k in enumerate(kept):
            if i not in chosen_set:
                _drop(log, ing, k, "sampling", "max_rows", f"not in the max_rows={task.max_rows}"
                      " sample")  # fmt: skip
        kept = [kept[i] for i in chosen]
    if not kept:
        raise DataError(
            f"task '{task.name}' has no rows left after validation, cleaning and dedupe",
            hint="see data/rejected.jsonl for why each row was dropped",
        )
    return _Task(ing, labels, label_words, _split(kept, ing.format, spec.split, task.name))


def _labels(ing: Ingested) -> tuple[list[str] | None, dict[str, str]]:
    recipe = _recipe(ing.task)
    label_words = dict(recipe.default_label_words) if recipe else {}
    label_words.update(ing.task.label_words)
    if ing.format != "classification":
        return None, label_words
    labels = list(ing.task.labels) if ing.task.labels else sorted(ing.labels_seen)
    label_words = {x: label_words.get(x, x) for x in labels}
    if len(set(label_words.values())) != len(labels):
        raise DataError(f"two labels share a label word: {label_words}",
                        hint="fix data.label_words")  # fmt: skip
    return labels, label_words


def _split(kept: list[Kept], fmt: Format, split: SplitSpec, task: str) -> dict[str, list[Kept]]:
    method = split.method
    if method == "auto":
        method = "stratified" if fmt == "classification" else "random"
    if method == "column":
        parts: dict[str, list[Kept]] = {name: [] for name in SPLITS}
        for k in kept:
            name = _SPLIT_NAMES.get(str(k.group).strip().lower())
            if name is None:
                raise DataError(
                    f"split column '{split.column}' has the value {k.group!r}",
                    file=k.file, line=k.line, field=split.column,
                    hint=f"use one of: {', '.join(sorted(_SPLIT_NAMES))}",
                )  # fmt: skip
            parts[name].append(k)
        return parts
    if method == "group":
        cut = split_groups(kept, val=split.val, test=split.test, seed=split.seed,
                           group=lambda k: str(k.group))  # fmt: skip
    else:
        key = (
            (lambda k: str(k.label)) if method == "stratified" and fmt == "classification" else None
        )
        cut = split_records(kept, val=split.val, test=split.test, seed=split.seed, key=key)
    if not cut[0]:
        raise DataError(f"task '{task}' has no training rows after splitting",
                        hint="add data or lower data.split.val / data.split.test")  # fmt: skip
    return dict(zip(SPLITS, cut, strict=True))


def _remove_leakage(
    t: _Task, mode: str, threshold: float | None, spill: Spill, log: RejectLog
) -> None:
    """Drop val rows that duplicate a train row, and test rows that duplicate either."""
    if mode == "off":
        return
    exact = ExactIndex()
    near = NearIndex(threshold=threshold or 0.85) if mode == "near" else None
    for name in SPLITS:
        survivors = []
        for i, k in enumerate(t.parts[name]):
            text = content_text(spill.read(k.offset))
            key = dedupe_key(text)
            if name != "train":
                first = exact.find(key)
                kind = "exact"
                if first is None and near is not None:
                    first, kind = near.query(text), "near"
                if first is not None:
                    t.leakage[kind] += 1
                    _drop(log, t.ingested, k, "leakage", f"{kind} duplicate across splits",
                          f"{name} row repeats a row of an earlier split")  # fmt: skip
                    continue
            exact.add(key, i)
            if near is not None:
                near.add(text, i)
            survivors.append(k)
        t.parts[name] = survivors


def _final_splits(
    tasks: list[_Task], spec: DataSpec, log: RejectLog
) -> tuple[dict[str, list[tuple[int, Kept]]], int]:
    """Split caps, then the training mixture: ``{split: [(task index, row)]}`` and repeats."""
    seed = spec.split.seed
    chosen: dict[str, list[tuple[int, Kept]]] = {}
    for name in ("val", "test"):
        rows = [(i, k) for i, t in enumerate(tasks) for k in t.parts[name]]
        chosen[name] = _capped(rows, spec.caps.get(name), seed, tasks, log)
    train = {i: t.parts["train"] for i, t in enumerate(tasks)}
    if len(tasks) == 1:
        chosen["train"] = _capped([(0, k) for k in train[0]], spec.caps.get("train"), seed,
                                  tasks, log)  # fmt: skip
        return chosen, 0
    sizes = {str(i): len(rows) for i, rows in train.items()}
    weights = {str(i): t.ingested.task.weight for i, t in enumerate(tasks)}
    shares = mixture_shares(sizes, weights, spec.mixing, spec.temperature)  # type: ignore[arg-type]
    total = sum(sizes.values())
    cap = spec.caps.get("train")
    targets = mixture_sizes(shares, total if cap is None else min(total, cap))
    mixed: list[tuple[int, Kept]] = []
    repeated = 0
    for i, task_rows in train.items():
        picked = sample_rows(task_rows, targets[str(i)], seed + i)
        distinct = {id(k) for k in picked}
        repeated += len(picked) - len(distinct)
        for k in task_rows:
            if id(k) not in distinct:
                _drop(
                    log,
                    tasks[i].ingested,
                    k,
                    "mixture",
                    "not sampled into the mixture",
                    f"task share {shares[str(i)]:.3f} of {sum(targets.values())} rows",
                )
        mixed.extend((i, k) for k in picked)
    order = np.random.default_rng(seed).permutation(len(mixed))
    chosen["train"] = [mixed[j] for j in order]
    return chosen, repeated


def _capped(
    rows: list[tuple[int, Kept]], cap: int | None, seed: int, tasks: list[_Task], log: RejectLog
) -> list[tuple[int, Kept]]:
    if cap is None or len(rows) <= cap:
        return rows
    kept = sample(rows, cap, seed)
    ids = {id(k) for _, k in kept}
    for i, k in rows:
        if id(k) not in ids:
            _drop(log, tasks[i].ingested, k, "sampling", "split cap", f"over the cap of {cap}")
    return kept


def _write(
    folder: Path,
    spec: DataSpec,
    tasks: list[_Task],
    chosen: dict[str, list[tuple[int, Kept]]],
    spill: Spill,
    leakage: str,
) -> dict[str, Any]:
    """Render and write the splits; the card's hash covers exactly what is written."""
    digest = hashlib.sha256()
    used: dict[str, Counter[str]] = {t.ingested.task.name: Counter() for t in tasks}
    rngs = [np.random.default_rng([spec.split.seed, i]) for i in range(len(tasks))]
    words = [[t.label_words[x] for x in t.labels or []] for t in tasks]
    for name in SPLITS:
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for i, k in chosen[name]:
                t = tasks[i]
                task = t.ingested.task
                templates = task.templates or (None,)
                template = templates[int(rngs[i].integers(len(templates)))]
                ex = render(
                    spill.read(k.offset),
                    template,
                    labels=words[i],
                    label_words=t.label_words,
                    system_prompt=task.system_prompt,
                )
                used[task.name][template or _default_template(t)] += 1
                row = {"messages": list(ex.messages), "response": ex.response,
                       "label": ex.label, "origin": ex.origin, "raw": ex.raw}  # fmt: skip
                if len(tasks) > 1:
                    row["task"] = task.name
                digest.update(json.dumps([name, row]).encode())
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    formats = sorted({t.ingested.format for t in tasks})
    single = tasks[0] if len(tasks) == 1 else None
    card: dict[str, Any] = {
        "format": formats[0] if len(formats) == 1 else "mixed",
        "format_note": "; ".join(t.ingested.note for t in tasks),
        "split_method": _method_note(spec.split, tasks, leakage),
        "templates": {name: dict(c) for name, c in used.items()},
        "template": next(iter(tasks[0].ingested.task.templates), None)
        or _default_template(tasks[0]),
        "hash": digest.hexdigest()[:16],
    }
    if single is not None and single.labels is not None:
        card["labels"] = single.labels
        card["label_words"] = single.label_words
    return card


def _recipe(task: TaskSpec) -> Recipe | None:
    return RECIPES.get(task.source) if isinstance(task.source, str) else None


def _default_template(t: _Task) -> str:
    recipe = _recipe(t.ingested.task)
    if recipe and recipe.default_template:
        return recipe.default_template
    return f"default for {t.ingested.format}"


def _method_note(split: SplitSpec, tasks: list[_Task], leakage: str) -> str:
    method = split.method
    if method == "auto":
        fmt = tasks[0].ingested.format
        method = "stratified" if fmt == "classification" else "random"
    detail = {"group": f" by '{split.group_by}'", "column": f" from '{split.column}'"}
    return (
        f"{method}{detail.get(method, '')}, val {split.val:g}, test {split.test:g}, "
        f"seed {split.seed}, leakage check: {leakage}"
        + (
            " (near duplicates were removed by dedupe before the split)"
            if leakage != split.leakage
            else ""
        )
    )


def _finish_card(
    card: dict[str, Any], tasks: list[_Task], chosen: dict[str, list[tuple[int, Kept]]]
) -> None:
    per_task: dict[str, Any] = {}
    for i, t in enumerate(tasks):
        ing = t.ingested
        counts = {name: len({id(k) for j, k in chosen[name] if j == i}) for name in SPLITS}
        per_task[ing.task.name] = {
            "format": ing.format,
            "rows_in": ing.rows_in,
            "kept": sum(counts.values()),
            "dropped": {
                f"{stage}: {reason}": n for (stage, reason), n in sorted(ing.dropped.items())
            },
            "recipe_dropped": ing.recipe_dropped,
            "after_stage": _funnel(ing.rows_in, ing.dropped),
            "splits": counts,
            "leakage_removed": dict(t.leakage),
        }
    card["tasks"] = per_task
    card["rows_in"] = sum(t["rows_in"] for t in per_task.values())
    card["rows_kept"] = sum(t["kept"] for t in per_task.values())
    card["splits"] = {name: len(chosen[name]) for name in SPLITS}
    card["token_lengths"] = {name: length_summary(k.tokens for _, k in chosen[name])
                             for name in SPLITS}  # fmt: skip
    card["warnings"] = []
    if "labels" in card:
        card["label_balance"] = {name: dict(Counter(str(k.label) for _, k in chosen[name]))
                                 for name in SPLITS}  # fmt: skip
        card["warnings"] += balance_warnings(card["label_balance"])
    for name in ("val", "test"):
        if not chosen[name]:
            card["warnings"].append(f"the {name} split is empty")


_STAGES = ("validation", "cleaning", "dedupe", "sampling", "leakage", "mixture")


def _funnel(rows_in: int, dropped: Counter[tuple[str, str]]) -> dict[str, int]:
    """Rows left after each stage, in pipeline order (the last one is the rows kept)."""
    left, funnel = rows_in, {"read": rows_in}
    for stage in _STAGES:
        left -= sum(n for (name, _), n in dropped.items() if name == stage)
        funnel[stage] = left
    return funnel


def read_prepared(folder: Path) -> Prepared:
    """What :func:`prepare` wrote (a resumed run reuses the exact same split)."""
    try:
        meta = json.loads((folder / "prepared.json").read_text())
        card = json.loads((folder / "data_card.json").read_text())
        missing = [name for name in SPLITS if not (folder / f"{name}.jsonl").is_file()]
        if missing:
            raise OSError(f"no {', '.join(missing)} split file")
        return Prepared(meta["format"], meta["labels"], meta["label_words"], card, folder)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"prepared data in {folder} is unreadable: {exc}") from exc


def _read_splits(folder: Path) -> dict[str, list[Example]]:
    splits = {}
    try:
        for name in SPLITS:
            # split on "\n" only: str.splitlines also splits on U+2028 etc. inside JSON strings
            lines = (folder / f"{name}.jsonl").read_text(encoding="utf-8").split("\n")
            splits[name] = [_example(json.loads(line)) for line in lines if line.strip()]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"prepared data in {folder} is unreadable: {exc}") from exc
    return splits


def _example(row: dict[str, Any]) -> Example:
    return Example(
        messages=tuple(row["messages"]),
        response=row["response"],
        label=row["label"],
        origin=row["origin"],
        raw=row["raw"],
    )
