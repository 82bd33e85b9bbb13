"""`train ... --then TYPE [--ollama NAME]`: the chain after training, shown and run for the CLI.

The train command calls :func:`finish` with the adapter it wrote; the work is
``trained.finish_adapter``'s. Library modules are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import _output

if TYPE_CHECKING:
    from ..trained import FinishPlan, FinishResult


def show_finish_plan(plan: FinishPlan) -> None:
    """The steps after training, on stderr."""
    imatrix = " with an importance matrix" if plan.imatrix else ""
    _output.note(f"then: {plan.quant}{imatrix} -> {plan.target}")
    for line in plan.titles:
        _output.note(f"  {line}")


def finish(
    *,
    adapter: Path,
    base: Path,
    then: str,
    out_dir: Path,
    ollama: str | None = None,
    eval_text: Path | None = None,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    dry_run: bool = False,
    fidelity: bool = False,
) -> FinishResult | None:
    """Check the chain, show it, and (unless ``dry_run``) run it with progress on stderr; the
    quant's path (or the Ollama name) on stdout. None for a dry run.

    ``fidelity``: then compare the f16 and quant GGUFs with the base + the unmerged adapter
    (transformers + peft) and show the fidelity line.
    """
    from ..trained import finish_adapter, plan_finish
    from ._progress import Progress

    plan = plan_finish(adapter=adapter, base=base, then=then, out_dir=out_dir, ollama=ollama,
                       eval_text=eval_text)  # fmt: skip
    show_finish_plan(plan)
    if dry_run:
        return None
    with Progress() as bar:
        result = finish_adapter(
            adapter=adapter, base=base, then=then, out_dir=out_dir, ollama=ollama,
            eval_texts=eval_text, threads=threads, n_gpu_layers=n_gpu_layers, progress=bar,
        )  # fmt: skip
    for note in result.notes:
        _output.note(note)
    for label, ppl, err in result.ppl:
        _output.note(f"perplexity {label}: {ppl:.4f} ± {err:.4f} (held-out text)")
    _output.note(f"{result.quant} (sha256 {result.sha256[:12]}…); Modelfile: {result.modelfile}")
    if fidelity:
        from ..quant.fidelity import fidelity as check_fidelity

        with Progress() as bar:
            report = check_fidelity([result.f16, result.quant], reference=base, lora=adapter,
                                    threads=threads, progress=bar)  # fmt: skip
        (_output.note if report.passed else _output.warn)(report.line())
    if result.ollama is not None:
        _output.note(
            f"Created {result.ollama.name} on Ollama {result.ollama.server_version} at "
            f"{result.ollama.host}. Run it: ollama run {result.ollama.name}"
        )
        _output.result(result.ollama.name)
    else:
        _output.result(str(result.quant))
    return result
