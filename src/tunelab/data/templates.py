"""Render :class:`~tunelab.data.types.Record` values to :class:`~tunelab.data.types.Example`.

An Example is the prompt as chat messages plus the target response. ``data.template`` is
either a built-in name (:data:`TEMPLATES`) or Jinja text that uses the record's fields, its
extra columns and ``labels`` (the label words, in order), e.g.::

    template: "Is this review of {{ movie_name }} positive or negative?\\n\\n{{ text }}"

The response never comes from the template; it is fixed by the format:

- classification: the label word ``label_words.get(label, label)``; ``Example.label`` keeps
  the canonical label
- instruction: ``output``; completion: ``completion`` (the prompt is used verbatim,
  ``raw=True``, and the system prompt does not apply); chat: the last (assistant) message

Jinja runs sandboxed with undefined variables as errors; compiled templates are cached.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from tunelab.data.types import Example, Format, Record
from tunelab.errors import ConfigError

__all__ = ["DEFAULT_TEMPLATES", "TEMPLATES", "render"]


@dataclass(frozen=True)
class _Builtin:
    description: str
    formats: tuple[Format, ...]
    source: str | None  # Jinja text of the user message; None: the chat messages themselves


_BUILTINS: dict[str, _Builtin] = {
    "sentiment": _Builtin(
        "movie-review sentiment: asks whether the review is positive or negative",
        ("classification",),
        "Is the following movie review positive or negative?\n\n"
        "Review: {{ text }}\n\n"
        "Answer with one word: positive or negative.",
    ),
    "classification": _Builtin(
        "generic classification: lists the label words and asks for one",
        ("classification",),
        "Classify the text into one of: {{ labels | join(', ') }}.\n\n"
        "Text: {{ text }}\n\n"
        "Answer with the label only.",
    ),
    "instruction": _Builtin(
        "the instruction, then the input (when there is one) after a blank line",
        ("instruction",),
        "{{ instruction }}{% if input %}\n\n{{ input }}{% endif %}",
    ),
    "completion": _Builtin(
        "the prompt verbatim, no chat template (raw text continuation)",
        ("completion",),
        "{{ prompt }}",
    ),
    "chat": _Builtin(
        "the conversation up to the last message; the last assistant message is the target",
        ("chat",),
        None,
    ),
}
TEMPLATES: dict[str, str] = {name: b.description for name, b in _BUILTINS.items()}
DEFAULT_TEMPLATES: dict[Format, str] = {
    "classification": "classification",
    "instruction": "instruction",
    "completion": "completion",
    "chat": "chat",
}

_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
)


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(
            "the prompt template is not valid Jinja",
            problems=[("data.template", f"line {err.lineno}: {err.message}")],
            hint="variables look like {{ text }}; blocks like {% if input %}...{% endif %}",
        ) from None


def _is_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template


def _builtin(name: str, fmt: Format) -> _Builtin:
    if name not in _BUILTINS:
        close = difflib.get_close_matches(name, list(_BUILTINS), n=1)
        guess = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            "unknown prompt template",
            problems=[("data.template", f"'{name}' is not a built-in template{guess}")],
            hint=f"built-in templates: {', '.join(_BUILTINS)}; or write Jinja text such as "
            "'Summarise: {{ text }}'",
        )
    builtin = _BUILTINS[name]
    if fmt not in builtin.formats:
        raise ConfigError(
            "the prompt template does not fit the data",
            problems=[
                (
                    "data.template",
                    f"'{name}' is for {', '.join(builtin.formats)} data, but the data is {fmt}",
                )
            ],
            hint=f"leave data.template unset to use '{DEFAULT_TEMPLATES[fmt]}', or write Jinja",
        )
    return builtin


def _fill(source: str, variables: Mapping[str, Any]) -> str:
    try:
        return _compile(source).render(variables)
    except jinja2.UndefinedError as err:
        match = re.search(r"'([^']+)' is undefined", str(err.message))
        name = match.group(1) if match else str(err.message)
        raise ConfigError(
            "the prompt template uses a variable the data does not have",
            problems=[("data.template", f"undefined variable '{name}'")],
            hint=f"available: {', '.join(sorted(variables))}",
        ) from None
    except jinja2.TemplateError as err:  # includes sandbox SecurityError
        raise ConfigError(
            "the prompt template failed to render",
            problems=[("data.template", str(err))],
        ) from None


def render(
    record: Record,
    template: str | None,
    *,
    labels: Sequence[str],
    label_words: Mapping[str, str],
    system_prompt: str | None,
) -> Example:
    """The Example of one record under ``template`` (None: the default for its format).

    ``labels`` are the canonical labels in order; the template sees them as label words.
    ``system_prompt`` becomes a leading system message; in chat data it replaces the
    record's own leading system message. It is ignored for raw completion prompts.
    """
    fmt = record.format
    name = DEFAULT_TEMPLATES[fmt] if template is None else template
    source = name if _is_jinja(name) else _builtin(name, fmt).source
    raw = fmt == "completion"
    label = record.label

    if fmt == "chat":
        history = [dict(m) for m in record.data["messages"]]
        response = history[-1]["content"]
        history = history[:-1]
    else:
        response = _response(record, label_words)
        history = []
    if source is not None:
        words = [label_words.get(lab, lab) for lab in labels]
        variables = {**record.data, **record.extra, "labels": words}
        history = [{"role": "user", "content": _fill(source, variables)}]
    if not raw and system_prompt is not None:
        if history and history[0]["role"] == "system":
            history = history[1:]
        history = [{"role": "system", "content": system_prompt}, *history]
    return Example(
        messages=tuple(history), response=response, label=label, origin=record.origin, raw=raw
    )


def _response(record: Record, label_words: Mapping[str, str]) -> str:
    data = record.data
    if record.format == "classification":
        return label_words.get(data["label"], data["label"])
    if record.format == "instruction":
        return str(data["output"])
    return str(data["completion"])
