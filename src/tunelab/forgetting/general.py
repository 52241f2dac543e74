"""General-domain data for the retention suite and for mitigations, offline and split in two.

Three real corpora carried by installed packages:

- **ChatterBot corpus** (``chatterbot-corpus``, via the ``chatterbot_qa`` recipe): English
  question→answer pairs. The corpus repeats many questions (tech support ~100 times each),
  so one example is kept per distinct question (casefolded, whitespace collapsed).
- **Python language reference** (``pydoc_data.topics``, part of CPython): English prose,
  split into paragraphs of at least 200 characters. Indented paragraphs (grammar and code
  listings) are skipped, line wrapping is undone, and the paragraphs that several topics
  repeat are kept once. The text differs between Python
  versions; cache keys should hash the resulting probe items, not trust ``GENERAL_VERSION``.
- **Chit-chat dataset** (``chitchat-dataset==0.9.0``): 7,168 human conversations; each
  inner list of a conversation's ``messages`` is one speaker's turn.

Every source unit (a distinct ChatterBot question, a group of pydoc topics that share
paragraphs, a chit-chat conversation)
goes to exactly one part, ``probe`` (~30%) or ``train`` (~70%), decided by a BLAKE2b hash
of the unit's id: the same on every run and machine, and independent of what else is
installed. Probes read only ``probe``; mitigations (replay, Fisher, distillation) only
``train``, so a mitigation never sees the text it is judged on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from tunelab.assets import find_package_file
from tunelab.data.recipes import get_recipe
from tunelab.data.types import Example
from tunelab.errors import DataError

__all__ = [
    "GENERAL_VERSION",
    "PROBE_SHARE",
    "Part",
    "chat_examples",
    "general_prompts",
    "general_training_examples",
    "normalise_question",
    "part_of",
    "prose_texts",
    "qa_examples",
]

GENERAL_VERSION = "1"  # bump when the data selection changes (part of cache keys)
PROBE_SHARE = 0.3  # fraction of source units in the probe part
Part = Literal["probe", "train"]

MIN_PARAGRAPH = 200  # characters
MAX_TURNS = 8  # chit-chat turns kept per conversation (examples use at most the first 8)
CONTEXT_TURNS = 2  # previous turns shown before the turn to predict
OPENING_WORDS = (4, 40)  # an opening line used as an open prompt has this many words
PROMPT_HEAD = 0.2  # share of a prose paragraph given as the prompt of a completion example
CHITCHAT_SPEC = "chitchat-dataset==0.9.0"


def part_of(unit: str) -> Part:
    """The part a source unit belongs to: ``probe`` when the first 8 bytes of
    BLAKE2b(unit), read as a big-endian integer, fall below ``PROBE_SHARE`` x 2^64."""
    digest = hashlib.blake2b(unit.encode("utf-8"), digest_size=8).digest()
    return "probe" if int.from_bytes(digest, "big") < PROBE_SHARE * 2**64 else "train"


def normalise_question(text: str) -> str:
    """Casefolded, whitespace collapsed: how repeated ChatterBot questions are recognised."""
    return " ".join(text.casefold().split())


def qa_examples(part: Part) -> list[Example]:
    """One instruction example per distinct ChatterBot question of ``part`` (user = question,
    response = its first answer in file order), sorted by origin."""
    return [ex for unit, ex in _chatterbot() if part_of(unit) == part]


def prose_texts(part: Part) -> list[str]:
    """Paragraphs of the Python language reference topics of ``part``, sorted by topic."""
    return [text for _, text in _prose(part)]


def chat_examples(part: Part) -> list[Example]:
    """One next-turn example per chit-chat conversation of ``part`` (with at least 2 turns).

    The turn to predict, t in [1, min(turns, 8) - 1], is picked by a hash of the
    conversation id; the prompt is turns max(0, t-2)..t-1 as alternating messages whose
    last one is the user's, and the response is turn t.
    """
    out = []
    for conv_id, turns in _chitchat():
        if len(turns) < 2 or part_of(f"chitchat:{conv_id}") != part:
            continue
        digest = hashlib.blake2b(f"turn:{conv_id}".encode(), digest_size=8).digest()
        t = 1 + int.from_bytes(digest, "big") % (len(turns) - 1)
        context = turns[max(0, t - CONTEXT_TURNS) : t]
        last = len(context) - 1
        roles = ["user" if (last - i) % 2 == 0 else "assistant" for i in range(len(context))]
        messages = tuple({"role": r, "content": c} for r, c in zip(roles, context, strict=True))
        out.append(Example(messages, turns[t], None, f"chitchat:{conv_id}#{t}"))
    return out


def general_prompts(part: Part) -> list[Example]:
    """Single-turn open prompts (response ""): the distinct ChatterBot questions and the
    opening lines (4-40 words) of chit-chat conversations of ``part``."""
    prompts = [Example(ex.messages, "", None, ex.origin) for ex in qa_examples(part)]
    for conv_id, turns in _chitchat():
        words = len(turns[0].split())
        if OPENING_WORDS[0] <= words <= OPENING_WORDS[1] and part_of(f"chitchat:{conv_id}") == part:
            message = ({"role": "user", "content": turns[0]},)
            prompts.append(Example(message, "", None, f"chitchat:{conv_id}#0"))
    return prompts


def general_training_examples(n: int, seed: int) -> list[Example]:
    """``n`` examples from the ``train`` part: a third each of QA, chat and prose completion
    (the remainder to QA), seeded and shuffled.

    Prose becomes a completion example (``raw=True``): the first ~20% of a paragraph (cut
    at a space) is the prompt, the rest the response. A source smaller than its quota is
    cycled through in a fresh permutation each pass.
    """
    if n < 0:
        raise DataError(f"general_training_examples needs n >= 0, got {n}")
    rng = np.random.default_rng([seed, 0x6E6E])
    pools = [qa_examples("train"), chat_examples("train"), _completions(_prose("train"))]
    quotas = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    picked: list[Example] = []
    for pool, quota in zip(pools, quotas, strict=True):
        while quota > 0:
            take = min(quota, len(pool))
            picked.extend(pool[i] for i in rng.permutation(len(pool))[:take])
            quota -= take
    return [picked[i] for i in rng.permutation(len(picked))]


def _completions(paragraphs: Sequence[tuple[str, str]]) -> list[Example]:
    out = []
    for origin, text in paragraphs:
        cut = text.find(" ", int(len(text) * PROMPT_HEAD))
        cut = cut if cut > 0 else len(text) // 2
        message = ({"role": "user", "content": text[:cut]},)
        out.append(Example(message, text[cut:], None, origin, raw=True))
    return out


@lru_cache(maxsize=1)
def _chatterbot() -> tuple[tuple[str, Example], ...]:
    """(unit, example) per distinct question, first occurrence in (file, line) order."""
    records = get_recipe("chatterbot_qa").load()
    seen: set[str] = set()
    out = []
    for record in records:
        question = record.data["instruction"]
        key = normalise_question(question)
        if key in seen:
            continue
        seen.add(key)
        file, _, line = record.origin.rpartition(":")
        origin = f"chatterbot:{Path(file).name}:{line}"
        message = ({"role": "user", "content": question},)
        out.append((f"chatterbot:{key}", Example(message, record.data["output"], None, origin)))
    return tuple(sorted(out, key=lambda pair: pair[1].origin))


@lru_cache(maxsize=2)
def _prose(part: Part) -> tuple[tuple[str, str], ...]:
    """(origin, paragraph) of the pydoc topics in ``part``, by topic then position.

    Topics repeat each other's paragraphs (``compound`` holds ``if``, ``while``, ``try``...),
    so the unit is a group of topics linked by a shared paragraph, named by its first
    topic, and each distinct paragraph is kept once, where it first appears.
    """
    from pydoc_data.topics import topics

    paragraphs: dict[str, str] = {}  # text -> origin, first occurrence in topic order
    group = {topic: topic for topic in topics}

    def root(topic: str) -> str:
        while group[topic] != topic:
            topic = group[topic]
        return topic

    first_topic: dict[str, str] = {}
    for topic in sorted(topics):
        k = 0
        for block in topics[topic].split("\n\n"):
            text = " ".join(block.split())
            if block[:1].isspace() or len(text) < MIN_PARAGRAPH:
                continue  # indented blocks are grammar rules and code listings
            if text in paragraphs:
                a, b = sorted((root(first_topic[text]), root(topic)))
                group[b] = a  # union: the group is named by its smallest topic
                continue
            paragraphs[text], first_topic[text] = f"pydoc:{topic}#{k}", topic
            k += 1
    return tuple(
        (origin, text)
        for text, origin in paragraphs.items()
        if part_of(f"pydoc:{root(first_topic[text])}") == part
    )


@lru_cache(maxsize=1)
def _chitchat() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(conversation id, its first turns) sorted by id. Read once per process: the file is
    40 MB and only the first ``MAX_TURNS`` turns' text is kept."""
    path = find_package_file("chitchat_dataset", "dataset.json", CHITCHAT_SPEC, error=DataError)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        out = []
        for conv_id in sorted(data):
            turns = []
            for turn in data[conv_id]["messages"][:MAX_TURNS]:
                text = " ".join(" ".join(str(m["text"]) for m in turn).split())
                if not text:
                    break  # an empty turn would break the alternation of speakers
                turns.append(text)
            if turns:
                out.append((str(conv_id), tuple(turns)))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"cannot read the chit-chat dataset: {err!r}",
            file=str(path),
            hint=f"reinstall it: pip install --no-deps --force-reinstall {CHITCHAT_SPEC}",
        ) from None
    return tuple(out)
