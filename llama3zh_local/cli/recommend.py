"""`llama3zh recommend`: the best quant for this machine's GPU and RAM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import _format, _output
from ._errors import handle_errors
from ._options import JsonOpt

if TYPE_CHECKING:
    from ..recommend import Candidate, Fit, Recommendation


@handle_errors
def recommend(
    model: Annotated[
        str | None,
        typer.Argument(
            help="A catalog alias (default: instruct-v3) or a .gguf file (its sibling quants "
            "are considered too).",
            show_default=False,
        ),
    ] = None,
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx",
            "-c",
            help="Context to budget the KV cache for (default: 8192, or the model's if smaller).",
            min=64,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recommend the best quant that fits fully on the GPU, and the best that fits in RAM.

    Counts file size + KV cache for the context + a reserve for compute buffers. Quality comes
    from `llama3zh eval` results when a file was measured, else llama.cpp's Llama-3-8B figures.

    Examples:

      llama3zh recommend

      llama3zh recommend instruct-v3 --ctx 4096

      llama3zh recommend ./ggml-model-f16.gguf --json
    """
    from .. import catalog, hardware, store
    from ..recommend import (
        DEFAULT_CTX,
        RAM_RESERVE,
        VRAM_RESERVE,
        alias_candidates,
        file_candidates,
        kv_cache_bytes,
    )
    from ..recommend import recommend as run

    name = model or catalog.DEFAULT_ALIAS
    notes: list[str] = []
    if store.looks_like_path(name):
        info, candidates, notes = file_candidates(Path(name).expanduser())
        n_ctx = ctx or min(DEFAULT_CTX, info.n_ctx_train or DEFAULT_CTX)
        kv = info.kv_bytes_per_token * n_ctx
        label = info.path.name
    else:
        spec, candidates = alias_candidates(name)
        n_ctx = ctx or min(DEFAULT_CTX, spec.n_ctx)
        kv = kv_cache_bytes(
            n_layer=spec.n_layer, n_head_kv=spec.n_head_kv, head_dim=spec.head_dim, n_ctx=n_ctx
        )
        label = spec.alias
    rec = run(candidates, model=label, kv_bytes=kv, n_ctx=n_ctx, hw=hardware.detect())
    if as_json:
        _output.result(json.dumps(_to_json(rec), ensure_ascii=False, indent=2))
        return
    for line in (*notes, *rec.notes):
        _output.note(line)
    out = _output.out()
    out.print(
        f"{rec.model}: {n_ctx}-token context, KV cache {_format.size(rec.kv_bytes)}",
        markup=False,
    )
    gpu_where = (
        f"GPU ({rec.gpu_name}, {_format.size(rec.gpu_free)} free)" if rec.gpu_name else "GPU"
    )
    ram_where = f"RAM ({_format.size(rec.ram_available)} available)"
    no_gpu = "no usable GPU" if not rec.gpu_name else "none fits"
    out.print(_line(gpu_where, rec.gpu, none=no_gpu), markup=False, soft_wrap=True)
    out.print(_line(ram_where, rec.ram, none="none fits"), markup=False, soft_wrap=True)
    from rich.table import Table

    table = Table(title="All candidates, best first", title_justify="left")
    for col in ("quant", "size", "GPU", "RAM", "expected quality", "file"):
        table.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
    for c in rec.candidates:
        gpu_ok = rec.gpu_name is not None and c.size + rec.kv_bytes + VRAM_RESERVE <= rec.gpu_free
        ram_ok = c.size + rec.kv_bytes + RAM_RESERVE <= rec.ram_available
        table.add_row(
            c.label,
            _format.size(c.size),
            "fits" if gpu_ok else "-",
            "fits" if ram_ok else "-",
            c.quality_short,
            c.path.name if c.path else "-",
        )
    out.print(table)


def _line(where: str, fit: Fit | None, *, none: str) -> str:
    if fit is None:
        return f"{where}: {none}"
    c = fit.candidate
    here = str(c.path) if c.path else "not on this machine: llama3zh pull / quantize"
    return (
        f"{where}: {c.label} ({_format.size(c.size)}, needs {_format.size(fit.need)} with the "
        f"KV cache); expected {c.quality}; {here}"
    )


def _cand(c: Candidate) -> dict[str, Any]:
    return {
        "label": c.label,
        "type": c.type,
        "size_bytes": c.size,
        "path": str(c.path) if c.path else None,
        "ppl": c.ppl,
        "kld": c.kld,
        "ppl_delta_llama3_8b": c.ppl_delta_llama3_8b,
    }


def _to_json(rec: Recommendation) -> dict[str, Any]:
    def fit(f: Fit | None) -> dict[str, Any] | None:
        return (
            None
            if f is None
            else {**_cand(f.candidate), "need_bytes": f.need, "budget_bytes": f.budget}
        )

    return {
        "model": rec.model,
        "ctx": rec.n_ctx,
        "kv_cache_bytes": rec.kv_bytes,
        "gpu": fit(rec.gpu),
        "ram": fit(rec.ram),
        "gpu_name": rec.gpu_name,
        "gpu_free_bytes": rec.gpu_free,
        "ram_available_bytes": rec.ram_available,
        "choice": rec.choice.label,
        "candidates": [_cand(c) for c in rec.candidates],
        "notes": list(rec.notes),
    }
