"""Which models the server offers, under stable Ollama-style names (``name:tag``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError
from ..hub import store


@dataclass(frozen=True)
class ModelEntry:
    """A GGUF file the server can load, and the name clients ask for it by."""

    name: str  # "llama3zh-instruct-v3:q4_k", "smollm2-135m-instruct:q4_1"
    path: Path
    size: int
    modified: float  # seconds since the epoch
    quant: str | None

    @property
    def digest(self) -> str:
        """A stable id for this file (its path, size and date; not a hash of the contents)."""
        key = f"{self.path.resolve()}\0{self.size}\0{self.modified}"
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


_SEP = re.compile(r"[^a-z0-9._-]+")


def name_for(stem: str, quant: str | None, *, family: str | None = None) -> str:
    """``family-or-stem:quant``, lower-case, with the quant taken out of the stem."""
    base = family or stem.lower()
    if quant and family is None:
        low = base
        for token in (quant, quant.replace("_", "-")):
            i = low.rfind(token)
            if i > 0:
                base = low[:i].rstrip(".-_")
                break
    base = _SEP.sub("-", base).strip("-._") or "model"
    return f"{base}:{quant or 'latest'}"


def entry_for_path(path: Path) -> ModelEntry:
    """A model file given on the command line."""
    path = path.expanduser()
    stem = path.name.removesuffix(".gguf")
    quant = store.gguf_quant_label(path.name)
    imatrix = path.name.lower().removesuffix(".gguf").endswith("-im")
    tag = f"{quant}-im" if quant and imatrix else quant
    st = path.stat()
    return ModelEntry(name_for(stem, tag), path, st.st_size, st.st_mtime, quant)


def store_entries() -> list[ModelEntry]:
    """Every usable GGUF in the local store (pulled, converted, quantized, demo)."""
    out = []
    for f in store.local_files():
        if f.missing or not f.name.endswith(".gguf"):
            continue
        quant = f.quant
        imatrix = f.name.lower().removesuffix(".gguf").endswith("-im")
        tag = f"{quant}-im" if quant and imatrix else quant
        family = f"llama3zh-{f.alias}" if f.alias else f.folder.lower()
        if f.name.count("/") or not quant:
            tag = tag or _SEP.sub("-", f.name.lower().removesuffix(".gguf")).strip("-")
        out.append(
            ModelEntry(name_for(f.folder, tag, family=family), f.path, f.size, f.date, quant)
        )
    return out


class Registry:
    """The store's GGUFs plus the paths given to ``serve``; names are unique (later ones get
    a numbered suffix)."""

    def __init__(self, paths: list[Path] | None = None) -> None:
        self.paths = [p.expanduser() for p in paths or []]
        for p in self.paths:
            if not p.is_file():
                raise ModelNotFoundError(
                    f"no model file at {p}",
                    hint="give the path of a .gguf file, or a name from `llama3zh list`",
                )

    def entries(self) -> list[ModelEntry]:
        found = [entry_for_path(p) for p in self.paths if p.is_file()] + store_entries()
        seen: dict[str, int] = {}
        paths: set[Path] = set()
        out = []
        for e in found:
            real = e.path.resolve()
            if real in paths:
                continue
            paths.add(real)
            name = e.name
            if name in seen:
                seen[name] += 1
                base, tag = name.split(":", 1)
                name = f"{base}-{seen[e.name]}:{tag}"
            seen.setdefault(name, 1)
            out.append(ModelEntry(name, e.path, e.size, e.modified, e.quant))
        return out

    def find(self, name: str) -> ModelEntry:
        """The model a request names: ``name:tag``, ``name`` (``:latest`` or its only tag), or
        a file name given to ``serve``.

        Raises:
            ModelNotFoundError: no such model (the message lists the names there are).
        """
        entries = self.entries()
        want = name.strip().lower()
        for e in entries:
            if e.name == want or e.name == f"{want}:latest":
                return e
        same_base = [e for e in entries if e.name.split(":", 1)[0] == want]
        if len(same_base) == 1:
            return same_base[0]
        for e in entries:
            if want in (e.path.name.lower(), e.path.name.lower().removesuffix(".gguf")):
                return e
            if e.path in self.paths and want == str(e.path).lower():
                return e
        names = ", ".join(e.name for e in entries) or "none"
        raise ModelNotFoundError(
            f"model {name!r} not found (available: {names})",
            hint="GET /v1/models lists the names; `llama3zh list` shows the local files",
        )

    def default(self) -> ModelEntry | None:
        """The first path given on the command line, else the only model there is."""
        entries = self.entries()
        if self.paths:
            return entries[0]
        return entries[0] if len(entries) == 1 else None
