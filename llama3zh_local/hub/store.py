"""The local model store: where pulled and converted models live, and how a name finds a file.

Layout: ``paths.models_dir()/<repo-name>/<file>`` (e.g.
``llama-3-chinese-8b-instruct-v3-gguf/ggml-model-q4_k.gguf``), one stable path per model file.
Pulled files live in the hubs' own caches (so other tools reuse them) and appear here as links;
``<repo-name>/.llama3zh.json`` records where each came from and what it was verified against.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import catalog, paths
from ..errors import InvalidModelError, ModelNotFoundError
from ..files import atomic


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


# -- pulled files: links into the hub caches, and what was verified ------------------------------

MANIFEST = ".llama3zh.json"


@dataclass(frozen=True)
class StoreEntry:
    """A pulled file as the store's manifest records it."""

    name: str  # path inside the repo, and inside the store folder
    repo_id: str
    source: str  # "hf" or "modelscope"
    revision: str
    commit: str | None
    size: int
    sha256: str | None
    git_oid: str | None
    cache_path: str  # the file in the hub's cache that the store path links to
    pulled_at: float
    verified_mtime_ns: int  # the cache file's mtime when its checksum was checked

    def is_verified(self, path: Path) -> bool:
        """Whether ``path`` is still the file that was verified (same size and mtime)."""
        return atomic.unchanged(path, size=self.size, mtime_ns=self.verified_mtime_ns)


def repo_folder(repo_id: str) -> Path:
    """The store folder of a hub repo: ``models_dir()/<repo-name>``."""
    return paths.models_dir() / repo_id.rstrip("/").split("/")[-1]


def read_manifest(folder: Path) -> dict[str, StoreEntry]:
    """The entries recorded in a store folder (empty when there is no readable manifest)."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return {e["name"]: StoreEntry(**e) for e in data.get("files", [])}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


_manifest_lock = threading.Lock()


def update_manifest(
    folder: Path, *, add: Iterable[StoreEntry] = (), remove: Iterable[str] = ()
) -> None:
    """Add or drop entries, written to a temporary name and renamed (never half-written).

    Locked across threads and processes (two pulls of one repo at once keep both records).
    """
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with _manifest_lock, FileLock(str(folder / f"{MANIFEST}.lock")):
        entries = read_manifest(folder)
        for name in remove:
            entries.pop(name, None)
        for entry in add:
            entries[entry.name] = entry
        if not entries:
            (folder / MANIFEST).unlink(missing_ok=True)
            return
        tmp = folder / f"{MANIFEST}.{os.getpid()}.tmp"
        data = {"version": 1, "files": [asdict(e) for e in sorted(entries.values(), key=_by_name)]}
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)


def _by_name(e: StoreEntry) -> str:
    return e.name


def link(store_path: Path, target: Path) -> None:
    """Make ``store_path`` point at ``target`` (a cache file): a symlink, else a hard link.

    Raises:
        InvalidModelError: a different regular file is already at ``store_path``.
    """
    store_path.parent.mkdir(parents=True, exist_ok=True)
    if store_path.is_symlink() or not store_path.exists():
        tmp = store_path.with_name(f".{store_path.name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target.resolve(), tmp)
        except OSError:  # no symlinks here (Windows without developer mode): a hard link
            os.link(target, tmp)
        os.replace(tmp, store_path)
        return
    if store_path.samefile(target):
        return
    raise InvalidModelError(
        f"{store_path} exists and is not the pulled file (a file of your own?)",
        hint=f"move it away, or remove it (`rm {store_path}`), and pull again",
    )


@dataclass(frozen=True)
class LocalFile:
    """A model file in the store, pulled or made here."""

    path: Path  # the stable store path
    folder: str  # the store folder (repo name)
    name: str  # path inside the folder
    size: int  # bytes (0 when the linked cache file is gone)
    source: str  # "hf", "modelscope" or "local" (converted or copied here)
    repo_id: str | None
    date: float  # when it was pulled (else the file's mtime)
    missing: bool  # a link whose cache file was deleted by another tool
    entry: StoreEntry | None

    @property
    def variant(self) -> catalog.Variant:
        if self.name.endswith(".gguf"):
            return catalog.Variant.GGUF
        if self.folder.endswith(catalog.Variant.LORA.suffix):
            return catalog.Variant.LORA
        return catalog.Variant.FULL

    @property
    def quant(self) -> str | None:
        return gguf_quant_label(self.name) if self.name.endswith(".gguf") else None

    @property
    def alias(self) -> str | None:
        """The catalog alias of the folder, if it is one of the family's repos."""
        for spec in catalog.MODELS:
            if self.folder in {spec.name + v.suffix for v in spec.variants}:
                return spec.alias
        return None


