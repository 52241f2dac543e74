"""Collected feedback as data for the next round of fine-tuning.

An *answer* is one choice of one logged completion. Its verdict takes each field from the
latest feedback row that has it: the rating from the latest row, the correction from the
latest row with a correction (a thumbs-down followed by a corrected answer keeps both).
Then, per answer:

- with a correction: a training example whose answer is the correction;
- else with a rating_value >= ``min_rating``: a training example of the model's own output;
- with a correction and a rating_value < 0.5 (also): a preference pair, the correction
  chosen over the model's output, for a later preference-tuning method;
- anything else is skipped, and counted with its reason.

Chat answers become ``train.jsonl`` rows in tunelab's chat format (``{"messages": [...,
{"role": "assistant", "content": answer}]}``), completion-endpoint answers
``completions.jsonl`` rows (``{"prompt", "completion"}``); each row also carries
``completion_id``, ``choice`` and ``source`` (``correction`` | ``rating``), which the
data stage keeps as extra columns. Rows are checked with the data stage's own row
normaliser, and every text goes through its PII anonymiser before it is written.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunelab.data.formats import normalize_row
from tunelab.data.ingest import map_texts
from tunelab.data.types import Format, Record, Row
from tunelab.errors import ConfigError, DataError

__all__ = [
    "POLICIES",
    "Answer",
    "ExportPlan",
    "answers",
    "export_feedback",
    "plan_export",
]

POLICIES = ("redact", "mask", "pseudonymise")
POOR = 0.5  # below this rating_value a corrected answer also makes a preference pair
_DEVELOPER = {"developer": "system"}  # OpenAI's newer name for the system role

Scrub = Callable[[str], str]


class _Store(Protocol):
    def list(
        self, *, limit: int | None = ..., with_feedback: bool | None = ...
    ) -> list[dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Answer:
    """One choice of one completion, with the verdict of its feedback rows."""

    completion_id: str
    choice: int
    endpoint: str
    prompt: Any
    output: str
    rating_value: float
    correction: str | None


@dataclass
class ExportPlan:
    """What an export writes, before anonymisation: rows per file and the counts."""

    train: list[dict[str, Any]] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    preferences: list[dict[str, Any]] = field(default_factory=list)
    answers: int = 0
    from_corrections: int = 0
    from_good_ratings: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def answers(completion: dict[str, Any]) -> Iterator[Answer]:
    """The answers of one store row (see :meth:`FeedbackStore.list`) that have feedback."""
    verdicts: dict[int, dict[str, Any]] = {}
    for row in sorted(completion["feedback"], key=lambda r: r["id"]):  # oldest first
        verdict = verdicts.setdefault(row["choice"], {"correction": None})
        verdict["rating_value"] = row["rating_value"]
        if row["correction"] is not None:
            verdict["correction"] = row["correction"]
    for choice, verdict in sorted(verdicts.items()):
        yield Answer(
            completion_id=completion["id"],
            choice=choice,
            endpoint=completion["endpoint"],
            prompt=completion["prompt"],
            output=completion["outputs"][choice],
            rating_value=verdict["rating_value"],
            correction=verdict["correction"],
        )


def _text(content: Any) -> str | None:
    """A message content as one string: OpenAI content parts joined; None when a part is
    not text (an image)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _messages(prompt: Any) -> list[dict[str, Any]] | None:
    """Chat prompt messages as ``{role, content}`` with text content; None if impossible."""
    if not isinstance(prompt, list):
        return None
    out = []
    for m in prompt:
        if not isinstance(m, dict):
            return None
        content = _text(m.get("content"))
        if content is None:
            return None
        role = m.get("role")
        out.append({"role": _DEVELOPER.get(role, role) if isinstance(role, str) else role,
                    "content": content})  # fmt: skip
    return out


def _prompt_text(prompt: Any) -> str | None:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None


def _example(answer: Answer, text: str, source: str) -> tuple[str, dict[str, Any]] | str:
    """``(file, row)`` for a training example with ``text`` as the answer, or the reason
    it cannot be one. The row is validated by the data stage's own normaliser."""
    meta = {"completion_id": answer.completion_id, "choice": answer.choice, "source": source}
    if answer.endpoint == "chat":
        messages = _messages(answer.prompt)
        if messages is None:
            return "chat prompt is not a list of text messages"
        fields: dict[str, Any] = {"messages": [*messages, {"role": "assistant", "content": text}]}
        fmt: Format = "chat"
        file = "train"
    else:
        prompt = _prompt_text(answer.prompt)
        if prompt is None:
            return "completion prompt is not one text"
        fields, fmt, file = {"prompt": prompt, "completion": text}, "completion", "completions"
    try:
        record = normalize_row(Row(fields, answer.completion_id, answer.choice + 1), fmt, {})
    except DataError as e:
        return f"not valid {fmt} data: {e.problem}"
    return file, {**record.data, **meta}


