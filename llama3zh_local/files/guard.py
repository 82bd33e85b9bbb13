"""What an output may replace, checked before any heavy work (the rules of docs/safety.md).

The tool deletes or replaces only files it wrote itself (recorded in a state file) or the one
output file the user named and asked to replace (``--force``); a folder output that holds files
the tool did not write is refused, ``--force`` or not, and is never emptied wholesale; inputs and
outputs are never the same file; and an input that is not a regular file (a FIFO, a device) is
refused before anything blocks on reading it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import InvalidModelError, UsageError
from . import atomic, state

# The state file and its lock: bookkeeping that goes with the files it records.
BOOKKEEPING = frozenset({state.STATE_NAME, state.STATE_NAME + ".lock"})
_SHOWN = 3  # foreign files named in a refusal


def same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same file or folder (links followed)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents


def check_not_input(out: Path, inputs: Iterable[Path], *, option: str = "-o") -> None:
    """Refuse an output that is one of ``inputs``, that holds one, or that would replace a file
    inside an input folder (other than a GGUF, which no checkpoint reads).

    Raises:
        UsageError: the output and an input overlap.
    """
    for src in inputs:
        if not src.exists():
            continue
        if same_path(out, src):
            raise UsageError(
                f"{option} {out} is the input {src} itself",
                hint="write the output somewhere else: inputs are never overwritten",
            )
        if src.is_dir() and (out.exists() or out.is_symlink()) and not out.is_dir():
            # a link (hard or symbolic) to one of the folder's files is that file
            for p in _top_files(src):
                if same_path(out, p):
                    raise UsageError(
                        f"{option} {out} is the input {p} itself",
                        hint="write the output somewhere else: inputs are never overwritten",
                    )
        if out.is_dir() and _inside(src, out):
            raise UsageError(
                f"{option} {out} holds the input {src}",
                hint="choose a new or empty folder for the output",
            )
        if (
            src.is_dir()
            and (out.exists() or out.is_symlink())
            and not out.is_dir()
            and _inside(out, src)
            and out.suffix.lower() != ".gguf"
        ):
            raise UsageError(
                f"{option} {out} is a file of the input folder {src}",
                hint="write the output somewhere else: inputs are never overwritten",
            )


def _top_files(folder: Path) -> list[Path]:
    """The files of an input folder that a reader may read (a GGUF in it is never an input)."""
    try:
        return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() != ".gguf"]
    except OSError:
        return []


def require_regular(folder: Path) -> None:
    """Refuse a model folder with a FIFO, socket or device where a file should be.

    Reading one blocks forever (a FIFO) or never ends (a device); checked with ``stat`` only.

    Raises:
        InvalidModelError: an entry of ``folder`` is neither a regular file nor a folder.
    """
    try:
        entries = list(folder.iterdir())
    except OSError:
        return  # the caller's own checks say what is wrong with the folder
    for p in entries:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue  # a dangling link: the reader reports it if it needs the file
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InvalidModelError(
                f"{p} is not a regular file ({_kind(mode)})",
                hint="replace it with the real file (download it again), or remove it",
            )


def require_regular_file(path: Path, *, what: str = "model file") -> None:
    """Refuse a FIFO, socket or device given as a file (reading it would block or never end)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InvalidModelError(
            f"{path} is not a regular file ({_kind(mode)})",
            hint=f"give the path of a real {what}",
        )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


# -- single-file outputs --------------------------------------------------------------------------


def check_replaceable(out: Path) -> None:
    """Refuse an output path that holds a FIFO, socket or device: the rename that finishes a
    write would replace the node itself (``-o /dev/null --force`` must never touch it).

    Raises:
        UsageError: ``out`` exists and is not a regular file.
    """
    try:
        mode = out.stat().st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UsageError(
            f"{out} is not a regular file ({_kind(mode)})",
            hint="give -o the path of a new .gguf file",
        )


def check_writable(final: Path) -> None:
    """Create and delete a temporary file beside ``final`` (its folder made first): an output
    that cannot be written fails now, not after minutes of work.

    Raises:
        UsageError: the folder cannot be made or written to.
    """
    tmp = atomic.temp_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb"):
            pass
    except OSError as e:
        raise UsageError(
            f"cannot write {final}: {e.strerror or e}",
            hint="choose a folder you can write to with -o",
        ) from None
    finally:
        with contextlib.suppress(OSError):  # NotADirectoryError when the folder is a file
            tmp.unlink()


