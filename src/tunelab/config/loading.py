"""Load a config from YAML plus ``--set a.b=c`` overrides, reporting every problem at once.

Whatever a file or an override holds, the only error is a :class:`ConfigError` (checked by
``tests/test_config_properties.py`` on thousands of generated documents): YAML that PyYAML
cannot build (``2020-13-45``, ``!!int x``, nesting past Python's recursion limit) is
reported with its line, and structures only aliases can make (an alias inside itself,
aliases of aliases expanding to millions of values) are refused before anything walks them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.schema import Config
from tunelab.config.space import set_dotted
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
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        except RecursionError:
            raise ConfigError(
                f"{path}: nested too deeply to read", hint="a config needs a few levels"
            ) from None
        _check_shape(loaded, str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, not a list/value")
        data = loaded
    data = apply_overrides(data, overrides)
    return parse_config(data, source=str(path) if path else "defaults")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``3``, ``true``, ``[a, b]``)."""
    _check_shape(data, "config")
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(
                f"override '{item}' is not KEY=VALUE with a dotted KEY",
                hint="e.g. --set train.lr=1e-4",
            )
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
        except (yaml.YAMLError, RecursionError):
            value = raw  # not YAML: the string itself (the schema says if that fits)
        _check_shape(value, f"override '{key.strip()}'", prefix=tuple(parts))
        set_dotted(data, key.strip(), value)
    return data


def parse_config(data: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a plain mapping; raise one ConfigError listing every problem."""
    _check_shape(data, source)
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


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``, with the errors its constructors raise for malformed scalars
    (``ValueError`` for ``2020-13-45`` or a 5000-digit int, ``KeyError`` for ``!!bool x``,
    ``IndexError`` for ``!!int ''``...) turned into YAML errors that carry their line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            text = node.value if isinstance(node.value, str) else None
            value = "" if text is None else f" {text if len(text) < 60 else text[:56] + '...'!r}"
            raise yaml.constructor.ConstructorError(
                problem=f"cannot read the value{value}: {str(exc)[:200]}",
                problem_mark=node.start_mark,
            ) from exc


_MAX_DEPTH = 64  # the schema is 4 levels deep; values add a few
_MAX_VALUES = 1_000_000


def _check_shape(data: Any, where: str, prefix: tuple[str, ...] = ()) -> None:
    """Refuse an alias that contains itself, nesting past ``_MAX_DEPTH`` levels and aliases
    of aliases that expand past ``_MAX_VALUES`` values (nothing after this could walk them)."""
    count = 0
    stack: list[tuple[Any, tuple[str, ...], frozenset[int]]] = [(data, prefix, frozenset())]
    while stack:
        node, path, parents = stack.pop()
        count += 1
        problem = None
        if count > _MAX_VALUES:
            problem = f"more than {_MAX_VALUES:,} values (aliases repeating aliases?)"
        elif isinstance(node, dict | list) and id(node) in parents:
            problem = "an alias contains itself (the value would be infinite)"
        elif isinstance(node, dict | list) and len(path) - len(prefix) >= _MAX_DEPTH:
            problem = f"nested more than {_MAX_DEPTH} levels deep"
        if problem is not None:
            raise ConfigError(
                f"{where}: the config's structure is invalid",
                problems=[(".".join(path[:8]) or "(top level)", problem)],
            )
        if isinstance(node, dict | list):
            inner = parents | {id(node)}
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((value, (*path, str(key)), inner) for key, value in items)


def _describe(err: Any, data: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in err["loc"]]
    # pydantic adds union-member tags (e.g. 'list[str]') to locations; keep only real keys
    path_parts = _real_path(loc, data)
    path = ".".join(path_parts) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = path_parts[:-1]
        valid = _fields_at(parent)
        by_case = {v.lower(): v for v in valid}  # `NAME` or `Train` finds `name`, `train`
        found = difflib.get_close_matches(path_parts[-1].lower(), list(by_case), n=1, cutoff=0.5)
        close = [by_case[c] for c in found]
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
    parts = iter(path)
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return []
        sub = _model_type(field.annotation)
        if sub is None:
            return []
        if _is_collection(field.annotation):  # a list index or mapping key comes next
            next(parts, None)
        model = sub
    return list(model.model_fields)


def _is_collection(annotation: Any) -> bool:
    if get_origin(annotation) in (list, dict):
        return True
    return any(_is_collection(a) for a in get_args(annotation))


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
