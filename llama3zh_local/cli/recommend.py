"""`llama3zh recommend`: the quant for this machine's GPU and RAM, quality weighed with speed."""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import _format, _output
from ._errors import handle_errors
from ._options import JsonOpt

# Library modules are imported inside the command: `llama3zh --help` stays quick.
if TYPE_CHECKING:
    from ..quant.recommend import Candidate, Fit, Recommendation


class PreferChoice(str, Enum):
    """Mirrors recommend.Prefer (the library is not imported before a command runs)."""

    balanced = "balanced"
    quality = "quality"
    speed = "speed"


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
    prefer: Annotated[
        PreferChoice,
        typer.Option(
            "--prefer",
            help="balanced: of the quants at least as good as q4_k, the best quality that "
            "decodes at 8 tok/s (reading speed), else the fastest of them; quality: the best "
            "that fits; speed: the fastest that fits.",
        ),
    ] = PreferChoice.balanced,
    as_json: JsonOpt = False,
) -> None:
    """Recommend a quant for this machine: one for the GPU (fully offloaded), one for RAM.

    Fits count file size + KV cache for the context + a reserve for compute buffers. Quality
    comes from `llama3zh eval` results when a file was measured, else llama.cpp's Llama-3-8B
    figures. Decoding reads every weight once per token, so the expected tokens/s is the
    memory bandwidth over the file size: measured when `llama3zh chat` answered with the file
    here, else estimated (marked ~). The pick: of the quants at least as good as q4_k
    (Q4_K_M; below it quality drops steeply), the best quality that decodes at 8 tok/s or more
    (about reading speed); when none is that fast, the fastest of them. `llama3zh pull`
    without -q downloads the same pick.

    Examples:

      llama3zh recommend

      llama3zh recommend instruct-v3 --ctx 4096 --prefer quality

      llama3zh recommend ./ggml-model-f16.gguf --json
    """
    from .. import hardware
    from ..quant.recommend import Prefer, model_candidates
    from ..quant.recommend import recommend as run

    about = model_candidates(model, ctx=ctx)
    rec = run(about.candidates, model=about.label, kv_bytes=about.kv_bytes, n_ctx=about.n_ctx,
              hw=hardware.detect(), prefer=Prefer(prefer.value))  # fmt: skip
    if as_json:
        _output.result(json.dumps(_to_json(rec), ensure_ascii=False, indent=2))
        return
    for line in (*about.notes, *rec.notes):
        _output.note(line)
    out = _output.out()
    out.print(
        f"{rec.model}: {rec.n_ctx}-token context, KV cache {_format.size(rec.kv_bytes)}",
        markup=False,
    )
    out.print(f"Rule (--prefer {rec.prefer.value}): {rec.rule}.", markup=False, soft_wrap=True)
    gpu_where = (
        f"GPU ({rec.gpu_name}, {_format.size(rec.gpu_free)} free)" if rec.gpu_name else "GPU"
    )
    ram_where = f"RAM ({_format.size(rec.ram_available)} available)"
    no_gpu = "no usable GPU" if not rec.gpu_name else "none fits"
    out.print(_line(gpu_where, rec.gpu, none=no_gpu), markup=False, soft_wrap=True)
    out.print(_line(ram_where, rec.ram, none="none fits"), markup=False, soft_wrap=True)
    out.print(_candidates_table(rec))
    bw = rec.bandwidth
    if bw is not None:
        estimates = [f"CPU {bw.cpu_basis}"] + ([f"GPU {bw.gpu_basis}"] if rec.gpu_speed else [])
        out.print(
            "tok/s = memory bandwidth / file size, at the start of an answer; ~ marks an "
            f"estimate ({'; '.join(estimates)}). Figures without ~ were measured by llama3zh chat "
            "with that file on this machine.",
            markup=False,
            soft_wrap=True,
        )


def _candidates_table(rec: Recommendation) -> Any:
    from rich.table import Table

    from ..quant.recommend import RAM_RESERVE, VRAM_RESERVE

    table = Table(title="All candidates, best quality first", title_justify="left")
    cols = ["quant", "size", "GPU", "RAM", "GPU tok/s", "CPU tok/s", "expected quality", "file"]
    if not rec.gpu_speed:
        cols.remove("GPU tok/s")
    for col in cols:
        table.add_column(col, overflow="fold", justify="right" if "size" in col or "/s" in col
                         else "left")  # fmt: skip
    for c in rec.candidates:
        gpu_ok = rec.gpu_name is not None and c.size + rec.kv_bytes + VRAM_RESERVE <= rec.gpu_free
        ram_ok = c.size + rec.kv_bytes + RAM_RESERVE <= rec.ram_available
        row = [c.label, _format.size(c.size), "fits" if gpu_ok else "-", "fits" if ram_ok else "-"]
        if rec.gpu_speed:
            row.append(rec.gpu_speed[c.label].text)
        row += [rec.cpu_speed[c.label].text, c.quality_short, c.path.name if c.path else "-"]
        table.add_row(*row)
    return table


def _line(where: str, fit: Fit | None, *, none: str) -> str:
    if fit is None:
        return f"{where}: {none}"
    c = fit.candidate
    here = str(c.path) if c.path else "not on this machine: llama3zh pull / quantize"
    speed = f"{fit.speed.text} tok/s" if fit.speed else "speed unknown"
    return (
        f"{where}: {c.label} ({_format.size(c.size)}, needs {_format.size(fit.need)} with the "
        f"KV cache); {speed}: {fit.reason}; expected {c.quality}; {here}"
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
        if f is None:
            return None
        return {
            **_cand(f.candidate),
            "need_bytes": f.need,
            "budget_bytes": f.budget,
            "tps": round(f.speed.tps, 2) if f.speed else None,
            "tps_measured": f.speed.measured if f.speed else None,
            "reason": f.reason,
        }

    def cand(c: Candidate) -> dict[str, Any]:
        out = _cand(c)
        for device, table in (("cpu", rec.cpu_speed), ("gpu", rec.gpu_speed)):
            speed = table.get(c.label)
            out[f"{device}_tps"] = round(speed.tps, 2) if speed else None
            out[f"{device}_tps_measured"] = speed.measured if speed else None
        return out

    bw = rec.bandwidth

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
        "prefer": rec.prefer.value,
        "rule": rec.rule,
        "bandwidth": None
        if bw is None
        else {
            "cpu_bytes_per_s": round(bw.cpu),
            "cpu_basis": bw.cpu_basis,
            "gpu_bytes_per_s": round(bw.gpu),
            "gpu_basis": bw.gpu_basis,
        },
        "candidates": [cand(c) for c in rec.candidates],
        "notes": list(rec.notes),
    }
