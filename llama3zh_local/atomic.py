"""Temporary names for outputs in progress, and the orphans a killed process leaves behind.

Every stage writes ``.NAME.tmp-PID`` beside its final ``NAME`` and renames it when complete, so a
final name only ever holds a whole file. A process killed with SIGKILL (or a power cut) cannot
delete its temporary file; the PID in the name tells the next run (and ``llama3zh gc``) that its
writer is gone. Resumable downloads (``*.incomplete``) are not orphans: the next pull continues
them. No library offers this pid-tagged sweep (tempfile names are random and carry no owner).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

# .NAME.tmp-PID, plus the checkpoints llama-imatrix writes beside it (.NAME.tmp-PID.at_N)
_TEMP = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)(?P<extra>\..*)?$")
# tempfile.mkdtemp(prefix=f"{scratch_prefix(kind)}") for scratch folders (KLD logits)
_SCRATCH = re.compile(r"^(?P<kind>[a-z]+)-pid(?P<pid>\d+)-.+$")
PARTIAL_SUFFIX = ".incomplete"


def temp_path(final: Path) -> Path:
    """This process's (and thread's: pulls run in parallel) temporary name for ``final``."""
    thread = (
        ""
        if threading.current_thread() is threading.main_thread()
        else f".t{threading.get_native_id()}"
    )
    return final.with_name(f".{final.name}.tmp-{os.getpid()}{thread}")


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to a temporary name beside ``path`` and rename it into place."""
    sweep(path)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(text.encode("utf-8"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def unchanged(path: Path, *, size: int, mtime_ns: int) -> bool:
    """Whether ``path`` still has the size and mtime recorded when it was checked."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns


def scratch_prefix(kind: str) -> str:
    """A ``tempfile.mkdtemp`` prefix that ``orphans`` recognises once this process is gone."""
    return f"{kind}-pid{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return False
    return True


def _owner(path: Path) -> int | None:
    """The PID in a temporary or scratch name, None for any other name."""
    m = _TEMP.match(path.name) or _SCRATCH.match(path.name)
    return int(m["pid"]) if m else None


def is_orphan(path: Path) -> bool:
    """A temporary file or folder whose writer is no longer running."""
    pid = _owner(path)
    return pid is not None and not pid_alive(pid)


def size_of(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
        return path.lstat().st_size
    except OSError:
        return 0


def remove(path: Path) -> int:
    """Delete a file or folder; the bytes it held (0 when it was already gone)."""
    n = size_of(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return 0
    return n


def sweep(final: Path) -> int:
    """Delete the orphaned temporary files of ``final`` (from killed runs); bytes freed."""
    freed = 0
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return 0
    for p in siblings:
        m = _TEMP.match(p.name)
        if m and m["final"] == final.name and not pid_alive(int(m["pid"])):
            freed += remove(p)
    return freed


@dataclass(frozen=True)
class Leftover:
    path: Path
    size: int
    kind: str  # "orphan" (a dead writer's temporary file) or "partial" (a resumable download)


def leftovers(roots: list[Path], *, partial: bool = False) -> list[Leftover]:
    """Orphaned temporary files under ``roots``, and with ``partial`` resumable downloads too."""
    found: dict[Path, Leftover] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            for name in list(dirnames):
                p = here / name
                if is_orphan(p):
                    found[p] = Leftover(p, size_of(p), "orphan")
                    dirnames.remove(name)  # its contents go with it
            for name in filenames:
                p = here / name
                if is_orphan(p):
                    found[p] = Leftover(p, size_of(p), "orphan")
                elif partial and name.endswith(PARTIAL_SUFFIX):
                    found[p] = Leftover(p, size_of(p), "partial")
    return sorted(found.values(), key=lambda x: str(x.path))
