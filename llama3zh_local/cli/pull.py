"""`llama3zh pull`: download a model from Hugging Face or ModelScope, resumable and verified."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalog import DEFAULT_ALIAS
from . import _format, _output
from ._errors import handle_errors
from ._options import HubModelArg, QuantsOpt, SourceChoice, SourceOpt, VariantOpt

if TYPE_CHECKING:
    from rich.console import Console

    from ..hub.pull import PullPlan, PullResult
    from ..progress import Callback
    from ._progress import Progress

# Library modules are imported inside the command: `llama3zh --help` starts faster.

STATES = {
    "ok": "here, verified earlier",
    "verify": "in the cache: will be verified",
    "resume": "resume",
    "download": "download",
}


@handle_errors
def pull(
    model: HubModelArg = DEFAULT_ALIAS,
    variant: VariantOpt = None,
    quant: QuantsOpt = None,
    source: SourceOpt = SourceChoice.auto,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show the files, sizes and disk space; download nothing."),
    ] = False,
) -> None:
    """Download a model: resumable across runs (even after kill -9), sha256-verified.

    Files go to the Hugging Face or ModelScope cache, where other tools find them too.

    Their stable paths (under ~/.cache/llama3zh/models/) are printed on stdout.

    Examples:

      llama3zh pull instruct-v3               # GGUF, the best quant that fits

      llama3zh pull instruct-v3 -q q4_k -s modelscope

      llama3zh pull instruct-v3 --variant full   # HF safetensors weights

      llama3zh pull hf:hfl/llama-3-chinese-8b-instruct-v3-gguf -q q8_0 --dry-run

      HF_ENDPOINT=https://hf-mirror.com llama3zh pull instruct -q all
    """
    from ..catalog import Variant
    from ..hub import pull as hub
    from ..quant.recommend import default_quant

    plan = hub.plan_pull(
        model,
        variant=Variant(variant.value) if variant else None,
        quants=_format.split_list(quant),
        source=source.value,
        remember=not dry_run,
        default_quant=default_quant,
    )
    _output.note(plan.decision.summary)
    for line in plan.notes:
        _output.note(line)
    _print_plan(plan, _output.out() if dry_run else _output.err())
    if dry_run:
        hub.check_disk(plan)
        return
    if not plan.download_bytes and all(f.state == "ok" for f in plan.files):
        _output.note("Everything is already here and verified: nothing to download.")
    result = _run(plan)
    _report(result)


def _print_plan(plan: PullPlan, console: Console) -> None:
    from rich.table import Table

    table = Table(
        title=f"{plan.repo_label} ({plan.variant.value}, revision {plan.revision})",
        title_justify="left",
    )
    for col, justify in (("file", "left"), ("size", "right"), ("checksum", "left"), ("", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for f in plan.files:
        state = STATES[f.state]
        if f.state == "resume":
            state = f"resume from {_format.size(f.have)} ({100 * f.have / max(f.size, 1):.0f}%)"
        digest = f.sha256 or f.git_oid
        check = f"{f.checksum} {digest[:12]}…" if digest else "size only"
        table.add_row(f.name, _format.size(f.size), check, state)
    console.print(table)
    lines = [
        f"{len(plan.files)} file(s), {_format.size(plan.total_bytes)}; "
        f"to download: {_format.size(plan.download_bytes)}"
    ]
    for d in plan.disk:
        verdict = "fits" if d.fits else "DOES NOT FIT"
        lines.append(f"free disk: {_format.size(d.free)} in {d.path} ({verdict})")
    lines.append(f"store: {plan.store_dir}")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _run(plan: PullPlan) -> PullResult:
    from ..hub import pull as hub
    from ._progress import Progress

    cancel = threading.Event()
    # finished files keep their bars; a total bar on top when they are drawn
    with Progress(transient=False) as bar:
        return hub.pull(plan, progress=_with_total(bar, plan) if bar.live else bar, cancel=cancel)


def _with_total(bar: Progress, plan: PullPlan) -> Callback:
    """``bar`` plus a "total" bar over all files (the threads report at once: locked)."""
    from ..progress import ADVANCE, DONE, START, Event

    have: dict[str, int] = {}
    lock = threading.Lock()
    bar(Event("pull", START, "total", total=plan.total_bytes, unit="bytes"))

    def on_event(e: Event) -> None:
        bar(e)
        if e.kind not in (START, ADVANCE, DONE) or e.message == "verifying":
            return
        with lock:
            have[e.task] = e.total if e.kind == DONE else e.done
            done = sum(have.values())
        kind = DONE if done >= plan.total_bytes else ADVANCE
        bar(Event("pull", kind, "total", done=done, total=plan.total_bytes, unit="bytes"))

    return on_event


def _report(result: PullResult) -> None:
    plan = result.plan
    secs = max(result.seconds, 1e-6)
    resumed = sum(f.resumed_from for f in result.files if f.state == "resume")
    line = f"Pulled {plan.repo_label}: {_format.size(result.downloaded)} downloaded"
    if result.downloaded:
        line += f" in {result.seconds:.1f} s ({_format.size(result.downloaded / secs)}/s)"
    if resumed:
        line += f", resumed from {_format.size(resumed)} already on disk"
    checks = sorted({f.checksum for f in result.files})
    _output.note(line + f"; verified ({', '.join(checks)}).")
    if plan.variant.value == "gguf":
        for f in result.files:
            _output.result(str(f.path))
    else:
        _output.result(str(plan.store_dir))
