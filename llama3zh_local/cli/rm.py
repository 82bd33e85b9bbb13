"""`llama3zh rm`: delete a pulled model (its store links and the cache files behind them)."""

from __future__ import annotations

import sys

import typer

from . import _format, _output
from ._errors import handle_errors
from ._options import HubModelArg, QuantsOpt, VariantOpt, YesOpt

# Library modules are imported inside the command: `llama3zh --help` starts faster.


@handle_errors
def rm(
    model: HubModelArg,
    quant: QuantsOpt = None,
    variant: VariantOpt = None,
    yes: YesOpt = False,
) -> None:
    """Delete a model from this machine: the store paths and the cache files they point to.

    Asks first unless -y. Removed paths are printed on stdout.

    Examples:

      llama3zh rm instruct-v3 -q q8_0

      llama3zh rm hf:org/some-model-gguf -y
    """
    from ..catalog import Variant
    from ..errors import UsageError
    from ..hub import store

    plan = store.plan_remove(
        model,
        quants=_format.split_list(quant),
        variant=Variant(variant.value) if variant else None,
    )
    for item in plan.items:
        _output.note(f"{item.file.path}  {_format.size(item.size)}")
        for p in item.paths[1:]:
            if p.exists() or p.is_symlink():
                _output.note(f"  cache: {p}")
    question = f"Remove {len(plan.items)} file(s), {_format.size(plan.total_bytes)}?"
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"{question} (no terminal to ask on)", hint="pass -y to remove without asking"
            )
        typer.confirm(question, abort=True, err=True)
    result = store.remove(plan)
    for p in result.removed:
        _output.result(str(p))
    _output.note(f"Removed {len(plan.items)} file(s); freed {_format.size(result.freed)}.")
