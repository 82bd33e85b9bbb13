"""`llama3zh eval`: perplexity and KL-divergence of GGUFs, as the upstream project's table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import _format, _output
from ._errors import handle_errors
from ._options import GpuLayersOpt, JsonOpt, ThreadsOpt, chunk_options

# Library modules are imported inside the command: `llama3zh --help` stays quick.
if TYPE_CHECKING:
    from ..quant.evaluate import EvalResult


@handle_errors
def eval_models(
    models: Annotated[
        list[str],
        typer.Argument(
            help="GGUF files (or pulled aliases, their default quant) of one model family."
        ),
    ],
    text: Annotated[
        Path | None,
        typer.Option("--text", help="UTF-8 evaluation text (default: the built-in held-out text)."),
    ] = None,
    ctx: Annotated[
        int,
        typer.Option("--ctx", "-c", help="Tokens per chunk; the second half is scored.", min=16),
    ] = 512,
    chunks: Annotated[
        int | None,
        typer.Option("--chunks", help="Chunks to score (default: all of the text).", min=1),
    ] = None,
    kld_base: Annotated[
        Path | None,
        typer.Option(
            "--kld-base",
            help="The F16/F32 GGUF to compare with: adds KL-divergence (and its own row).",
        ),
    ] = None,
    n_gpu_layers: GpuLayersOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure perplexity (and KL-divergence) with llama.cpp's llama-perplexity.

    Prints the upstream project's table: size, bits per weight, PPL +/- error, KLD per model.
    Results are remembered for `llama3zh recommend`.

    Examples:

      llama3zh eval ggml-model-q4_k.gguf ggml-model-q4_k-im.gguf

      llama3zh eval *.gguf --kld-base ggml-model-f16.gguf --json

      llama3zh eval ggml-model-q4_k-im.gguf --text wiki.zh.txt --ctx 512 --chunks 100
    """
    from ..hub import store
    from ..quant.evaluate import evaluate
    from ._progress import Progress

    paths = [store.resolve_gguf(m) for m in models]
    options = chunk_options(text=text, ctx=ctx, chunks=chunks, n_gpu_layers=n_gpu_layers,
                            threads=threads)  # fmt: skip
    with Progress() as bar:
        result = evaluate(models=paths, options=options, kld_base=kld_base, progress=bar)
    if as_json:
        _output.result(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
        return
    _output.out().print(quality_table(result))
    _output.note(
        f"{result.n_chunks} chunks of {result.ctx} tokens of {result.text.name} "
        f"({result.n_tokens:,} tokens); PPL is llama-perplexity's, +/- its standard error"
    )


def quality_table(result: EvalResult) -> object:
    """The upstream layout: one column per model, rows Size / BPW / PPL / KLD."""
    from rich.table import Table

    table = Table(title="Quality", title_justify="left")
    table.add_column("", style="bold")
    for r in result.rows:
        table.add_column(r.label, justify="right")
    table.add_row("Size", *(_format.size(r.size) for r in result.rows))
    table.add_row("BPW", *(f"{r.bpw:.2f}" for r in result.rows))
    table.add_row("PPL", *(f"{r.ppl:.4f} ± {r.ppl_err:.4f}" for r in result.rows))
    if result.kld_base is not None:
        table.add_row("KLD", *("-" if r.kld is None else f"{r.kld:.4f}" for r in result.rows))
        table.add_row(
            "Same top p",
            *("-" if r.same_top_p is None else f"{r.same_top_p:.1f}%" for r in result.rows),
        )
    return table
