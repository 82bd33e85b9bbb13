"""The local model store: where pulled and converted models live, and how a name finds a file.

Layout: ``paths.models_dir()/<repo-name>/<file>`` (e.g.
``llama-3-chinese-8b-instruct-v3-gguf/ggml-model-q4_k.gguf``), one stable path per model file.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import catalog, paths
from .errors import ModelNotFoundError


def looks_like_path(model: str) -> bool:
    return (
        model.endswith(".gguf")
        or os.sep in model
        or (os.altsep is not None and os.altsep in model)
        or Path(model).exists()
    )


def local_ggufs(spec: catalog.ModelSpec) -> list[Path]:
    """GGUF files of a catalog model in the store, newest first."""
    found: list[Path] = []
    for folder in (spec.name + catalog.Variant.GGUF.suffix, spec.name):
        d = paths.models_dir() / folder
        if d.is_dir():
            found.extend(p for p in d.glob("*.gguf") if p.is_file())
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_gguf(model: str, *, quant: str | None = None) -> Path:
    """The GGUF file for a path or a pulled catalog alias.

    With an alias, ``quant`` picks the file (``q4_k``; ``q4_k-im`` for an imatrix quant);
    without it the default quant is preferred, then the newest file.

    Raises:
        ModelNotFoundError: unknown alias, or the model is not in the store yet.
    """
    if looks_like_path(model):
        return Path(model).expanduser()
    spec = catalog.get_model(model)
    files = local_ggufs(spec)
    if quant:
        stem = quant.lower().removesuffix("-im")
        short = catalog.get_quant(stem).short if stem in _QUANT_NAMES else stem
        want = f"ggml-model-{short}{'-im' if quant.lower().endswith('-im') else ''}.gguf"
        match = [p for p in files if p.name == want]
        if match:
            return match[0]
        have = ", ".join(sorted(p.name for p in files)) or "none"
        raise ModelNotFoundError(
            f"{spec.alias} has no {want} on this machine (local files: {have})",
            hint=f"download it: llama3zh pull {spec.alias} --quant {quant}",
        )
    default = f"ggml-model-{catalog.DEFAULT_QUANT}"
    for p in files:
        if p.name.startswith(default):
            return p
    if files:
        return files[0]
    raise ModelNotFoundError(
        f"{spec.alias} ({spec.repo_id(catalog.Variant.GGUF)}) is not downloaded yet",
        hint=f"download it first: llama3zh pull {spec.alias}",
    )


_QUANT_NAMES = {q.short for q in catalog.GGUF_QUANTS} | {
    q.ftype.lower() for q in catalog.GGUF_QUANTS
}
