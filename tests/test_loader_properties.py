"""Property tests: whatever bytes a data file holds (every supported suffix, compressed ones
and a folder written by ``save_to_disk`` included) and whatever a row holds, the loaders
answer with rows, Rejected values or a DataError, never another exception. Counts are in
docs/faults.md."""

from __future__ import annotations

import bz2
import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.data.formats import ALIASES, FIELDS, ROLES, normalize_row
from tunelab.data.sources import LINE_REASONS, iter_rows, read_rows
from tunelab.data.types import FORMATS, Format, Record, Rejected, Row
from tunelab.errors import DataError

pytestmark = pytest.mark.fuzz


def _settings(n: int) -> settings:
    # Derandomised and without an example database: every run, locally or in CI, tries the
    # same examples. ~5,000 in all keep the file near a minute on one core.
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


# examples per suffix: the plain formats get the most, their compressed variants fewer
SUFFIXES = {".jsonl": 500, ".json": 500, ".csv": 500, ".tsv": 500, ".parquet": 500,
            ".ndjson": 150, ".jsonl.gz": 250, ".csv.bz2": 200, ".json.gz": 150,
            ".tsv.bz2": 150}  # fmt: skip

# Pieces that steer random bytes toward the interesting corners of each format.
_PIECES = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b",",
    b":",
    b"\n",
    b"\r\n",
    b"\t",
    b"\x00",
    b"\xe9",
    b"\xef\xbb\xbf",  # UTF-8 byte-order mark
    b"\xff\xfe",  # UTF-16 byte-order mark
    b'{"text": "hi", "label": "x"}\n',
    b'{"data": [{"a": 1}, 2]}',
    b"text,label\n",
    b"text\tlabel\n",
    b"PAR1",
    b"1e999999",
    b"9" * 5000,  # past Python's limit on digits in an int
    b"[" * 3000,  # nesting deep enough to exhaust the recursion limit
]
_piece = st.one_of(
    st.sampled_from(_PIECES),
    st.sampled_from(_PIECES),
    st.text(max_size=8).map(str.encode),
    st.binary(max_size=8),
)
file_bytes = st.one_of(st.binary(max_size=300), st.lists(_piece, max_size=30).map(b"".join))


def _parquet_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    table = pa.table({"text": ["great", "dull"], "messages": [[{"role": "user"}], []]})
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


_PARQUET = _parquet_bytes()


@st.composite
def damaged_parquet(draw: st.DrawFn) -> bytes:
    """A valid Parquet file, cut short or with a few bytes overwritten."""
    data = bytearray(_PARQUET)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))])


@st.composite
def compressed(draw: st.DrawFn, compress: Any) -> bytes:
    """Random text, compressed and maybe cut short; or bytes that are not compressed at all."""
    data = draw(file_bytes)
    if draw(st.integers(0, 3)) == 0:
        return data
    packed = compress(data)
    return packed[: draw(st.one_of(st.just(len(packed)), st.integers(0, len(packed))))]


def _strategy(suffix: str) -> st.SearchStrategy[bytes]:
    if suffix == ".parquet":
        return st.one_of(file_bytes, damaged_parquet())
    if suffix.endswith(".gz"):
        return compressed(gzip.compress)
    if suffix.endswith(".bz2"):
        return compressed(bz2.compress)
    return file_bytes


def _write(folder: Path, suffix: str, data: bytes) -> Path:
    path = folder / f"data{suffix}"
    path.write_bytes(data)
    return path


