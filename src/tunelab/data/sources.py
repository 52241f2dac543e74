"""Read data files into :class:`~tunelab.data.types.Row` values.

Supported files, chosen by suffix:

- ``.jsonl`` / ``.ndjson``: one JSON object per line; blank lines are skipped.
- ``.json``: a list of objects, or an object with exactly one list-valued key
  (``{"data": [...]}``); ``Row.line`` is the item's 1-based index in that list.
- ``.csv`` / ``.tsv``: a header row, then one record per row; ``Row.line`` is the physical
  line where the record starts (the header is line 1), so quoted multi-line fields keep
  later line numbers right.
- ``.parquet``: ``Row.line`` is the 1-based row index.
- ``.gz`` / ``.bz2`` compressed variants of the text formats, e.g. ``train.csv.bz2``.

Text must be UTF-8 (a leading byte-order mark is accepted). Every problem raises
:class:`~tunelab.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, cast

from tunelab.data.types import Row
from tunelab.errors import DataError

__all__ = ["SUPPORTED_SUFFIXES", "expand_sources", "read_rows"]

_TEXT_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
_COMPRESSIONS: tuple[str, ...] = (".gz", ".bz2")
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    *_TEXT_KINDS,
    ".parquet",
    *(f"{s}{c}" for s in _TEXT_KINDS for c in _COMPRESSIONS),
)
_UTF8_HINT = "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"


def _kind(path: Path) -> tuple[str, str | None]:
    """``(kind, compression suffix or None)`` of a file name, or DataError."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in _COMPRESSIONS else None
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet" and compression is None:
        return "parquet", None
    if last in _TEXT_KINDS:
        return _TEXT_KINDS[last], compression
    raise DataError(
        f"unsupported file type '{''.join(path.suffixes) or '(no suffix)'}'",
        file=str(path),
        hint=f"use one of: {', '.join(SUPPORTED_SUFFIXES)}",
    )


def read_rows(path: str | Path) -> Iterator[Row]:
    """Yield the rows of one data file, lazily; raise DataError if it holds none."""
    path = Path(path)
    kind, compression = _kind(path)
    if not path.exists():
        raise DataError("file not found", file=str(path), hint="check the path in data.source")
    if path.is_dir():
        raise DataError("is a folder, not a file", file=str(path), hint="name files or a glob")
    if kind == "parquet":
        rows: Iterator[Row] = _parquet_rows(path)
    elif kind == "json":
        rows = _json_rows(path, compression)
    elif kind == "jsonl":
        rows = _guard_io(_jsonl_rows(path, compression), path)
    else:
        rows = _guard_io(_csv_rows(path, compression, kind), path)
    count = 0
    for row in rows:
        count += 1
        yield row
    if count == 0:
        raise DataError("no rows", file=str(path), hint="the file is empty or holds only a header")


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == ".bz2":
        return cast(IO[bytes], bz2.open(path, "rb"))
    return path.open("rb")


