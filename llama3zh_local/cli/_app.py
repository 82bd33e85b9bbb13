"""The typer app: one small module per command, registered here."""

from __future__ import annotations

import inspect
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from .. import __version__
from . import (
    _errors,
    _options,
    _output,
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
    serve,
    show,
    train,
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
    _output.route_logs(debug=_errors.debug())


def help_text(doc: str | None) -> str:
    """A command's docstring as its --help: prose paragraphs on one line each (rich wraps them
    to the terminal; typer keeps a docstring's line breaks), indented blocks (examples) as
    written."""
    paragraphs = []
    for para in inspect.cleandoc(doc or "").split("\n\n"):
        lines = para.split("\n")
        if all(line.startswith(" ") for line in lines):
            paragraphs.append(para)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    summary, *rest = paragraphs
    # typer dedents the text after the summary as a docstring, its first line not counted: a
    # blank first line keeps "Examples:" from making the examples below it lose their indent.
    return summary + ("\n\n\n" + "\n\n".join(rest) if rest else "")


# The commands, in the order `llama3zh --help` lists them; two need a click class of their own.
COMMANDS: dict[str, Callable[..., Any]] = {
    "run": run.run, "models": models.models, "chat": chat.chat, "doctor": doctor.doctor,
    "convert": convert.convert, "merge-lora": convert.merge_lora, "pull": pull.pull,
    "list": listing.list_models, "show": show.show, "rm": rm.rm,
    "modelfile": modelfile.modelfile, "ollama-create": modelfile.ollama_create,
    "imatrix": quantize.imatrix, "quantize": quantize.quantize, "eval": evaluate.eval_models,
    "recommend": recommend.recommend, "gc": gc.gc, "demo": demo.demo, "serve": serve.serve,
}  # fmt: skip
COMMAND_CLASSES: dict[str, type[TyperCommand]] = {
    "run": _options.RunCommand,
    "quantize": _options.QuantizeCommand,
    "eval": evaluate.EvalCommand,
}
for _name, _func in COMMANDS.items():
    app.command(_name, help=help_text(_func.__doc__), cls=COMMAND_CLASSES.get(_name))(_func)
for _name, _func in train.COMMANDS.items():
    train.train_app.command(_name, help=help_text(_func.__doc__))(_func)
app.add_typer(train.train_app, name="train")


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