def check_file_output(out: Path, *, force: bool, named: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse a file output that would replace something it must not, before any heavy work.

    ``named``: the user gave this very path. A derived name (inside a folder given with ``-o``,
    or the default beside the input) replaces an existing file only when the folder's state file
    records that llama3zh wrote it; a named one with ``force``.

    Raises:
        UsageError: the output is a folder, an input, exists (without ``force``, or not ours),
            or its folder does not exist.
    """
    if out.is_dir():
        raise UsageError(f"{out} is a folder", hint="give -o the path of a .gguf file")
    check_not_input(out, inputs)
    check_replaceable(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(
                f"{out} already exists",
                hint="add --force to replace it, or choose another path with -o",
            )
        if not named and not owned_file(out):
            raise UsageError(
                f"{out} already exists and llama3zh did not write it",
                hint=f"name it to replace it: -o {out} --force (or choose another -o)",
            )
    if not out.parent.is_dir():
        raise UsageError(f"the folder {out.parent} does not exist", hint="create it first")


def owned_file(path: Path, records: Path | None = None) -> bool:
    """Whether the state file of ``records`` (default: the file's folder) records ``path`` as
    written by llama3zh and unchanged since."""
    return state.completed(path, folder=records) is not None


# -- folder outputs -------------------------------------------------------------------------------


def owned_files(dest: Path, records: Path | None = None) -> set[Path]:
    """The files under ``dest`` that the state file of ``records`` (default: ``dest``) records
    as written by llama3zh, unchanged since."""
    where = records or dest
    out = set()
    for name, entry in state.read_state(where).items():
        p = where / name
        if _inside(p, dest) and entry.matches(p):
            out.add(p)
    return out


def _files(dest: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, names in os.walk(dest):
        found += [Path(dirpath) / n for n in names]
    return found


def check_folder_output(
    dest: Path, *, force: bool, inputs: Sequence[Path] = (), records: Path | None = None
) -> set[Path]:
    """Refuse a folder output that would lose files; the recorded files it would replace.

    A new or empty folder is fine; a folder that holds only files llama3zh wrote (recorded in the
    state file of ``records``, default ``dest``) is replaced with ``force``; a folder with any
    other file is refused, ``force`` or not.

    Raises:
        UsageError: ``dest`` is a file or an input, holds files llama3zh did not write, holds
            its own files (without ``force``), or its parent folder does not exist.
    """
    if (dest.exists() or dest.is_symlink()) and not dest.is_dir():
        raise UsageError(f"{dest} is a file", hint="give -o a new folder: the output is a folder")
    check_not_input(dest, inputs)
    if not dest.exists():
        if not dest.parent.is_dir():
            raise UsageError(f"the folder {dest.parent} does not exist", hint="create it first")
        return set()
    ours = owned_files(dest, records)
    foreign = sorted(
        p for p in _files(dest) if p not in ours and not (p.parent == dest and
                                                          p.name in BOOKKEEPING)
    )  # fmt: skip
    if foreign:
        names = ", ".join(str(p.relative_to(dest)) for p in foreign[:_SHOWN])
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        raise UsageError(
            f"{dest} already exists and holds files llama3zh did not write ({names}{more})",
            hint="choose a new or empty folder with -o; llama3zh replaces only files it wrote "
            "itself, --force or not",
        )
    if ours and not force:
        raise UsageError(
            f"{dest} already exists",
            hint="add --force to replace the files llama3zh wrote there, or choose another -o",
        )
    return ours


def install_folder(
    tmp: Path,
    dest: Path,
    *,
    force: bool,
    inputs: Sequence[Path] = (),
    records: Path | None = None,
    step: str | None = None,
    record_inputs: Mapping[str, str] | None = None,
) -> list[Path]:
    """Move the finished folder ``tmp`` to ``dest``, replacing only what llama3zh wrote there.

    Checked again first (files may have appeared while ``tmp`` was written). The files an
    earlier run recorded in ``dest`` are deleted, the new ones recorded (with ``step``, in the
    state file of ``records``, default ``dest``) before they are moved in, so that no file is
    ever in ``dest`` without its record; a new ``dest`` is ``tmp`` renamed.

    Returns the files now in ``dest`` that came from ``tmp``.
    """
    ours = check_folder_output(dest, force=force, inputs=inputs, records=records)
    new = sorted(p.relative_to(tmp) for p in _files(tmp))
    for p in ours:
        p.unlink(missing_ok=True)
    fresh = not dest.exists()
    if step is not None:
        for rel in new:
            if fresh and records is None:  # the state file goes in with the folder
                state.record(tmp / rel, step=step, inputs=record_inputs, folder=tmp)
            else:
                state.record(dest / rel, step=step, inputs=record_inputs,
                             folder=records or dest, measure=tmp / rel)  # fmt: skip
    # folders, not atomic.replacing's single file: ``tmp`` is the caller's temp_folder, and
    # into an existing ``dest`` only the new files move, each renamed whole
    if fresh:
        os.replace(tmp, dest)
    else:
        for rel in new:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest / rel)
        shutil.rmtree(tmp, ignore_errors=True)
    return [dest / rel for rel in new]


def temp_folder(dest: Path) -> Path:
    """The temporary folder name beside ``dest`` (orphans of killed runs deleted first); the
    caller makes it inside the ``try`` whose ``finally`` removes it, so that an interrupt
    right after ``mkdir`` leaves nothing behind."""
    atomic.sweep(dest)
    tmp = atomic.temp_path(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp
