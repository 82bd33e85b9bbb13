"""The local model store: where pulled and converted models live, and how a name finds a file.

Layout: ``paths.models_dir()/<repo-name>/<file>`` (e.g.
``llama-3-chinese-8b-instruct-v3-gguf/ggml-model-q4_k.gguf``), one stable path per model file.
Pulled files live in the hubs' own caches (so other tools reuse them) and appear here as links;
``<repo-name>/.llama3zh.json`` records where each came from and what it was verified against.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import catalog, paths
from ..catalog import Source, Variant
from ..errors import InvalidModelError, ModelNotFoundError, UnsafePathError, UsageError
from ..files import atomic
from ..gguf.info import GGUFInfo, read_gguf_info
from .sources import PREFIXES, hf_cache_dir, ms_cache_dir


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
        data = {"version": 1, "files": [asdict(e) for e in sorted(entries.values(), key=_by_name)]}
        atomic.write_text(folder / MANIFEST, json.dumps(data, ensure_ascii=False, indent=1))


def caches() -> list[Path]:
    """The hub caches pulled files live in (``llama3zh gc`` looks there too)."""
    return [hf_cache_dir(), ms_cache_dir()]


def pulled_files() -> frozenset[Path]:
    """Every path of every pull the store records (store links, cache files, their blobs):
    never leftovers, whatever their names look like."""
    out: set[Path] = set()
    models = paths.models_dir()
    if not models.is_dir():
        return frozenset()
    for manifest in models.rglob(MANIFEST):
        folder = manifest.parent
        for entry in read_manifest(folder).values():
            for p in (folder / entry.name, Path(entry.cache_path)):
                out.add(Path(os.path.abspath(p)))
                with contextlib.suppress(OSError):
                    out.add(p.resolve())
    return frozenset(out)


def _by_name(e: StoreEntry) -> str:
    return e.name


def link(store_path: Path, target: Path) -> None:
    """Make ``store_path`` point at ``target`` (a cache file): a symlink, else a hard link.

    Raises:
        InvalidModelError: a different regular file is already at ``store_path``.
    """
    store_path.parent.mkdir(parents=True, exist_ok=True)
    if store_path.is_symlink() or not store_path.exists():
        with atomic.replacing(store_path) as tmp:
            try:
                os.symlink(target.resolve(), tmp)
            except OSError:  # no symlinks here (Windows without developer mode): a hard link
                os.link(target, tmp)
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

    def provenance(self) -> dict[str, Any]:
        """What the file is and where it came from, as ``list --json`` and ``show --json``
        print it (in this key order)."""
        return {
            "variant": self.variant.value,
            "quant": self.quant,
            "size_bytes": self.size,
            "source": self.source,
            "repo": self.repo_id,
            "date": self.date,
        }

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


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# -- what the user names -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A model as named on the command line: a catalog alias or a hub repo id."""

    text: str
    spec: catalog.ModelSpec | None
    variant: Variant | None  # the catalog variant; None for hub ids (the files tell)
    source: Source | None  # fixed by an ``hf:`` / ``ms:`` prefix
    hub_id: str | None  # ``org/name`` of a hub id

    def repo_id(self, source: Source) -> str:
        if self.spec is not None:
            return self.spec.repo_id(self.variant or Variant.GGUF, source)
        assert self.hub_id is not None
        return self.hub_id

    def folders(self) -> list[str]:
        """The store folders this name covers (all variants of an alias without --variant)."""
        if self.spec is not None:
            variants = [self.variant] if self.variant else list(self.spec.variants)
            return [self.spec.name + v.suffix for v in variants]
        assert self.hub_id is not None
        return [repo_folder(self.hub_id).name]


def parse_ref(model: str, *, variant: Variant | None = None) -> ModelRef:
    """Parse ``instruct-v3``, ``hf:org/name``, ``ms:org/name`` or ``org/name``.

    Raises:
        ModelNotFoundError: an unknown alias, or a variant the model does not have.
        UsageError: a malformed repo id.
    """
    text = model.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in PREFIXES:
        return ModelRef(text, None, variant, PREFIXES[prefix.lower()], _check_repo_id(rest))
    if "/" in text:
        return ModelRef(text, None, variant, None, _check_repo_id(text))
    spec = catalog.get_model(text)
    if variant is None:
        lowered = text.lower()
        variant = next(
            (v for v in (Variant.GGUF, Variant.LORA) if lowered.endswith(v.suffix)), Variant.GGUF
        )
    spec.repo_id(variant)  # raises when the model has no such release
    return ModelRef(text, spec, variant, None, None)


def _check_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip().strip("/")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise UsageError(
            f"{repo_id!r} is not a hub repo id",
            hint="use org/name, e.g. hf:hfl/llama-3-chinese-8b-instruct-v3-gguf or "
            "ms:ChineseAlpacaGroup/llama-3-chinese-8b-instruct-v3-gguf, or an alias "
            "(see `llama3zh models`)",
        )
    return repo_id


def safe_relpath(name: str) -> str:
    """A hub file name, checked to stay inside the folder it is written to.

    Raises:
        UnsafePathError: absolute paths, ``..``, backslashes, drive letters, empty parts.
    """
    parts = name.split("/")
    bad = (
        not name
        or name.startswith(("/", "~"))
        or "\\" in name
        or "\0" in name
        or re.match(r"^[A-Za-z]:", name) is not None
        or any(p in ("", ".", "..") for p in parts)
    )
    if bad:
        raise UnsafePathError(
            f"refusing hub file name {name!r}: it would be written outside the model folder",
            hint="the repo (or a mirror/proxy in between) lists a malicious or broken file name; "
            "report it to the repo owner and pull from the other source",
        )
    return name


