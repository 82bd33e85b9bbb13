"""`llama3zh gc`: delete what killed runs left behind, and say how much space came back."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from . import _format, _output
from ._errors import handle_errors
from ._options import JsonOpt

# Library modules are imported inside the command: `llama3zh --help` starts faster.


@handle_errors
def gc(
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="Also delete resumable partial downloads (*.incomplete), which the next pull "
            "would otherwise continue.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete orphaned temporary files (from runs that were killed) and report the space freed.

    Looks in llama3zh's folder ($LLAMA3ZH_HOME) and the Hugging Face and ModelScope caches. A
    temporary file whose writing process still runs is left alone; state entries of files that
    are gone are dropped.

    Examples:

      llama3zh gc

      llama3zh gc --partial --dry-run
    """
    from ..files.cleanup import collect
    from ..hub import store

    result = collect(
        caches=store.caches(), keep=store.pulled_files(), partial=partial, dry_run=dry_run
    )
    if as_json:
        _output.result(
            json.dumps(
                {
                    "freed_bytes": result.freed,
                    "dry_run": dry_run,
                    "removed": [
                        {"path": str(x.path), "size": x.size, "kind": x.kind}
                        for x in result.leftovers
                    ],
                    "stale_state_entries": list(result.stale_entries),
                },
                ensure_ascii=False,
                indent=1,
            )
        )
        return
    verb = "would delete" if dry_run else "deleted"
    for x in result.leftovers:
        _output.note(f"{verb} {x.path} ({_format.size(x.size)}, {x.kind})")
    for name in result.stale_entries:
        _output.note(f"dropped the state entry of {name} (the file is gone or changed)")
    _output.result(
        f"{'would free' if dry_run else 'freed'} {_format.size(result.freed)} "
        f"({len(result.leftovers)} file{'s' if len(result.leftovers) != 1 else ''})"
    )
