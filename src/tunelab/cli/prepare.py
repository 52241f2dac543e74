"""``tunelab prepare``: data only (load, clean, anonymise, dedupe, split) and the data card."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.recipes.setup import prepare_stage


def prepare(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Prepare the config's data into <run>/data and show the data card."""
    cfg = get_config(config, set_)
    folder = cfg.run_dir / "data"
    prep = prepare_stage(cfg, cfg.run_dir, reuse=False)
    show_card(prep.card)
    console.print(f"written: {folder}/{{train,val,test}}.jsonl, rejected.jsonl, data_card.md")


def show_card(card: dict[str, Any]) -> None:
    """The data card as tables: rows per task and stage, drops by reason, splits."""
    console.print(card["format_note"])
    rows = Table(title="rows")
    for column in ("task", "in", "kept", "dropped", "train", "val", "test"):
        rows.add_column(column, justify="left" if column == "task" else "right")
    for name, t in card["tasks"].items():
        rows.add_row(name, f"{t['rows_in']:,}", f"{t['kept']:,}",
                     f"{sum(t['dropped'].values()):,}",
                     *(f"{t['splits'][s]:,}" for s in ("train", "val", "test")))  # fmt: skip
    console.print(rows)
    dropped = [(name, why, n) for name, t in card["tasks"].items()
               for why, n in t["dropped"].items()]  # fmt: skip
    if dropped:
        table = Table(title="dropped (every row is in rejected.jsonl)")
        for column in ("task", "stage: reason", "rows"):
            table.add_column(column, justify="right" if column == "rows" else "left")
        for name, why, n in dropped:
            table.add_row(name, why, f"{n:,}")
        console.print(table)
    pii = card.get("pii")
    if pii is not None:
        found = ", ".join(f"{k}: {v:,}" for k, v in sorted(pii["found"].items())) or "none"
        console.print(f"personal data ({pii['policy']}): {found}. {pii['note']}")
    if "label_balance" in card:
        balance = Table(title="labels")
        balance.add_column("split")
        for label in card["labels"]:
            balance.add_column(label, justify="right")
        for split, counts in card["label_balance"].items():
            balance.add_row(split, *(str(counts.get(x, 0)) for x in card["labels"]))
        console.print(balance)
    for warning in card["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"split: {card['split_method']}; data hash {card['hash']}")
