"""Reading data files into rows: every file type, and the errors users meet."""

from __future__ import annotations

import bz2
import csv
import gc
import gzip
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.data.formats import normalize_row
from tunelab.data.sources import LINE_REASONS, expand_sources, iter_rows, read_rows
from tunelab.data.types import Rejected, Row
from tunelab.errors import DataError, DependencyError

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
    assert [Path(p).name for p in paths] == ["a.jsonl", "b.jsonl"]
    assert [Path(p).name for p in expand_sources(str(tmp_path))] == ["a.jsonl", "b.jsonl", "c.csv"]


def test_expand_sources_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="matches no files"):
        expand_sources(str(tmp_path / "*.parquet"))
    with pytest.raises(DataError, match="file not found"):
        expand_sources(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="empty list"):
        expand_sources([])


# --- lenient reading: line-level problems come back as Rejected values ---------------------


def _rejected(path: Path) -> tuple[list[Row], list[Rejected]]:
    items = list(iter_rows(path))
    assert all(isinstance(item, Row | Rejected) for item in items)
    return [i for i in items if isinstance(i, Row)], [i for i in items if isinstance(i, Rejected)]


def _strict_error(path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        list(read_rows(path))
    return info.value


def _same_problem(rejected: Rejected, err: DataError) -> bool:
    """Whether ``rejected`` tells what ``err`` does: the message without the location (kept
    in ``file``/``line``), then the hint."""
    hint = f" (hint: {err.hint})" if err.hint else ""
    where = (rejected.file, rejected.line, rejected.field)
    return rejected.message == err.problem + hint and where == (err.file, err.line, err.field)


def test_iter_rows_rejects_bad_jsonl_lines_and_reads_on(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": oops}\n[1, 2]\n\n{"a": "caf\xe9"}\n{"a": 5}\n')
    rows, rejected = _rejected(path)
    assert [(r.fields["a"], r.line) for r in rows] == [(1, 1), (5, 6)]
    assert [(r.reason, r.line) for r in rejected] == [
        ("invalid JSON", 2),
        ("not a JSON object", 3),
        ("not UTF-8", 5),
    ]
    assert [r.raw for r in rejected] == ['{"a": oops}', "[1, 2]", '{"a": "caf\ufffd"}']
    assert all(r.file == str(path) and r.field is None for r in rejected)
    assert {r.reason for r in rejected} <= set(LINE_REASONS)
    # the message is the text of the DataError that read_rows raises for the same line
    assert _same_problem(rejected[0], _strict_error(path))
    assert rejected[0].message.startswith("invalid JSON: Expecting value (column 7) (hint: each")


def test_iter_rows_rejects_bad_csv_records_and_reads_on(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(
        b'text,label\nhi,x\nhello, world,y\n"multi\ncaf\xe9 line",z\nlast,w\n'
    )  # the record on lines 4-5 holds a Latin-1 byte on line 5
    rows, rejected = _rejected(path)
    assert [(r.fields["text"], r.line) for r in rows] == [("hi", 2), ("last", 6)]
    assert [(r.reason, r.line) for r in rejected] == [
        ("wrong number of values", 3),
        ("not UTF-8", 5),
    ]
    assert rejected[0].raw == "hello, world,y"
    assert rejected[1].raw == 'caf\ufffd line",z'
    assert _same_problem(rejected[0], _strict_error(path))
    assert "has 3 values but the header has 2 columns" in rejected[0].message


def test_tsv_wrong_number_of_values_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\na\tb\tc\nok\tx\n", encoding="utf-8")
    rows, rejected = _rejected(path)
    assert [r.fields for r in rows] == [{"text": "ok", "label": "x"}]
    assert [(r.reason, r.line, r.raw) for r in rejected] == [
        ("wrong number of values", 2, "a\tb\tc")
    ]


def test_csv_header_that_is_not_utf8_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"caf\xe9,label\nhi,x\n")
    with pytest.raises(DataError, match=r"d\.csv:1: bytes that are not UTF-8"):
        list(iter_rows(path))


def test_json_items_that_are_not_objects_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"a": 1}, "text", [1], {"a": 2}]), encoding="utf-8")
    rows, rejected = _rejected(path)
    assert [(r.fields, r.line) for r in rows] == [({"a": 1}, 1), ({"a": 2}, 4)]
    assert [(r.reason, r.line, r.raw) for r in rejected] == [
        ("not a JSON object", 2, '"text"'),
        ("not a JSON object", 3, "[1]"),
    ]


