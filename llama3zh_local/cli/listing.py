"""`llama3zh list`: the models on this machine."""

from __future__ import annotations

import json
from typing import Any

from . import _format, _output
from ._errors import handle_errors
from ._options import JsonOpt

# Library modules are imported inside the command: `llama3zh --help` starts faster.


@handle_errors
def list_models(as_json: JsonOpt = False) -> None:
    """List the models on this machine: alias, variant, quant, size, source, date, path.

    Examples:

      llama3zh list

      llama3zh list --json | jq -r '.[] | select(.quant == "q4_k") | .path'
    """
    from ..hub import store

    files = store.local_files()
    rows: list[dict[str, Any]] = [
        {
            "alias": f.alias,
            "folder": f.folder,
            "file": f.name,
            **f.provenance(),
            "path": str(f.path),
            "missing": f.missing,
        }
        for f in files
    ]
    if as_json:
        _output.result(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        _output.note("No models on this machine yet. Try: llama3zh pull instruct-v3")
        return
    from rich.table import Table

    table = Table(title="Models on this machine", title_justify="left")
    for col in ("model", "variant", "quant", "size", "source", "date", "path"):
        table.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
    for r in rows:
        table.add_row(
            r["alias"] or r["folder"],
            r["variant"],
            r["quant"] or "-",
            "missing" if r["missing"] else _format.size(r["size_bytes"]),
            r["source"] if not r["repo"] else f"{r['source']}:{r['repo']}",
            _format.date(r["date"]),
            r["path"],
        )
    _output.out().print(table)
    if any(r["missing"] for r in rows):
        _output.warn("some files' cache copies were deleted by another tool: pull them again")
