"""The values that flow through data preparation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FORMATS", "Example", "Format", "Record", "Rejected", "Row"]

Format = Literal["classification", "instruction", "completion", "chat"]
FORMATS: tuple[Format, ...] = ("classification", "instruction", "completion", "chat")


@dataclass(frozen=True)
class Row:
    """One raw row as read from a file: its columns and where it came from (1-based line)."""

    fields: dict[str, Any]
    file: str
    line: int


@dataclass(frozen=True)
class Rejected:
    """A row that did not make it into the prepared data, and why.

    ``reason`` is a short category for counting (``invalid JSON``, ``missing column``,
    ``near duplicate``...); ``message`` the full explanation; ``field`` the user's column
    (``messages[2].role`` for chat) when one is to blame; ``raw`` the row as read (the
    decoded line, or the row's fields) so nothing is lost.
    """

    file: str
    line: int
    reason: str
    message: str
    field: str | None = None
    raw: Any = None

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.reason,
                "message": self.message, "field": self.field, "raw": self.raw}  # fmt: skip


@dataclass(frozen=True)
class Record:
    """A row normalised to one of the four formats.

    ``data`` holds, by format:
    - classification: ``text`` (str), ``label`` (str)
    - instruction: ``instruction`` (str), ``input`` (str, may be ""), ``output`` (str)
    - completion: ``prompt`` (str), ``completion`` (str)
    - chat: ``messages`` (list of ``{"role", "content"}``; the last one is the assistant's)
    Extra columns (e.g. ``movie_name``) are kept in ``extra`` for grouping and templates.
    """

    format: Format
    data: dict[str, Any]
    origin: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        return self.data.get("label") if self.format == "classification" else None


@dataclass(frozen=True)
class Example:
    """A rendered example: the prompt as chat messages and the target response.

    ``raw`` is True for completion data: ``messages`` then holds one user message whose
    content is used verbatim, never wrapped in a chat template.
    """

    messages: tuple[dict[str, str], ...]
    response: str
    label: str | None
    origin: str
    raw: bool = False