def _preference(answer: Answer) -> dict[str, Any] | None:
    if answer.correction is None or answer.correction.strip() == answer.output.strip():
        return None
    prompt = _messages(answer.prompt) if answer.endpoint == "chat" else _prompt_text(answer.prompt)
    if prompt is None:
        return None
    return {"prompt": prompt, "chosen": answer.correction, "rejected": answer.output,
            "completion_id": answer.completion_id, "choice": answer.choice}  # fmt: skip


def plan_export(completions: Iterable[dict[str, Any]], min_rating: float) -> ExportPlan:
    """Sort the answers of ``completions`` (store rows) into files (module docstring)."""
    plan = ExportPlan()
    for completion in completions:
        for answer in answers(completion):
            plan.answers += 1
            _place(plan, answer, min_rating)
    return plan


def _place(plan: ExportPlan, answer: Answer, min_rating: float) -> None:
    if answer.correction is not None:
        made = _example(answer, answer.correction, "correction")
    elif answer.rating_value >= min_rating:
        made = _example(answer, answer.output, "rating")
    else:
        made = f"rating below min_rating {min_rating:g} and no correction"
    if isinstance(made, str):
        plan.skipped[made] += 1
        return
    getattr(plan, made[0]).append(made[1])
    if answer.correction is None:
        plan.from_good_ratings += 1
        return
    plan.from_corrections += 1
    if answer.rating_value < POOR:
        pair = _preference(answer)
        if pair is not None:
            plan.preferences.append(pair)


def _scrub_value(value: Any, scrub: Scrub) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [{**m, "content": scrub(m["content"])} for m in value]
    return value


def _scrub_rows(plan: ExportPlan, scrub: Scrub) -> None:
    """Every text of every row through ``scrub``: the data stage's :func:`map_texts` for
    the training rows, the same walk for preference pairs."""
    files: tuple[tuple[list[dict[str, Any]], Format], ...] = (
        (plan.train, "chat"),
        (plan.completions, "completion"),
    )
    for rows, fmt in files:
        for i, row in enumerate(rows):
            record = map_texts(Record(fmt, row, row["completion_id"]), scrub)
            rows[i] = record.data
    for pair in plan.preferences:
        for key in ("prompt", "chosen", "rejected"):
            pair[key] = _scrub_value(pair[key], scrub)


def _anonymizer(policy: str | None, seed: int) -> tuple[Any, str]:
    if policy is None:
        return None, "not scanned"
    if policy not in POLICIES:
        close = difflib.get_close_matches(policy, POLICIES, n=1, cutoff=0.5)
        raise ConfigError(
            f"unknown anonymisation policy {policy!r}",
            hint=f"did you mean '{close[0]}'?"
            if close
            else f"use one of {', '.join(POLICIES)}, or off",
        )
    from tunelab.data.pii import Anonymizer, PiiDetector

    detector = PiiDetector()
    return Anonymizer(detector, policy, seed=seed), detector.note  # type: ignore[arg-type]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def export_feedback(
    store: _Store,
    out_dir: Path,
    *,
    min_rating: float = 0.75,
    anonymize: str | None = "redact",
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``completions.jsonl``, ``preferences.jsonl`` and
    ``export.json`` to ``out_dir`` (the rules are in the module docstring); return what
    ``export.json`` holds.

    ``min_rating``: the rating_value from which an uncorrected answer is a training
    example (0.75: up, 4 or 5). ``anonymize``: ``redact``, ``mask`` or ``pseudonymise``
    (see :mod:`tunelab.data.pii`; ``seed`` picks the fakes), or None to write texts as
    they are.
    """
    if not 0.0 <= min_rating <= 1.0:
        raise ConfigError(
            f"min_rating must be between 0 and 1, got {min_rating}",
            hint="ratings are stored on [0, 1]: down 0, up 1, k of 5 -> (k - 1) / 4",
        )
    anonymizer, note = _anonymizer(anonymize, seed)
    stats = store.stats()
    plan = plan_export(reversed(store.list(limit=None, with_feedback=True)), min_rating)
    found: Counter[str] = Counter()
    if anonymizer is not None:

        def scrub(text: str) -> str:
            new, counts = anonymizer(text)
            found.update(counts)
            return str(new)

        _scrub_rows(plan, scrub)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"train": "train.jsonl", "completions": "completions.jsonl",
             "preferences": "preferences.jsonl"}  # fmt: skip
    for key, name in files.items():
        _write_jsonl(out_dir / name, getattr(plan, key))
    skipped = {"no feedback": stats["completions"] - stats["with_feedback"], **plan.skipped}
    summary = {
        "min_rating": min_rating,
        "completions_seen": stats["completions"],
        "answers_with_feedback": plan.answers,
        "examples": {
            "from_corrections": plan.from_corrections,
            "from_good_ratings": plan.from_good_ratings,
            "chat": len(plan.train),
            "completion": len(plan.completions),
        },
        "preference_pairs": len(plan.preferences),
        "skipped": {k: v for k, v in skipped.items() if v},
        "files": files,
        "anonymization": {
            "policy": anonymize,
            "found": dict(sorted(found.items())),
            "note": note,
        },
    }
    (out_dir / "export.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary
