"""``llama3zh gc``: orphaned temporary files (and, on request, partial downloads) removed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from . import atomic, state


@dataclass(frozen=True)
class GcResult:
    leftovers: tuple[atomic.Leftover, ...]
    freed: int  # bytes (that would be) freed
    stale_entries: tuple[str, ...]  # state entries dropped: their files are gone or changed


def collect(
    *,
    caches: Sequence[Path] = (),
    keep: frozenset[Path] = frozenset(),
    partial: bool = False,
    dry_run: bool = False,
) -> GcResult:
    """Find (and unless ``dry_run`` delete) leftovers; drop state entries of vanished files.

    Orphans are only what the journals of finished processes list (``atomic``); partial
    downloads are ``*.incomplete`` files in llama3zh's folder and in ``caches`` (the hub
    caches, which the hub stage names: files come before it). Neither is ever a path in
    ``keep`` (what the store records as pulled).
    """
    roots = list(dict.fromkeys([paths.home(), *caches]))
    found = atomic.leftovers(roots, partial=partial, keep=keep)
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
