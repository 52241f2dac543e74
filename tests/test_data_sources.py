"""Reading data files into rows: every file type, and the errors users meet."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.data.sources import expand_sources, read_rows
from tunelab.errors import DataError

ROWS = [
    {"text": "great film", "label": "pos"},
    {"text": "dull,\nlong film", "label": "neg"},  # a comma and a line break inside a field
    {"text": "fine", "label": "pos"},
]


def _csv_text(rows: list[dict[str, str]], delimiter: str = ",") -> str:
    lines: list[str] = []

    class _Sink:
        def write(self, line: str) -> None:
            lines.append(line)

    writer = csv.DictWriter(_Sink(), fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return "".join(lines)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    name = path.name
    if ".jsonl" in name:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif ".json" in name:
        data = json.dumps(rows).encode()
    elif ".tsv" in name:
        data = _csv_text(rows, "\t").encode()
    else:
        data = _csv_text(rows).encode()
    if name.endswith(".bz2"):
        data = bz2.compress(data)
    elif name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name", ["d.jsonl", "d.json", "d.csv", "d.tsv", "d.csv.bz2", "d.jsonl.gz", "d.tsv.gz"]
)
def test_round_trip_text_formats(tmp_path: Path, name: str) -> None:
    rows = list(read_rows(_write(tmp_path / name, ROWS)))
    assert [r.fields for r in rows] == ROWS
    assert all(r.file == str(tmp_path / name) for r in rows)


def test_round_trip_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = list(read_rows(path))
    assert [r.fields for r in rows] == ROWS
    assert [r.line for r in rows] == [1, 2, 3]


def test_csv_lines_are_physical_record_starts(tmp_path: Path) -> None:
    # header line 1; row 2 spans lines 3-4, so row 3 starts on line 5
    rows = list(read_rows(_write(tmp_path / "d.csv", ROWS)))
    assert [r.line for r in rows] == [2, 3, 5]


def test_jsonl_skips_blank_lines_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n', encoding="utf-8")
    assert [(r.fields["a"], r.line) for r in read_rows(path)] == [(1, 1), (2, 4)]


def test_json_object_with_one_list_key(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 2, "data": ROWS}), encoding="utf-8")
    rows = list(read_rows(path))
    assert [r.fields for r in rows] == ROWS and [r.line for r in rows] == [1, 2, 3]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhi,x\n")
    assert next(read_rows(path)).fields == {"text": "hi", "label": "x"}


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(read_rows(path))
    assert info.value.line == 3
    assert "bad.jsonl:3" in str(info.value)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: expected a JSON object, got list"):
        list(read_rows(path))


def test_json_object_without_a_single_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"a": [1], "b": [2]}), encoding="utf-8")
    with pytest.raises(DataError, match="list-valued keys a, b"):
        list(read_rows(path))


def test_csv_row_with_wrong_number_of_values(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhi,x\nhello, world,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.csv:3: has 3 values but the header has 2"):
        list(read_rows(path))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n'),
        ("d.csv", b"text\ncaf\xe9\n"),
        ("d.json", b'[{"text": "ok"},\n{"text": "caf\xe9"}]\n'),
    ],
)
def test_undecodable_bytes_name_the_line(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)  # 0xe9 is "é" in Latin-1, invalid alone in UTF-8
    with pytest.raises(DataError, match="not UTF-8") as info:
        list(read_rows(path))
    assert info.value.line == 2 and f"{name}:2" in str(info.value)
    assert "UTF-8" in (info.value.hint or "")


@pytest.mark.parametrize("content", ["", "\n\n", "text,label\n"])
def test_empty_file_has_no_rows(tmp_path: Path, content: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        list(read_rows(path))


def test_empty_json_list_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="no rows"):
        list(read_rows(path))


def test_unknown_suffix_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "d.xlsx"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'") as info:
        list(read_rows(path))
    assert ".jsonl" in (info.value.hint or "") and ".csv.bz2" in (info.value.hint or "")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        list(read_rows(tmp_path / "nope.jsonl"))


def test_corrupt_compressed_file(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read the file"):
        list(read_rows(path))


def test_expand_sources_globs_sorted_and_deduplicated(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.csv"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    paths = expand_sources([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert [p.name for p in paths] == ["a.jsonl", "b.jsonl"]
    assert [p.name for p in expand_sources(str(tmp_path))] == ["a.jsonl", "b.jsonl", "c.csv"]


def test_expand_sources_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="matches no files"):
        expand_sources(str(tmp_path / "*.parquet"))
    with pytest.raises(DataError, match="file not found"):
        expand_sources(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="empty list"):
        expand_sources([])