def test_invalid_json_file_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"a": 1},\n {"a": oops}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.json:2: invalid JSON"):
        list(iter_rows(path))


def test_rejected_raw_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": ' + "9" * 10_000 + "\n", encoding="utf-8")
    (bad,) = _rejected(path)[1]
    assert bad.reason == "invalid JSON" and 2000 <= len(bad.raw) <= 2010


def test_deeply_nested_json_line_is_rejected_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n' + "[" * 100_000 + "\n", encoding="utf-8")
    (bad,) = _rejected(path)[1]
    assert bad.reason == "invalid JSON" and bad.line == 2


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.json", "d.tsv.gz"])
@pytest.mark.parametrize(("codec", "label"), [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_utf16_file_is_one_file_error(tmp_path: Path, name: str, codec: str, label: str) -> None:
    text = '[{"text": "hi"}]' if name.endswith(".json") else 'text\n"hi"\n'
    data = text.encode(codec)  # Python writes a byte-order mark first
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(DataError, match=f"the file is {label}, not UTF-8") as info:
        list(iter_rows(path))
    hint = info.value.hint or ""
    assert f"the file is {label} (it starts with a {label} byte-order mark)" in hint
    assert f"iconv -f {codec} -t utf-8" in hint


def test_utf16_without_bom_is_one_file_error(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"text": "hi"}\n{"text": "yo"}\n'.encode("utf-16-le"))
    with pytest.raises(DataError, match="not UTF-8 text") as info:
        list(iter_rows(path))
    assert "UTF-16" in (info.value.hint or "")


def test_cp1252_bytes_are_named_in_the_hint(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    # "café" and a curly apostrophe (0x92) as Windows-1252 writes them
    path.write_bytes('{"text": "the café\'s menu"}\n'.replace("'", "\u2019").encode("cp1252"))
    (bad,) = _rejected(path)[1]
    assert bad.reason == "not UTF-8"
    assert "(0xe9 at byte 18 of the line)" in bad.message
    assert "Windows-1252/Latin-1" in bad.message and "café’s menu" in bad.message
    assert "iconv -f cp1252 -t utf-8" in bad.message


def test_bytes_that_are_not_cp1252_either_get_the_plain_hint(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "\x81\x8d"}\n')
    err = _strict_error(path)
    assert err.hint is not None and "Windows-1252" not in err.hint and "UTF-8" in err.hint


# --- empty files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("d.csv", "", "the file is empty"),
        ("d.csv", "\n\n", "the file is empty"),
        ("d.csv", "text,label\n", r"the file holds only a header \(text, label\)"),
        ("d.tsv", "text\tlabel\n\n", r"the file holds only a header \(text, label\)"),
        ("d.jsonl", "", "the file is empty"),
        ("d.jsonl", "\n  \n", "the file is empty"),
        ("d.json", " ", "the file is empty"),
        ("d.json", '{"data": []}', "the JSON list is empty"),
    ],
)
def test_empty_file_and_header_only_are_told_apart(
    tmp_path: Path, name: str, content: str, why: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=f"no rows: {why}"):
        list(iter_rows(path))


def test_parquet_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match=r"no rows: the Parquet file has columns \(text\)"):
        list(iter_rows(path))


