"""What is complete in a model folder: ``.llama3zh-state.json``, one entry per artifact.

An entry is written only after its file was renamed to its final name, and it holds the file's
size, mtime and sha256 and the sha256 of what it was made from. ``llama3zh run`` reuses a file
only when its entry still matches it (same size and mtime, same inputs): a file that is there
without an entry (a crash between rename and record, or a file copied in by hand) is checked
and hashed again before it is trusted, and a stale entry is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import atomic

if TYPE_CHECKING:
    from filelock import FileLock

STATE_NAME = ".llama3zh-state.json"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Artifact:
    name: str  # the file's name inside the folder
    step: str  # pull, convert, imatrix, quantize
    size: int
    mtime_ns: int
    sha256: str
    inputs: dict[str, str] = field(default_factory=dict)  # what it was made from -> sha256
    finished_at: float = 0.0

    def matches(self, path: Path) -> bool:
        """Whether ``path`` is still the file that was recorded."""
        return atomic.unchanged(path, size=self.size, mtime_ns=self.mtime_ns)


def state_file(folder: Path) -> Path:
    return folder / STATE_NAME


def read_state(folder: Path) -> dict[str, Artifact]:
    """The entries of ``folder`` (empty when there is no readable state file)."""
    try:
        data = json.loads(state_file(folder).read_text(encoding="utf-8"))
        return {e["name"]: Artifact(**e) for e in data.get("artifacts", [])}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def _write_state(folder: Path, entries: Mapping[str, Artifact]) -> None:
    path = state_file(folder)
    data = {"version": 1, "artifacts": [asdict(entries[k]) for k in sorted(entries)]}
    atomic.write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")


def _locked(folder: Path) -> FileLock:
    from filelock import FileLock

    return FileLock(str(state_file(folder)) + ".lock", timeout=60)


def sha256_file(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    """The sha256 of a file, read in 8 MiB pieces; ``progress(done, total)`` after each."""
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return h.hexdigest()


def _where(path: Path, folder: Path | None) -> tuple[Path, str]:
    """The folder whose state file holds ``path``, and its name there."""
    if folder is None:
        return path.parent, path.name
    return folder, os.path.relpath(path, folder)


def completed(
    path: Path, *, inputs: Mapping[str, str] | None = None, folder: Path | None = None
) -> Artifact | None:
    """The entry of ``path`` when the file is still what was recorded (and made from ``inputs``).

    ``folder``: the model folder whose state file records it (default: the file's own folder).
    """
    where, name = _where(path, folder)
    entry = read_state(where).get(name)
    if entry is None or not entry.matches(path):
        return None
    if inputs is not None and dict(inputs) != entry.inputs:
        return None
    return entry


def record(
    path: Path,
    *,
    step: str,
    inputs: Mapping[str, str] | None = None,
    sha256: str | None = None,
    folder: Path | None = None,
    measure: Path | None = None,
) -> Artifact:
    """Add (or replace) the entry of a finished file; hashes it unless ``sha256`` is given.

    ``measure``: the finished temporary file that is about to be renamed to ``path`` (a rename
    keeps size and mtime): recording it first leaves no moment in which ``path`` holds a file
    without its entry.
    """
    where, name = _where(path, folder)
    real = measure or path
    st = real.stat()
    digest = sha256 or sha256_file(real)
    entry = Artifact(
        name=name,
        step=step,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        sha256=digest,
        inputs=dict(inputs or {}),
        finished_at=time.time(),
    )
    with _locked(where):
        entries = read_state(where)
        entries[name] = entry
        _write_state(where, entries)
    return entry


def prune(folder: Path) -> list[str]:
    """Drop entries whose file is gone or changed; the names dropped."""
    if not state_file(folder).is_file():
        return []
    with _locked(folder):
        entries = read_state(folder)
        stale = [n for n, e in entries.items() if not e.matches(folder / n)]
        for n in stale:
            del entries[n]
        if stale:
            _write_state(folder, entries)
    return stale
