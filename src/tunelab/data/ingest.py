"""The streaming half of data preparation: one task's rows, read once, in bounded memory.

Each row goes read → normalised to a :class:`Record` → cleaned → anonymised → measured
in tokens → length filter → exact and near dedupe, in chunks of :data:`CHUNK` rows (the
tokenizer runs once per chunk). A row that survives is written to a *spill* file and
only a small :class:`Kept` entry (offset, label, group, tokens) stays in memory; a row
that does not is written at once to ``rejected.jsonl`` with its file, line, stage and
reason. So memory follows the number of rows kept, not the bytes read, and nothing is
dropped silently.

Stages of a dropped row: ``validation`` (the row is malformed: bad JSON, a missing column,
an empty label...), ``cleaning`` (empty after cleaning, too short or too long) and
``dedupe`` (exact or near duplicate of an earlier row, which it names).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from tunelab.data.clean import clean_text
from tunelab.data.dedupe import ExactIndex, NearIndex, dedupe_key
from tunelab.data.formats import detect_format, normalize_row, resolve_columns
from tunelab.data.recipes import RECIPES, get_recipe
from tunelab.data.sources import expand_sources, iter_rows
from tunelab.data.types import FORMATS, Format, Record, Rejected, Row
from tunelab.errors import ConfigError, DataError

__all__ = [
    "CHUNK",
    "CleanSpec",
    "Ingested",
    "Kept",
    "RejectLog",
    "Spill",
    "TaskSpec",
    "content_text",
    "ingest_task",
    "map_texts",
]

CHUNK = 512
_STRICT_SHOWN = 10


@dataclass(frozen=True)
class TaskSpec:
    """One task's data: where it is, how it reads and how it is prompted."""

    name: str
    source: str | list[str]
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    label_words: dict[str, str] = field(default_factory=dict)
    templates: tuple[str, ...] = ()  # empty: the recipe's or the format's default
    system_prompt: str | None = None
    weight: float = 1.0
    max_rows: int | None = None


@dataclass(frozen=True)
class CleanSpec:
    steps: tuple[str, ...] = ("unicode", "whitespace")
    min_tokens: int | None = None
    max_tokens: int | None = None
    dedupe: bool = True
    near_threshold: float | None = 0.85
    conflicts: str = "drop"


@dataclass(slots=True)
class Kept:
    """What stays in memory of a kept row; the row itself is in the spill file.

    ``file`` is one shared string per source file, so a row costs ~150 bytes here.
    """

    offset: int
    file: str
    line: int
    label: str | None
    group: str | None  # the group_by / split column's value, when the split needs one
    input_key: str | None  # digest of the input text (classification conflicts)
    tokens: int | None

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Ingested:
    """One task after the streaming stages."""

    task: TaskSpec
    format: Format
    note: str
    rows_in: int
    kept: list[Kept]
    dropped: Counter[tuple[str, str]]  # (stage, reason) -> rows
    recipe_dropped: dict[str, int]
    pii: Counter[str]
    labels_seen: set[str]


