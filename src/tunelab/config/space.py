"""The search space of ``tunelab sweep``, checked against the schema before any compute.

A space maps dotted config keys (``train.lr``, ``method.lora.r``) to a range or a list of
choices (:class:`~tunelab.config.sweep_section.SearchParam`). :func:`check_search` runs when a
config with a ``sweep`` section is validated: every key must name a field (unknown keys
get close matches), ranges need a numeric field (integer fields take whole bounds), and
every value a trial could start from — both ends of each range, every choice — is put into
a copy of the config and validated by the schema itself, so a field's own rules
(``lr < 1``, ``dropout < 1``, ``r >= 1``...) reject a bad space at load time.
"""

from __future__ import annotations

import copy
import difflib
import math
import types
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from tunelab.config.sweep_section import SearchParam

if TYPE_CHECKING:
    from tunelab.config.schema import Config

__all__ = [
    "check_search",
    "leaf_keys",
    "number_kind",
    "probe_values",
    "resolve_key",
    "set_dotted",
]

# keys a trial never varies: they place the trial's folder, or are the search itself
_FIXED = ("name", "output_dir", "sweep")
# keys that change which rows are held out: trials scored on different val rows are not
# comparable, and the test rows must stay the ones `tunelab run best.yaml` assesses
_HELD_OUT = ("data.split", "data.max_val", "data.max_test")


class SpaceError(ValueError):
    """A space entry that cannot be searched: the message says why."""


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key that names a value (not a section), through optional sections."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        sub = _section_type(field.annotation)
        if sub is not None and not _is_collection(field.annotation):
            keys += leaf_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def resolve_key(key: str, schema: type[BaseModel]) -> FieldInfo:
    """The field of ``schema`` (the config class) a dotted key names; ``SpaceError`` with
    close matches if none."""
    model = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            raise SpaceError(_unknown(key, ".".join(parts[: i + 1]), schema))
        sub = _section_type(field.annotation)
        last = i == len(parts) - 1
        if last:
            if sub is not None and not _is_collection(field.annotation):
                inner = ", ".join(f"{key}.{k}" for k in leaf_keys(sub))
                raise SpaceError(f"'{key}' is a section; search one of its keys: {inner}")
            return field
        if sub is None or _is_collection(field.annotation):
            raise SpaceError(f"'{'.'.join(parts[: i + 1])}' is a value, not a section")
        model = sub
    raise SpaceError(f"'{key}' names no config field")  # pragma: no cover - empty key


def number_kind(field: FieldInfo) -> Literal["int", "float"] | None:
    """``int`` for integer fields, ``float`` for float fields (also ``float | int``), None
    for anything else (strings, choices, booleans, lists)."""
    annotation = field.annotation
    args = set(get_args(annotation)) if _is_union(annotation) else {annotation}
    args.discard(type(None))
    if float in args and args <= {float, int}:
        return "float"
    if args == {int}:
        return "int"
    return None


def probe_values(param: SearchParam, kind: str | None) -> list[Any]:
    """The values checked against the schema: every choice, or both ends of the range."""
    if param.choices is not None:
        return list(param.choices)
    assert param.low is not None and param.high is not None
    if kind == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``a.b.c``, creating sections (a null optional section
    such as ``forgetting.mitigations.ewc`` becomes one holding just this key)."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def check_search(cfg: Config) -> None:
    """Raise one ``ValidationError`` listing every problem of ``cfg.sweep`` (at its YAML
    path) or return. Called by the schema after every section validated."""
    assert cfg.sweep is not None
    problems: list[InitErrorDetails] = []

    def problem(loc: tuple[str, ...], message: str, value: Any) -> None:
        # type "value_error": the loader shows the message without the input after it
        error = PydanticCustomError("value_error", "{message}", {"message": message})
        problems.append(InitErrorDetails(type=error, loc=loc, input=value))

    sweep = cfg.sweep
    if sweep.metric != "val_loss" and cfg.eval.val_examples == 0:
        problem(("sweep", "metric"), f"{sweep.metric} is scored on `eval.val_examples` val "
                "examples during training; set eval.val_examples > 0, or use val_loss",
                sweep.metric)  # fmt: skip
    base = cfg.model_dump(mode="json", exclude={"sweep"})
    for key, param in sweep.space.items():
        loc = ("sweep", "space", key)
        try:
            _check_entry(key, param, base, type(cfg))
            _check_effect(key, cfg, set(sweep.space))
        except SpaceError as exc:
            problem(loc, str(exc), param.model_dump(exclude_defaults=True))
    if problems:
        raise ValidationError.from_exception_data("Config", problems)


