"""The typer app: one small module per command, registered here."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from .. import __version__
from . import (
    _signals,
    chat,
    convert,
    demo,
    doctor,
    evaluate,
    gc,
    listing,
    modelfile,
    models,
    pull,
    quantize,
    recommend,
    rm,
    run,
    show,
)

app = typer.Typer(
    name="llama3zh",
    help="Pull, convert, quantize and chat with the Chinese Llama-3 models on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llama3zh {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Pull, convert, quantize and chat with the Chinese Llama-3 models on your own machine."""


app.command("run")(run.run)
app.command("models")(models.models)
app.command("chat")(chat.chat)
app.command("doctor")(doctor.doctor)
app.command("convert")(convert.convert)
app.command("merge-lora")(convert.merge_lora)
app.command("pull")(pull.pull)
app.command("list")(listing.list_models)
app.command("show")(show.show)
app.command("rm")(rm.rm)
app.command("modelfile")(modelfile.modelfile)
app.command("ollama-create")(modelfile.ollama_create)
app.command("imatrix")(quantize.imatrix)
app.command("quantize")(quantize.quantize)
app.command("eval")(evaluate.eval_models)
app.command("recommend")(recommend.recommend)
app.command("gc")(gc.gc)
app.command("demo")(demo.demo)


def main() -> None:
    _signals.install()
    try:
        app()
    except SystemExit as e:
        if _signals.terminated() and e.code == 130:  # "Interrupted." after SIGTERM
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    except KeyboardInterrupt:  # after the command had finished (click's teardown): exit cleanly
        sys.stderr.write("\nInterrupted.\n")
        sig = signal.SIGTERM if _signals.terminated() else signal.SIGINT
        raise SystemExit(128 + sig) from None
