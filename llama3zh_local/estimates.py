"""How long the steps of ``llama3zh run`` take here: throughputs this machine measured
(``rates.json``), first guesses until it has, and the estimates ``pipeline.plan_run`` shows."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from . import catalog, hardware, paths
from .files import atomic
from .quant.imatrix import default_calibration

# First guesses for the time estimate, replaced by what this machine measured (rates.json) after
# each step. Disk-bound steps in bytes/s; imatrix in weights x tokens per second per CPU core.
DEFAULT_RATES: dict[str, float] = {
    "download": 20e6,
    "convert": 150e6,
    "quantize": 60e6,
    "hash": 500e6,
    "imatrix_cpu_core": 8e9,
    "imatrix_gpu": 2e12,
}


def _rates_file() -> Path:
    return paths.home() / "rates.json"


def rates() -> dict[str, float]:
    """Throughputs measured on this machine (falling back to first guesses)."""
    out = dict(DEFAULT_RATES)
    try:
        data = json.loads(_rates_file().read_text(encoding="utf-8"))
        out.update({k: float(v) for k, v in data.items() if k in out and float(v) > 0})
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return out


def remember_rate(name: str, amount: float, seconds: float) -> None:
    """Record a measured throughput (``amount`` per ``seconds``) for the next estimates."""
    if seconds < 0.5 or amount <= 0:  # too short to say anything
        return
    path = _rates_file()
    current = {k: v for k, v in rates().items() if v != DEFAULT_RATES.get(k)}
    current[name] = amount / seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(current, indent=1) + "\n")


def remember_imatrix_rate(*, f16_bytes: int, tokens: int, seconds: float,
                          threads: int | None) -> None:  # fmt: skip
    """Record how fast an imatrix ran: per device with a GPU, per CPU core without."""
    hw = hardware.detect()
    weights_tokens = f16_bytes / 2 * tokens
    if hw.gpu_offload and hw.devices:
        remember_rate("imatrix_gpu", weights_tokens, seconds)
    else:
        cores = max(1, min(threads or os.cpu_count() or 1, 16))
        remember_rate("imatrix_cpu_core", weights_tokens / cores, seconds)


def imatrix_seconds(n_weights: int, tokens: int) -> float:
    """About how long an imatrix over ``tokens`` takes for a model of ``n_weights``."""
    r = rates()
    hw = hardware.detect()
    if hw.gpu_offload and hw.devices:
        return n_weights * tokens / r["imatrix_gpu"]
    return n_weights * tokens / (r["imatrix_cpu_core"] * max(1, min(os.cpu_count() or 1, 16)))


def imatrix_tokens(calibration: Path | None, chunks: int | None, ctx: int) -> int:
    """The tokens an imatrix run reads: ``chunks`` x ``ctx``, or about all of the text."""
    if chunks is not None:
        return chunks * ctx
    text = calibration or default_calibration()
    # ~3.3 bytes per Llama-3 token over the built-in mixed Chinese/English corpus
    return int(text.stat().st_size / 3.3) // ctx * ctx


def bits_per_weight(name: str) -> float:
    """About how many bits a weight takes: the upstream table's ratio, else the name's digit."""
    for q in catalog.GGUF_QUANTS:
        if q.ftype == name:
            return 16 * q.size_gib / catalog.GGUF_QUANTS[0].size_gib
    m = re.search(r"(\d+)", name)
    return float(m[1]) + 0.6 if m else 16.0


def duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
