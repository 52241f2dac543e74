"""``tunelab generate``: one prompt, or an interactive chat, with any model."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tunelab.cli._common import console
from tunelab.models.generation import load_any, reply


def generate(
    model: Annotated[
        str,
        typer.Argument(help="A model alias, folder, .gguf file, hub id, or a run folder."),
    ] = "smollm2-135m-instruct",
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="One prompt; omitted: interactive chat.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, max=5.0)] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(min=1.0, max=3.0)] = 1.1,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
) -> None:
    """Generate text with a base model or a fine-tuned run."""
    import torch

    torch.set_num_threads(1)  # decoding is latency-bound; one thread is steadiest (ASSETS.md)
    task_model, tokenizer, _info = load_any(model)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature,
                              "top_p": top_p, "repetition_penalty": repetition_penalty,
                              "seed": seed}  # fmt: skip
    if prompt is not None:
        messages.append({"role": "user", "content": prompt})
        print(reply(task_model, tokenizer, messages, **kwargs))
        return
    console.print("[dim]interactive chat; an empty line or Ctrl-D ends it[/]")
    while True:
        try:
            text = console.input("[bold]you>[/] ")
        except EOFError:
            break
        if not text.strip():
            break
        messages.append({"role": "user", "content": text})
        answer = reply(task_model, tokenizer, messages, **kwargs)
        messages.append({"role": "assistant", "content": answer})
        console.print(f"[bold]model>[/] {answer}", markup=False, highlight=False)