def test_a_file_of_only_bad_lines_is_all_rejected_not_empty(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("oops\n[1]\n", encoding="utf-8")
    assert [r.reason for r in _rejected(path)[1]] == ["invalid JSON", "not a JSON object"]


# --- Hugging Face datasets saved with save_to_disk -------------------------------------------

CHAT = [
    {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ],
        "topic": "greeting",
    },
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        "topic": "maths",
    },
]


@pytest.fixture
def hf_datasets() -> Any:
    return pytest.importorskip("datasets")


@pytest.fixture
def saved_dict(tmp_path: Path, hf_datasets: Any) -> Path:
    """A DatasetDict with splits train (3 rows) and test (1 row), saved to disk."""
    train = hf_datasets.Dataset.from_list(ROWS)
    test = hf_datasets.Dataset.from_list([{"text": "meh", "label": "neg"}])
    folder = tmp_path / "saved_dict"
    hf_datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    return folder


def test_saved_dataset_chat_rows_are_plain_python(tmp_path: Path, hf_datasets: Any) -> None:
    folder = tmp_path / "saved"
    hf_datasets.Dataset.from_list(CHAT).save_to_disk(str(folder))
    rows = list(read_rows(folder))
    assert [r.fields for r in rows] == CHAT  # no _split: a single Dataset has none
    assert [(r.file, r.line) for r in rows] == [(str(folder), 1), (str(folder), 2)]
    messages = rows[1].fields["messages"]
    assert type(messages) is list and all(type(m) is dict for m in messages)
    record = normalize_row(rows[1], "chat", {})
    assert record.data["messages"][-1] == {"role": "assistant", "content": "4"}
    assert record.extra == {"topic": "maths"}


def test_saved_dataset_with_a_numpy_format_still_gives_python(
    tmp_path: Path, hf_datasets: Any
) -> None:
    folder = tmp_path / "saved"
    dataset = hf_datasets.Dataset.from_list([{"n": 1, "v": [1.5, 2.5]}])
    dataset.with_format("numpy").save_to_disk(str(folder))
    (row,) = read_rows(folder)
    assert row.fields == {"n": 1, "v": [1.5, 2.5]} and type(row.fields["v"]) is list


def test_saved_dataset_dict_rows_carry_their_split(saved_dict: Path) -> None:
    rows = list(iter_rows(saved_dict))
    assert all(isinstance(r, Row) for r in rows)
    assert [(r.fields["_split"], r.fields["text"]) for r in rows if isinstance(r, Row)] == [
        ("train", "great film"),
        ("train", "dull,\nlong film"),
        ("train", "fine"),
        ("test", "meh"),
    ]
    assert [(r.file, r.line) for r in rows] == [
        (f"{saved_dict}[train]", 1),
        (f"{saved_dict}[train]", 2),
        (f"{saved_dict}[train]", 3),
        (f"{saved_dict}[test]", 1),
    ]


def test_saved_dataset_split_selection(saved_dict: Path) -> None:
    assert [r.fields["text"] for r in read_rows(f"{saved_dict}:test")] == ["meh"]
    both = [(r.fields["_split"], r.line) for r in read_rows(f"{saved_dict}:test,train")]
    assert both == [("test", 1), ("train", 1), ("train", 2), ("train", 3)]


def test_saved_dataset_unknown_split_lists_the_splits(saved_dict: Path) -> None:
    with pytest.raises(DataError, match="no split 'validation'; the dataset has train, test"):
        list(read_rows(f"{saved_dict}:train,validation"))


def test_split_suffix_needs_a_dataset_dict(tmp_path: Path, hf_datasets: Any) -> None:
    folder = tmp_path / "saved"
    hf_datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    with pytest.raises(DataError, match="a single Dataset without splits"):
        list(read_rows(f"{folder}:train"))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DataError, match=r"'.*plain' is not a dataset saved with save_to_disk"):
        list(read_rows(f"{plain}:train"))


