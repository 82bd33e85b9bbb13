"""Options shared by several commands, defined once."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

ModelArg = Annotated[
    str,
    typer.Argument(
        help="A .gguf file, or a pulled model alias: base, instruct, instruct-v2, instruct-v3.",
        show_default=True,
    ),
]
QuantOpt = Annotated[
    str | None,
    typer.Option("--quant", "-q", help="Which local quant of an alias, e.g. q4_k, q8_0, q4_k-im."),
]
GpuLayersOpt = Annotated[
    str,
    typer.Option(
        "--n-gpu-layers",
        "-ngl",
        help="Layers to put on the GPU: auto (as many as fit the free VRAM), all, or a number.",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", "-t", help="CPU threads (default: physical cores).", min=1),
]
CtxOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx",
        "-c",
        help="Context size in tokens (default: 8192, or the model's if smaller).",
        min=64,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


class FlashAttn(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class TemplateChoice(str, Enum):
    auto = "auto"
    llama3 = "llama3"
    gguf = "gguf"
