"""Generate the config reference (docs/config.md) from the schema, so it cannot drift.

``python -m tunelab.config.reference > docs/config.md``; a test checks the file is current.
"""

from __future__ import annotations

import json
import re
from typing import Any, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunelab.config.schema import Config

__all__ = ["render_reference"]


def render_reference() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from `tunelab.config.schema` by `python -m tunelab.config.reference`;",
        "do not edit by hand. Unknown keys are errors; override any key with",
        "`--set section.key=value`.",
        "",
    ]
    _section(Config, "", lines)
    return "\n".join(lines) + "\n"


def _section(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    rows: list[str] = []
    subs: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        description = (field.description or "").replace("|", "\\|")
        if sub is not None and get_origin(field.annotation) is dict:  # keys the user names
            rows.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | "
                        f"{description} |")  # fmt: skip
            subs.append((f"{key}.KEY", sub))
            continue
        if sub is not None:
            subs.append((key, sub))
            if field.default is None:  # an optional section (null disables it)
                rows.append(f"| `{key}` | section or null | null | {field.description or ''} |")
            continue
        rows.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {description} |")
    if rows:
        title = prefix.rstrip(".") or "top level"
        lines += [f"## {title}", "", "| key | type | default | description |", "|---|---|---|---|"]
        lines += rows
        lines.append("")
    for key, sub in subs:
        _section(sub, f"{key}.", lines)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    text = text.replace("<class '", "").replace("'>", "")
    text = re.sub(r"tunelab\.config\.\w+\.", "", text)  # a section class by its name
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    return f"`{json.dumps(value, default=str)}`"


if __name__ == "__main__":
    print(render_reference(), end="")
