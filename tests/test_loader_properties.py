"""Property tests: whatever bytes a data file holds and whatever a row holds, the loaders
answer with rows, Rejected values or a DataError, never another exception."""

from __future__ import annotations

import gzip
import json
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

# Derandomised and without an example database: every run, locally or in CI, tries the same
# examples. A few hundred examples keep the file under 20 s on one core.
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".jsonl.gz", ".parquet"]

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
def gzipped(draw: st.DrawFn) -> bytes:
    """Random text, gzipped and maybe cut short; or bytes that are not gzip at all."""
    data = draw(file_bytes)
    if draw(st.integers(0, 3)) == 0:
        return data
    packed = gzip.compress(data)
    return packed[: draw(st.one_of(st.just(len(packed)), st.integers(0, len(packed))))]


_BYTES_FOR = {".parquet": st.one_of(file_bytes, damaged_parquet()), ".jsonl.gz": gzipped()}


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

    @SETTINGS
    @given(data=_BYTES_FOR.get(suffix, file_bytes))
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


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
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
