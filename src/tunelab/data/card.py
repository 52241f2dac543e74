"""The data card: what preparation kept and dropped, as JSON and as Markdown.

:func:`length_summary` and :func:`balance_warnings` are pure helpers for the numbers;
:func:`card_markdown` renders a card dict. The invariant every card satisfies, and the
tests check: for each task ``rows_in = kept + Σ dropped`` where kept counts distinct rows
written to a split (a row repeated by the mixture counts once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["MIN_CLASS_SHARE", "balance_warnings", "card_markdown", "length_summary"]

MIN_CLASS_SHARE = 0.05


def length_summary(lengths: Iterable[int | None]) -> dict[str, float] | None:
    """min / mean / p50 / p90 / p99 / max of token lengths (None when not measured)."""
    values = np.array([n for n in lengths if n is not None], dtype=np.int64)
    if values.size == 0:
        return None
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"rows": int(values.size), "min": int(values.min()),
            "mean": round(float(values.mean()), 1), "p50": float(p50), "p90": float(p90),
            "p99": float(p99), "max": int(values.max())}  # fmt: skip


def balance_warnings(balance: Mapping[str, Mapping[str, int]]) -> list[str]:
    """A warning for each class under :data:`MIN_CLASS_SHARE` of a split's rows."""
    warnings = []
    for split, counts in balance.items():
        total = sum(counts.values())
        for label, n in sorted(counts.items()):
            if total and n / total < MIN_CLASS_SHARE:
                warnings.append(
                    f"label '{label}' is {n / total:.1%} of {split} ({n} of {total} rows): "
                    "under 5%, the model may learn to ignore it; collect more or rebalance"
                )
    return warnings


def _table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return [*lines, ""]


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as a Markdown page (``data_card.md``)."""
    out = ["# Data card", "", f"- data hash: `{card['hash']}`",
           f"- format: {card['format']} ({card['format_note']})",
           f"- split: {card['split_method']}", ""]  # fmt: skip
    out += ["## Rows", ""]
    out += _table(
        ["task", "rows in", "kept", "dropped", "train", "val", "test"],
        (
            [
                name,
                t["rows_in"],
                t["kept"],
                sum(t["dropped"].values()),
                *(t["splits"][s] for s in ("train", "val", "test")),
            ]
            for name, t in card["tasks"].items()
        ),
    )
    out += ["Rows left after each stage:", ""]
    stages = list(next(iter(card["tasks"].values()))["after_stage"])
    out += _table(
        ["task", *stages], ([name, *t["after_stage"].values()] for name, t in card["tasks"].items())
    )
    if card.get("repeated_in_mixture"):
        out += [f"The training mixture repeats {card['repeated_in_mixture']:,} rows.", ""]
    out += ["## Dropped rows by stage and reason", "", "Every row is in `rejected.jsonl`.", ""]
    rows = [
        [name, stage, reason, n]
        for name, t in card["tasks"].items()
        for key, n in sorted(t["dropped"].items())
        for stage, reason in [key.split(": ", 1)]
    ]
    out += _table(["task", "stage", "reason", "rows"], rows) if rows else ["none", ""]
    recipe = {n: t["recipe_dropped"] for n, t in card["tasks"].items() if t["recipe_dropped"]}
    for name, dropped in recipe.items():
        shown = ", ".join(f"{n:,} {why}" for why, n in dropped.items())
        out += [f"The built-in dataset of task {name} leaves out {shown}.", ""]
    pii = card.get("pii")
    out += ["## Personal data", ""]
    if pii is None:
        out += ["Not scanned (`data.anonymize: null`).", ""]
    else:
        out += [f"Policy `{pii['policy']}`. {pii['note']}", ""]
        out += _table(["type", "found"], sorted(pii["found"].items())) if pii["found"] else [
            "None found.", ""]  # fmt: skip
    out += ["## Token lengths (prompt + response, the base model's tokenizer)", ""]
    lengths = card.get("token_lengths", {})
    out += _table(
        ["split", "rows", "min", "mean", "p50", "p90", "p99", "max"],
        (
            [s, *(v[k] for k in ("rows", "min", "mean", "p50", "p90", "p99", "max"))]
            for s, v in lengths.items()
            if v
        ),
    )
    if "label_balance" in card:
        out += ["## Labels", ""]
        labels = card["labels"]
        out += _table(
            ["split", *labels],
            ([s, *(c.get(x, 0) for x in labels)] for s, c in card["label_balance"].items()),
        )
    out += ["## Templates", ""]
    out += _table(
        ["task", "template", "examples"],
        (
            [name, f"`{t}`"[:80], n]
            for name, used in card["templates"].items()
            for t, n in used.items()
        ),
    )
    if card["warnings"]:
        out += ["## Warnings", "", *(f"- {w}" for w in card["warnings"]), ""]
    return "\n".join(out)
