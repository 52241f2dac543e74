"""Load any model tunelab knows and generate replies (used by ``generate``; later ``serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunelab.models.loading import load_base, load_tokenizer
from tunelab.models.saved import is_trained_folder, load_trained
from tunelab.models.task_model import TaskModel

__all__ = ["load_any", "reply"]


def load_any(spec: str) -> tuple[TaskModel, Any, dict[str, Any] | None]:
    """A run folder, a tunelab model folder, or anything ``model.base`` accepts."""
    path = Path(spec)
    if path.is_dir() and (is_trained_folder(path) or is_trained_folder(path / "model")):
        return load_trained(path)
    model = TaskModel(load_base(spec), "lm")
    model.eval()
    return model, load_tokenizer(spec), None


@torch.no_grad()
def reply(
    model: TaskModel,
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.1,
    seed: int | None = None,
) -> str:
    """The assistant's next message. temperature 0 is greedy decoding.

    A repetition penalty is on by default: greedy decoding of this size of model loops on
    free text otherwise (see ASSETS.md).
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n"
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = temperature > 0
    out = model.lm.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        repetition_penalty=repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return str(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