def quant_key(value: str) -> str:
    """A ``--quant`` value as file labels spell it: catalog short names, else lower-case."""
    v = value.strip().lower()
    im = v.endswith("-im")
    base = v.removesuffix("-im")
    with contextlib.suppress(ModelNotFoundError):
        base = catalog.get_quant(base).short
    return base + ("-im" if im else "")


def file_quant(name: str) -> str:
    """The quant label of a GGUF file name (``q4_k``, ``q4_k-im``), else its stem."""
    label = gguf_quant_label(name)
    base = name.rsplit("/", 1)[-1].removesuffix(".gguf")
    if label is None:
        return base.lower()
    return label + ("-im" if base.lower().endswith("-im") else "")


# -- show, rm --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    info: GGUFInfo | None
    error: str | None


@dataclass(frozen=True)
class ModelDetails:
    ref: ModelRef
    spec: catalog.ModelSpec | None
    local: tuple[LocalFile, ...]
    gguf: tuple[GGUFSummary, ...]


def show(model: str, *, variant: Variant | None = None) -> ModelDetails:
    """Catalog data, local files, and a GGUF metadata summary of each local GGUF.

    Raises:
        ModelNotFoundError: neither a catalog model nor anything pulled under that name.
    """
    ref = parse_ref(model, variant=variant)
    ref_all = (
        ref
        if (variant or ref.spec is None)
        else ModelRef(ref.text, ref.spec, None, ref.source, ref.hub_id)
    )
    local = tuple(f for folder in ref_all.folders() for f in local_files(folder))
    if ref.spec is None and not local:
        raise ModelNotFoundError(
            f"{model} is not in the catalog and nothing of it is on this machine",
            hint=f"pull it first: llama3zh pull {model}",
        )
    summaries = []
    for f in local:
        if f.variant is Variant.GGUF and not f.missing:
            try:
                summaries.append(GGUFSummary(f.path, read_gguf_info(f.path), None))
            except (InvalidModelError, ModelNotFoundError) as e:
                summaries.append(GGUFSummary(f.path, None, str(e)))
    return ModelDetails(ref, ref.spec, local, tuple(summaries))


@dataclass(frozen=True)
class Removal:
    file: LocalFile
    paths: tuple[Path, ...]  # the store path, the cache file(s) and partial downloads
    size: int


@dataclass(frozen=True)
class RemovalPlan:
    model: str
    items: tuple[Removal, ...]

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.items)


def plan_remove(
    model: str, *, quants: Sequence[str] = (), variant: Variant | None = None
) -> RemovalPlan:
    """What ``rm`` would delete: store paths, and the cache files they link to.

    Raises:
        ModelNotFoundError: nothing of that model (and quant) is on this machine.
    """
    ref = parse_ref(model, variant=variant)
    if ref.spec is not None and variant is None:
        ref = ModelRef(ref.text, ref.spec, None, ref.source, ref.hub_id)
    wanted = {quant_key(q) for q in quants}
    files = [f for folder in ref.folders() for f in local_files(folder)]
    if wanted and "all" not in wanted:
        files = [f for f in files if f.name.endswith(".gguf") and file_quant(f.name) in wanted]
    if not files:
        what = f"{model} ({', '.join(sorted(wanted))})" if wanted else model
        raise ModelNotFoundError(
            f"nothing of {what} is on this machine", hint="see what is: llama3zh list"
        )
    items = []
    for f in files:
        targets = [f.path]
        if f.entry is not None:
            targets += _cache_files(f.entry)
        items.append(Removal(f, tuple(dict.fromkeys(targets)), f.size))
    return RemovalPlan(model, tuple(items))


def _cache_files(entry: StoreEntry) -> list[Path]:
    pointer = Path(entry.cache_path)
    out = [pointer]
    if pointer.is_symlink():  # an HF snapshot entry: its blob, other snapshots' links to it
        blob = pointer.resolve()
        out.append(blob)
        snapshots = pointer.parents[len(Path(entry.name).parts) - 1].parent
        with contextlib.suppress(OSError):
            for other in snapshots.glob(f"*/{entry.name}"):
                if other.is_symlink() and other.resolve() == blob:
                    out.append(other)
        out.append(blob.with_name(blob.name + ".incomplete"))
    else:
        out.append(pointer.with_name(pointer.name + ".incomplete"))
    return out


@dataclass(frozen=True)
class RemovalResult:
    removed: tuple[Path, ...]
    freed: int


def remove(plan: RemovalPlan) -> RemovalResult:
    """Delete what ``plan_remove`` listed; forget it in the store manifests."""
    removed: list[Path] = []
    freed = 0
    for item in plan.items:
        for p in item.paths:
            with contextlib.suppress(FileNotFoundError):
                size = p.stat().st_size if p.is_file() and not p.is_symlink() else 0
                p.unlink()
                removed.append(p)
                freed += size
        folder = paths.models_dir() / item.file.folder
        update_manifest(folder, remove=[item.file.name])
        _prune_empty(item.file.path.parent, stop=paths.models_dir())
        for p in item.paths[1:]:
            for root in (hf_cache_dir(), ms_cache_dir()):
                if root in p.parents:
                    _prune_empty(p.parent, stop=root)
    return RemovalResult(tuple(removed), freed)


def _prune_empty(folder: Path, *, stop: Path) -> None:
    with contextlib.suppress(OSError):
        while folder != stop and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
