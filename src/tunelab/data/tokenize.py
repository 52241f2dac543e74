"""Turn rendered examples into token ids with a loss mask (loss on response tokens only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.data.types import Example
from tunelab.errors import DataError

__all__ = ["IGNORE", "Encoded", "PromptFormatter", "encode", "label_token_ids"]

IGNORE = -100  # label value that the loss skips (prompt and padding positions)


@dataclass(frozen=True)
class Encoded:
    """One tokenised example.

    ``input_ids`` = prompt + response tokens; ``prompt_len`` tokens of prompt come first.
    ``class_index`` is the label's index for classification data, else -1. ``extras``:
    per-example numbers a training objective declares it needs (``Objective.fields``),
    collated to a (B,) tensor each; e.g. distillation marks general-data examples.
    """

    input_ids: list[int]
    prompt_len: int
    class_index: int = -1
    extras: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    def prompt_only(self) -> Encoded:
        """The same example without its response (what scoring and a classifier head read)."""
        return Encoded(
            self.input_ids[: self.prompt_len], self.prompt_len, self.class_index, self.extras
        )

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * self.prompt_len + self.input_ids[self.prompt_len :]


class PromptFormatter:
    """Renders an Example's prompt to text: chat template when used, else a plain layout.

    The response always ends with the tokenizer's end-of-sequence token (for ChatML
    tokenizers that is ``<|im_end|>``), so the model learns to stop.
    """

    def __init__(self, tokenizer: Any, use_chat_template: str = "auto") -> None:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template == "always" and not has_template:
            raise DataError(
                "model.use_chat_template is 'always' but the tokenizer has no chat template",
                hint="set model.use_chat_template: auto",
            )
        self.tokenizer = tokenizer
        self.chat = has_template and use_chat_template != "never"
        self.eos = tokenizer.eos_token or ""

    def prompt_text(self, example: Example) -> str:
        if example.raw:
            return example.messages[-1]["content"]
        if self.chat:
            return str(
                self.tokenizer.apply_chat_template(
                    list(example.messages), add_generation_prompt=True, tokenize=False
                )
            )
        parts = []
        for m in example.messages:
            role = {"system": "", "user": "### Input:\n", "assistant": "### Response:\n"}[m["role"]]
            parts.append(f"{role}{m['content']}")
        return "\n\n".join(parts) + "\n\n### Response:\n"

    def response_text(self, example: Example) -> str:
        return example.response + self.eos


def encode(
    tokenizer: Any,
    formatter: PromptFormatter,
    example: Example,
    *,
    max_length: int,
    labels: Sequence[str] | None = None,
) -> Encoded:
    """Tokenise prompt and response separately (the boundary is exact) and truncate.

    Over ``max_length``: the prompt loses tokens from its start (the response is what is
    learned), and a response longer than half the budget is cut from its end.
    """
    prompt = tokenizer(formatter.prompt_text(example), add_special_tokens=False)["input_ids"]
    response = tokenizer(formatter.response_text(example), add_special_tokens=False)["input_ids"]
    if len(prompt) + len(response) > max_length:
        response = response[: max(max_length // 2, max_length - len(prompt))]
        prompt = prompt[len(prompt) + len(response) - max_length :]
    class_index = -1
    if labels is not None and example.label is not None:
        class_index = list(labels).index(example.label)
    return Encoded(list(prompt) + list(response), len(prompt), class_index)


def label_token_ids(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """Token ids of each label word as the model would emit it right after the prompt."""
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    for word, toks in zip(words, ids, strict=True):
        if not toks:
            raise DataError(f"label word {word!r} tokenises to nothing", field="label")
    return ids
