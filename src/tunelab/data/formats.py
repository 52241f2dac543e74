"""Normalise raw rows to :class:`~tunelab.data.types.Record` values of one of four formats.

A *mapping* (``data.columns``) maps tunelab field names to the user's column names, e.g.
``{"text": "review", "label": "stars"}``. Fields without a mapping are looked up under their
own name, then under the aliases in :data:`ALIASES`, so common datasets need no mapping:

=============  ==============================
field          also found as
=============  ==============================
text           sentence, review
label          category, sentiment
instruction    question
input          context
output         answer, response
=============  ==============================

Pure functions: values in, values out; every problem is a DataError naming the file, line
and the user's column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

from tunelab.data.types import FORMATS, Format, Record, Row
from tunelab.errors import ConfigError, DataError

__all__ = [
    "ALIASES",
    "FIELDS",
    "OPTIONAL_FIELDS",
    "ROLES",
    "check_mapping",
    "detect_format",
    "normalize_row",
    "resolve_columns",
]

FIELDS: dict[Format, tuple[str, ...]] = {
    "classification": ("text", "label"),
    "instruction": ("instruction", "input", "output"),
    "completion": ("prompt", "completion"),
    "chat": ("messages",),
}
OPTIONAL_FIELDS: frozenset[str] = frozenset({"input"})
ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("sentence", "review"),
    "label": ("category", "sentiment"),
    "instruction": ("question",),
    "input": ("context",),
    "output": ("answer", "response"),
}
ROLES: tuple[str, ...] = ("system", "user", "assistant")

_ALL_FIELDS = tuple(dict.fromkeys(f for fields in FIELDS.values() for f in fields))
# Detection order: the first format whose required fields are all present wins.
_DETECTION: tuple[tuple[Format, tuple[str, ...]], ...] = (
    ("chat", ("messages",)),
    ("instruction", ("instruction", "output")),
    ("completion", ("prompt", "completion")),
    ("classification", ("text", "label")),
)
_Fail = Callable[..., DataError]
_COLUMNS_HINT = "map your column names in data.columns, e.g. `columns: {text: review}`"


def check_mapping(mapping: Mapping[str, str]) -> None:
    """Raise ConfigError if ``data.columns`` names something that is not a tunelab field."""
    problems = [
        (f"data.columns.{key}", f"'{key}' is not a field; fields: {', '.join(_ALL_FIELDS)}")
        for key in mapping
        if key not in _ALL_FIELDS
    ]
    if problems:
        raise ConfigError(
            "data.columns maps tunelab field names to your column names",
            problems=problems,
            hint="write `{field: your_column}`, e.g. `{text: review, label: stars}`",
        )


def _column(field: str, columns: Collection[str], mapping: Mapping[str, str]) -> str | None:
    """The user's column holding ``field``, or None when it is absent."""
    if field in mapping:
        return mapping[field] if mapping[field] in columns else None
    for name in (field, *ALIASES.get(field, ())):
        if name in columns:
            return name
    return None


def resolve_columns(
    columns: Collection[str], fmt: Format, mapping: Mapping[str, str]
) -> dict[str, str]:
    """``{field: column}`` for the fields of ``fmt`` found in ``columns`` (aliases applied)."""
    found = {field: _column(field, columns, mapping) for field in FIELDS[fmt]}
    return {field: column for field, column in found.items() if column is not None}


def detect_format(
    columns: Collection[str], mapping: Mapping[str, str], *, file: str | None = None
) -> Format:
    """The format whose fields are present: messages → chat; instruction + output →
    instruction; prompt + completion → completion; text + label → classification."""
    check_mapping(mapping)
    for fmt, required in _DETECTION:
        if all(_column(field, columns, mapping) is not None for field in required):
            return fmt
    expected = "; ".join(
        f"{fmt}: {', '.join(f + ('?' if f in OPTIONAL_FIELDS else '') for f in fields)}"
        for fmt, fields in FIELDS.items()
    )
    seen = ", ".join(sorted(columns)) or "(none)"
    raise DataError(
        f"cannot tell the data format from the columns {seen}",
        file=file,
        hint=f"expected columns ({expected}); set data.format to one of "
        f"{', '.join(FORMATS)} and {_COLUMNS_HINT}",
    )


