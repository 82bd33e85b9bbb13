"""`llama3zh convert` and `llama3zh merge-lora`: HF checkpoints and LoRAs to GGUF."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import _output
from ._errors import handle_errors
from ._options import DryRunOpt, ForceOpt

# Library modules are imported inside the commands: `llama3zh --help` starts faster.


class OutType(str, Enum):
    auto = "auto"
    f16 = "f16"
    bf16 = "bf16"
    f32 = "f32"
    q8_0 = "q8_0"


class MergeFormat(str, Enum):
    gguf = "gguf"
    hf = "hf"
    adapter = "adapter"


OutTypeOpt = Annotated[
    OutType,
    typer.Option(
        "--outtype",
        help="Tensor type: auto (bf16 for bf16 weights, else f16), f16, bf16, f32 or q8_0.",
    ),
]


@handle_errors
def convert(
    source: Annotated[
        str,
        typer.Argument(
            help="An HF checkpoint folder (config.json, *.safetensors, tokenizer.json), "
            "or a pulled alias: base, instruct, instruct-v2, instruct-v3."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The .gguf to write, or a folder (default: ggml-model-<outtype>.gguf in the "
            "checkpoint folder; for an alias, in the store where `chat ALIAS --quant` finds it).",
        ),
    ] = None,
    outtype: OutTypeOpt = OutType.auto,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Convert an HF Llama checkpoint (safetensors) to GGUF, with no torch and little memory.

    Tensors stream from an mmap one at a time, exactly as llama.cpp's convert_hf_to_gguf.py
    writes them. Prints the path of the GGUF.

    Examples:

      llama3zh convert instruct-v3          # after: llama3zh pull instruct-v3 --variant full

      llama3zh convert ./Meta-Llama-3-8B-Instruct -o llama3-8b-f16.gguf --outtype f16

      llama3zh convert ./my-finetune --outtype q8_0 --dry-run
    """
    from .. import catalog, paths
    from ..convert.llama import convert as run
    from ..hub import store
    from ._progress import Progress

    src = store.resolve_hf_dir(source)
    repo = None
    if output is None and not store.looks_like_path(source):
        spec = catalog.get_model(source)
        repo = spec.repo_id()
        output = paths.models_dir() / (spec.name + catalog.Variant.GGUF.suffix)
        if not dry_run:
            output.mkdir(parents=True, exist_ok=True)
    with Progress(enabled=not dry_run) as bar:
        result = run(source=src, output=output, outtype=outtype.value, force=force,
                     dry_run=dry_run, repo=repo, progress=bar)  # fmt: skip
    for note in result.notes:
        _output.note(note)
    for warning in result.warnings:
        _output.warn(warning)
    if dry_run:
        _output.note(
            f"would write {result.tensor_count} tensors ({result.file_type}, "
            f"~{result.size / 1e9:.2f} GB), vocab {result.n_vocab:,} "
            f"({result.pre_tokenizer}){', chat template' if result.chat_template else ''}"
        )
    else:
        _output.note(
            f"{result.tensor_count} tensors, {result.file_type}, {result.size / 1e9:.2f} GB in "
            f"{result.seconds:.1f} s; tokenizer {result.pre_tokenizer}"
        )
    _output.result(str(result.path))


@handle_errors
def merge_lora(
    lora: Annotated[
        str,
        typer.Argument(
            help="A PEFT LoRA folder (adapter_config.json, adapter_model.safetensors), or the "
            "alias of a pulled -lora release: base, instruct, instruct-v2."
        ),
    ],
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            "-b",
            help="The base model's HF folder (default: for an alias, the catalog's base model "
            "in the store; else the LoRA's base_model_name_or_path if it is here).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The file (gguf, adapter) or folder (hf) to write; a folder for gguf gets "
            "ggml-model-<outtype>.gguf.",
        ),
    ] = None,
    fmt: Annotated[
        MergeFormat,
        typer.Option(
            "--format",
            help="gguf: merged GGUF; hf: merged HF safetensors checkpoint; adapter: a GGUF LoRA "
            "adapter for llama.cpp / Ollama ADAPTER (LoRAs without full modules only).",
        ),
    ] = MergeFormat.gguf,
    outtype: OutTypeOpt = OutType.auto,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Merge a LoRA into its base model: W + (lora_alpha/r)·B·A, full embed_tokens/lm_head kept.

    The Chinese Llama-3 -lora releases train embed_tokens and lm_head in full, which llama.cpp's
    convert_lora_to_gguf.py refuses; this merges them without torch or PEFT. Prints the path.

    Examples:

      llama3zh pull instruct-v2 --variant lora && llama3zh merge-lora instruct-v2

      llama3zh merge-lora ./llama-3-chinese-8b-instruct-v2-lora --base ./Meta-Llama-3-8B-Instruct

      llama3zh merge-lora ./my-lora --base ./base --format adapter -o my-lora.gguf
    """
    from .. import catalog, paths
    from ..convert.lora import merge_lora as run
    from ..convert.peft import find_base
    from ..hub import store
    from ._progress import Progress

    alias = None if store.looks_like_path(lora) else lora
    lora_dir = store.resolve_hf_dir(lora, variant=catalog.Variant.LORA)
    base_dir = find_base(lora_dir, base, alias=alias)
    lora_repo = base_repo = None
    if alias is not None:
        spec = catalog.get_model(alias)
        lora_repo, base_repo = spec.repo_id(catalog.Variant.LORA), spec.lora_base
        if output is None and fmt is MergeFormat.gguf:
            output = paths.models_dir() / (spec.name + catalog.Variant.GGUF.suffix)
            if not dry_run:
                output.mkdir(parents=True, exist_ok=True)
        elif output is None and fmt is MergeFormat.hf:
            output = paths.models_dir() / f"{spec.name}-merged"
    with Progress(enabled=not dry_run) as bar:
        result = run(lora=lora_dir, base=base_dir, output=output, format=fmt.value,
                     outtype=outtype.value, force=force, dry_run=dry_run, lora_repo=lora_repo,
                     base_repo=base_repo, progress=bar)  # fmt: skip
    for warning in result.warnings:
        _output.warn(warning)
    what = f"{result.merged_modules} LoRA modules (scale {result.scale:g})" + (
        f", {' and '.join(result.replaced_modules)} replaced" if result.replaced_modules else ""
    )
    verb = "would write" if dry_run else "wrote"
    _output.note(
        f"{verb} {result.format} ({result.outtype}, {result.tensor_count} tensors, "
        f"{result.size / 1e9:.2f} GB): {what}"
    )
    _output.result(str(result.path))
