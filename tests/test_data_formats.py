"""Format detection and row normalisation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tunelab.data.formats import detect_format, normalize_row, resolve_columns
from tunelab.data.types import Row
from tunelab.errors import ConfigError, DataError


def _row(**fields: Any) -> Row:
    return Row(fields, "data.jsonl", 7)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["text", "label"], "classification"),
        (["instruction", "input", "output"], "instruction"),
        (["instruction", "output"], "instruction"),
        (["prompt", "completion"], "completion"),
        (["messages", "id"], "chat"),
        (["question", "answer"], "instruction"),  # aliases, no mapping needed
        (["sentence", "label"], "classification"),
        (["review", "sentiment"], "classification"),
    ],
)
def test_detect_format(columns: list[str], expected: str) -> None:
    assert detect_format(columns, {}) == expected


def test_detect_format_with_mapping() -> None:
    assert detect_format(["body", "stars"], {"text": "body", "label": "stars"}) == (
        "classification"
    )
    # a mapping that points at a missing column does not count
    with pytest.raises(DataError):
        detect_format(["text", "stars"], {"label": "rating"})


def test_detect_format_failure_lists_columns_and_fix() -> None:
    with pytest.raises(DataError, match="columns body, stars") as info:
        detect_format(["stars", "body"], {}, file="x.csv")
    hint = info.value.hint or ""
    assert "data.format" in hint and "data.columns" in hint
    assert "x.csv" in str(info.value)


def test_mapping_with_unknown_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.columns\.review"):
        detect_format(["review", "label"], {"review": "text"})


def test_resolve_columns_reports_aliases() -> None:
    assert resolve_columns(["question", "answer", "id"], "instruction", {}) == {
        "instruction": "question",
        "output": "answer",
    }


def test_normalize_classification_with_extra_and_origin() -> None:
    record = normalize_row(_row(text="good", label="pos", movie="m1"), "classification", {})
    assert record.data == {"text": "good", "label": "pos"}
    assert record.extra == {"movie": "m1"}
    assert record.origin == "data.jsonl:7"
    assert record.label == "pos"


def test_normalize_uses_mapping() -> None:
    row = _row(body="good", stars=5)
    record = normalize_row(row, "classification", {"text": "body", "label": "stars"})
    assert record.data == {"text": "good", "label": "5"}
    assert record.extra == {}


@pytest.mark.parametrize(
    ("value", "expected"), [(1, "1"), (2.0, "2"), (0.5, "0.5"), (True, "true"), (" pos ", "pos")]
)
def test_labels_become_strings(value: Any, expected: str) -> None:
    assert normalize_row(_row(text="t", label=value), "classification", {}).label == expected


@pytest.mark.parametrize("value", [None, "", "  "])
def test_missing_label_value_is_an_error(value: Any) -> None:
    with pytest.raises(DataError, match="label") as info:
        normalize_row(_row(text="t", label=value), "classification", {})
    assert info.value.line == 7 and info.value.field == "label"


def test_missing_column_names_the_users_column() -> None:
    with pytest.raises(DataError, match="missing column 'stars'") as info:
        normalize_row(_row(text="t", label="x"), "classification", {"label": "stars"})
    assert info.value.field == "stars"
    assert "data.jsonl:7" in str(info.value)
    assert "data.columns" in (info.value.hint or "")


def test_wrong_type_for_text() -> None:
    with pytest.raises(DataError, match="text must be a string, got list") as info:
        normalize_row(_row(text=["a"], label="x"), "classification", {})
    assert info.value.field == "text"


def test_instruction_input_is_optional_and_output_required() -> None:
    record = normalize_row(_row(instruction="Do it", output="Done"), "instruction", {})
    assert record.data == {"instruction": "Do it", "input": "", "output": "Done"}
    record = normalize_row(_row(question="Q?", context=None, answer="A"), "instruction", {})
    assert record.data == {"instruction": "Q?", "input": "", "output": "A"}
    with pytest.raises(DataError, match="output is empty"):
        normalize_row(_row(instruction="Do it", output=" "), "instruction", {})


def test_completion() -> None:
    record = normalize_row(_row(prompt="Once", completion=" upon"), "completion", {})
    assert record.data == {"prompt": "Once", "completion": " upon"}


CHAT = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "name": "bot"},
]


def test_chat_messages_are_normalised() -> None:
    record = normalize_row(_row(messages=CHAT), "chat", {})
    assert record.data["messages"][-1] == {"role": "assistant", "content": "Hello!"}
    from_csv = normalize_row(_row(messages=json.dumps(CHAT)), "chat", {})
    assert from_csv.data == record.data


@pytest.mark.parametrize(
    ("messages", "field", "match"),
    [
        ([], "messages", "non-empty list"),
        ("not json", "messages", "not a JSON list"),
        ([CHAT[1], "hi", CHAT[2]], "messages[1]", "must be an object"),
        ([CHAT[1], {"role": "bot", "content": "x"}], "messages[1].role", "'bot'"),
        ([CHAT[1], {"role": "assistant", "content": 3}], "messages[1].content", "string"),
        ([CHAT[1], {"from": "gpt", "value": "x"}], "messages[1]", "'role' and 'content'"),
        ([CHAT[2], CHAT[1]], "messages[1].role", "last message is from 'user'"),
        ([CHAT[0], CHAT[2]], "messages", "no user message"),
        ([CHAT[1], {"role": "assistant", "content": ""}], "messages[1].content", "empty"),
    ],
)
def test_chat_validation_names_the_message(messages: Any, field: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        normalize_row(_row(messages=messages), "chat", {})
    assert info.value.field == field
    assert f"data.jsonl:7: field '{field}'" in str(info.value)


def test_sharegpt_messages_get_a_hint() -> None:
    with pytest.raises(DataError) as info:
        normalize_row(_row(messages=[{"from": "human", "value": "hi"}]), "chat", {})
    assert "ShareGPT" in (info.value.hint or "")
