"""Options shared by several commands, defined once."""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from ._errors import report

# Library modules are imported inside the functions that need them: `llama3zh --help` stays quick.

if TYPE_CHECKING:
    from ..quant.options import ChunkOptions

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


# -- every command that writes -------------------------------------------------------------------

ForceOpt = Annotated[bool, typer.Option("--force", help="Replace existing outputs.")]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Check the inputs and print what would be written (files, sizes, commands); "
        "write nothing.",
    ),
]


class FlashAttn(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class Engine(str, Enum):
    gguf = "gguf"
    hf = "hf"


class TemplateChoice(str, Enum):
    auto = "auto"
    llama3 = "llama3"
    gguf = "gguf"


# -- pull / list / show / rm ---------------------------------------------------------------------

HubModelArg = Annotated[
    str,
    typer.Argument(
        help="A catalog alias (base, instruct, instruct-v2, instruct-v3) or a hub repo: "
        "hf:org/name (Hugging Face), ms:org/name (ModelScope), org/name (--source decides).",
    ),
]


class SourceChoice(str, Enum):
    auto = "auto"
    hf = "hf"
    modelscope = "modelscope"


SourceOpt = Annotated[
    SourceChoice,
    typer.Option(
        "--source",
        "-s",
        help="Where to download from: hf (Hugging Face; HF_ENDPOINT for a mirror), modelscope, "
        "or auto: Hugging Face if it answers within 3 s, else ModelScope (remembered for a day; "
        "LLAMA3ZH_SOURCE=hf|modelscope sets it for good).",
    ),
]


class VariantChoice(str, Enum):
    full = "full"
    lora = "lora"
    gguf = "gguf"


VariantOpt = Annotated[
    VariantChoice | None,
    typer.Option(
        "--variant",
        help="For a catalog alias: gguf (default: llama.cpp files), full (HF safetensors) or "
        "lora (the adapter).",
    ),
]
QuantsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--quant",
        "-q",
        help="GGUF quant(s): q8_0, q6_k, q5_k, q5_0, q4_k, q4_0, q3_k, q2_k, f16 (-im for the "
        "imatrix ones), or all. Repeat or comma-separate. Default: the best that fits this "
        "machine's memory.",
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


class FlagHintCommand(TyperCommand):
    """A command whose boolean flags may be given a value out of habit (llama-quantize's
    ``--imatrix FILE``): instead of click's "unexpected extra argument", an Error/Hint pair
    that names the option taking the value (``flag_hints``: flag -> hint with ``{value}``)."""

    flag_hints: dict[str, str] = {}

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        given = list(args)
        try:
            return super().parse_args(ctx, args)
        except Exception as e:  # click's UsageError: typer bundles its own click, not public
            message = str(getattr(e, "message", e))
            if type(e).__name__ != "UsageError" or "unexpected extra argument" not in message:
                raise
            for flag, value in zip(given[:-1], given[1:], strict=True):
                if flag in self.flag_hints and not value.startswith("-") and value in message:
                    report(
                        f"{flag} takes no value, but {value} follows it",
                        self.flag_hints[flag].format(value=shlex.quote(value)),
                    )
                    raise typer.Exit(1) from None
            raise


class QuantizeCommand(FlagHintCommand):
    flag_hints = {
        "--imatrix": "use --imatrix-file {value} (llama-quantize's --imatrix FILE); --imatrix "
        "alone computes one"
    }


class RunCommand(FlagHintCommand):
    flag_hints = {
        "--imatrix": "run computes its own imatrix; to quantize with a file, use "
        "llama3zh quantize MODEL -q TYPE --imatrix-file {value}"
    }


def chunk_options(
    *, text: Path | None, ctx: int, chunks: int | None, n_gpu_layers: str, threads: int | None
) -> ChunkOptions:
    """The options of a llama-imatrix / llama-perplexity run (imatrix, quantize --imatrix,
    eval), parsed once."""
    from ..hardware import parse_gpu_layers
    from ..quant.options import ChunkOptions

    return ChunkOptions(text=text, ctx=ctx, chunks=chunks,
                        n_gpu_layers=parse_gpu_layers(n_gpu_layers), threads=threads)  # fmt: skip
