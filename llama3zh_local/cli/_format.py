"""Small formatting helpers shared by the pull / list / show / rm commands."""

from __future__ import annotations

import time


def size(n: float) -> str:
    """Bytes for people: ``4.58 GiB``, ``12.0 MiB``, ``512 B``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def split_list(values: list[str] | None) -> list[str]:
    """``-q a -q b,c`` -> ``[a, b, c]``."""
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out