class RejectLog:
    """``rejected.jsonl``: one line per dropped row, written as it is dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, task: str, stage: str, rejected: Rejected) -> None:
        row = {"task": task, "stage": stage, **rejected.as_json()}
        self._fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self._fh.close()


class Spill:
    """Kept records on disk, read back by offset (a temporary file next to the outputs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] = open(path, "w+b")  # noqa: SIM115 - closed by close()

    def write(self, record: Record) -> int:
        offset = self._fh.tell()
        row = {"format": record.format, "data": record.data, "origin": record.origin,
               "extra": record.extra}  # fmt: skip
        self._fh.write(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
        return offset

    def read(self, offset: int) -> Record:
        self._fh.seek(offset)
        row = json.loads(self._fh.readline())
        self._fh.seek(0, 2)  # writes append
        return Record(row["format"], row["data"], row["origin"], row["extra"])

    def close(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def map_texts(record: Record, fn: Callable[[str], str]) -> Record:
    """The record with ``fn`` applied to every text field (never to labels or extras)."""
    data = dict(record.data)
    if record.format == "chat":
        data["messages"] = [{**m, "content": fn(m["content"])} for m in data["messages"]]
    else:
        for name in ("text", "instruction", "input", "output", "prompt", "completion"):
            if name in data:
                data[name] = fn(data[name])
    return replace(record, data=data)


def content_text(record: Record) -> str:
    """Everything a model reads or writes for the record, one string (dedupe, lengths)."""
    data = record.data
    if record.format == "chat":
        return "\n".join(m["content"] for m in data["messages"])
    if record.format == "classification":
        return f"{data['text']}\n{data['label']}"
    if record.format == "instruction":
        return "\n".join(x for x in (data["instruction"], data["input"], data["output"]) if x)
    return f"{data['prompt']}{data['completion']}"


def _emptied(record: Record) -> str | None:
    """The first required field that cleaning left empty, or None."""
    data = record.data
    if record.format == "chat":
        last = data["messages"][-1]["content"]
        return None if last.strip() else "messages[-1].content"
    required = {"classification": ("text",), "instruction": ("instruction", "output"),
                "completion": ("completion",)}[record.format]  # fmt: skip
    return next((name for name in required if not str(data[name]).strip()), None)


_REASONS = (
    (re.compile(r"^missing column"), "missing column"),
    (re.compile(r"^label is empty"), "empty label"),
    (re.compile(r"is empty"), "empty field"),
    (re.compile(r"must be a string|must be an object|must be a non-empty list"), "wrong type"),
    (re.compile(r"role|assistant|user message|needs 'role'"), "invalid chat messages"),
)


def _reason(problem: str) -> str:
    return next((name for pattern, name in _REASONS if pattern.search(problem)), "invalid row")


def _rejected(err: DataError, row: Row) -> Rejected:
    return Rejected(row.file, row.line, _reason(err.problem), err.detail, err.field, row.fields)


class _Rows:
    """The task's rows as ``Row | Rejected`` plus how they are read (recipe or files)."""

    def __init__(self, task: TaskSpec) -> None:
        self.recipe_dropped: dict[str, int] = {}
        source = task.source
        if (isinstance(source, str) and source in RECIPES) or _looks_like_name(source):
            recipe = get_recipe(str(source))
            _check_recipe_settings(task, recipe.name, recipe.format)
            records, self.recipe_dropped = recipe.load_counted()
            self.records: list[Record] | None = records
            self.format: Format = recipe.format
            self.note = f"format '{recipe.format}' from the built-in dataset '{recipe.name}' "
            self.note += f"({recipe.pip_spec})"
            self.entries: list[Any] = []
        else:
            self.records = None
            self.entries = list(expand_sources(source))
            self.format = "classification"  # set from the first row when "auto"
            self.note = ""

    def __iter__(self) -> Iterator[Row | Rejected | Record]:
        if self.records is not None:
            yield from self.records
            return
        for entry in self.entries:
            yield from iter_rows(entry)


def _looks_like_name(source: str | list[str]) -> bool:
    return (
        isinstance(source, str)
        and not Path(source).exists()
        and not any(c in source for c in "/\\.*:")
    )


def _check_recipe_settings(task: TaskSpec, name: str, fmt: Format) -> None:
    problems = []
    if task.format not in ("auto", fmt):
        problems.append(("data.format", f"'{name}' is {fmt} data, not {task.format}"))
    if task.columns:
        problems.append(("data.columns", f"does not apply to the built-in '{name}'"))
    if problems:
        raise ConfigError(
            f"settings that conflict with the dataset '{name}'",
            problems=problems,
            hint="remove them, or use a file of your own as data.source",
        )


@dataclass
class _Context:
    """Everything the per-row steps need, built once per task."""

    task: TaskSpec
    clean: CleanSpec
    anonymize: Callable[[str], tuple[str, Counter[str]]] | None
    tokenizer: Any
    group_column: str | None
    log: RejectLog
    spill: Spill
    strict: bool
    max_rejected: float
    exact: ExactIndex = field(default_factory=ExactIndex)
    near: NearIndex | None = None
    kept: list[Kept] = field(default_factory=list)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    labels_seen: set[str] = field(default_factory=set)
    errors: list[Rejected] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # one string object per file

    def drop(self, stage: str, rejected: Rejected) -> None:
        self.dropped[(stage, rejected.reason)] += 1
        self.log.write(self.task.name, stage, rejected)
        if stage == "validation":
            if len(self.errors) < _STRICT_SHOWN:
                self.errors.append(rejected)
            if self.strict and len(self.errors) >= _STRICT_SHOWN:
                raise _strict_error(self.task, self.errors, more=True)


def ingest_task(
    task: TaskSpec,
    clean: CleanSpec,
    *,
    anonymize: Callable[[str], tuple[str, Counter[str]]] | None,
    tokenizer: Any,
    group_column: str | None,
    log: RejectLog,
    spill: Spill,
    strict: bool,
    max_rejected: float,
) -> Ingested:
    """Stream the task's rows through the per-row stages (see the module docstring)."""
    rows = _Rows(task)
    ctx = _Context(task, clean, anonymize, tokenizer, group_column, log, spill, strict,
                   max_rejected)  # fmt: skip
    if clean.near_threshold is not None and clean.dedupe:
        ctx.near = NearIndex(threshold=clean.near_threshold)
    fmt: Format | None = rows.format if rows.records is not None else None
    rows_in = 0
    chunk: list[Record] = []
    for item in rows:
        rows_in += 1
        if isinstance(item, Rejected):
            ctx.drop("validation", item)
            continue
        if isinstance(item, Row):
            if fmt is None:
                fmt = _format(task, item)
                rows.format = fmt
                rows.note = _note(task, item, fmt)
            record = _normalise(ctx, item, fmt)
            if record is None:
                continue
        else:
            record = item
        record = _clean(ctx, record)
        if record is not None:
            chunk.append(record)
        if len(chunk) >= CHUNK:
            _keep_chunk(ctx, chunk)
            chunk = []
    _keep_chunk(ctx, chunk)
    _check_rejections(ctx, rows_in)
    note = rows.note + f": {rows_in:,} rows"
    return Ingested(task, rows.format, note, rows_in, ctx.kept, ctx.dropped,
                    rows.recipe_dropped, ctx.pii, ctx.labels_seen)  # fmt: skip


def _format(task: TaskSpec, row: Row) -> Format:
    if task.format == "auto":
        return detect_format(row.fields, task.columns, file=row.file)
    if task.format in FORMATS:
        return task.format  # type: ignore[return-value]
    raise ConfigError("unknown format", problems=[("data.format", f"'{task.format}'")])


def _note(task: TaskSpec, row: Row, fmt: Format) -> str:
    how = "detected from" if task.format == "auto" else "set in data.format; columns"
    columns = resolve_columns(row.fields, fmt, task.columns)
    shown = ", ".join(c if c == f else f"{c} (as {f})" for f, c in columns.items())
    return f"format '{fmt}' {how} {shown or 'none'}"


def _normalise(ctx: _Context, row: Row, fmt: Format) -> Record | None:
    try:
        record = normalize_row(row, fmt, ctx.task.columns)
    except DataError as err:
        ctx.drop("validation", _rejected(err, row))
        return None
    label = record.label
    if label is not None and ctx.task.labels is not None and label not in ctx.task.labels:
        message = f"label '{label}' is not one of data.labels {list(ctx.task.labels)}"
        ctx.drop("validation", Rejected(row.file, row.line, "unknown label", message, "label",
                                        row.fields))  # fmt: skip
        return None
    return record


def _clean(ctx: _Context, record: Record) -> Record | None:
    steps = ctx.clean.steps
    if steps:
        record = map_texts(record, lambda text: clean_text(text, steps))
    if ctx.anonymize is not None:
        anonymize, found = ctx.anonymize, ctx.pii

        def scrub(text: str) -> str:
            new, counts = anonymize(text)
            found.update(counts)
            return new

        record = map_texts(record, scrub)
    emptied = _emptied(record)
    if emptied is not None:
        ctx.drop("cleaning", Rejected(*_where(ctx, record), "empty after cleaning",
                                      f"{emptied} is empty after cleaning", emptied,
                                      record.data))  # fmt: skip
        return None
    return record


def _where(ctx: _Context, record: Record) -> tuple[str, int]:
    """``(file, line)`` of a record's origin; one shared string object per file."""
    file, _, line = record.origin.rpartition(":")
    return ctx.files.setdefault(file, file), int(line) if line.isdigit() else 0


def _keep_chunk(ctx: _Context, chunk: Sequence[Record]) -> None:
    """Length filter and dedupe for a chunk, then spill what is kept."""
    if not chunk:
        return
    texts = [content_text(r) for r in chunk]
    lengths: list[int | None] = [None] * len(chunk)
    if ctx.tokenizer is not None:
        ids = ctx.tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths = [len(x) for x in ids]
    sigs = ctx.near.signatures(texts) if ctx.near is not None else [None] * len(chunk)
    low, high = ctx.clean.min_tokens, ctx.clean.max_tokens
    for record, text, n, sig in zip(chunk, texts, lengths, sigs, strict=True):
        where = _where(ctx, record)
        if n is not None and ((low is not None and n < low) or (high is not None and n > high)):
            reason = "too short" if low is not None and n < low else "too long"
            bound = low if reason == "too short" else high
            ctx.drop("cleaning", Rejected(*where, reason, f"{n} tokens; the limit is {bound}",
                                          None, record.data))  # fmt: skip
            continue
        group = None
        if ctx.group_column is not None:
            if record.extra.get(ctx.group_column) is None:
                message = f"no '{ctx.group_column}' value, which the split needs"
                ctx.drop("validation", Rejected(*where, "missing split column", message,
                                                ctx.group_column, record.data))  # fmt: skip
                continue
            group = str(record.extra[ctx.group_column])
        if ctx.clean.dedupe and _duplicate(ctx, record, text, sig, where):
            continue
        label = record.label
        if label is not None:
            ctx.labels_seen.add(label)
        input_key = None
        if record.format == "classification":
            digest = hashlib.blake2b(dedupe_key(record.data["text"]).encode(), digest_size=12)
            input_key = digest.hexdigest()
        ctx.kept.append(Kept(ctx.spill.write(record), *where, label, group, input_key, n))


def _duplicate(ctx: _Context, record: Record, text: str, sig: Any, where: tuple[str, int]) -> bool:
    """Whether the record repeats a kept one (then dropped); else it is indexed as kept."""
    item, key = len(ctx.kept), dedupe_key(text)
    first, reason = ctx.exact.find(key), "exact duplicate"
    if first is None and ctx.near is not None:
        first, reason = ctx.near.add_signature(sig, item), "near duplicate"
        if first is not None and ctx.kept[first].label != record.label:
            first = None  # the same input with another label: a conflict, reported later
    if first is None:
        ctx.exact.add(key, item)
        return False
    message = f"{reason} of {ctx.kept[first].origin}"
    ctx.drop("dedupe", Rejected(*where, reason, message, None, record.data))
    return True


def _strict_error(task: TaskSpec, errors: list[Rejected], *, more: bool) -> DataError:
    lines = [f"  {r.file}:{r.line}: {r.field or '-'}: {r.message}" for r in errors]
    head = f"task '{task.name}': " if task.name != "data" else ""
    return DataError(
        f"{head}{'the first ' if more else ''}{len(errors)} invalid rows "
        "(data.validation: strict):\n" + "\n".join(lines),
        hint="fix the rows, or set data.validation: lenient to write them to "
        "data/rejected.jsonl and go on",
    )


def _check_rejections(ctx: _Context, rows_in: int) -> None:
    invalid = sum(n for (stage, _), n in ctx.dropped.items() if stage == "validation")
    if ctx.strict and ctx.errors:
        raise _strict_error(ctx.task, ctx.errors, more=False)
    if rows_in and invalid / rows_in > ctx.max_rejected:
        reasons = Counter({reason: n for (stage, reason), n in ctx.dropped.items()
                           if stage == "validation"})  # fmt: skip
        top = ", ".join(f"{reason}: {n:,}" for reason, n in reasons.most_common(3))
        first = ctx.errors[0]
        raise DataError(
            f"{invalid:,} of {rows_in:,} rows are invalid ({invalid / rows_in:.0%}; {top}); "
            f"first: {first.file}:{first.line}: {first.message}",
            hint="that many usually means a wrong data.format or data.columns; all of them "
            f"are in {ctx.log.path}. To go on anyway raise data.max_rejected "
            f"(now {ctx.max_rejected:g})",
        )