def local_files(folder: str | None = None) -> list[LocalFile]:
    """The files in the store (one folder, or all), by folder then name."""
    root = paths.models_dir()
    if not root.is_dir():
        return []
    folders = [root / folder] if folder else sorted(p for p in root.iterdir() if p.is_dir())
    found: list[LocalFile] = []
    for d in folders:
        if not d.is_dir():
            continue
        entries = read_manifest(d)
        for p in sorted(d.rglob("*")):
            rel = p.relative_to(d).as_posix()
            if any(part.startswith(".") for part in rel.split("/")):
                continue  # the manifest, temporary links
            if p.is_dir() and not p.is_symlink():
                continue
            entry = entries.get(rel)
            missing = not p.exists()  # a dangling link
            st = None if missing else p.stat()
            found.append(
                LocalFile(
                    path=p,
                    folder=d.name,
                    name=rel,
                    size=st.st_size if st else 0,
                    source=entry.source if entry else "local",
                    repo_id=entry.repo_id if entry else None,
                    date=entry.pulled_at if entry else (st.st_mtime if st else 0.0),
                    missing=missing,
                    entry=entry,
                )
            )
    return found


_QUANT_TOKEN = re.compile(r"(?<![a-z0-9])(i?q\d[a-z0-9_]*|bf16|f16|f32)(?![a-z0-9])")


def gguf_quant_label(filename: str) -> str | None:
    """The quant of a GGUF file name: ``q4_k`` for ``ggml-model-q4_k.gguf`` or ``x.Q4_K_M.gguf``.

    Upstream names map to the catalog's short names (``Q4_K_M`` -> ``q4_k``); others are
    returned lower-cased as they appear (``iq4_xs``). None when the name shows no quant.
    """
    stem = filename.rsplit("/", 1)[-1].lower().removesuffix(".gguf").removesuffix("-im")
    tokens = _QUANT_TOKEN.findall(stem)
    if not tokens:
        return None
    token = tokens[-1]
    return catalog.get_quant(token).short if token in _QUANT_NAMES else token


# -- HF checkpoint folders (convert, merge-lora) ---------------------------------------------------


def resolve_hf_dir(model: str, *, variant: catalog.Variant = catalog.Variant.FULL) -> Path:
    """The folder of an HF checkpoint (or a LoRA) for a path or a pulled catalog alias.

    With an alias, ``variant`` picks the release: ``models_dir()/<name>`` for the full weights,
    ``models_dir()/<name>-lora`` for the LoRA.

    Raises:
        ModelNotFoundError: unknown alias, or that release is not in the store yet.
    """
    if looks_like_path(model):
        return Path(model).expanduser()
    spec = catalog.get_model(model)
    repo = spec.repo_id(variant)
    folder = repo_folder(repo)
    marker = "adapter_config.json" if variant is catalog.Variant.LORA else "config.json"
    if (folder / marker).is_file():
        return folder
    raise ModelNotFoundError(
        f"{spec.alias} ({repo}) is not downloaded yet (no {folder / marker})",
        hint=f"download it first: llama3zh pull {spec.alias} --variant {variant.value}",
    )