def _check_range(p: SearchParam) -> None:
    """A range with finite ``low < high`` (``low > 0`` on a log scale), or choices alone."""
    if p.choices is not None:
        if p.low is not None or p.high is not None or p.step is not None or p.log:
            raise SpaceError("give either `choices` or a range (`low`, `high`), not both")
        return
    if p.low is None or p.high is None:
        raise SpaceError("a range needs both `low` and `high` (or give `choices`)")
    if not all(math.isfinite(v) for v in (p.low, p.high, p.step or 1.0)):
        raise SpaceError("low, high and step must be finite numbers")
    if not p.low < p.high:
        raise SpaceError(f"low ({p.low:g}) must be below high ({p.high:g})")
    if p.log and p.low <= 0:
        raise SpaceError(f"a log range needs low > 0 (got {p.low:g})")
    if p.log and p.step is not None:
        raise SpaceError("`step` and `log` do not combine; drop one")


def _check_entry(
    key: str, param: SearchParam, base: dict[str, Any], schema: type[BaseModel]
) -> None:
    _check_range(param)
    if key.split(".")[0] in _FIXED:
        raise SpaceError(f"'{key}' cannot be searched (every trial sets it itself)")
    if any(key == k or key.startswith(f"{k}.") for k in _HELD_OUT):
        raise SpaceError(
            f"'{key}' changes the held-out rows: trials would be scored on different val "
            "rows, so their values could not be compared; fix it outside the space"
        )
    field = resolve_key(key, schema)
    kind = number_kind(field)
    if param.choices is None:
        if kind is None:
            raise SpaceError(
                f"'{key}' is not a number ({_type_name(field)}); give `choices: [...]`"
            )
        ends = [v for v in (param.low, param.high, param.step) if v is not None]
        if kind == "int" and not all(float(v).is_integer() for v in ends):
            raise SpaceError(f"'{key}' is an integer; give whole low, high and step")
    for value in probe_values(param, kind):
        data = copy.deepcopy(base)
        set_dotted(data, key, value)
        try:
            schema.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise SpaceError(f"value {value!r} is invalid: {where}: {msg}") from None


def _check_effect(key: str, cfg: Config, searched: set[str]) -> None:
    """Keys every trial would ignore: a search that cannot change anything is a mistake."""
    steps_fixed = cfg.train.max_steps is not None and "train.max_steps" not in searched
    if key == "train.epochs" and steps_fixed:
        raise SpaceError(
            f"train.max_steps ({cfg.train.max_steps}) overrides train.epochs, so every "
            "trial would train the same steps; set train.max_steps: null, or search it"
        )
    kind_fixed = cfg.method.kind != "lora" and "method.kind" not in searched
    if key.startswith("method.lora.") and kind_fixed:
        raise SpaceError(f"method.kind is '{cfg.method.kind}': LoRA settings do nothing")


def _unknown(key: str, prefix: str, schema: type[BaseModel]) -> str:
    close = difflib.get_close_matches(key, leaf_keys(schema), n=3, cutoff=0.6)
    text = f"'{prefix}' is not a config key" if prefix != key else f"'{key}' is not a config key"
    return text + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "")


def _type_name(field: FieldInfo) -> str:
    return str(field.annotation).replace("typing.", "")


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _is_collection(annotation: Any) -> bool:
    """A list or dict (possibly optional): its items are not addressed by dotted keys."""
    if get_origin(annotation) in (list, dict):
        return True
    return _is_union(annotation) and any(_is_collection(a) for a in get_args(annotation))


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None
