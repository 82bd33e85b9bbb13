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

    from ..hub.pull import PullEvent, PullPlan, PullResult

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

    plan = hub.plan_pull(
        model,
        variant=Variant(variant.value) if variant else None,
        quants=_format.split_list(quant),
        source=source.value,
        remember=not dry_run,
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

    cancel = threading.Event()
    console = _output.err()
    if not console.is_terminal:
        return hub.pull(plan, progress=_plain_progress, cancel=cancel)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bars:
        total = bars.add_task("total", total=plan.total_bytes)
        tasks: dict[str, TaskID] = {}
        counted: dict[str, int] = {}  # bytes of each file the total bar has been given

        def on_event(e: PullEvent) -> None:
            if e.kind == "start":
                tasks[e.name] = bars.add_task(e.name, total=e.size, completed=e.n)
                counted[e.name] = e.n
                bars.advance(total, e.n)
            elif e.kind in ("bytes", "verify"):
                task = tasks.get(e.name)
                if task is not None:
                    if e.kind == "verify":
                        bars.update(task, description=f"{e.name} (verifying)")
                    bars.advance(task, e.n)
                if e.kind == "bytes":
                    counted[e.name] = counted.get(e.name, 0) + e.n
                    bars.advance(total, e.n)
            elif e.kind == "done" and e.name in tasks:
                bars.update(tasks[e.name], completed=e.size, description=e.name)
                bars.advance(total, e.size - counted.get(e.name, 0))
                counted[e.name] = e.size

        return hub.pull(plan, progress=on_event, cancel=cancel)


def _plain_progress(e: PullEvent) -> None:
    """Without a terminal: one line per file instead of bars."""
    if e.kind == "done":
        _output.note(f"done: {e.name} ({_format.size(e.size)})")
    elif e.kind == "failed":
        _output.note(f"failed: {e.name}")


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
