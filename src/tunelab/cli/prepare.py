"""``tunelab prepare``: data only (load, render, split) and the data card."""

from __future__ import annotations

from rich.table import Table

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.workflow import prepare_stage


def prepare(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Prepare the config's data into <run>/data and show the data card."""
    cfg = get_config(config, set_)
    prep = prepare_stage(cfg, cfg.run_dir, reuse=False)
    card = prep.card
    console.print(card["format_note"])
    table = Table(title=f"data card ({cfg.run_dir / 'data'})")
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("labels")
    for name, count in card["splits"].items():
        balance = card.get("label_balance", {}).get(name, {})
        table.add_row(name, str(count), ", ".join(f"{k}: {v}" for k, v in sorted(balance.items())))
    console.print(table)
    console.print(f"template: {card['template']}; data hash {card['hash']}")
