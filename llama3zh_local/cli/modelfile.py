"""`llama3zh modelfile` and `llama3zh ollama-create`: run the models in Ollama.

Library modules are imported inside the functions: `llama3zh --help` starts without them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..catalog import DEFAULT_ALIAS
from ..errors import UsageError
from . import _output
from ._errors import handle_errors
from ._options import ModelArg, QuantOpt

if TYPE_CHECKING:
    from ..ollama.modelfile import Modelfile

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
    from ..ollama.modelfile import modelfile_path, write_modelfile

    if relative and output is None:
        raise UsageError(
            "--relative needs -o: FROM is written relative to the Modelfile's folder",
            hint="add -o PATH, or leave out --relative for an absolute FROM path",
        )
    target = modelfile_path(output, force=force) if output is not None else None
    relative_to = target.parent if relative and target is not None else None
    mf = _built(model=model, quant=quant, system=system, params=param or (), adapter=adapter,
                chat=chat, relative_to=relative_to)  # fmt: skip
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
    create_in_ollama(name, model=model, quant=quant, system=system, params=param or (),
                     adapter=adapter, chat=chat, host=host)  # fmt: skip


def create_in_ollama(
    name: str,
    *,
    model: str,
    quant: str | None = None,
    system: str | None = None,
    params: Sequence[str] = (),
    adapter: Path | None = None,
    chat: bool | None = None,
    host: str | None = None,
) -> None:
    """Build the Modelfile for ``model`` and create ``name`` in Ollama, with progress on stderr.

    Shared by ``ollama-create`` and ``run --ollama``.
    """
    from ..ollama.client import ollama_create
    from ..ollama.quoting import check_ollama_name
    from ._progress import Progress

    check_ollama_name(name)
    mf = _built(model=model, quant=quant, system=system, params=params, adapter=adapter, chat=chat)
    with Progress() as progress:
        result = ollama_create(name=name, modelfile=mf, host=host, progress=progress)
    _output.note(
        f"Created {result.name} on Ollama {result.server_version} at {result.host}. "
        f"Run it: ollama run {result.name}"
    )
    _output.result(result.name)


def _built(**options: Any) -> Modelfile:
    """``build_modelfile(**options)``, its warnings shown on stderr."""
    from ..ollama.modelfile import build_modelfile

    mf = build_modelfile(**options)
    for warning in mf.warnings:
        _output.warn(warning)
    return mf
