"""``tunelab config validate|show|schema``."""

from __future__ import annotations

import json

import typer

from tunelab.cli._common import ConfigArg, SetOpt, console, get_config
from tunelab.config import Config, dump_config

app = typer.Typer(help="Validate, show or describe configs.", no_args_is_help=True)


@app.command("validate")
def validate(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Check a config; every problem is listed with its YAML path."""
    cfg = get_config(config, set_)
    console.print(f"ok: {config or 'defaults'} is valid (run folder {cfg.run_dir})")


@app.command("show")
def show(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the resolved config with every default filled in."""
    print(dump_config(get_config(config, set_)), end="")


@app.command("schema")
def schema() -> None:
    """Print the JSON schema of the config (every key, type, default and description)."""
    print(json.dumps(Config.model_json_schema(), indent=2))