def _consume(items: Iterator[Any]) -> tuple[list[Any], DataError | None]:
    """Everything ``items`` yields, and the DataError that ended it (any other error fails)."""
    seen: list[Any] = []
    try:
        for item in items:
            seen.append(item)
    except DataError as err:
        return seen, err
    return seen, None


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_any_bytes_give_rows_rejections_or_a_data_error(
    suffix: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("bytes")

    @_settings(SUFFIXES[suffix])
    @given(data=_strategy(suffix))
    def check(data: bytes) -> None:
        path = _write(folder, suffix, data)
        lenient, lenient_error = _consume(iter_rows(path))
        strict, strict_error = _consume(read_rows(path))
        for item in lenient:
            assert isinstance(item, Row | Rejected)
            assert isinstance(item.file, str) and item.line >= 1
            if isinstance(item, Row):
                assert isinstance(item.fields, dict)
            else:
                assert item.reason in LINE_REASONS and item.message
        # read_rows is iter_rows that stops at the first Rejected, with its message
        # (compared by repr: a NaN read twice is two unequal floats)
        assert repr(strict) == repr(list(_until_rejected(lenient)))
        first_rejected = next((i for i in lenient if isinstance(i, Rejected)), None)
        if first_rejected is not None:
            assert strict_error is not None
            hint = f" (hint: {strict_error.hint})" if strict_error.hint else ""
            assert first_rejected.message == strict_error.problem + hint
            assert (first_rejected.file, first_rejected.line) == (
                strict_error.file,
                strict_error.line,
            )
        else:
            assert str(strict_error) == str(lenient_error)

    check()


def _until_rejected(items: list[Any]) -> Iterator[Row]:
    for item in items:
        if isinstance(item, Rejected):
            return
        yield item


# --- rows → records ----------------------------------------------------------------------------

_COLUMNS = sorted(
    {f for fields in FIELDS.values() for f in fields} | {a for v in ALIASES.values() for a in v}
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.one_of(st.sampled_from([*ROLES, "tool"]), json_scalars),
                "content": st.one_of(st.text(max_size=12), json_scalars),
            }
        ),
        st.fixed_dictionaries({"from": st.just("human"), "value": st.text(max_size=5)}),
        json_values,
    ),
    max_size=4,
)
row_fields = st.dictionaries(
    st.one_of(st.sampled_from(_COLUMNS), st.text(max_size=8)),
    st.one_of(json_values, messages, messages.map(json.dumps)),  # a JSON list in a CSV cell
    max_size=6,
)
mappings = st.dictionaries(
    st.sampled_from(sorted({f for fields in FIELDS.values() for f in fields})),
    st.one_of(st.sampled_from(_COLUMNS), st.text(max_size=4)),
    max_size=3,
)


@_settings(1000)
@given(fields=row_fields, fmt=st.sampled_from(FORMATS), mapping=mappings)
def test_any_row_gives_a_record_or_a_data_error(
    fields: dict[str, Any], fmt: Format, mapping: dict[str, str]
) -> None:
    try:
        record = normalize_row(Row(fields, "f.jsonl", 1), fmt, mapping)
    except DataError as err:
        assert err.file == "f.jsonl" and err.line == 1
        return
    assert isinstance(record, Record) and record.format == fmt
    assert set(record.data) == set(FIELDS[fmt])


# ---- a folder written by save_to_disk, damaged ------------------------------------------------


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path_factory.mktemp("saved") / "ds"
    rows = {"text": ["great film", "dull plot", "fine"], "label": ["pos", "neg", "pos"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    return folder


@st.composite
def damage(draw: st.DrawFn, files: list[str]) -> list[tuple[str, str, Any]]:
    """Edits of a saved dataset's files: bytes overwritten, cut short, a JSON value replaced,
    a file removed or emptied."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(files))
        kind = draw(st.sampled_from(["bytes", "cut", "json", "remove", "empty"]))
        value = draw(st.tuples(st.integers(0, 50), json_values) if kind == "json"
                     else st.integers(0, 2**31))  # fmt: skip
        edits.append((name, kind, value))
    return edits


def _apply(folder: Path, edits: list[tuple[str, str, Any]]) -> None:
    for name, kind, value in edits:
        path = folder / name
        if not path.exists():
            continue
        data = bytearray(path.read_bytes())
        if kind == "remove":
            path.unlink()
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "cut":
            path.write_bytes(bytes(data[: value % (len(data) + 1)]))
        elif kind == "bytes" and data:
            for i in range(1 + value % 4):
                data[(value * (i + 7)) % len(data)] = (value >> i) % 256
            path.write_bytes(bytes(data))
        elif kind == "json":
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc:
                at, new = value
                doc[sorted(doc)[at % len(doc)]] = new
            path.write_text(json.dumps(doc))


def test_a_damaged_saved_dataset_gives_rows_or_a_data_error(
    saved_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = sorted(p.name for p in saved_dataset.iterdir())
    scratch = tmp_path_factory.mktemp("damaged")

    @_settings(300)
    @given(edits=damage(files))
    def check(edits: list[tuple[str, str, Any]]) -> None:
        folder = scratch / "ds"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(saved_dataset, folder)
        _apply(folder, edits)
        rows, _error = _consume(iter_rows(folder))
        assert all(isinstance(r, Row) and r.file == str(folder) for r in rows)

    check()
