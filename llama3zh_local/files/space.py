"""The one disk-space check done before a stage writes gigabytes."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DiskSpaceError

RESERVE = 64 << 20  # the disk is never filled to the last byte


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def check_space(where: Path, need: int, *, what: str, hint: str) -> None:
    """Raise :class:`DiskSpaceError` unless ``where``'s file system has ``need`` bytes plus
    :data:`RESERVE` free. ``what`` names the output(s) in the message; ``hint`` says what to do
    besides freeing space (e.g. "or write elsewhere with -o")."""
    free = free_bytes(where)
    if free < need + RESERVE:
        raise DiskSpaceError(
            f"not enough free space for {what}: it needs {need / 1e9:.2f} GB plus "
            f"{RESERVE / 1e9:.2f} GB kept free, {where} has {free / 1e9:.2f} GB free",
            hint=f"free {(need + RESERVE - free) / 1e9:.2f} GB, {hint}",
        )
