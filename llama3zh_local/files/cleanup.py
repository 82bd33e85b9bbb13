"""``llama3zh gc``: orphaned temporary files (and, on request, partial downloads) removed."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..hub import sources, store
from . import atomic, state


@dataclass(frozen=True)
class GcResult:
    leftovers: tuple[atomic.Leftover, ...]
    freed: int  # bytes (that would be) freed
    stale_entries: tuple[str, ...]  # state entries dropped: their files are gone or changed


def roots() -> list[Path]:
    """Where our temporary files can be: llama3zh's folder and the two hub caches."""
    out: list[Path] = []
    for root in (paths.home(), sources.hf_cache_dir(), sources.ms_cache_dir()):
        if root not in out:
            out.append(root)
    return out


def pulled_files() -> frozenset[Path]:
    """Every path of every pull the store records (store links, cache files, their blobs):
    never leftovers, whatever their names look like."""
    out: set[Path] = set()
    models = paths.models_dir()
    if not models.is_dir():
        return frozenset()
    for manifest in models.rglob(store.MANIFEST):
        folder = manifest.parent
        for entry in store.read_manifest(folder).values():
            for p in (folder / entry.name, Path(entry.cache_path)):
                out.add(Path(os.path.abspath(p)))
                with contextlib.suppress(OSError):
                    out.add(p.resolve())
    return frozenset(out)


def collect(*, partial: bool = False, dry_run: bool = False) -> GcResult:
    """Find (and unless ``dry_run`` delete) leftovers; drop state entries of vanished files.

    Orphans are only what the journals of finished processes list (``atomic``); partial
    downloads are ``*.incomplete`` files in llama3zh's folder and the hub caches. Neither is
    ever a file the store records as pulled.
    """
    found = atomic.leftovers(roots(), partial=partial, keep=pulled_files())
    freed = 0
    for x in found:
        freed += x.size if dry_run else atomic.remove(x.path)
    if not dry_run:
        atomic.orphans()  # drops the journals whose files are all gone now
    stale: list[str] = []
    if not dry_run:
        models = paths.models_dir()
        if models.is_dir():
            for f in sorted(models.rglob(state.STATE_NAME)):
                stale += [str(f.parent / n) for n in state.prune(f.parent)]
    return GcResult(tuple(found), freed, tuple(stale))
