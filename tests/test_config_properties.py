"""Property tests: whatever a config file, a config mapping or a ``--set`` override holds,
loading gives a Config or a TunelabError with a message, never another exception.

Inputs are generated from the schema itself (every key path, near-miss spellings of each,
unknown keys, wrong types, huge and non-finite numbers, unicode), from YAML syntax pieces
and edits of the shipped configs, and from override strings. What loads must dump to YAML
and load back to the same config (the resolved config saved in every checkpoint). Counts
are in docs/faults.md.
"""

from __future__ import annotations

import copy
import itertools
import json
import string
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tunelab.config import Config, dump_config, load_config, parse_config
from tunelab.errors import TunelabError

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    [*(ROOT / "examples").rglob("*.yaml"), *(ROOT / "src/tunelab/configs").glob("*.yaml")]
)
BASES = [{}, *(yaml.safe_load(p.read_text()) for p in SHIPPED)]


def _settings(n: int) -> settings:
    # derandomised, no example database: every run (locally, CI) tries the same inputs
    slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=slow)  # fmt: skip


# ---- the schema's key paths --------------------------------------------------------------


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, str | None]:
    """The model inside an annotation and how it nests: None, "list" or "dict"."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    for arg in get_args(annotation):
        model, _ = _submodel(arg)
        if model is not None:
            origin = get_origin(annotation)
            kind = "list" if origin is list else "dict" if origin is dict else None
            return model, kind or _submodel(arg)[1]
    return None, None


def _paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        found.append(path)
        sub, nesting = _submodel(field.annotation)
        if sub is not None:
            inner = (*path, "0") if nesting == "list" else (*path, "k") if nesting else path
            found += _paths(sub, inner)
    return found


PATHS = _paths(Config)
LEAVES = sorted({p[-1] for p in PATHS if p[-1] not in ("0", "k")})


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``path`` in ``data``, making the dicts on the way (and a list where the next part
    is "0", the first item of a list); whatever stood in the way is replaced."""
    node: Any = data
    for part, nxt in itertools.pairwise(path):
        child = _get(node, part)
        if not isinstance(child, list if nxt == "0" else dict):
            child = [] if nxt == "0" else {}
            _put(node, part, child)
        node = child
    _put(node, path[-1], value)


def _get(node: dict | list, part: str) -> Any:
    if isinstance(node, list):
        return node[0] if node else None
    return node.get(part)


def _put(node: dict | list, part: str, value: Any) -> None:
    if isinstance(node, list):
        node[:] = [value]
    else:
        node[part] = value


def _near_miss(key: str, draw: st.DrawFn) -> str:
    """``key`` with one typo: a letter dropped, doubled, swapped or changed, or case."""
    at = draw(st.integers(0, len(key) - 1))
    kind = draw(st.sampled_from(["drop", "double", "swap", "change", "case", "dash"]))
    if kind == "drop":
        return key[:at] + key[at + 1 :]
    if kind == "double":
        return key[:at] + key[at] + key[at:]
    if kind == "swap" and at + 1 < len(key):
        return key[:at] + key[at + 1] + key[at] + key[at + 2 :]
    if kind == "case":
        return key.upper() if draw(st.booleans()) else key.capitalize()
    if kind == "dash":
        return key.replace("_", "-") if "_" in key else key + "s"
    return key[:at] + draw(st.sampled_from(string.ascii_lowercase)) + key[at + 1 :]


# ---- values ------------------------------------------------------------------------------

_SPECIAL = [0, -1, 1, 2**31, 2**63, 2**64, -(2**63), 10**30, -(10**30), 10**400, float("nan"),
            float("inf"), -float("inf"), -0.0, 1e-320, 1e308, 0.5, 1.0, 1.5]  # fmt: skip
