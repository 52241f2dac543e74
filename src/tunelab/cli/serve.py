"""``tunelab serve``: an OpenAI-compatible HTTP API for a run, a model folder or a base model.

Also runnable on its own, without the ``tunelab`` command: ``python -m tunelab.cli.serve
MODEL [OPTIONS]`` (:func:`serve_main`), which the tests use to start a real server process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.cli._common import console, err_console, quiet_libraries
from tunelab.errors import ConfigError, TunelabError

__all__ = ["default_db", "serve", "serve_main", "served_name"]


def served_name(spec: str) -> str:
    """The model name clients send: a run's folder name (also for its ``model/`` folder),
    a model folder's name, or the base spec as given (an alias, a hub id)."""
    path = Path(spec)
    if not path.is_dir():
        return spec
    path = path.resolve()
    if path.name == "model" and (path / "tunelab_model.json").is_file():
        return path.parent.name
    return path.name


def default_db(spec: str) -> str:
    """``<run folder>/feedback.db`` when serving a run folder, else ``runs/feedback.db``."""
    path = Path(spec)
    if path.is_dir() and (path / "model" / "tunelab_model.json").is_file():
        return str(path / "feedback.db")
    return str(Path("runs") / "feedback.db")


def serve(
    model: Annotated[
        str, typer.Argument(help="A run folder, a tunelab model folder, or a base model spec.")
    ] = "smollm2-135m-instruct",
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="API keys, one per line (also: TUNELAB_API_KEYS=k1,k2)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="No API keys (only with a loopback --host).")
    ] = False,
    db: Annotated[
        str | None,
        typer.Option(
            help="Feedback store: a SQLAlchemy URL or a SQLite path; default <run>/feedback.db "
            "for a run folder, else runs/feedback.db."
        ),
    ] = None,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Do not log completions (and no /v1/feedback).")
    ] = False,
    max_tokens_limit: Annotated[
        int, typer.Option(min=1, help="Most output tokens one request may ask for.")
    ] = 512,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Longest prompt; default: the model's context minus max_tokens."),
    ] = None,
    queue_size: Annotated[
        int, typer.Option(min=1, help="Requests that may wait; more get 503.")
    ] = 64,
    threads: Annotated[
        int, typer.Option(min=1, help="Torch CPU threads (1 is fastest on a shared 2-core CPU).")
    ] = 1,
    name: Annotated[
        str | None, typer.Option(help="Model name clients send; default: from MODEL.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat, completions, feedback)."""
    from tunelab.serving.app import check_auth_rule, create_app, load_api_keys

    keys = load_api_keys(api_key_file, os.environ.get("TUNELAB_API_KEYS"))
    check_auth_rule(host, keys, no_auth)  # before the slow part: a bad setup fails at once

    import torch
    import uvicorn

    from tunelab.models.generation import load_any
    from tunelab.models.saved import read_temperature
    from tunelab.serving.engine import Engine, Limits

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is not auto, cpu or cuda", hint="--device auto")
    torch.set_num_threads(threads)
    task_model, tokenizer, info = load_any(model)
    task_model.to(device)
    engine = Engine(
        task_model,
        tokenizer,
        info,
        calibration_temperature=read_temperature(Path(model)) if info else 1.0,
        limits=Limits(max_tokens_limit, max_prompt_tokens, queue_size),
    )
    engine.warm_up()
    store: Any = None
    if not no_log:
        from tunelab.serving.store import FeedbackStore

        store = FeedbackStore(db or default_db(model))
    served = name or served_name(model)
    app = create_app(engine, api_keys=None if no_auth else keys, store=store, model_name=served)
    console.print(
        f"serving [bold]{served}[/] at http://{host}:{port}/v1 "
        f"(auth: {'off' if no_auth else f'{len(keys)} key(s)'}; "
        f"log: {store.url if store else 'off'}; device: {device})",
        highlight=False,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    try:
        uvicorn.Server(config).run()
    finally:
        engine.close()
        if store is not None:
            store.close()


def serve_main(argv: list[str] | None = None) -> None:
    """``serve`` as a program of its own (``python -m tunelab.cli.serve``), with tunelab's
    error handling: a typed error prints one message and exits with its code."""
    quiet_libraries(debug=False)
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    cli.command()(serve)
    try:
        cli(args=argv, prog_name="tunelab serve")
    except TunelabError as exc:
        err_console.print("[bold red]error:[/] ", end="")
        err_console.print(str(exc), markup=False, highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    serve_main()
