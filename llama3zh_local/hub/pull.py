"""Pull, list, show and remove models from Hugging Face or ModelScope.

A pull names a model (catalog alias or hub id), picks the hub (``sources.decide_source``), lists
the repo through the hub's client, chooses the files (a GGUF quant that fits this machine, or
the safetensors weights), checks the disk, then fetches them with ``download.fetch`` (resumable
across runs, sha256-verified) into the hub's own cache and links each from the store
(``hub/store.py``), the stable path ``llama3zh chat`` uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import catalog, paths
from ..catalog import Source, Variant
from ..errors import (
    DiskSpaceError,
    Llama3zhError,
    ModelNotFoundError,
    NetworkError,
    UnsafePathError,
    UsageError,
)
from ..files import atomic
from . import download, sources, store
from .sources import (
    PREFIXES,
    Listing,
    RemoteFile,
    SourceDecision,
    decide_source,
    hf_cache_dir,
    list_cached,
    list_remote,
    ms_cache_dir,
)

WORKERS = 4  # files downloaded at once
# RAM/VRAM left free for the KV cache, compute buffers and the rest of the system.
MEMORY_HEADROOM = int(1.5 * 1024**3)
GIB = 1024**3

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
        return [store.repo_folder(self.hub_id).name]


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


# -- which files ---------------------------------------------------------------------------------

# Full and LoRA repos: the weights (safetensors, or else the pickles), config and tokenizer.
META_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "adapter_config.json",
}


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
    label = store.gguf_quant_label(name)
    base = name.rsplit("/", 1)[-1].removesuffix(".gguf")
    if label is None:
        return base.lower()
    return label + ("-im" if base.lower().endswith("-im") else "")


def pick_default_quant(available: Mapping[str, int], budget: int) -> str:
    """The best quant whose files fit ``budget`` bytes of memory.

    Best means the highest catalog quant up to q8_0: f16 is never a default (twice q8_0's size
    for no visible gain; ask for it with ``--quant f16``). Without any that fits, the smallest.
    """
    order = [q.short for q in catalog.GGUF_QUANTS if q.short != "f16"]
    known = [q for q in order if q in available]
    for q in known:
        if available[q] + MEMORY_HEADROOM <= budget:
            return q
    if known:
        return known[-1]
    return min(available, key=lambda k: available[k])


def memory_budget() -> tuple[int, str]:
    """Bytes a model may use on this machine, and where (the larger of free VRAM and RAM)."""
    from .. import hardware

    _, ram = hardware.system_memory()
    best, where = ram, f"{ram / GIB:.1f} GiB of available RAM"
    with contextlib.suppress(Exception):  # no llama.cpp library: RAM only
        hw = hardware.detect()
        if hw.gpu_offload:
            for d in hw.gpus:
                if d.free > best:
                    best, where = d.free, f"{d.free / GIB:.1f} GiB free on {d.description}"
    return best, where


def select_files(
    listing: Listing,
    *,
    variant: Variant | None,
    quants: Sequence[str] = (),
    budget: Callable[[], tuple[int, str]] | None = None,
) -> tuple[Variant, list[RemoteFile], list[str]]:
    """The files to pull from a listing, the variant they make up, and notes on the choice.

    GGUF repos: the chosen quants' files (default: the best that fits, ``all`` for all).
    Full/LoRA repos: safetensors (never ``*.bin``/``*.pth`` duplicates), config, tokenizer files.

    Raises:
        ModelNotFoundError: a quant the repo does not have (the message lists those it has).
        UsageError: ``--quant`` for a repo without GGUF files.
    """
    label = f"{'hf' if listing.source is Source.HF else 'ms'}:{listing.repo_id}"
    ggufs = [f for f in listing.files if f.name.endswith(".gguf")]
    notes: list[str] = []
    if variant is Variant.GGUF or (variant is None and ggufs):
        if not ggufs:
            raise ModelNotFoundError(
                f"{label} has no GGUF files", hint="pull --variant full to get the HF weights"
            )
        by_quant: dict[str, list[RemoteFile]] = {}
        for f in ggufs:
            by_quant.setdefault(file_quant(f.name), []).append(f)
        have = ", ".join(sorted(by_quant))
        wanted = [quant_key(q) for q in quants]
        if not wanted:
            sizes = {q: sum(f.size for f in fs) for q, fs in by_quant.items()}
            plain = {q: s for q, s in sizes.items() if not q.endswith("-im")} or sizes
            if budget is None:  # this machine: GPU first, KV cache counted (quant/recommend.py)
                from ..quant.recommend import default_quant

                choice, note = default_quant(plain)
                notes.append(note)
            else:
                mem, where = budget()
                choice = pick_default_quant(plain, mem)
                fits = plain[choice] + MEMORY_HEADROOM <= mem
                notes.append(
                    f"quant {choice} ({plain[choice] / GIB:.2f} GiB): the best that fits {where}"
                    if fits
                    else f"quant {choice} ({plain[choice] / GIB:.2f} GiB): the smallest; even it "
                    f"may not fit {where}"
                )
            wanted = [choice]
        elif "all" in wanted:
            wanted = sorted(by_quant)
        missing = [q for q in wanted if q not in by_quant]
        if missing:
            raise ModelNotFoundError(
                f"{label} has no {', '.join(missing)} GGUF file (quants in the repo: {have})",
                hint=f"pick one of them: --quant {sorted(by_quant)[0]} (or --quant all)",
            )
        return Variant.GGUF, [f for q in wanted for f in by_quant[q]], notes
    if quants:
        raise UsageError(
            f"--quant applies to GGUF repos; {label} has no .gguf files",
            hint="pull the GGUF variant (--variant gguf, or its -gguf repo) to choose a quant",
        )
    top = [f for f in listing.files if "/" not in f.name]
    st = [f for f in top if f.name.endswith(".safetensors")]
    if st:
        weights = st + [f for f in top if f.name.endswith(".safetensors.index.json")]
    else:
        weights = [f for f in top if f.name.endswith((".bin", ".pth", ".pt"))]
        weights += [f for f in top if f.name.endswith(".bin.index.json")]
    if not weights:
        raise ModelNotFoundError(
            f"{label} has neither GGUF files nor model weights (safetensors, .bin)",
            hint="check the repo id (catalog aliases: `llama3zh models`)",
        )
    meta = [f for f in top if f.name in META_FILES or f.name.endswith(".tiktoken")]
    lora = any(f.name == "adapter_config.json" for f in top)
    chosen = sorted({f.name: f for f in weights + meta}.values(), key=lambda f: f.name)
    return (Variant.LORA if lora else Variant.FULL), chosen, notes


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    name: str
    size: int
    sha256: str | None
    git_oid: str | None
    # "ok" (verified earlier), "verify" (in the cache, checked once), "resume", "download"
    state: str
    have: int  # bytes already on disk (cache file or partial download)
    store_path: Path
    cache_path: Path  # what the store path links to
    job: download.FileJob = field(repr=False)

    @property
    def remaining(self) -> int:
        return 0 if self.state in ("ok", "verify") else self.size - self.have

    @property
    def checksum(self) -> str:
        return download.checksum_kind(self.job)


@dataclass(frozen=True)
class DiskNeed:
    path: Path  # an existing folder on the filesystem the files are written to
    needed: int
    free: int

    @property
    def fits(self) -> bool:
        return self.needed + _margin(self.needed) <= self.free


def _margin(needed: int) -> int:
    # A little room so a pull never leaves the disk at exactly zero bytes free.
    return min(512 * 1024**2, needed // 100)


@dataclass(frozen=True)
class PullPlan:
    model: str
    decision: SourceDecision
    source: Source
    repo_id: str
    revision: str
    commit: str | None
    variant: Variant
    files: tuple[PlannedFile, ...]
    store_dir: Path
    disk: tuple[DiskNeed, ...]
    notes: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def download_bytes(self) -> int:
        return sum(f.remaining for f in self.files)

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.disk)

    @property
    def repo_label(self) -> str:
        return f"{'hf' if self.source is Source.HF else 'ms'}:{self.repo_id}"


def plan_pull(
    model: str,
    *,
    variant: Variant | None = None,
    quants: Sequence[str] = (),
    source: str = "auto",
    remember: bool = True,
) -> PullPlan:
    """List what ``pull`` would fetch: files, sizes, checksums, what is already here, disk space.

    Nothing is written (``remember`` False also keeps the ``--source auto`` result unsaved).

    Raises:
        ModelNotFoundError, HubAccessError, NetworkError, UsageError, UnsafePathError.
    """
    ref = parse_ref(model, variant=variant)
    decision = decide_source(requested=source, fixed=ref.source, model=ref.text, remember=remember)
    listing: Listing | None = None
    if decision.online:
        assert decision.source is not None
        try:
            listing = list_remote(decision.source, ref.repo_id(decision.source))
        except NetworkError as e:
            if not (e.unreachable and decision.fallback):
                raise
            # ModelScope was the fallback: the usual hint (use Hugging Face) would not help
            raise NetworkError(
                str(e),
                hint="check the network or proxy (HTTPS_PROXY); Hugging Face did not answer "
                f"either: {decision.reason}",
            ) from e
    else:
        for src in [decision.source] if decision.source else [Source.HF, Source.MODELSCOPE]:
            listing = list_cached(src, ref.repo_id(src))
            if listing is not None:
                break
        if listing is None:
            raise ModelNotFoundError(
                f"offline ({decision.reason}) and {model} is not in the local caches",
                hint="unset HF_HUB_OFFLINE to download it",
            )
    try:
        kind, chosen, notes = select_files(
            listing, variant=ref.variant if ref.spec is not None else variant, quants=quants
        )
    except ModelNotFoundError as e:
        if listing.online:
            raise
        raise ModelNotFoundError(
            f"offline ({decision.reason}): {e}", hint="unset HF_HUB_OFFLINE to download it"
        ) from e
    for f in chosen:
        safe_relpath(f.name)
    folder = store.repo_folder(listing.repo_id)
    entries = store.read_manifest(folder)
    headers = sources.request_headers(listing.source) if listing.online else {}
    ms_api = sources.ms_api() if listing.online and listing.source is Source.MODELSCOPE else None
    planned = []
    for f in chosen:
        entry = entries.get(f.name)
        if not listing.online and entry is not None and not (f.sha256 or f.git_oid):
            f = RemoteFile(f.name, f.size, entry.sha256, entry.git_oid)
        lay = sources.layout(listing, f, ms_api)
        job = download.FileJob(
            name=f.name,
            url=lay.url,
            size=f.size,
            dest=lay.dest,
            partial=lay.dest.with_name(lay.dest.name + ".incomplete"),
            lock=lay.lock,
            sha256=f.sha256,
            git_oid=f.git_oid,
            headers=headers,
        )
        state, have = _state(job, entry)
        if not listing.online and state in ("resume", "download"):
            raise ModelNotFoundError(
                f"offline ({decision.reason}) and {f.name} of {model} is not fully downloaded",
                hint="unset HF_HUB_OFFLINE to finish the download",
            )
        planned.append(
            PlannedFile(
                f.name, f.size, f.sha256, f.git_oid, state, have, folder / f.name, lay.pointer, job
            )
        )
    return PullPlan(
        model=model,
        decision=decision,
        source=listing.source,
        repo_id=listing.repo_id,
        revision=listing.revision,
        commit=listing.commit,
        variant=kind,
        files=tuple(planned),
        store_dir=folder,
        disk=_disk_needs(planned),
        notes=tuple(notes),
    )


def _state(job: download.FileJob, entry: store.StoreEntry | None) -> tuple[str, int]:
    try:
        st = job.dest.stat()
    except OSError:
        st = None
    if st is not None and st.st_size == job.size:
        if (
            entry is not None
            and Path(entry.cache_path).resolve() == job.dest.resolve()
            and (entry.sha256, entry.git_oid) == (job.sha256, job.git_oid)
            and entry.is_verified(job.dest)
        ):
            return "ok", job.size  # verified by an earlier pull and unchanged since: no re-hash
        return "verify", job.size
    try:
        have = job.partial.stat().st_size
    except OSError:
        return "download", 0
    return ("resume", have) if 0 < have <= job.size else ("download", 0)


def _disk_needs(files: Iterable[PlannedFile]) -> tuple[DiskNeed, ...]:
    by_dev: dict[int, DiskNeed] = {}
    for f in files:
        if not f.remaining:
            continue
        where = _existing_parent(f.job.partial.parent)
        dev = where.stat().st_dev
        prev = by_dev.get(dev)
        free = prev.free if prev else shutil.disk_usage(where).free
        by_dev[dev] = DiskNeed(
            prev.path if prev else where, (prev.needed if prev else 0) + f.remaining, free
        )
    return tuple(by_dev.values())


def _existing_parent(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(path.anchor or ".")


def check_disk(plan: PullPlan) -> None:
    """Refuse a plan whose downloads do not fit the free space (with the numbers).

    Raises:
        DiskSpaceError
    """
    for d in plan.disk:
        if not d.fits:
            var = "HF_HOME" if plan.source is Source.HF else "MODELSCOPE_CACHE"
            raise DiskSpaceError(
                f"not enough disk space for {plan.repo_label}: {d.needed / GIB:.2f} GiB to "
                f"download plus {_margin(d.needed) / GIB:.2f} GiB kept free, {d.free / GIB:.2f} "
                f"GiB free in {d.path}",
                hint=f"free {(d.needed + _margin(d.needed) - d.free) / GIB:.2f} GiB more, or "
                f"put the cache on a bigger disk: export {var}=/path/on/bigger/disk",
            )


# -- pulling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullEvent:
    """Progress of one file: ``start`` (n: bytes already on disk), ``bytes`` (n new bytes),
    ``verify`` (n bytes hashed), ``done``, ``failed``."""

    name: str
    kind: str
    n: int
    size: int


@dataclass(frozen=True)
class PulledFile:
    name: str
    path: Path  # the stable store path
    cache_path: Path
    size: int
    downloaded: int  # bytes fetched by this run
    resumed_from: int
    checksum: str  # "sha256", "git-sha1", "size"
    state: str  # the plan state it started from


@dataclass(frozen=True)
class PullResult:
    plan: PullPlan
    files: tuple[PulledFile, ...]
    downloaded: int
    seconds: float

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)


def pull(
    plan: PullPlan,
    *,
    progress: Callable[[PullEvent], None] | None = None,
    workers: int | None = None,
    cancel: threading.Event | None = None,
) -> PullResult:
    """Carry out a plan: check the disk, download in parallel, verify, install, link the store.

    Files that verify are installed even when another file fails; the first error is raised
    after every file has finished or stopped.

    Raises:
        DiskSpaceError: before any byte when the plan does not fit, or the disk filled up.
        IntegrityError: a checksum mismatch (that file is deleted, not installed).
        NetworkError, HubAccessError, ModelNotFoundError.
    """
    check_disk(plan)
    emit = progress or (lambda e: None)
    cancel = cancel or threading.Event()
    t0 = time.monotonic()
    n = max(1, min(workers or _env_int("LLAMA3ZH_PULL_WORKERS", WORKERS), len(plan.files) or 1))
    results: dict[str, PulledFile] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="llama3zh-pull") as pool:
        futures = {pool.submit(_pull_one, plan, f, emit, cancel): f for f in plan.files}
        try:
            for fut, f in futures.items():
                try:
                    results[f.name] = fut.result()
                except (Llama3zhError, download.Cancelled, OSError) as e:
                    errors.append(e)
        except KeyboardInterrupt:
            cancel.set()
            raise
    if errors:
        first = errors[0]
        if isinstance(first, download.Cancelled):
            raise KeyboardInterrupt
        raise first
    files = tuple(results[f.name] for f in plan.files)
    return PullResult(plan, files, sum(f.downloaded for f in files), time.monotonic() - t0)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def _pull_one(
    plan: PullPlan, f: PlannedFile, emit: Callable[[PullEvent], None], cancel: threading.Event
) -> PulledFile:
    job = f.job

    def report(kind: str, n: int) -> None:
        emit(PullEvent(f.name, "start" if kind == "resume" else kind, n, f.size))

    try:
        downloaded, resumed = 0, f.have
        state = f.state
        if state == "verify":
            emit(PullEvent(f.name, "start", 0, f.size))
            digest = download.hash_file(
                job.dest, job, progress=lambda k: report("verify", k), cancel=cancel
            )
            if digest != download.expected_digest(job) and (job.sha256 or job.git_oid):
                job.dest.unlink(missing_ok=True)  # damaged in the cache: fetch it again
                state = "download"
        if state in ("resume", "download"):
            if not plan.decision.online:
                raise ModelNotFoundError(f"{f.name} is not in the cache (offline)")
            r = download.fetch(job, progress=report, cancel=cancel)
            downloaded, resumed = r.downloaded, r.resumed_from
        elif state == "ok":
            emit(PullEvent(f.name, "start", f.size, f.size))
        _install(plan, f)
        emit(PullEvent(f.name, "done", 0, f.size))
    except BaseException:
        emit(PullEvent(f.name, "failed", 0, f.size))
        raise
    return PulledFile(
        f.name, f.store_path, f.cache_path, f.size, downloaded, resumed, f.checksum, f.state
    )


def _install(plan: PullPlan, f: PlannedFile) -> None:
    """Put a verified file into the cache layout, link it from the store, record it."""
    dest = f.job.dest
    if plan.source is Source.HF and f.cache_path != dest:
        pointer = f.cache_path
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if not (pointer.exists() and pointer.resolve() == dest.resolve()):
            atomic.sweep(pointer)
            tmp = atomic.temp_path(pointer)
            tmp.unlink(missing_ok=True)
            try:
                os.symlink(os.path.relpath(dest, pointer.parent), tmp)
            except OSError:  # no symlinks: the snapshot holds a copy, as huggingface_hub does
                shutil.copyfile(dest, tmp)
            os.replace(tmp, pointer)
        if plan.commit and plan.revision != plan.commit:
            ref = sources.hf_storage(plan.repo_id) / "refs" / plan.revision
            if not ref.is_file() or ref.read_text().strip() != plan.commit:
                ref.parent.mkdir(parents=True, exist_ok=True)
                tmp_ref = atomic.temp_path(ref)
                tmp_ref.write_text(plan.commit)
                os.replace(tmp_ref, ref)
    store.link(f.store_path, f.cache_path)
    store.update_manifest(
        plan.store_dir,
        add=[
            store.StoreEntry(
                name=f.name,
                repo_id=plan.repo_id,
                source=plan.source.value,
                revision=plan.revision,
                commit=plan.commit,
                size=f.size,
                sha256=f.sha256,
                git_oid=f.git_oid,
                cache_path=str(f.cache_path),
                pulled_at=time.time(),
                verified_mtime_ns=dest.stat().st_mtime_ns,
            )
        ],
    )


# -- list, show, rm ------------------------------------------------------------------------------


def list_local() -> list[store.LocalFile]:
    """Every model file in the store (pulled or made here)."""
    return store.local_files()


@dataclass(frozen=True)
class GGUFSummary:
    path: Path
    info: Any | None  # ggufinfo.GGUFInfo
    error: str | None


@dataclass(frozen=True)
class ModelDetails:
    ref: ModelRef
    spec: catalog.ModelSpec | None
    local: tuple[store.LocalFile, ...]
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
    local = tuple(f for folder in ref_all.folders() for f in store.local_files(folder))
    if ref.spec is None and not local:
        raise ModelNotFoundError(
            f"{model} is not in the catalog and nothing of it is on this machine",
            hint=f"pull it first: llama3zh pull {model}",
        )
    from ..errors import InvalidModelError
    from ..gguf.info import read_gguf_info

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
    file: store.LocalFile
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
    files = [f for folder in ref.folders() for f in store.local_files(folder)]
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


def _cache_files(entry: store.StoreEntry) -> list[Path]:
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
        store.update_manifest(folder, remove=[item.file.name])
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
