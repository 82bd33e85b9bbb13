"""`llama3zh imatrix` and `llama3zh quantize`: importance matrices and (-im) quants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import _format, _output
from ._errors import handle_errors
from ._options import DryRunOpt, ForceOpt, GpuLayersOpt, JsonOpt, ThreadsOpt, chunk_options

# Library modules are imported inside the commands: `llama3zh --help` stays quick.
if TYPE_CHECKING:
    from ..quant.imatrix import ImatrixResult
    from ..quant.options import ChunkOptions
    from ..quant.quantize import QuantizeResult

SourceModelArg = Annotated[
    str,
    typer.Argument(
        help="An F16/BF16/F32 .gguf, an HF checkpoint folder (converted first), or a pulled "
        "alias (its f16 GGUF, else its HF weights): base, instruct, instruct-v2, instruct-v3.",
    ),
]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="UTF-8 calibration text (default: the built-in Chinese/English corpus, ~330 KB).",
    ),
]
ChunksOpt = Annotated[
    int | None,
    typer.Option(
        "--chunks", help="Chunks of --ctx tokens to use (default: all of the text).", min=1
    ),
]
ImatrixCtxOpt = Annotated[
    int, typer.Option("--ctx", "-c", help="Tokens per chunk (llama-imatrix's -c).", min=16)
]


@handle_errors
def imatrix(
    model: SourceModelArg,
    calibration: CalibrationOpt = None,
    chunks: ChunksOpt = None,
    ctx: ImatrixCtxOpt = 512,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the imatrix (.gguf). Default: a cache beside the model, keyed "
            "by model, text and settings, which `quantize --imatrix` reuses.",
        ),
    ] = None,
    n_gpu_layers: GpuLayersOpt = "auto",
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compute an importance matrix with llama.cpp's llama-imatrix (built on first use).

    Prints the path of the imatrix. The first run compiles llama-imatrix from the llama.cpp
    source of the installed llama-cpp-python (a few minutes, once per version).

    Examples:

      llama3zh imatrix ggml-model-f16.gguf

      llama3zh imatrix instruct-v3 --chunks 100 -o instruct-v3.imatrix.gguf

      llama3zh imatrix ./my-finetune --calibration my-domain.txt --ctx 512
    """
    from ..quant.imatrix import compute_imatrix, plan_imatrix
    from ..quant.source import resolve_source, source_gguf
    from ._progress import Progress

    src = source_gguf(resolve_source(model), dry_run=dry_run)
    if src.note:
        _output.note(src.note)
    options = chunk_options(text=calibration, ctx=ctx, chunks=chunks, n_gpu_layers=n_gpu_layers,
                            threads=threads)  # fmt: skip
    plan = plan_imatrix(model=src.path, options=options, output=output, force=force)
    with Progress(enabled=not dry_run) as bar:
        result = compute_imatrix(plan, dry_run=dry_run, progress=bar)
    _report_imatrix(result, as_json=as_json)


def _report_imatrix(r: ImatrixResult, *, as_json: bool) -> None:
    import shlex

    if as_json:
        data = {
            "path": str(r.path),
            "model": str(r.model),
            "calibration": str(r.calibration),
            "ctx": r.ctx,
            "chunks": r.n_chunks,
            "tokens": r.n_tokens,
            "entries": r.n_entries,
            "cached": r.cached,
            "dry_run": r.dry_run,
            "seconds": round(r.seconds, 2),
            "ppl": r.ppl,
            "command": list(r.command),
        }
        _output.result(json.dumps(data, ensure_ascii=False, indent=2))
        return
    what = f"{r.n_chunks} chunks of {r.ctx} tokens of {r.calibration.name} ({r.n_tokens:,} tokens)"
    if r.dry_run:
        _output.note(f"would compute on {what}{' (cached already)' if r.cached else ''}")
        folder = shlex.quote(str(r.calibration.resolve().parent))
        _output.note(f"command: cd {folder} && {shlex.join(r.command)}")
    elif r.cached:
        _output.note(f"reused the cached imatrix of {r.model.name} on {what}")
    else:
        ppl = f"; PPL over the chunks {r.ppl:.4f}" if r.ppl is not None else ""
        _output.note(f"{r.n_entries} tensors, {what}, in {r.seconds:.1f} s{ppl}")
    _output.result(str(r.path))


