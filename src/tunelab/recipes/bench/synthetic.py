"""Instruction rows with a realistic, long-tailed length spread, built from real text.

Benchmarks on rows of one length flatter every tool: real instruction data mixes one-line
questions with long multi-part requests, and a batch padded to its longest row wastes most
of its compute. These rows mix three tasks drawn from the embedded datasets:

- a question and its answer (chatterbot corpus): short rows;
- "label each of these k reviews" (Rotten Tomatoes), k drawn from a log-normal: rows from
  a few dozen to several hundred tokens, most of the length in the prompt;
- "write a positive/negative review of <film>", answered with m real critic snippets of
  that polarity, m log-normal: long responses.

The rows are a pure function of ``(n, seed)`` and the installed data, so anyone can
regenerate the benchmark file (``tunelab bench data``).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.data.recipes import get_recipe
from tunelab.results import write_jsonl

__all__ = ["instruction_rows", "length_summary", "write_rows"]

TASKS: dict[str, float] = {"qa": 0.35, "label": 0.40, "write": 0.25}  # share of rows
WORD = {"fresh": "positive", "rotten": "negative"}


def instruction_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows ``{"instruction", "input", "output", "task"}``."""
    rng = random.Random(seed)
    reviews = get_recipe("rotten_tomatoes").load()
    qa = get_recipe("chatterbot_qa").load()
    by_film: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in reviews:
        by_film[(str(r.extra.get("movie_name", "")), str(r.label))].append(r.data["text"])
    films = sorted(k for k, texts in by_film.items() if len(texts) >= 3)
    rows = []
    for _ in range(n):
        task = rng.choices(list(TASKS), list(TASKS.values()))[0]
        if task == "qa":
            d = rng.choice(qa).data
            rows.append({"instruction": d["instruction"], "input": "", "output": d["output"]})
        elif task == "label":
            picked = rng.sample(reviews, _long_tailed(rng, median=3, cap=24))
            rows.append({
                "instruction": "Label each review as positive or negative, one line per review.",
                "input": "\n".join(f"{i}. {r.data['text']}" for i, r in enumerate(picked, 1)),
                "output": "\n".join(f"{i}. {WORD[str(r.label)]}" for i, r in enumerate(picked, 1)),
            })  # fmt: skip
        else:
            film, label = rng.choice(films)
            texts = by_film[(film, label)]
            m = min(len(texts), _long_tailed(rng, median=2, cap=10))
            rows.append({
                "instruction": f"Write a {WORD[label]} review of the film "
                               f"'{film.replace('_', ' ')}' in the voice of a critic.",
                "input": "",
                "output": " ".join(rng.sample(texts, m)),
            })  # fmt: skip
        rows[-1]["task"] = task
    return rows


def _long_tailed(rng: random.Random, *, median: float, cap: int) -> int:
    """A count >= 1 from a log-normal with this median (sigma 0.9), at most ``cap``."""
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), 0.9))))


def length_summary(lengths: Sequence[int]) -> dict[str, Any]:
    """Mean and percentiles of token lengths, for the benchmark's record."""
    s = sorted(lengths)
    if not s:
        return {"n": 0}

    def pct(q: float) -> int:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"n": len(s), "mean": round(sum(s) / len(s), 1), "p10": pct(0.1), "p50": pct(0.5),
            "p90": pct(0.9), "p99": pct(0.99), "max": s[-1]}  # fmt: skip


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    write_jsonl(path, instruction_rows(n, seed))
    return path
