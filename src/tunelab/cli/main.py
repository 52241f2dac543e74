"""The ``tunelab`` command: one file per verb; this file registers them and maps errors."""

from __future__ import annotations

import errno
import os
import sys

import typer

from tunelab import __version__
from tunelab.cli import (
    bench,
    calibrate,
    compare,
    datasets,
    distill,
    evaluate,
    export,
    feedback,
    forgetting,
    generate,
    models,
    prepare,
    report,
    run,
    serve,
    sweep,
    train,
)
from tunelab.cli import config as config_cmd
from tunelab.cli._common import err_console, quiet_libraries
from tunelab.errors import TunelabError

app = typer.Typer(
    name="tunelab",
    help="Fine-tune language models from one YAML file, and measure whether it helped.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"tunelab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and library logs."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _state["debug"] = debug
    quiet_libraries(debug)


app.command("run")(run.run)
app.command("prepare")(prepare.prepare)
app.command("train")(train.train)
app.command("sweep")(sweep.sweep)
app.command("eval")(evaluate.eval_)
app.command("compare")(compare.compare)
app.command("calibrate")(calibrate.calibrate)
app.command("generate")(generate.generate)
app.command("models")(models.models)
app.command("datasets")(datasets.datasets)
app.command("report")(report.report)
app.command("export")(export.export)
app.command("distill")(distill.distill)
app.command("serve")(serve.serve)
app.add_typer(config_cmd.app, name="config")
app.add_typer(bench.app, name="bench")
app.add_typer(forgetting.app, name="forgetting")
app.add_typer(feedback.app, name="feedback")


def main() -> None:
    """Console-script entry point: typed errors become a short message and exit code 1
    (3 for a run that forgot more than ``forgetting.min_retention`` allows).

    Usage errors are handled by the command framework itself (message, exit code 2).
    """
    try:
        app()
    except TunelabError as exc:
        if _state["debug"]:
            raise
        _print_error(exc)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk or a read-only folder outside the checkpoints
        if _state["debug"] or exc.errno not in _WRITE_ERRORS:
            raise
        _print_error(
            TunelabError(
                f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}",
                hint="free disk space or fix permissions; checkpoints already written are "
                "intact (`tunelab train CONFIG --resume` continues from the last one)",
            )
        )
        sys.exit(1)


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _print_error(exc: TunelabError) -> None:
    rank = os.environ.get("RANK", "0")  # a process of a distributed launch says which one
    where = f" (rank {rank})" if rank not in ("", "0") else ""
    err_console.print(f"[bold red]error{where}:[/] ", end="")
    err_console.print(str(exc), markup=False, highlight=False)
    err_console.print("[dim](run with --debug for the traceback)[/]")


if __name__ == "__main__":
    main()