def normalize_row(row: Row, fmt: Format, mapping: Mapping[str, str]) -> Record:
    """One row as a Record of format ``fmt``; unused columns go to ``Record.extra``.

    Labels that are numbers or booleans become strings (``1.0`` → ``"1"``, ``True`` →
    ``"true"``); labels are stripped. ``input`` may be missing, null or empty. Text fields
    must be strings; labels, instructions, outputs and completions must not be empty.
    """
    data: dict[str, Any] = {}
    used: set[str] = set()
    for field in FIELDS[fmt]:
        column = _column(field, row.fields, mapping)
        if column is None:
            if field in OPTIONAL_FIELDS:
                data[field] = ""
                continue
            name = mapping.get(field, field)
            raise DataError(
                f"missing column '{name}' ({fmt} data needs {', '.join(_required(fmt))}); "
                f"the row has {', '.join(sorted(row.fields)) or 'no columns'}",
                file=row.file,
                line=row.line,
                field=name,
                hint=_COLUMNS_HINT,
            )
        used.add(column)
        data[field] = _value(field, row.fields[column], row, column)
    extra = {key: value for key, value in row.fields.items() if key not in used}
    return Record(format=fmt, data=data, origin=f"{row.file}:{row.line}", extra=extra)


def _required(fmt: Format) -> list[str]:
    return [f for f in FIELDS[fmt] if f not in OPTIONAL_FIELDS]


def _value(field: str, value: Any, row: Row, column: str) -> Any:
    def fail(message: str, hint: str | None = None, where: str = "") -> DataError:
        return DataError(message, file=row.file, line=row.line, field=column + where, hint=hint)

    if field == "messages":
        return _messages(value, fail)
    if field == "label":
        label = _label(value)
        if label is None:
            raise fail(f"label must be a string, number or boolean, got {_describe(value)}")
        if not label:
            raise fail("label is empty", "give every row a label, or drop unlabelled rows")
        return label
    if value is None and field in OPTIONAL_FIELDS:
        return ""
    if not isinstance(value, str):
        raise fail(f"{field} must be a string, got {_describe(value)}", _COLUMNS_HINT)
    if field in ("output", "completion", "instruction", "text") and not value.strip():
        raise fail(f"{field} is empty", "fill it in or drop the row")
    return value


def _label(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip()
    return None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _messages(value: Any, fail: _Fail) -> list[dict[str, str]]:
    if isinstance(value, str):  # a JSON list stored in a CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise fail("messages is a string that is not a JSON list") from None
    if not isinstance(value, list) or not value:
        raise fail(
            f"messages must be a non-empty list of {{role, content}}, got {_describe(value)}"
        )
    messages = [_message(i, message, fail) for i, message in enumerate(value)]
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise fail(
            f"the last message is from '{messages[last]['role']}'; it must be the "
            "assistant's reply (the training target)",
            where=f"[{last}].role",
        )
    if not messages[last]["content"].strip():
        raise fail(
            "the last (assistant) message is empty",
            "fill it in or drop the row",
            where=f"[{last}].content",
        )
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise fail("no user message before the assistant's reply")
    return messages


def _message(index: int, message: Any, fail: _Fail) -> dict[str, str]:
    where = f"[{index}]"
    if not isinstance(message, dict):
        raise fail(f"must be an object {{role, content}}, got {_describe(message)}", where=where)
    if "role" not in message or "content" not in message:
        sharegpt = "from" in message and "value" in message
        raise fail(
            f"needs 'role' and 'content'; it has {', '.join(map(str, message)) or 'nothing'}",
            "ShareGPT-style {from, value} messages: rename them to {role, content}"
            if sharegpt
            else None,
            where=where,
        )
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise fail(f"role is {role!r}; use one of {', '.join(ROLES)}", where=f"{where}.role")
    if not isinstance(content, str):
        raise fail(f"content must be a string, got {_describe(content)}", where=f"{where}.content")
    return {"role": role, "content": content}