_WORDS = ["", " ", "auto", "all-linear", "lora", "full", "fp32", "bf16", "cosine", "near",
          "stratified", "accuracy", "\x00", "é", "💥", "a" * 300, "1e-4", "true", "null", "~",
          "../x", "hf:a/b", "C:\\x", "名前", "\u202e", "line\nbreak"]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(_SPECIAL),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(_WORDS),
)
keys = st.one_of(st.sampled_from(LEAVES), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=10,
)
odd_keys = st.one_of(st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False))


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[Any, Any]:
    """A shipped config (or {}) with 1-6 edits: a valid key set to any value, an unknown or
    misspelt key added, a key removed, a section replaced by a scalar, a non-string key."""
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "set", "unknown", "near", "drop", "odd_key"]))
        path = draw(st.sampled_from(PATHS))
        if kind == "unknown":
            path = (*path[:-1], draw(st.text(min_size=1, max_size=10)))
        elif kind == "near" and len(path[-1]) > 1:
            path = (*path[:-1], _near_miss(path[-1], draw))
        elif kind == "drop":
            node: Any = data
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(path[-1], None)
            continue
        elif kind == "odd_key":
            _set(data, (*path[:-1], "placeholder"), draw(values))
            parent: Any = data
            for part in path[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict):
                parent[draw(odd_keys)] = parent.pop("placeholder")
            continue
        _set(data, path, draw(values))
    return data


def _outcome(load: Any) -> Config | TunelabError:
    """``load()``'s Config, or its TunelabError; anything else fails the test."""
    try:
        cfg = load()
    except TunelabError as err:
        text = str(err)
        assert text.strip(), "an error without a message"
        for path, msg in getattr(err, "problems", []):
            # a schema problem names the key it is about (or the top level) and says what
            assert path.strip() and msg.strip() and path in text, (path, msg)
        return err
    assert isinstance(cfg, Config)
    # what loads dumps and reloads to the same config (libyaml reads it back: fast; JSON
    # text compares NaN equal to NaN)
    again = parse_config(yaml.load(dump_config(cfg), Loader=yaml.CSafeLoader))
    assert json.dumps(again.model_dump(mode="json")) == json.dumps(cfg.model_dump(mode="json"))
    return cfg


# ---- mappings, YAML files, overrides -------------------------------------------------------


@_settings(1000)
@given(data=mutated_configs())
def test_any_mapping_gives_a_config_or_a_config_error(data: dict[Any, Any]) -> None:
    _outcome(lambda: parse_config(data))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("configs")


@_settings(500)
@given(data=mutated_configs())
def test_any_yaml_document_gives_a_config_or_a_config_error(folder: Path, data: dict) -> None:
    path = folder / "mapping.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    _outcome(lambda: load_config(path))


_YAML_PIECES = ["\n", "  ", "- ", ": ", "? ", "{", "}", "[", "]", ",", "'", '"', "#", "&a ",
                "*a", "<<: *a", "!!int ", "!!float ", "!!bool ", "!!binary ", "!!timestamp ",
                "!!set ", "!!python/object:os.system ", "%YAML 1.1\n", "---\n", "...\n", "|\n",
                ">-\n", "\t", "\ufeff", "\x00", "\\", "~", ".nan", ".inf", "-.inf", "0x", "0o",
                "0b", "1_000", "2020-13-45", "2001-12-14 21:59:43.10 +25:00", "190:20:30",
                "9" * 5000, "[" * 1200, "{a: " * 600, "train:\n", "  lr: ", "model:\n",
                "  base: ", "name: x\n", "a: &a [*a]\n", "b: &b {c: *b}\n"]  # fmt: skip
_SHIPPED_TEXT = [p.read_text(encoding="utf-8") for p in SHIPPED]


