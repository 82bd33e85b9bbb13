"""Pull, list, show and remove models from Hugging Face or ModelScope.

A pull names a model (catalog alias or hub id), picks the hub (``sources.decide_source``), lists
the repo through the hub's client, chooses the files (a GGUF quant that fits this machine, or
the safetensors weights), checks the disk, then fetches them with ``download.fetch`` (resumable
across runs, sha256-verified) into the hub's own cache and links each from the store
(``hub/store.py``), the stable path ``llama3zh chat`` uses.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import Source, Variant
from ..errors import (
    DiskSpaceError,
    Llama3zhError,
    ModelNotFoundError,
    NetworkError,
    UsageError,
)
from ..files import atomic, space
from ..progress import ADVANCE, DONE, FAILED, START, Callback, emitter
from . import download, sources, store
from .sources import (
    Listing,
    RemoteFile,
    SourceDecision,
    decide_source,
    list_cached,
    list_remote,
)
from .store import file_quant, parse_ref, quant_key, safe_relpath

WORKERS = 4  # files downloaded at once
GIB = 1024**3
# Picks pull's quant among a GGUF repo's: {label: bytes} -> (label, a note saying why).
QuantChooser = Callable[[Mapping[str, int]], tuple[str, str]]

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


def select_files(
    listing: Listing,
    *,
    variant: Variant | None,
    quants: Sequence[str] = (),
    default_quant: QuantChooser | None = None,
) -> tuple[Variant, list[RemoteFile], list[str]]:
    """The files to pull from a listing, the variant they make up, and notes on the choice.

    GGUF repos: the chosen quants' files (``all`` for all); without ``quants``, the one
    ``default_quant`` picks among the repo's plain (non ``-im``) quants.
    Full/LoRA repos: safetensors (never ``*.bin``/``*.pth`` duplicates), config, tokenizer files.

    Raises:
        ModelNotFoundError: a quant the repo does not have (the message lists those it has).
        UsageError: ``--quant`` for a repo without GGUF files; no quant and no chooser.
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
            if default_quant is None:
                raise UsageError(
                    f"{label} has several quants ({have}) and none was chosen",
                    hint=f"pick one: --quant {sorted(by_quant)[0]} (or --quant all)",
                )
            choice, note = default_quant(plain)
            notes.append(note)
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
    default_quant: QuantChooser | None = None,
) -> PullPlan:
    """List what ``pull`` would fetch: files, sizes, checksums, what is already here, disk space.

    Nothing is written (``remember`` False also keeps the ``--source auto`` result unsaved).
    ``default_quant`` picks the quant of a GGUF repo when ``quants`` names none (the CLI passes
    ``quant.recommend.default_quant``: this machine's choice).

    Raises:
        ModelNotFoundError, HubAccessError, NetworkError, UsageError, UnsafePathError.
    """
    ref = parse_ref(model, variant=variant)
    decision = decide_source(requested=source, fixed=ref.source, model=ref.text, remember=remember)
    listing = _listing(ref, decision, model=model)
    try:
        kind, chosen, notes = select_files(
            listing,
            variant=ref.variant if ref.spec is not None else variant,
            quants=quants,
            default_quant=default_quant,
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


def _listing(ref: store.ModelRef, decision: SourceDecision, *, model: str) -> Listing:
    """The repo's files from the hub, or offline from the local caches."""
    if decision.online:
        assert decision.source is not None
        try:
            return list_remote(decision.source, ref.repo_id(decision.source))
        except NetworkError as e:
            if not (e.unreachable and decision.fallback):
                raise
            # ModelScope was the fallback: the usual hint (use Hugging Face) would not help
            raise NetworkError(
                str(e),
                hint="check the network or proxy (HTTPS_PROXY); Hugging Face did not answer "
                f"either: {decision.reason}",
            ) from e
    for src in [decision.source] if decision.source else [Source.HF, Source.MODELSCOPE]:
        listing = list_cached(src, ref.repo_id(src))
        if listing is not None:
            return listing
    raise ModelNotFoundError(
        f"offline ({decision.reason}) and {model} is not in the local caches",
        hint="unset HF_HUB_OFFLINE to download it",
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
        free = prev.free if prev else space.free_bytes(where)
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
    progress: Callback | None = None,
    workers: int | None = None,
    cancel: threading.Event | None = None,
) -> PullResult:
    """Carry out a plan: check the disk, download in parallel, verify, install, link the store.

    Files that verify are installed even when another file fails; the first error is raised
    after every file has finished or stopped. ``progress``: ``pull`` events in bytes, one task
    per file (START with the bytes already on disk, ADVANCE cumulative, "verifying" while a
    file is hashed, DONE or FAILED); called from the download threads.

    Raises:
        DiskSpaceError: before any byte when the plan does not fit, or the disk filled up.
        IntegrityError: a checksum mismatch (that file is deleted, not installed).
        NetworkError, HubAccessError, ModelNotFoundError.
    """
    check_disk(plan)
    cancel = cancel or threading.Event()
    t0 = time.monotonic()
    n = max(1, min(workers or _env_int("LLAMA3ZH_PULL_WORKERS", WORKERS), len(plan.files) or 1))
    results: dict[str, PulledFile] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="llama3zh-pull") as pool:
        futures = {pool.submit(_pull_one, plan, f, progress, cancel): f for f in plan.files}
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
    plan: PullPlan, f: PlannedFile, progress: Callback | None, cancel: threading.Event
) -> PulledFile:
    job = f.job
    emit = emitter(progress, "pull")
    try:
        downloaded, resumed = 0, f.have
        state = f.state
        if state == "verify":
            emit(START, f.name, total=f.size, unit="bytes", message="verifying")
            hashed = 0

            def on_hash(n: int) -> None:
                nonlocal hashed
                hashed += n
                emit(ADVANCE, f.name, done=hashed, total=f.size, unit="bytes", message="verifying")

            digest = download.hash_file(job.dest, job, progress=on_hash, cancel=cancel)
            if digest != download.expected_digest(job) and (job.sha256 or job.git_oid):
                job.dest.unlink(missing_ok=True)  # damaged in the cache: fetch it again
                state = "download"
        if state in ("resume", "download"):
            if not plan.decision.online:
                raise ModelNotFoundError(f"{f.name} is not in the cache (offline)")
            r = download.fetch(job, progress=progress, cancel=cancel)
            downloaded, resumed = r.downloaded, r.resumed_from
        elif state == "ok":
            emit(START, f.name, done=f.size, total=f.size, unit="bytes")
        _install(plan, f)
        emit(DONE, f.name, done=f.size, total=f.size, unit="bytes")
    except BaseException:
        emit(FAILED, f.name, total=f.size, unit="bytes")
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
            with atomic.replacing(pointer) as tmp:
                try:
                    os.symlink(os.path.relpath(dest, pointer.parent), tmp)
                except OSError:  # no symlinks: the snapshot holds a copy, as huggingface_hub does
                    shutil.copyfile(dest, tmp)
        if plan.commit and plan.revision != plan.commit:
            ref = sources.hf_storage(plan.repo_id) / "refs" / plan.revision
            if not ref.is_file() or ref.read_text().strip() != plan.commit:
                ref.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_text(ref, plan.commit)
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
