"""Load a config from YAML plus ``--set a.b=c`` overrides, reporting every problem at once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.schema import Config
from tunelab.errors import ConfigError

__all__ = ["apply_overrides", "dump_config", "load_config", "parse_config"]


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Read ``path`` (None: the embedded defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}", hint="check the path")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, not a list/value")
        data = loaded
    data = apply_overrides(data, overrides)
    return parse_config(data, source=str(path) if path else "defaults")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``3``, ``true``, ``[a, b]``)."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override '{item}' is not KEY=VALUE", hint="e.g. --set train.lr=1e-4"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def parse_config(data: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a plain mapping; raise one ConfigError listing every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err, data) for err in exc.errors()]
        raise ConfigError(
            f"{source}: {len(problems)} problem(s) in the config", problems=problems
        ) from None


def dump_config(config: Config) -> str:
    """The resolved config as YAML, every default filled in."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _describe(err: Any, data: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"]]
    # pydantic adds union-member tags (e.g. 'list[str]') to locations; keep only real keys
    path_parts = _real_path(loc, data)
    path = ".".join(path_parts) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = path_parts[:-1]
        valid = _fields_at(parent)
        close = difflib.get_close_matches(path_parts[-1], valid, n=1, cutoff=0.5)
        msg = "unknown key"
        msg += f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
        return path, msg
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in {"missing", "value_error"} and "input" in err:
        msg += f" (got {err['input']!r})"
    return path, msg


def _real_path(loc: list[str], data: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    node: Any = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            parts.append(part)
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            parts.append(part)
            node = node[int(part)]
        elif not parts or (part.isidentifier() and part in _fields_at(parts)):
            parts.append(part)
            node = None
    return parts


def _fields_at(path: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return []
        sub = _model_type(field.annotation)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
