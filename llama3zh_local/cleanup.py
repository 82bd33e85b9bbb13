"""``llama3zh gc``: orphaned temporary files (and, on request, partial downloads) removed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import atomic, paths, sources, state


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


def collect(*, partial: bool = False, dry_run: bool = False) -> GcResult:
    """Find (and unless ``dry_run`` delete) leftovers; drop state entries of vanished files."""
    found = atomic.leftovers(roots(), partial=partial)
    freed = 0
    for x in found:
        freed += x.size if dry_run else atomic.remove(x.path)
    stale: list[str] = []
    if not dry_run:
        models = paths.models_dir()
        if models.is_dir():
            for f in sorted(models.rglob(state.STATE_NAME)):
                stale += [str(f.parent / n) for n in state.prune(f.parent)]
    return GcResult(tuple(found), freed, tuple(stale))
