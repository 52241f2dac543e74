"""Read data sources into :class:`~tunelab.data.types.Row` values.

Supported files, chosen by suffix:

- ``.jsonl`` / ``.ndjson``: one JSON object per line; blank lines are skipped.
- ``.json``: a list of objects, or an object with exactly one list-valued key
  (``{"data": [...]}``); ``Row.line`` is the item's 1-based index in that list. The only
  format read whole into memory; every other one is read a line or a batch at a time.
- ``.csv`` / ``.tsv``: a header row, then one record per row; ``Row.line`` is the physical
  line where the record starts (the header is line 1), so quoted multi-line fields keep
  later line numbers right.
- ``.parquet``: ``Row.line`` is the 1-based row index.
- ``.gz`` / ``.bz2`` compressed variants of the text formats, e.g. ``train.csv.bz2``.

Besides files, a source may be a folder written by ``save_to_disk`` or a hub dataset
(``hf:owner/name``); see :mod:`tunelab.data.hf_source`.

Text must be UTF-8 (a leading byte-order mark is accepted). :func:`iter_rows` yields a
:class:`~tunelab.data.types.Rejected` for each unusable line and reads on; its reasons are
:data:`LINE_REASONS`. :func:`read_rows` raises the first as a DataError. Problems with the
whole file (missing, unreadable, not UTF-8 at all, no rows) raise DataError in both.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import glob
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from tunelab.data.hf_source import hub_rows, parse_hub, parse_saved, saved_rows
from tunelab.data.types import Rejected, Row
from tunelab.errors import DataError

__all__ = ["LINE_REASONS", "SUPPORTED_SUFFIXES", "expand_sources", "iter_rows", "read_rows"]

_TEXT_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
_COMPRESSIONS: tuple[str, ...] = (".gz", ".bz2")
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    *_TEXT_KINDS,
    ".parquet",
    *(f"{s}{c}" for s in _TEXT_KINDS for c in _COMPRESSIONS),
)
INVALID_JSON, NOT_OBJECT = "invalid JSON", "not a JSON object"
WRONG_COUNT, NOT_UTF8 = "wrong number of values", "not UTF-8"
LINE_REASONS: tuple[str, ...] = (INVALID_JSON, NOT_OBJECT, WRONG_COUNT, NOT_UTF8)
_RAW_CHARS = 2000  # Rejected.raw keeps this much of the line
_UTF8_HINT = "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16: FF FE 00 00 starts with FF FE
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class _Problem:
    """A line-level problem: the Rejected reason, and the DataError a strict reader raises."""

    reason: str
    error: DataError
    raw: str


def iter_rows(source: str | Path) -> Iterator[Row | Rejected]:
    """Yield the rows of one source lazily, and a Rejected for each unusable line.

    ``source`` is a file, a saved-dataset folder (``DIR`` or ``DIR:split,...``) or
    ``hf:owner/name[:split]``. File-level problems raise DataError.
    """
    for item in _items(source):
        if isinstance(item, _Problem):
            err = item.error
            yield Rejected(
                file=err.file or str(source),
                line=err.line or 0,
                reason=item.reason,
                message=err.detail,
                field=err.field,
                raw=item.raw,
            )
        else:
            yield item


def read_rows(source: str | Path) -> Iterator[Row]:
    """Yield the rows of one source lazily; raise DataError at the first unusable line."""
    for item in _items(source):
        if isinstance(item, _Problem):
            raise item.error
        yield item


def _items(source: str | Path) -> Iterator[Row | _Problem]:
    if isinstance(source, str) and source.startswith("hf:"):
        return hub_rows(source)
    saved = parse_saved(source)
    if saved is not None:
        return saved_rows(*saved)
    path = Path(source)
    if path.is_dir():
        raise DataError(
            "is a folder, not a file",
            file=str(path),
            hint="name files or a glob; a folder written by save_to_disk holds "
            "dataset_dict.json, or dataset_info.json and state.json",
        )
    kind, compression = _kind(path)
    if not path.exists():
        raise DataError("file not found", file=str(path), hint="check the path in data.source")
    if kind == "parquet":
        return _parquet_rows(path)
    if kind == "json":
        return _json_items(path, compression)
    if kind == "jsonl":
        return _guard_io(_jsonl_items(path, compression), path)
    return _guard_io(_csv_items(path, compression, kind), path)


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


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == ".bz2":
        return cast(IO[bytes], bz2.open(path, "rb"))
    return path.open("rb")


def _guard_io(items: Iterator[Row | _Problem], path: Path) -> Iterator[Row | _Problem]:
    """Turn decompression and read failures into a DataError naming the file."""
    try:
        yield from items
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: BaseException) -> DataError:
    return DataError(
        f"cannot read the file: {err}",
        file=str(path),
        hint="the file may be truncated or not compressed the way its suffix says",
    )


def _clip(text: str) -> str:
    text = text.rstrip("\r\n")
    return text if len(text) <= _RAW_CHARS else text[:_RAW_CHARS] + "..."


def _check_encoding(first_line: bytes, file: str) -> None:
    """Raise a file-level DataError for UTF-16/32 text, whose every line would be rejected."""
    for bom, name in _BOMS:
        if first_line.startswith(bom):
            raise DataError(
                f"the file is {name}, not UTF-8",
                file=file,
                hint=f"the file is {name} (it starts with a {name} byte-order mark); "
                f"convert: `iconv -f {name.lower()} -t utf-8 IN > OUT`",
            )
    if len(first_line) >= 4 and 3 * first_line.count(0) >= len(first_line):
        raise DataError(
            "the file is not UTF-8 text: a third of the bytes of its first line or more are 0",
            file=file,
            hint="it looks like UTF-16 without a byte-order mark; convert: "
            "`iconv -f utf-16le -t utf-8 IN > OUT` (or utf-16be)",
        )


def _not_utf8(raw: bytes, start: int, file: str, line: int) -> DataError:
    """The error for a line ``raw`` whose byte ``start`` (0-based) begins no UTF-8 character."""
    return DataError(
        f"bytes that are not UTF-8 (0x{raw[start]:02x} at byte {start + 1} of the line)",
        file=file,
        line=line,
        hint=_encoding_hint(raw[max(0, start - 30) : start + 30]),
    )


def _encoding_hint(around: bytes) -> str:
    """Say how the bytes around an undecodable one read as Windows-1252 (a superset of the
    printable Latin-1), the usual encoding of text that is not UTF-8."""
    try:
        text = around.decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d: not Windows-1252 either
        return _UTF8_HINT
    return (
        f"read as Windows-1252/Latin-1 the bytes say {text.strip()!r}; if that looks right, "
        "save the file as UTF-8: `iconv -f cp1252 -t utf-8 IN > OUT`"
    )


def _decoded_lines(
    raw_lines: Iterable[bytes], file: str
) -> Iterator[tuple[int, str, _Problem | None]]:
    """``(line number, text, problem)`` per line; undecodable bytes are replaced in ``text``
    and described by ``problem``."""
    for lineno, raw in enumerate(raw_lines, 1):
        codec = "utf-8-sig" if lineno == 1 else "utf-8"
        if lineno == 1:
            _check_encoding(raw, file)
        problem = None
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError as err:
            text = raw.decode(codec, errors="replace")
            problem = _Problem(NOT_UTF8, _not_utf8(raw, err.start, file, lineno), _clip(text))
        yield lineno, text, problem


def _jsonl_items(path: Path, compression: str | None) -> Iterator[Row | _Problem]:
    file = str(path)
    seen = False
    with _open_binary(path, compression) as fh:
        for lineno, text, problem in _decoded_lines(fh, file):
            if problem is None and not text.strip():
                continue
            seen = True
            yield _jsonl_item(text, file, lineno) if problem is None else problem
    if not seen:
        raise DataError(
            "no rows: the file is empty", file=file, hint="write one JSON object a line"
        )


def _jsonl_item(text: str, file: str, line: int) -> Row | _Problem:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        error = DataError(
            f"invalid JSON: {_json_problem(err)}",
            file=file,
            line=line,
            hint="each line of a .jsonl file must be one complete JSON object; "
            "a JSON list belongs in a .json file",
        )
        return _Problem(INVALID_JSON, error, _clip(text))
    if not isinstance(value, dict):
        return _Problem(NOT_OBJECT, _not_object(value, file, line), _clip(text))
    return Row(value, file, line)


def _json_problem(err: ValueError | RecursionError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} (column {err.colno})"
    return "nested too deeply" if isinstance(err, RecursionError) else str(err)


def _not_object(value: Any, file: str, line: int) -> DataError:
    return DataError(
        f"expected a JSON object, got {type(value).__name__}",
        file=file,
        line=line,
        hint='each row must look like {"column": value, ...}',
    )


def _json_items(path: Path, compression: str | None) -> Iterator[Row | _Problem]:
    file = str(path)
    try:
        with _open_binary(path, compression) as fh:
            data = fh.read()
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from None
    _check_encoding(data.split(b"\n", 1)[0], file)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        start = data.rfind(b"\n", 0, err.start) + 1  # of the line
        raise _not_utf8(data[start : err.end + 30], err.start - start, file, line) from None
    if not text.strip():
        raise DataError("no rows: the file is empty", file=file, hint="write a JSON list of rows")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DataError(
            f"invalid JSON: {_json_problem(err)}",
            file=file,
            line=err.lineno if isinstance(err, json.JSONDecodeError) else None,
            hint="a .json file holds one JSON list of objects; use .jsonl for one per line",
        ) from None
    items = _json_list(value, file)
    if not items:
        raise DataError("no rows: the JSON list is empty", file=file)
    for i, item in enumerate(items, 1):
        if isinstance(item, dict):
            yield Row(item, file, i)
        else:
            raw = _clip(json.dumps(item, ensure_ascii=False))
            yield _Problem(NOT_OBJECT, _not_object(item, file, i), raw)


def _json_list(value: Any, file: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(lists) == 1:
            return cast(list[Any], value[lists[0]])
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


def _csv_items(path: Path, compression: str | None, kind: str) -> Iterator[Row | _Problem]:
    file = str(path)
    delimiter = "\t" if kind == "tsv" else ","
    record: list[str] = []  # the physical lines of the record being parsed
    problems: list[_Problem] = []  # ... and their undecodable lines

    def lines(raw_lines: Iterable[bytes]) -> Iterator[str]:
        for _, text, problem in _decoded_lines(raw_lines, file):
            record.append(text)
            if problem is not None:
                problems.append(problem)
            yield text

    header: list[str] | None = None
    rows = 0
    with _open_binary(path, compression) as fh:
        reader = csv.reader(lines(fh), delimiter=delimiter, strict=False)
        start = 1
        try:
            for values in reader:
                line, start = start, reader.line_num + 1
                raw, problem = _clip("".join(record)), problems[0] if problems else None
                record.clear()
                problems.clear()
                if not values:  # a blank line
                    continue
                if header is None:
                    if problem is not None:  # without its column names no row is usable
                        raise problem.error
                    header = _header(values, file, line)
                    continue
                rows += 1
                if problem is not None:
                    yield problem
                elif len(values) != len(header):
                    error = DataError(
                        f"has {len(values)} values but the header has {len(header)} columns",
                        file=file,
                        line=line,
                        hint=f"quote values that contain '{delimiter}' or line breaks with \"",
                    )
                    yield _Problem(WRONG_COUNT, error, raw)
                else:
                    yield Row(dict(zip(header, values, strict=True)), file, line)
        except csv.Error as err:
            raise DataError(f"malformed {kind.upper()}: {err}", file=file, line=start) from None
    if header is None:
        raise DataError("no rows: the file is empty", file=file, hint="write a header line first")
    if rows == 0:
        raise DataError(
            f"no rows: the file holds only a header ({', '.join(header)})",
            file=file,
            hint="add rows below the header",
        )


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
    line = 0
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=1024):
            for fields in batch.to_pylist():
                line += 1
                yield Row(fields, file, line)
    except (pa.ArrowException, OSError, ValueError) as err:  # ValueError: a mangled name
        raise DataError(
            f"cannot read Parquet: {err}", file=file, hint="is it really a Parquet file?"
        ) from None
    if line == 0:
        columns = ", ".join(parquet.schema_arrow.names) or "none"
        raise DataError(f"no rows: the Parquet file has columns ({columns}) but no rows", file=file)


def expand_sources(source: str | list[str]) -> list[Path | str]:
    """The sources named by paths, globs (``data/*.jsonl``, ``**`` recurses) or folders.

    Globs and folders of data files expand to sorted file lists (a folder: its supported
    files). A folder written by ``save_to_disk`` is one entry (a Path, or ``DIR:split`` as a
    str); ``hf:owner/name`` entries are kept as they are. Every entry is something
    :func:`iter_rows` reads. Order is kept and duplicates are dropped. A glob matching
    nothing, a missing path or an empty list raises DataError.
    """
    entries = [source] if isinstance(source, str) else list(source)
    if not entries:
        raise DataError("data.source is an empty list", hint="name at least one file")
    found: list[Path | str] = []
    for entry in entries:
        found.extend(_expand(entry))
    return list(dict.fromkeys(found))


def _expand(entry: str) -> list[Path | str]:
    if entry.startswith("hf:"):
        parse_hub(entry)  # a malformed name fails here, before anything is read
        return [entry]
    saved = parse_saved(entry)
    if saved is not None:
        folder, splits = saved
        return [folder if splits is None else f"{folder}:{','.join(splits)}"]
    expanded = str(Path(entry).expanduser())
    if glob.has_magic(expanded):
        matches = sorted(p for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(
                f"the pattern '{entry}' matches no files",
                hint="check the folder and the pattern; relative paths start at the current folder",
            )
        return [Path(p) for p in matches]
    if Path(expanded).is_dir():
        files = sorted(p for p in Path(expanded).iterdir() if p.is_file() and _supported(p))
        if not files:
            raise DataError(
                f"the folder '{entry}' holds no data files",
                hint=f"supported: {', '.join(SUPPORTED_SUFFIXES)}, or a folder written by "
                "save_to_disk",
            )
        return list(files)
    if Path(expanded).exists():
        return [Path(expanded)]
    raise DataError(
        "file not found",
        file=entry,
        hint="check data.source; relative paths start at the current folder",
    )


def _supported(path: Path) -> bool:
    try:
        _kind(path)
    except DataError:
        return False
    return True
