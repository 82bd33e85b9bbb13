"""`llama3zh modelfile` and `llama3zh ollama-create`: run the models in Ollama."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalog import DEFAULT_ALIAS
from . import _output
from ._errors import handle_errors
from ._options import ModelArg, QuantOpt

if TYPE_CHECKING:
    from rich.progress import TaskID

    from ..ollama.modelfile import CreateProgress

SystemOpt = Annotated[
    str | None,
    typer.Option(
        "--system",
        "-s",
        help='SYSTEM prompt (default: the upstream one for chat models; "" for none).',
        show_default=False,
    ),
]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="An Ollama PARAMETER as NAME=VALUE, repeatable: overrides a default "
        "(temperature 0.2, top_p 0.9, top_k 40, repeat_penalty 1.1, num_ctx 8192, num_keep 24); "
        "stop=TEXT adds a stop string.",
        show_default=False,
    ),
]
AdapterOpt = Annotated[
    Path | None,
    typer.Option("--adapter", help="A LoRA adapter GGUF trained on this model (ADAPTER)."),
]
ChatOpt = Annotated[
    bool | None,
    typer.Option(
        "--chat/--base",
        help="Llama-3-Instruct chat template, or a plain completion one "
        "(default: from the catalog, else from the GGUF's chat template).",
        show_default=False,
    ),
]


@handle_errors
def modelfile(
    model: ModelArg = DEFAULT_ALIAS,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file (or DIR/Modelfile) instead of stdout."
        ),
    ] = None,
    quant: QuantOpt = None,
    system: SystemOpt = None,
    param: ParamOpt = None,
    adapter: AdapterOpt = None,
    relative: Annotated[
        bool,
        typer.Option(
            "--relative", help="Write FROM/ADAPTER relative to the Modelfile's folder (needs -o)."
        ),
    ] = False,
    chat: ChatOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing -o file.")] = False,
) -> None:
    """Write an Ollama Modelfile for a GGUF: Llama-3 TEMPLATE, stop tokens, upstream defaults.

    Examples:

      llama3zh modelfile instruct-v3 -o Modelfile && ollama create llama3-zh -f Modelfile

      llama3zh modelfile ./ggml-model-q4_k.gguf --param num_ctx=4096 > Modelfile

      llama3zh modelfile instruct-v3 --quant q4_k-im -o models/ --relative
    """
    from ..errors import UsageError
    from ..ollama.modelfile import build_modelfile, modelfile_path, write_modelfile

    if relative and output is None:
        raise UsageError(
            "--relative needs -o: FROM is written relative to the Modelfile's folder",
            hint="add -o PATH, or leave out --relative for an absolute FROM path",
        )
    target = modelfile_path(output, force=force) if output is not None else None
    mf = build_modelfile(
        model=model,
        quant=quant,
        system=system,
        params=param or (),
        adapter=adapter,
        chat=chat,
        relative_to=target.parent if relative and target is not None else None,
    )
    for warning in mf.warnings:
        _output.warn(warning)
    if target is None or output is None:
        sys.stdout.write(mf.text)
        sys.stdout.flush()
        return
    path = write_modelfile(mf, path=output, force=force)  # -o FOLDER: recorded there
    _output.note(f"Create the model: ollama create NAME -f {path}")
    _output.result(str(path))


@handle_errors
def ollama_create(
    name: Annotated[
        str, typer.Argument(help="Name of the model in Ollama, e.g. llama3-zh or llama3-zh:q4_k.")
    ],
    model: ModelArg = DEFAULT_ALIAS,
    quant: QuantOpt = None,
    system: SystemOpt = None,
    param: ParamOpt = None,
    adapter: AdapterOpt = None,
    chat: ChatOpt = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Ollama server (default: $OLLAMA_HOST, else 127.0.0.1:11434)."),
    ] = None,
) -> None:
    """Create an Ollama model from a GGUF through the Ollama server's API (Ollama >= 0.5.5).

    Uploads the GGUF unless the server has it, with the same TEMPLATE, stops, parameters and
    system prompt as `llama3zh modelfile`.

    Examples:

      llama3zh ollama-create llama3-zh instruct-v3 && ollama run llama3-zh

      llama3zh ollama-create llama3-zh:q4_k-im instruct-v3 --quant q4_k-im

      OLLAMA_HOST=gpu-box:11434 llama3zh ollama-create llama3-zh ./ggml-model-q8_0.gguf
    """
    from ..ollama.modelfile import build_modelfile, check_ollama_name
    from ..ollama.modelfile import ollama_create as create

    check_ollama_name(name)
    mf = build_modelfile(
        model=model,
        quant=quant,
        system=system,
        params=param or (),
        adapter=adapter,
        chat=chat,
    )
    for warning in mf.warnings:
        _output.warn(warning)
    with _Progress() as progress:
        result = create(name=name, modelfile=mf, host=host, progress=progress)
    _output.note(
        f"Created {result.name} on Ollama {result.server_version} at {result.host}. "
        f"Run it: ollama run {result.name}"
    )
    _output.result(result.name)


class _Progress:
    """Draws ollama_create's steps on stderr: a byte bar for hashing, one line per status."""

    def __enter__(self) -> _Progress:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=_output.err(),
            transient=True,
            disable=not _output.err().is_terminal,  # no bar in logs: the status lines suffice
        )
        self.bar.start()
        self.tasks: dict[str, TaskID] = {}
        self.said: set[str] = set()
        return self

    def __call__(self, p: CreateProgress) -> None:
        if p.stage == "hash" and p.total:
            task = self.tasks.get(p.message)
            if task is None:
                task = self.tasks[p.message] = self.bar.add_task(p.message, total=p.total)
            self.bar.update(task, completed=p.completed or 0)
            return
        if p.message not in self.said:
            self.said.add(p.message)
            self.bar.console.print(f"[dim]{_escape(p.message)}[/dim]", soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