@st.composite
def yaml_texts(draw: st.DrawFn) -> bytes:
    """YAML-ish text from syntax pieces, a shipped config with a few edits, or raw bytes."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        parts = st.one_of(st.sampled_from(_YAML_PIECES), st.text(max_size=6))
        return "".join(draw(st.lists(parts, max_size=40))).encode("utf-8", "surrogatepass")
    text = draw(st.sampled_from(_SHIPPED_TEXT))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 20))
        text = text[:at] + draw(st.sampled_from(["", *_YAML_PIECES[:40]])) + text[at + cut :]
    return text.encode("utf-8", "surrogatepass")


@_settings(1000)
@given(data=yaml_texts())
def test_any_file_gives_a_config_or_a_config_error(folder: Path, data: bytes) -> None:
    path = folder / "text.yaml"
    path.write_bytes(data)
    _outcome(lambda: load_config(path))


_KEY_PARTS = st.one_of(st.sampled_from(LEAVES), st.sampled_from(["", " ", "0", "-1", "x"]),
                       st.text(max_size=5))  # fmt: skip
override_keys = st.one_of(
    st.sampled_from(PATHS).map(".".join),
    st.lists(_KEY_PARTS, min_size=1, max_size=4).map(".".join),
)
override_values = st.one_of(
    st.sampled_from(_YAML_PIECES),
    st.text(max_size=12),
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)


@_settings(800)
@given(items=st.lists(st.tuples(override_keys, st.sampled_from(["=", "", "=="]), override_values),
                      min_size=1, max_size=4))  # fmt: skip
def test_any_override_gives_a_config_or_a_config_error(items: list[tuple[str, str, str]]) -> None:
    overrides = [f"{key}{sep}{value}" for key, sep, value in items]
    _outcome(lambda: load_config(SHIPPED[-1], overrides))


@_settings(400)
@given(data=st.data())
def test_a_misspelt_key_is_named_with_a_suggestion(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from([p for p in PATHS if len(p[-1]) >= 4]))
    typo = _near_miss(path[-1], data.draw)
    siblings = {p[-1] for p in PATHS if p[:-1] == path[:-1]}
    if typo in siblings:
        return  # the typo spelt another valid key
    config = copy.deepcopy(BASES[-1])
    _set(config, (*path[:-1], typo), 1)
    err = _outcome(lambda: parse_config(config))
    assert isinstance(err, TunelabError)
    where = ".".join((*path[:-1], typo))
    named = [msg for p, msg in getattr(err, "problems", []) if p == where]
    assert named and "unknown key; did you mean '" in named[0], (where, str(err))


_BOMB = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 10)}]\n" for i in range(9)
)  # 10**9 values once expanded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [*a]\n", r"a\.0: an alias contains itself"),
        ("train: {x: &b {c: *b}}\n", r"train\.x\.c: an alias contains itself"),
        (_BOMB, "more than 1,000,000 values"),
        ("train: " + "[" * 3000 + "]" * 3000, "nested too deeply to read"),
        ("x: " + "[" * 80 + "]" * 80, "nested more than 64 levels deep"),
        (
            "name: x\ntrain:\n  lr: 2020-13-45\n",
            r":3: not valid YAML \(cannot read the value "
            r"'2020-13-45': month must be in 1\.\.12\)",
        ),
        ("seed: !!int ''\n", ":1: not valid YAML"),
        ("seed: !!bool maybe\n", ":1: not valid YAML"),
        ("seed: " + "9" * 5000 + "\n", r"cannot read the value '9{56}\.\.\.': Exceeds"),
        ("t: 2001-12-14 21:59:43.10 +25:00\n", ":1: not valid YAML"),
    ],
)
def test_yaml_that_once_crashed_the_loader(folder: Path, text: str, expected: str) -> None:
    # found by the tests above: RecursionError, ValueError, KeyError, IndexError, or an
    # alias bomb that apply_overrides' deep copy would have expanded
    path = folder / "crash.yaml"
    path.write_text(text)
    with pytest.raises(TunelabError, match=expected):
        load_config(path, ["train.lr=1e-4"])


@pytest.mark.parametrize("override", ["a..b=1", ".=1", "train.=1", "train.lr=&a [*a]",
                                      "train.x=" + "[" * 3000])  # fmt: skip
def test_overrides_that_once_crashed_or_misnamed(override: str) -> None:
    err = _outcome(lambda: load_config(None, [override]))
    assert isinstance(err, TunelabError)