@handle_errors
def quantize(
    model: SourceModelArg,
    types: Annotated[
        list[str],
        typer.Option(
            "--type",
            "-q",
            help="Quant type(s): llama.cpp's names (Q4_K_M, Q5_K_M, Q8_0, IQ3_XXS, ...) or the "
            "upstream short names (q4_k, q5_k, q3_k, ...). Repeat or comma-separate.",
        ),
    ],
    use_imatrix: Annotated[
        bool,
        typer.Option(
            "--imatrix",
            help="Use an importance matrix computed on the calibration text (reused from the "
            "cache when the model and text are unchanged); outputs get -im in their name.",
        ),
    ] = False,
    imatrix_file: Annotated[
        Path | None,
        typer.Option("--imatrix-file", help="Use this imatrix file (implies --imatrix)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="A folder for the outputs, or the file for a single type. Default: beside "
            "the source, named as upstream (ggml-model-q4_k-im.gguf).",
        ),
    ] = None,
    allow_requantize: Annotated[
        bool,
        typer.Option(
            "--allow-requantize", help="Quantize an already quantized GGUF (loses quality)."
        ),
    ] = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    calibration: CalibrationOpt = None,
    chunks: ChunksOpt = None,
    ctx: ImatrixCtxOpt = 512,
    n_gpu_layers: GpuLayersOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quantize a model to one or more llama.cpp types, with an importance matrix if asked.

    IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS and Q2_K_S need --imatrix. Each output is read back from
    disk and printed as a table: file type, size, bits per weight (paths too with --json).

    Examples:

      llama3zh quantize ggml-model-f16.gguf --type Q4_K_M --imatrix

      llama3zh quantize instruct-v3 -q q4_k -q q5_k -q q8_0 --imatrix

      llama3zh quantize ./my-finetune -q IQ3_XXS --imatrix-file my.imatrix.gguf -o out/

      llama3zh quantize ggml-model-f16.gguf -q Q2_K,Q3_K_M --dry-run
    """
    from ..quant.quantize import plan_quantize
    from ..quant.quantize import quantize as run
    from ..quant.source import resolve_source
    from ._progress import Progress

    source = resolve_source(model)
    options = chunk_options(text=calibration, ctx=ctx, chunks=chunks, n_gpu_layers=n_gpu_layers,
                            threads=threads)  # fmt: skip
    im: Path | ChunkOptions | None = imatrix_file
    if imatrix_file is None and use_imatrix:
        im = options
    plan = plan_quantize(
        model=source,
        types=_format.split_list(types),
        imatrix=im,
        output=output,
        force=force,
        allow_requantize=allow_requantize,
        threads=threads,
        dry_run=dry_run,
    )
    with Progress(enabled=not dry_run) as bar:
        result = run(plan, progress=bar)
    for line in result.notes:
        _output.note(line)
    for line in result.warnings:
        _output.warn(line)
    if as_json:
        _output.result(json.dumps(_quantize_json(result, dry_run=dry_run), ensure_ascii=False,
                                  indent=2))  # fmt: skip
    elif not result.outputs:
        _output.note("nothing to quantize yet: run without --dry-run to convert first")
    else:
        _quantize_table(result, dry_run=dry_run)


def _quantize_json(result: QuantizeResult, *, dry_run: bool) -> dict[str, object]:
    return {
        "source": str(result.source),
        "source_file_type": result.source_file_type,
        "imatrix": str(result.imatrix) if result.imatrix else None,
        "dry_run": dry_run,
        "outputs": [
            {
                "path": str(o.path),
                "type": o.type,
                "file_type": o.file_type,
                "size_bytes": o.size,
                "bpw": round(o.bpw, 4),
                "tensors": o.tensor_count,
                "fallback_tensors": o.fallback_tensors,
                "seconds": round(o.seconds, 2),
            }
            for o in result.outputs
        ],
    }


def _quantize_table(result: QuantizeResult, *, dry_run: bool) -> None:
    from rich.table import Table

    verb = "Would write" if dry_run else "Wrote"
    table = Table(title=f"{verb} ({result.source.name}, {result.source_file_type})",
                  title_justify="left")  # fmt: skip
    for col in ("type", "file type", "size", "BPW", "imatrix", "path"):
        table.add_column(col, justify="right" if col in ("size", "BPW") else "left",
                         overflow="fold")  # fmt: skip
    for o in result.outputs:
        table.add_row(
            o.type,
            o.file_type,
            ("~" if o.dry_run else "") + _format.size(o.size),
            f"{o.bpw:.2f}",
            o.imatrix.name if o.imatrix else "-",
            str(o.path),
        )
    _output.out().print(table)
