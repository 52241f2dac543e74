"""``tunelab export``: a run's model as a standalone Hugging Face folder (optionally int8)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.cli._common import console


class Quantize(str, Enum):
    int8 = "int8"


def export(
    run: Annotated[Path, typer.Argument(help="A run folder (runs/<name>) or its model/ folder.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write (created; must be empty).")
    ],
    quantize: Annotated[
        Quantize | None,
        typer.Option(help="int8: weight-only int8 linear layers with torchao (~0.4x the size)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out when it exists and is not empty.")
    ] = False,
) -> None:
    """Merge LoRA adapters and save a standalone model (safetensors, tokenizer, generation
    config, model card) that plain transformers loads without tunelab or peft."""
    from tunelab.export.folder import export_model

    facts = export_model(run, out, quantize=quantize.value if quantize else None, overwrite=force)
    print_export(facts)


def print_export(facts: dict[str, Any]) -> None:
    """The exported folder in one table, then how to load it."""
    table = Table(title=f"exported {facts['source']} → {facts['out']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    merged = " (LoRA merged)" if facts["kind"] == "lora" else ""
    rows = {
        "weights": f"{facts['weights']}{merged}",
        "parameters": f"{facts['parameters']:,}",
        "size on disk": f"{facts['bytes'] / 1e6:,.1f} MB",
        "files": ", ".join(facts["files"]),
        "took": f"{facts['seconds']:.1f} s",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    extra = " (and `pip install torchao`)" if facts["quantize"] else ""
    console.print(
        f"load it with transformers{extra}: "
        f"AutoModelForCausalLM.from_pretrained({str(facts['out'])!r}); "
        "README.md in the folder is its model card",
        highlight=False,
    )
    if facts["head"] == "classifier":
        console.print(
            "note: classifier.safetensors (the trained classifier head) is copied, but plain "
            "transformers loads the LM head; tunelab eval --model uses the classifier",
            highlight=False,
        )
