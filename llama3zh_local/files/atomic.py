"""Temporary names for outputs in progress, and the orphans a killed process leaves behind.

Every stage writes ``.NAME.tmp-PID`` beside its final ``NAME`` and renames it when complete, so a
final name only ever holds a whole file. A process killed with SIGKILL (or a power cut) cannot
delete its temporary file. Before a temporary name is used it is written to this process's
journal (``$LLAMA3ZH_HOME/tmp/journal/PID``): the next run (and ``llama3zh gc``) deletes only
what the journal of a process that is gone lists, never a file because its name looks like a
temporary one (a pulled or hand-made file may well be called ``.x.tmp-123``). Resumable
downloads (``*.incomplete``) are not orphans: the next pull continues them. No library offers
this sweep (tempfile names are random and carry no owner).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import paths

PARTIAL_SUFFIX = ".incomplete"
_lock = threading.Lock()
_noted: set[str] = set()


def journal_dir() -> Path:
    """Where each process lists the temporary names it uses, one file per PID."""
    return paths.home() / "tmp" / "journal"


def _note(path: Path) -> None:
    """Add ``path`` to this process's journal (before anything is written there)."""
    entry = os.path.abspath(path)
    with _lock:
        if entry in _noted:
            return
        journal = journal_dir() / str(os.getpid())
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            with open(journal, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError:
            return  # no journal (a read-only home): the file is simply never swept
        if not _noted:
            atexit.register(_close_journal, journal)
        _noted.add(entry)


def _close_journal(journal: Path) -> None:
    """At exit: drop this process's journal once nothing it lists is left."""
    if not any(_exists(p) for p in _read_journal(journal)):
        journal.unlink(missing_ok=True)


def _read_journal(journal: Path) -> list[Path]:
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(Path(json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut short by a kill
    return out


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink() or any(_extras(path))


def _extras(path: Path) -> Iterator[Path]:
    """What a tool writes beside a journaled name: llama-imatrix's ``NAME.at_N`` checkpoints."""
    try:
        for p in path.parent.iterdir():
            if p.name.startswith(path.name + ".at_"):
                yield p
    except OSError:
        return


def temp_path(final: Path) -> Path:
    """This process's (and thread's: pulls run in parallel) temporary name for ``final``."""
    thread = (
        ""
        if threading.current_thread() is threading.main_thread()
        else f".t{threading.get_native_id()}"
    )
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{thread}")
    _note(tmp)
    return tmp


@contextlib.contextmanager
def replacing(final: Path, *, sweep_first: bool = True) -> Iterator[Path]:
    """The one write-then-rename: yields a temporary name beside ``final`` (journaled), renames
    it onto ``final`` when the block completes, and removes it when the block raises.

    The block may rename the temporary file itself (e.g. after recording it); then nothing is
    left to rename. ``sweep_first``: delete orphans of ``final`` from killed runs first.
    """
    if sweep_first:
        sweep(final)
    tmp = temp_path(final)
    try:
        yield tmp
        if os.path.lexists(tmp):
            os.replace(tmp, final)
    finally:
        if os.path.lexists(tmp):
            remove(tmp)


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to a temporary name beside ``path`` and rename it into place."""
    with replacing(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
    return path


def unchanged(path: Path, *, size: int, mtime_ns: int) -> bool:
    """Whether ``path`` still has the size and mtime recorded when it was checked."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns


def scratch_dir(kind: str, parent: Path) -> Path:
    """A new scratch folder in ``parent``, journaled (``gc`` deletes it once this process is
    gone)."""
    path = parent / f"{kind}-pid{os.getpid()}-{secrets.token_hex(4)}"
    _note(path)
    path.mkdir(parents=True)
    return path


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


def _journals() -> list[tuple[int, Path]]:
    try:
        found = [(int(p.name), p) for p in journal_dir().iterdir() if p.name.isdigit()]
    except OSError:
        return []
    return sorted(found)


def orphans() -> list[Path]:
    """The temporary files and folders that journals of processes now gone list, still there.

    Journals left with nothing are deleted on the way.
    """
    out: list[Path] = []
    for pid, journal in _journals():
        if pid_alive(pid):
            continue
        listed = _read_journal(journal)
        here = [p for p in listed if p.exists() or p.is_symlink()]
        extras = [x for p in listed for x in _extras(p)]
        if not here and not extras:
            journal.unlink(missing_ok=True)
        out += here + extras
    return sorted(set(out))


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
    """Delete the orphaned temporary files of ``final`` (from killed runs); bytes freed.

    Those of its temporary names too (``..NAME.tmp-A.tmp-B``: a stage that wrote to a
    temporary name through another stage).
    """
    freed = 0
    where = Path(os.path.abspath(final))
    prefix = where.name.lstrip(".") + ".tmp-"
    for p in orphans():
        if p.parent == where.parent and p.name.lstrip(".").startswith(prefix):
            freed += remove(p)
    return freed


@dataclass(frozen=True)
class Leftover:
    path: Path
    size: int
    kind: str  # "orphan" (a dead writer's temporary file) or "partial" (a resumable download)


def leftovers(
    roots: list[Path], *, partial: bool = False, keep: frozenset[Path] = frozenset()
) -> list[Leftover]:
    """Orphaned temporary files (from the journals), and with ``partial`` the resumable
    downloads under ``roots`` too; never a path in ``keep`` (files the store vouches for)."""
    found: dict[Path, Leftover] = {}
    for p in orphans():
        if p not in keep:
            found[p] = Leftover(p, size_of(p), "orphan")
    if partial:
        for root in roots:
            if not root.is_dir():
                continue
            for dirpath, _dirs, filenames in os.walk(root):
                for name in filenames:
                    p = Path(dirpath) / name
                    if name.endswith(PARTIAL_SUFFIX) and p not in keep and p not in found:
                        found[p] = Leftover(p, size_of(p), "partial")
    return sorted(found.values(), key=lambda x: str(x.path))
