"""`llama3zh eval`: perplexity and KL-divergence of GGUFs, as the upstream project's table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

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

    `llama3zh eval fidelity GGUF... --reference HF_FOLDER` compares GGUFs with the HF checkpoint
    they came from, run by transformers (see `llama3zh eval fidelity --help`).
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


@handle_errors
def eval_fidelity(
    ggufs: Annotated[
        list[Path],
        typer.Argument(help="GGUF files made from the reference (f16, merged LoRA, quants)."),
    ],
    reference: Annotated[
        Path,
        typer.Option("--reference", "-r", help="The HF checkpoint folder they were made from."),
    ],
    lora: Annotated[
        Path | None,
        typer.Option("--lora", help="A PEFT LoRA folder applied to the reference, unmerged."),
    ] = None,
    texts: Annotated[
        Path | None,
        typer.Option("--texts", help="UTF-8 text (default: the built-in held-out text)."),
    ] = None,
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Tokens per window.", min=16)] = 256,
    windows: Annotated[
        int, typer.Option("--windows", help="Windows of --ctx tokens from the text's start.", min=1)
    ] = 2,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check GGUFs against the HF checkpoint they came from, run by transformers.

    The same token windows go through llama.cpp (each GGUF) and transformers (the reference, fp32
    on the CPU); per file: top-1 agreement, mean / 99th-percentile / max KL-divergence of the
    next-token distributions (reference as P) and the largest |Δ logit|. Token ids are checked
    first: where the GGUF's tokenizer disagrees with the reference's, that position is the verdict.

    Verdicts: an F32/F16/BF16 file passes with top-1 >= 99% and mean KLD <= 0.005; a quant is
    reported (info) unless it is broken (mean KLD > 1.5 or top-1 < 30%), which fails any file.
    Exit code 1 when a file fails. Needs torch and transformers (peft for --lora): pip install
    "llama3zh-local\\[train]".

    Examples:

      llama3zh eval fidelity ggml-model-f16.gguf --reference ./Llama-3-Chinese-8B-Instruct-v3

      llama3zh eval fidelity f16.gguf q8_0.gguf q4_k-im.gguf -r ./hf --json

      llama3zh eval fidelity merged-f16.gguf -r ./base --lora ./my-lora
    """
    from ..hub import store
    from ..quant.fidelity import fidelity, markdown_table
    from ._progress import Progress

    with Progress() as bar:
        report = fidelity(
            [store.resolve_gguf(str(g)) for g in ggufs],
            reference=reference,
            lora=lora,
            texts=texts,
            n_ctx=ctx,
            windows=windows,
            threads=threads,
            progress=bar,
        )
    if as_json:
        _output.result(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        if report.rows:
            _output.result(markdown_table(report))
        _output.note(
            f"{report.windows} windows of {report.n_ctx} tokens of {report.texts.name}; reference "
            f"{report.reference.name}{' + ' + report.lora.name if report.lora else ''} "
            f"({report.reference_device}), {report.seconds:.1f} s"
        )
        _output.result(report.verdict)
    if not report.passed:
        raise typer.Exit(1)


class EvalCommand(TyperCommand):
    """`eval`, whose first argument may be the `fidelity` mode: `llama3zh eval fidelity GGUF...`
    runs that command (its own options and --help); anything else is `eval`'s list of models."""

    def make_context(  # click's types: typer bundles its own click, not public
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        if args and args[0] == "fidelity":
            return _fidelity_command().make_context(
                f"{info_name} fidelity", args[1:], parent=parent, **extra
            )
        return super().make_context(info_name, args, parent=parent, **extra)


def _fidelity_command() -> Any:
    from ._app import help_text

    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
    sub.command(help=help_text(eval_fidelity.__doc__))(eval_fidelity)
    return typer.main.get_command(sub)
