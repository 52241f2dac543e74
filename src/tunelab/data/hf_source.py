"""Rows from Hugging Face datasets: folders written by ``save_to_disk``, and the hub.

A ``data.source`` entry may name

- a folder written by ``Dataset.save_to_disk`` (it holds ``dataset_info.json`` and
  ``state.json``): its rows, ``Row.file`` = the folder;
- a folder written by ``DatasetDict.save_to_disk`` (it holds ``dataset_dict.json``): the rows
  of every split, each with an added field ``_split`` holding the split name; ``DIR:train`` or
  ``DIR:train,validation`` selects splits. ``Row.file`` = ``DIR[split]``;
- ``hf:owner/name`` or ``hf:owner/name:split`` (or ``:split1,split2``): a dataset on the hub,
  streamed, rows with ``_split`` as for a DatasetDict; ``Row.file`` = ``hf:owner/name[split]``.

``Row.line`` is the 1-based row index within its split. Saved folders are read from the
memory-mapped Arrow files a batch at a time; the hub needs a network and is never tried when
``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set. Both need the optional ``datasets``
package (``pip install 'tunelab[hf]'``); recognising a saved folder does not.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from tunelab.data.types import Row
from tunelab.errors import DataError, DependencyError

__all__ = ["hub_rows", "is_saved_dataset", "parse_hub", "parse_saved", "saved_rows"]

SPLIT_FIELD = "_split"
_BATCH_ROWS = 512
_SPLITS = re.compile(r"[\w.-]+(?:,[\w.-]+)*")
_HUB = re.compile(r"hf:([\w.-]+(?:/[\w.-]+)?)(?::([\w.-]+(?:,[\w.-]+)*))?")
_TRUE = {"1", "true", "yes", "on"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "ReadTimeout", "Timeout", "NetworkError"}
_SAVE_HINT = (
    "download it on a machine with a network: "
    "`datasets.load_dataset('{name}').save_to_disk(DIR)` and set data.source to DIR"
)

Splits = tuple[str, ...] | None


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset``/``DatasetDict.save_to_disk``."""
    if (folder / "dataset_dict.json").is_file():
        return True
    return (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()


def parse_saved(entry: str | Path) -> tuple[Path, Splits] | None:
    """``(folder, selected splits or None)`` when ``entry`` names a saved dataset, else None.

    ``entry`` is the folder, or ``FOLDER:split[,split...]``. A split suffix on a folder that
    was not written by ``save_to_disk`` raises DataError.
    """
    path = Path(entry).expanduser()
    if path.is_dir():
        return (path, None) if is_saved_dataset(path) else None
    head, sep, tail = str(entry).rpartition(":")
    if not sep or not head or path.exists() or not _SPLITS.fullmatch(tail):
        return None
    folder = Path(head).expanduser()
    if not folder.is_dir():
        return None
    if not is_saved_dataset(folder):
        raise DataError(
            f"':{tail}' selects splits, but '{head}' is not a dataset saved with save_to_disk "
            "(it has no dataset_dict.json)",
            hint="name the folder alone to read its data files",
        )
    return folder, tuple(tail.split(","))


def parse_hub(entry: str) -> tuple[str, Splits]:
    """``(dataset name, selected splits or None)`` of ``hf:owner/name[:split[,split...]]``."""
    match = _HUB.fullmatch(entry)
    if match is None:
        raise DataError(
            f"'{entry}' is not a hub dataset name",
            hint="write hf:owner/name, or hf:owner/name:split to read one split",
        )
    name, splits = match.groups()
    return name, tuple(splits.split(",")) if splits else None


def saved_rows(folder: Path, splits: Splits = None) -> Iterator[Row]:
    """The rows of a saved Dataset, or of the (selected) splits of a saved DatasetDict."""
    datasets = _import_datasets()
    try:
        loaded = datasets.load_from_disk(str(folder), keep_in_memory=False)
    except Exception as err:  # datasets raises many types here; none should escape raw
        raise DataError(
            f"cannot read the saved dataset: {type(err).__name__}: {err}",
            file=str(folder),
            hint="write it again with save_to_disk; the folder may be incomplete",
        ) from None
    parts: list[tuple[Any, str | None, str]]  # (dataset, split name, Row.file)
    if isinstance(loaded, datasets.DatasetDict):
        chosen = _check_splits(splits, list(loaded), str(folder))
        parts = [(loaded[split], split, f"{folder}[{split}]") for split in chosen]
    elif splits is not None:
        raise DataError(
            f"':{','.join(splits)}' selects splits, but this is a single Dataset without splits",
            file=str(folder),
            hint="name the folder alone",
        )
    else:
        parts = [(loaded, None, str(folder))]
    count = 0
    for dataset, split, file in parts:
        try:
            for line, fields in enumerate(_dataset_fields(dataset), 1):
                if split is not None:
                    fields[SPLIT_FIELD] = split
                count += 1
                yield Row(fields, file, line)
        except (OSError, ValueError) as err:  # pyarrow errors are ValueError/OSError subclasses
            raise DataError(f"cannot read the saved dataset: {err}", file=file) from None
    if count == 0:
        raise DataError("no rows: the saved dataset is empty", file=str(folder))


def hub_rows(entry: str) -> Iterator[Row]:
    """Stream the rows of ``hf:owner/name[:split...]`` from the hub (needs a network)."""
    name, splits = parse_hub(entry)
    if any(os.environ.get(var, "").lower() in _TRUE for var in _OFFLINE_VARS):
        raise _offline(name, "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set")
    datasets = _import_datasets()
    if splits is None:
        loaded = _load(datasets, name, None)
        parts = [(loaded[split], split) for split in loaded]
    else:
        parts = [(_load(datasets, name, split), split) for split in splits]
    count = 0
    for dataset, split in parts:
        file = f"hf:{name}[{split}]"
        try:
            for line, example in enumerate(dataset, 1):
                count += 1
                yield Row({**example, SPLIT_FIELD: split}, file, line)
        except Exception as err:  # a network drop mid-stream, a bad shard
            raise _hub_error(name, err) from None
    if count == 0:
        raise DataError("no rows: the dataset is empty", file=f"hf:{name}")


def _check_splits(selected: Splits, available: list[str], file: str) -> list[str]:
    unknown = [split for split in selected or () if split not in available]
    if unknown:
        raise DataError(
            f"no split '{unknown[0]}'; the dataset has {', '.join(available) or 'no splits'}",
            file=file,
            hint="write FOLDER:split or FOLDER:split1,split2 with those names, or the folder "
            "alone for every split",
        )
    return list(selected) if selected else available


def _dataset_fields(dataset: Any) -> Iterator[dict[str, Any]]:
    """Each row as plain Python values, one Arrow batch at a time (nested types → lists/dicts)."""
    batches: Iterable[dict[str, list[Any]]] = dataset.with_format(None).iter(_BATCH_ROWS)
    for batch in batches:
        columns = list(batch)
        size = len(batch[columns[0]]) if columns else 0
        for i in range(size):
            yield {column: batch[column][i] for column in columns}


def _load(datasets: ModuleType, name: str, split: str | None) -> Any:
    try:
        with _quiet(datasets):
            return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # keep datasets' own tracebacks away from the user
        raise _hub_error(name, err) from None


def _hub_error(name: str, err: Exception) -> DataError:
    kinds = {cls.__name__ for cls in type(err).__mro__}
    if isinstance(err, (ConnectionError, TimeoutError)) or kinds & _NETWORK_ERRORS:
        return _offline(name, f"{type(err).__name__}: {err}")
    if "DatasetNotFoundError" in kinds:
        return DataError(
            f"no dataset '{name}' on the Hugging Face hub",
            file=f"hf:{name}",
            hint="check the name on huggingface.co/datasets; for a gated or private one, "
            "log in with `hf auth login`",
        )
    return DataError(
        f"cannot load '{name}' from the Hugging Face hub: {type(err).__name__}: {err}",
        file=f"hf:{name}",
        hint="check the name and the split; or " + _SAVE_HINT.format(name=name),
    )


def _offline(name: str, why: str) -> DataError:
    return DataError(
        f"cannot reach the Hugging Face hub for '{name}' (offline)",
        file=f"hf:{name}",
        hint=f"{why}; {_SAVE_HINT.format(name=name)}",
    )


@contextmanager
def _quiet(datasets: ModuleType) -> Iterator[None]:
    """Silence datasets' and huggingface_hub's logging and progress bars, then restore them."""
    loggers = [logging.getLogger(name) for name in ("datasets", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    bars_were_off = datasets.are_progress_bars_disabled()
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _import_datasets() -> ModuleType:
    try:
        import datasets
    except ImportError:
        raise DependencyError(
            "reading a Hugging Face dataset needs the optional package `datasets`",
            hint="pip install 'tunelab[hf]'",
        ) from None
    return datasets
