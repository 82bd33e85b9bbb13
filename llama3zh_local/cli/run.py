"""`llama3zh run`: one command from nothing to a (quantized) model in chat or in Ollama.

Library modules are imported inside the functions: `llama3zh --help` starts without them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalog import DEFAULT_ALIAS, DEFAULT_QUANT
from ..errors import UsageError
from . import _output
from ._errors import handle_errors
from ._options import GpuLayersOpt, SourceChoice, SourceOpt, ThreadsOpt, YesOpt
from .chat import talk
from .modelfile import create_in_ollama

if TYPE_CHECKING:
    from ..pipeline import RunPlan


@handle_errors
def run(
    model: Annotated[
        str, typer.Argument(help="A model alias: base, instruct, instruct-v2, instruct-v3.")
    ] = DEFAULT_ALIAS,
    quant: Annotated[
        str,
        typer.Option(
            "--quant", "-q", help="Quant type: upstream short name (q4_k) or llama.cpp's (Q4_K_M)."
        ),
    ] = DEFAULT_QUANT,
    imatrix: Annotated[
        bool,
        typer.Option(
            "--imatrix",
            help="Make an importance-matrix (-im) quant from the f16 weights on this machine.",
        ),
    ] = False,
    ollama: Annotated[
        str | None,
        typer.Option("--ollama", help="Create this Ollama model instead of chatting."),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="Ask one question, print only the answer, and exit."),
    ] = None,
    source: SourceOpt = SourceChoice.auto,
    chunks: Annotated[
        int | None,
        typer.Option("--chunks", help="imatrix: chunks of calibration text (default: all).", min=1),
    ] = None,
    n_gpu_layers: GpuLayersOpt = "auto",
    threads: ThreadsOpt = None,
    yes: YesOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan (steps, sizes, time) and stop.")
    ] = False,
    fidelity: Annotated[
        bool,
        typer.Option(
            "--fidelity",
            help="Finish with a fidelity line: the GGUF against the HF weights it came from "
            "(transformers; needs the weights on disk and torch).",
        ),
    ] = False,
) -> None:
    """Get a model to the quant you ask for, the cheapest way, then chat with it.

    Downloads the hub's GGUF when that quant exists there; otherwise gets the f16 weights
    (the hub's f16 GGUF or the full weights, whichever is quicker), converts, computes an
    importance matrix (--imatrix) and quantizes. Shows the plan with sizes and an estimate of
    the time and asks before gigabytes of work (unless -y). Every finished step is kept: run the
    same command again after an interruption and it goes on from there.

    Examples:

      llama3zh run                                    # instruct-v3, q4_k, then chat

      llama3zh run instruct-v3 -q Q4_K_M --imatrix -y

      llama3zh run instruct-v3 -q IQ3_XXS --imatrix --ollama llama3-zh:iq3

      llama3zh run instruct -q q8_0 --dry-run
    """
    from ..hardware import check_threads, parse_gpu_layers
    from ..pipeline import check_fidelity_possible, execute, plan_run, run_fidelity
    from ._progress import Progress

    check_threads(threads)
    gpu_layers = parse_gpu_layers(n_gpu_layers)
    plan = plan_run(model, quant=quant, imatrix=imatrix, source=source.value, chunks=chunks)
    show_plan(plan)
    if fidelity:
        check_fidelity_possible(plan)  # before any work
    if dry_run:
        _output.result(str(plan.target))
        return
    if plan.todo and plan.needs_confirmation and not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"this needs {plan.work_bytes / 1e9:.1f} GB of work and asks first, but stdin "
                "is not a terminal",
                hint="add -y to go ahead without asking (or --dry-run to see the plan only)",
            )
        typer.confirm("Go ahead?", default=True, abort=True, err=True)
    with Progress() as bar:
        result = execute(plan, progress=bar, threads=threads, n_gpu_layers=gpu_layers)
    _output.note(f"{result.target} (sha256 {result.sha256[:12]}…)")
    if fidelity:
        with Progress() as bar:
            report = run_fidelity(plan, result.target, threads=threads, progress=bar)
        (_output.note if report.passed else _output.warn)(report.line())
    if ollama is not None:
        create_in_ollama(ollama, model=str(result.target))
        return
    if prompt is None and not sys.stdin.isatty():
        _output.result(str(result.target))
        return
    talk(str(result.target), prompt=prompt, gpu_layers=gpu_layers, threads=threads)


def show_plan(plan: RunPlan) -> None:
    """The steps, their sizes and time estimates, on stderr."""
    from ..pipeline import duration

    _output.note(f"{plan.label} {plan.quant}{' -im' if plan.imatrix else ''} -> {plan.target}")
    for note in plan.notes:
        _output.note(note)
    for i, s in enumerate(plan.steps, 1):
        if s.reuse:
            _output.note(f"  {i}. {s.title}")
        else:
            size = f"{s.size / 1e9:.2f} GB, " if s.size else ""
            _output.note(f"  {i}. {s.title}: {size}~{duration(s.seconds)}")
    if plan.todo:
        _output.note(
            f"in all: {plan.work_bytes / 1e9:.2f} GB of work, ~{duration(plan.seconds)} "
            "(estimated from this machine's measured rates, or first guesses)"
        )
    else:
        _output.note("nothing to do: every step is complete")