def test_saved_dataset_needs_the_hf_extra(
    saved_dict: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DependencyError, match="datasets") as info:
        list(read_rows(saved_dict))
    assert "tunelab[hf]" in (info.value.hint or "")


def test_expand_sources_recognises_saved_datasets_and_hub_names(
    tmp_path: Path, saved_dict: Path
) -> None:
    data = _write(tmp_path / "a.jsonl", ROWS)
    entries = [str(data), str(saved_dict), f"{saved_dict}:test", "hf:owner/name:train", str(data)]
    assert expand_sources(entries) == [data, saved_dict, f"{saved_dict}:test", entries[3]]
    # the folder holds dataset_dict.json: it must not be read as a folder of .json files
    assert expand_sources(str(saved_dict)) == [saved_dict]
    with pytest.raises(DataError, match="not a hub dataset name"):
        expand_sources("hf:")


# --- the Hugging Face hub ---------------------------------------------------------------------


def test_hub_offline_fails_fast_without_touching_the_network(
    monkeypatch: pytest.MonkeyPatch, hf_datasets: Any
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(hf_datasets, "load_dataset", no_network)
    with pytest.raises(DataError) as info:
        list(iter_rows("hf:owner/name:train"))
    assert "cannot reach the Hugging Face hub for 'owner/name' (offline)" in str(info.value)
    assert "save_to_disk(DIR)" in (info.value.hint or "")


def test_hub_connection_error_becomes_offline_data_error(
    monkeypatch: pytest.MonkeyPatch, hf_datasets: Any
) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub")

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"hub for 'owner/name' \(offline\)") as info:
        list(read_rows("hf:owner/name"))
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_hub_rows_are_streamed_with_split_and_index(
    monkeypatch: pytest.MonkeyPatch, hf_datasets: Any
) -> None:
    calls: list[tuple[str, str | None, bool]] = []
    splits = {"train": CHAT, "test": CHAT[:1]}

    def load_dataset(name: str, split: str | None = None, streaming: bool = False) -> Any:
        # stands in for an IterableDataset(Dict): iterating one yields plain dicts
        calls.append((name, split, streaming))
        return splits if split is None else splits[split]

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_datasets, "load_dataset", load_dataset)
    rows = list(read_rows("hf:owner/name:train"))
    assert calls == [("owner/name", "train", True)]
    assert [(r.file, r.line) for r in rows] == [
        ("hf:owner/name[train]", 1),
        ("hf:owner/name[train]", 2),
    ]
    assert rows[0].fields == {**CHAT[0], "_split": "train"}
    every = [(r.file, r.line, r.fields["_split"]) for r in read_rows("hf:owner/name")]
    assert calls[-1] == ("owner/name", None, True)
    assert every == [
        ("hf:owner/name[train]", 1, "train"),
        ("hf:owner/name[train]", 2, "train"),
        ("hf:owner/name[test]", 1, "test"),
    ]


def test_hub_errors_during_streaming_are_data_errors(
    monkeypatch: pytest.MonkeyPatch, hf_datasets: Any
) -> None:
    def broken() -> Any:
        yield CHAT[0]
        raise TimeoutError("read timed out")

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_datasets, "load_dataset", lambda *a, **k: broken())
    rows = iter_rows("hf:owner/name:train")
    assert isinstance(next(rows), Row)
    with pytest.raises(DataError, match=r"\(offline\)"):
        next(rows)


# --- streaming ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_jsonl_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "a fairly ordinary review of a film " * 5, "label": "pos"}) + "\n"
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(200_000_000 // len(line) // 1000):
            fh.write(line * 1000)
    size = path.stat().st_size
    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak, count = baseline, 0
    for _ in iter_rows(path):
        count += 1
        if count % 20_000 == 0:
            peak = max(peak, process.memory_info().rss)
    assert count == size // len(line)
    growth = peak - baseline
    assert growth / size < 0.05, (
        f"RSS grew {growth / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"
    )
