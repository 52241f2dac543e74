"""Rendering records to prompt messages and responses."""

from __future__ import annotations

import pytest

from tunelab.data.templates import TEMPLATES, render
from tunelab.data.types import Record
from tunelab.errors import ConfigError

REVIEW = Record(
    "classification", {"text": "A joy to watch.", "label": "fresh"}, "rt.csv:2", {"movie": "Up"}
)
WORDS = {"fresh": "positive", "rotten": "negative"}


def _render(record: Record, template: str | None, system: str | None = None):
    return render(
        record, template, labels=["fresh", "rotten"], label_words=WORDS, system_prompt=system
    )


def test_sentiment_renders_text_and_label_word() -> None:
    example = _render(REVIEW, "sentiment")
    (message,) = example.messages
    assert message["role"] == "user"
    assert "A joy to watch." in message["content"]
    assert message["content"].endswith("Answer with one word: positive or negative.")
    assert example.response == "positive"
    assert example.label == "fresh"
    assert example.origin == "rt.csv:2" and not example.raw


def test_default_classification_lists_label_words() -> None:
    example = _render(REVIEW, None)
    assert "Classify the text into one of: positive, negative." in example.messages[0]["content"]
    # without label words the label itself is the answer
    plain = render(REVIEW, None, labels=["fresh", "rotten"], label_words={}, system_prompt=None)
    assert plain.response == "fresh" and "fresh, rotten" in plain.messages[0]["content"]


def test_instruction_template_adds_input_only_when_present() -> None:
    bare = Record("instruction", {"instruction": "Add.", "input": "", "output": "3"}, "q:1")
    full = Record("instruction", {"instruction": "Add.", "input": "1 + 2", "output": "3"}, "q:2")
    assert _render(bare, None).messages[0]["content"] == "Add."
    assert _render(full, "instruction").messages[0]["content"] == "Add.\n\n1 + 2"
    assert _render(full, None).response == "3" and _render(full, None).label is None


def test_completion_is_raw_and_ignores_system_prompt() -> None:
    record = Record("completion", {"prompt": "Once upon", "completion": " a time"}, "c:1")
    example = _render(record, None, system="ignored")
    assert example.raw
    assert example.messages == ({"role": "user", "content": "Once upon"},)
    assert example.response == " a time"


def test_chat_prompt_is_history_and_response_the_last_message() -> None:
    messages = [
        {"role": "system", "content": "old"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    record = Record("chat", {"messages": messages}, "c:1")
    example = _render(record, None)
    assert [m["content"] for m in example.messages] == ["old", "Hi"]
    assert example.response == "Hello"
    replaced = _render(record, None, system="new")
    assert [m["content"] for m in replaced.messages] == ["new", "Hi"]


def test_system_prompt_leads() -> None:
    example = _render(REVIEW, "sentiment", system="You are a critic.")
    assert example.messages[0] == {"role": "system", "content": "You are a critic."}
    assert example.messages[1]["role"] == "user"


def test_custom_jinja_sees_fields_extra_and_labels() -> None:
    template = "{{ movie }}: {{ text }} [{{ labels | join('/') }}]\n"
    example = _render(REVIEW, template)
    assert example.messages[0]["content"] == "Up: A joy to watch. [positive/negative]"
    assert example.response == "positive"


def test_undefined_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.template: undefined variable 'review'") as info:
        _render(REVIEW, "Review: {{ review }}")
    assert "text" in (info.value.hint or "")


def test_bad_jinja_syntax_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.template"):
        _render(REVIEW, "{{ text ")


def test_sandbox_blocks_unsafe_attributes() -> None:
    with pytest.raises(ConfigError, match="failed to render"):
        _render(REVIEW, "{{ text.__class__.__mro__[1].__subclasses__() }}")


def test_unknown_template_name_lists_names() -> None:
    with pytest.raises(ConfigError, match="did you mean 'sentiment'") as info:
        _render(REVIEW, "sentimen")
    assert all(name in (info.value.hint or "") for name in TEMPLATES)


def test_builtin_template_for_the_wrong_format() -> None:
    record = Record("instruction", {"instruction": "a", "input": "", "output": "b"}, "q:1")
    with pytest.raises(ConfigError, match="'sentiment' is for classification data"):
        _render(record, "sentiment")


def test_templates_are_described() -> None:
    assert set(TEMPLATES) == {"sentiment", "classification", "instruction", "completion", "chat"}
    assert all(TEMPLATES.values())