def _decoded_lines(raw_lines: Iterable[bytes], file: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line; undecodable bytes raise DataError with the line."""
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"bytes that are not UTF-8 (0x{raw[err.start]:02x} at byte {err.start + 1} "
                "of the line)",
                file=file,
                line=lineno,
                hint=_UTF8_HINT,
            ) from None


def _guard_io(rows: Iterator[Row], path: Path) -> Iterator[Row]:
    """Turn decompression and read failures into a DataError naming the file."""
    try:
        yield from rows
    except (OSError, EOFError) as err:
        raise DataError(
            f"cannot read the file: {err}",
            file=str(path),
            hint="the file may be truncated or not compressed the way its suffix says",
        ) from None


def _jsonl_rows(path: Path, compression: str | None) -> Iterator[Row]:
    file = str(path)
    with _open_binary(path, compression) as fh:
        for lineno, text in _decoded_lines(fh, file):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"invalid JSON: {err.msg} (column {err.colno})",
                    file=file,
                    line=lineno,
                    hint="each line of a .jsonl file must be one complete JSON object; "
                    "a JSON list belongs in a .json file",
                ) from None
            yield Row(_object(value, file, lineno), file, lineno)


def _object(value: Any, file: str, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(
            f"expected a JSON object, got {type(value).__name__}",
            file=file,
            line=line,
            hint='each row must look like {"column": value, ...}',
        )
    return value


def _json_rows(path: Path, compression: str | None) -> Iterator[Row]:
    file = str(path)
    try:
        with _open_binary(path, compression) as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read the file: {err}", file=file) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError("bytes that are not UTF-8", file=file, line=line, hint=_UTF8_HINT) from None
    if not text.strip():
        return iter(())
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON: {err.msg} (column {err.colno})",
            file=file,
            line=err.lineno,
            hint="a .json file holds one JSON list of objects; use .jsonl for one per line",
        ) from None
    items = _json_items(value, file)
    return (Row(_object(item, file, i), file, i) for i, item in enumerate(items, 1))


def _json_items(value: Any, file: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(lists) == 1:
            return value[lists[0]]
        found = f"list-valued keys {', '.join(lists)}" if lists else "no list-valued key"
        raise DataError(
            f"a JSON object at the top needs exactly one list-valued key; found {found}",
            file=file,
            hint='write a list of rows, or {"data": [rows...]}',
        )
    raise DataError(
        f"expected a JSON list of objects, got {type(value).__name__}",
        file=file,
        hint='write a list of rows, or {"data": [rows...]}',
    )


def _csv_rows(path: Path, compression: str | None, kind: str) -> Iterator[Row]:
    file = str(path)
    delimiter = "\t" if kind == "tsv" else ","
    with _open_binary(path, compression) as fh:
        lines = _decoded_lines(fh, file)
        reader = csv.reader((text for _, text in lines), delimiter=delimiter, strict=False)
        header: list[str] | None = None
        start = 1
        try:
            for values in reader:
                line, start = start, reader.line_num + 1
                if not values:  # a blank line
                    continue
                if header is None:
                    header = _header(values, file, line)
                    continue
                if len(values) != len(header):
                    raise DataError(
                        f"has {len(values)} values but the header has {len(header)} columns",
                        file=file,
                        line=line,
                        hint=f"quote values that contain '{delimiter}' or line breaks with \"",
                    )
                yield Row(dict(zip(header, values, strict=True)), file, line)
        except csv.Error as err:
            raise DataError(f"malformed {kind.upper()}: {err}", file=file, line=start) from None


def _header(values: list[str], file: str, line: int) -> list[str]:
    header = [v.strip() for v in values]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise DataError(
            f"duplicate column names in the header: {', '.join(duplicates)}",
            file=file,
            line=line,
            hint="give every column a distinct name",
        )
    return header


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = str(path)
    try:
        parquet = pq.ParquetFile(path)
        line = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for fields in batch.to_pylist():
                line += 1
                yield Row(fields, file, line)
    except (pa.ArrowException, OSError) as err:
        raise DataError(
            f"cannot read Parquet: {err}", file=file, hint="is it really a Parquet file?"
        ) from None


def expand_sources(source: str | list[str]) -> list[Path]:
    """The files named by paths, globs (``data/*.jsonl``, ``**`` recurses) or folders.

    Globs and folders expand to sorted file lists (a folder: its supported files). Order of
    the entries is kept and duplicates are dropped. A glob matching nothing, a missing path
    or an empty list raises DataError.
    """
    entries = [source] if isinstance(source, str) else list(source)
    if not entries:
        raise DataError("data.source is an empty list", hint="name at least one file")
    paths: list[Path] = []
    for entry in entries:
        expanded = str(Path(entry).expanduser())
        if glob.has_magic(expanded):
            matches = sorted(p for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(
                    f"the pattern '{entry}' matches no files",
                    hint="check the folder and the pattern; relative paths start at the "
                    "current folder",
                )
            paths.extend(Path(p) for p in matches)
        elif Path(expanded).is_dir():
            found = sorted(p for p in Path(expanded).iterdir() if p.is_file() and _supported(p))
            if not found:
                raise DataError(
                    f"the folder '{entry}' holds no data files",
                    hint=f"supported: {', '.join(SUPPORTED_SUFFIXES)}",
                )
            paths.extend(found)
        elif Path(expanded).exists():
            paths.append(Path(expanded))
        else:
            raise DataError(
                "file not found",
                file=entry,
                hint="check data.source; relative paths start at the current folder",
            )
    return list(dict.fromkeys(paths))


def _supported(path: Path) -> bool:
    try:
        _kind(path)
    except DataError:
        return False
    return True
