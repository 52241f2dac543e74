"""``tunelab feedback``: what users said about the served model, and a dataset from it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.cli._common import console
from tunelab.serving.store import FeedbackError, FeedbackStore, sqlite_path

app = typer.Typer(
    help="List and summarise the feedback `tunelab serve` collected; export it as data.",
    no_args_is_help=True,
)

DEFAULT_DB = "runs/feedback.db"
DbOpt = Annotated[
    str,
    typer.Option(
        "--db",
        help="The feedback store: a SQLite file or a SQLAlchemy URL "
        "(postgresql+psycopg://user@host/db).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


def _open(db: str) -> FeedbackStore:
    """The store at ``db``; a SQLite file must exist already (reading creates nothing)."""
    path = sqlite_path(db)
    if path is not None and not path.is_file():
        raise FeedbackError(
            f"no feedback store at {path}",
            hint="start `tunelab serve` (it logs every completion there), or pass --db",
        )
    return FeedbackStore(db)


def _short(text: Any, width: int = 48) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _last_prompt(prompt: Any) -> str:
    """The last user message of a chat prompt, or the prompt text."""
    if isinstance(prompt, list):
        users = [
            m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"
        ]
        return str(users[-1]) if users else ""
    return str(prompt)


def _verdict(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """``(ratings, corrected)`` of a completion: the latest rating per choice."""
    latest = {r["choice"]: r["rating"] for r in rows}
    ratings = " ".join(f"{c}:{r}" if len(latest) > 1 else str(r) for c, r in sorted(latest.items()))
    return ratings or "-", "yes" if any(r["correction"] for r in rows) else ""


@app.command("list")
def list_(
    db: DbOpt = DEFAULT_DB,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many.")] = 20,
    with_feedback: Annotated[
        bool | None,
        typer.Option(
            "--with-feedback/--without-feedback",
            help="Only completions with feedback / only those without (default: both).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The latest completions, newest first, with their ratings."""
    with _open(db) as store:
        rows = store.list(limit=limit, with_feedback=with_feedback)
    if json_out:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"latest {len(rows)} completions in {db}")
    for col in ("id", "created", "model", "kind", "prompt", "output", "rating", "corrected"):
        table.add_column(col, no_wrap=col in ("id", "created"))
    for row in rows:
        created = datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            row["id"],
            created,
            row["model"],
            row["endpoint"],
            _short(_last_prompt(row["prompt"])),
            _short(row["outputs"][0]),
            *_verdict(row["feedback"]),
        )
    console.print(table)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@app.command("stats")
def stats(db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False) -> None:
    """Counts, the up/down share, the mean rating and corrections, in all and per model."""
    with _open(db) as store:
        result = store.stats()
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"feedback in {db} (an answer is one choice; its latest rating counts)")
    cols = ("model", "completions", "with feedback", "rated answers", "up", "down",
            "mean rating", "corrections")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    models = [*result["by_model"].items(), ("all", result)]
    for name, s in models:
        table.add_row(
            f"[bold]{name}[/]" if name == "all" else name,
            str(s["completions"]),
            str(s["with_feedback"]),
            str(s["rated_answers"]),
            _pct(s["up_share"]),
            _pct(s["down_share"]),
            _num(s["mean_rating_value"]),
            str(s["corrections"]),
        )
    console.print(table)
    console.print(
        f"{result['feedback_rows']} feedback rows; up: rating above 0.5 (up, 4, 5), "
        "down: below 0.5 (down, 1, 2); mean rating on [0, 1]"
    )


@app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset to.")],
    db: DbOpt = DEFAULT_DB,
    min_rating: Annotated[
        float,
        typer.Option(
            "--min-rating",
            help="Uncorrected answers rated at least this (0..1; up=1, k of 5 = (k-1)/4) "
            "become training examples.",
        ),
    ] = 0.75,
    anonymize: Annotated[
        str,
        typer.Option("--anonymize", help="PII policy: redact, mask, pseudonymise or off."),
    ] = "redact",
    json_out: JsonOpt = False,
) -> None:
    """Write train.jsonl (chat), completions.jsonl, preferences.jsonl and export.json."""
    from tunelab.serving.feedback_export import export_feedback

    policy = None if anonymize.lower() in ("off", "none") else anonymize
    with _open(db) as store:
        summary = export_feedback(store, out, min_rating=min_rating, anonymize=policy)
    if json_out:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    ex = summary["examples"]
    table = Table(title=f"feedback export to {out}")
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_row("completions seen", str(summary["completions_seen"]))
    table.add_row("answers with feedback", str(summary["answers_with_feedback"]))
    table.add_row("examples from corrections", str(ex["from_corrections"]))
    table.add_row(f"examples rated >= {min_rating:g}", str(ex["from_good_ratings"]))
    table.add_row("  in train.jsonl (chat)", str(ex["chat"]))
    table.add_row("  in completions.jsonl", str(ex["completion"]))
    table.add_row("preference pairs", str(summary["preference_pairs"]))
    for reason, n in summary["skipped"].items():
        table.add_row(f"skipped: {reason}", str(n))
    console.print(table)
    pii = summary["anonymization"]
    found = ", ".join(f"{k} {v}" for k, v in pii["found"].items()) or "nothing found"
    console.print(f"PII: {pii['policy'] or 'off'} ({found}); {pii['note']}")
    console.print(f"train with: data.source: {out / 'train.jsonl'}")
