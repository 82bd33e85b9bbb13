"""The resumable, verifying download of one hub file over HTTP(S).

Written by hand on purpose. huggingface_hub (1.18+) restarts an interrupted file from byte 0 on
the next run (it writes to a process-unique temporary name and deletes it on failure) and checks
only the size; modelscope resumes and checks sha256 but re-hashes every cached file on every
call. Here a file is fetched into a ``.incomplete`` file that survives process restarts (kill -9
included) and continued with a ranged GET from the bytes already on disk, hashed while it
streams, and renamed to its final name only once its sha256 (or git blob id) matches what the
hub published. The hub clients still list the files and own the cache layouts (see ``hub/pull.py``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    DiskSpaceError,
    HubAccessError,
    IntegrityError,
    ModelNotFoundError,
    NetworkError,
)
from ..files import space
from ..progress import ADVANCE, START, Callback, emitter

if TYPE_CHECKING:
    import requests

CHUNK = 1024 * 1024
# Consecutive failures without a single new byte before giving up on a file.
RETRIES = 5
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a stalled connection is dropped and resumed after this long


def read_timeout() -> float:
    """Seconds without a byte before a download connection is dropped and resumed.

    ``$LLAMA3ZH_READ_TIMEOUT`` overrides the default (60 s).
    """
    try:
        return float(os.environ.get("LLAMA3ZH_READ_TIMEOUT") or READ_TIMEOUT)
    except ValueError:
        return READ_TIMEOUT


class Cancelled(Exception):
    """The download was stopped from outside (Ctrl-C in another thread); the partial file stays."""


@dataclass(frozen=True)
class FileJob:
    """One file to fetch: where from, where to, and what it must hash to."""

    name: str  # the path inside the repo, for messages
    url: str
    size: int
    dest: Path  # the final, verified file
    partial: Path  # kept across runs; continued with a ranged GET
    lock: Path  # a lock file shared with the hub client that owns the cache
    sha256: str | None = None
    git_oid: str | None = None  # git blob sha1 (small non-LFS files on Hugging Face)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry a token


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    downloaded: int  # bytes fetched over the network by this call
    resumed_from: int  # bytes that were already on disk when it started
    checksum: str  # "sha256", "git-sha1" or "size"


def new_hasher(job: FileJob) -> Any:
    """The hash object the file is checked with: sha256, else git's blob sha1, else none."""
    if job.sha256:
        return hashlib.sha256()
    if job.git_oid:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % job.size)
        return h
    return None


def checksum_kind(job: FileJob) -> str:
    return "sha256" if job.sha256 else "git-sha1" if job.git_oid else "size"


def expected_digest(job: FileJob) -> str | None:
    return (job.sha256 or job.git_oid or "").lower() or None


def hash_file(
    path: Path,
    job: FileJob,
    *,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> str | None:
    """The digest of a file on disk, in the job's checksum kind (None when it has none)."""
    h = new_hasher(job)
    if h is None:
        return None
    with path.open("rb") as fh:
        while block := fh.read(8 * CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            h.update(block)
            if progress is not None:
                progress(len(block))
    return str(h.hexdigest())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An inter-process lock (the same kind of lock file huggingface_hub and modelscope use)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


_local = threading.local()


def session() -> requests.Session:
    """One requests session per thread (proxies from the environment, keep-alive)."""
    s = getattr(_local, "session", None)
    if s is None:
        import requests

        s = requests.Session()
        _local.session = s
    return s


def fetch(
    job: FileJob,
    *,
    progress: Callback | None = None,
    cancel: threading.Event | None = None,
    retries: int = RETRIES,
) -> FetchResult:
    """Download ``job`` into ``job.dest``, resuming ``job.partial``, and verify it.

    ``progress`` gets ``pull`` events for the task ``job.name`` in bytes: START with the bytes
    already on disk, then ADVANCE with the bytes on disk after each write (message
    "verifying" while a finished file is hashed).

    Raises:
        IntegrityError: the bytes do not match the published size or checksum; the partial file
            is deleted, nothing is installed.
        DiskSpaceError: the disk filled up; the partial file is kept (trimmed to whole writes)
            so a later run resumes it.
        NetworkError, HubAccessError, ModelNotFoundError: the hub could not serve the file.
        Cancelled: ``cancel`` was set; the partial file is kept.
    """
    emit = emitter(progress, "pull")
    on_disk = 0

    def tick(n: int) -> None:
        nonlocal on_disk
        on_disk += n
        emit(ADVANCE, job.name, done=on_disk, total=job.size, unit="bytes")

    def hashed(n: int) -> None:
        nonlocal on_disk
        on_disk += n
        emit(ADVANCE, job.name, done=on_disk, total=job.size, unit="bytes", message="verifying")

    with file_lock(job.lock):
        if job.dest.is_file():  # finished by another process while we waited for the lock
            digest = hash_file(job.dest, job, progress=hashed, cancel=cancel)
            if job.dest.stat().st_size == job.size and digest == expected_digest(job):
                return FetchResult(job.name, job.dest, 0, job.size, checksum_kind(job))
            job.dest.unlink()
        job.partial.parent.mkdir(parents=True, exist_ok=True)
        have = job.partial.stat().st_size if job.partial.exists() else 0
        if have > job.size:  # not a prefix of this file: start over
            os.truncate(job.partial, 0)
            have = 0
        resumed_from = have
        hasher = new_hasher(job)
        if have and hasher is not None:
            # The prefix on disk is hashed again (a local read); it is never downloaded again.
            with job.partial.open("rb") as fh:
                for block in iter(lambda: fh.read(8 * CHUNK), b""):
                    hasher.update(block)
        on_disk = have
        emit(START, job.name, done=have, total=job.size, unit="bytes")
        downloaded = 0
        failures = 0
        last_error: BaseException | None = None
        # Unbuffered: every write goes straight to the kernel, so a killed process leaves exactly
        # the bytes it counted, and a failed write (disk full) can be trimmed off precisely.
        with open(job.partial, "ab", buffering=0) as out, _drop_if_empty(job.partial):
            while have < job.size:
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                before = have
                try:
                    have, hasher = _stream(job, out, have, hasher, tick, cancel)
                except _Restart:
                    os.ftruncate(out.fileno(), 0)
                    have, hasher = 0, new_hasher(job)
                    on_disk = 0
                    continue
                except _Transient as e:
                    last_error = e.__cause__ or e
                    downloaded += e.got
                    have = on_disk = e.have
                    failures = 0 if have > before else failures + 1
                    if failures > retries:
                        raise NetworkError(
                            f"downloading {job.name} kept failing ({_short(last_error)}); "
                            f"{have:,} of {job.size:,} bytes are kept in {job.partial}",
                            hint="run the same command again to resume, or try the other source "
                            "(--source modelscope / --source hf)",
                        ) from last_error
                    time.sleep(min(8.0, 0.25 * 2**failures))
                    continue
                downloaded += have - before
        _check_complete(job, have, hasher.hexdigest() if hasher is not None else None)
        job.dest.parent.mkdir(parents=True, exist_ok=True)
        # not a temporary name (files/atomic.replacing): the partial file is the resume
        # protocol's state, kept across runs until it is complete and verified
        os.replace(job.partial, job.dest)
    return FetchResult(job.name, job.dest, downloaded, resumed_from, checksum_kind(job))


def _check_complete(job: FileJob, have: int, digest: str | None) -> None:
    """Refuse (and delete) a partial file of the wrong size or checksum.

    Raises:
        IntegrityError: what was expected and what came.
    """
    want = expected_digest(job)
    if have != job.size or (want is not None and digest != want):
        job.partial.unlink(missing_ok=True)
        got = f"{have:,} bytes" if have != job.size else f"{checksum_kind(job)} {digest}"
        wanted = f"{job.size:,} bytes" if have != job.size else f"{want}"
        raise IntegrityError(
            f"{job.name}: {checksum_kind(job) if have == job.size else 'size'} mismatch "
            f"(expected {wanted}, got {got}); the bad download was deleted, nothing installed",
            hint="run the same command again to download it afresh; if it fails again, the "
            "hub or a proxy/mirror is serving a damaged file: try the other source",
        )


@contextlib.contextmanager
def _drop_if_empty(partial: Path) -> Iterator[None]:
    """On failure, remove a partial file that got no bytes (nothing worth resuming)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if partial.stat().st_size == 0:
                partial.unlink()
        raise


class _Restart(Exception):
    """The server did not continue where the partial file ends: start the file over."""


class _Transient(Exception):
    """A dropped or stalled connection, or a 5xx: resume from ``have`` after a pause."""

    def __init__(self, have: int, got: int, hasher: Any) -> None:
        super().__init__()
        self.have, self.got, self.hasher = have, got, hasher


def _stream(
    job: FileJob,
    out: Any,
    have: int,
    hasher: Any,
    tick: Callable[[int], None],
    cancel: threading.Event | None,
) -> tuple[int, Any]:
    """One GET from ``have`` on; appends to ``out``. Returns the new (have, hasher)."""
    import requests
    import urllib3

    headers = {**job.headers, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    start = have
    try:
        with session().get(
            job.url,
            headers=headers,
            stream=True,
            timeout=(CONNECT_TIMEOUT, read_timeout()),
            allow_redirects=True,
        ) as r:
            if r.status_code == 416 and have:
                raise _Restart
            _raise_for_status(r, job)
            if have and r.status_code == 200:
                raise _Restart  # the server ignored Range and sends the whole file
            if have and not r.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                raise _Restart
            for chunk in _chunks(r):
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                if have + len(chunk) > job.size:
                    raise IntegrityError(
                        f"{job.name}: the server sent more than the published {job.size:,} bytes",
                        hint="run the command again; if it repeats, try the other source",
                    )
                _write_all(out, chunk, job, have)
                if hasher is not None:
                    hasher.update(chunk)
                have += len(chunk)
                tick(len(chunk))
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
        ConnectionError,  # the builtin: a reset or broken socket
        TimeoutError,
    ) as e:
        raise _Transient(have, have - start, hasher) from e
    except _ServerBusy as e:
        raise _Transient(have, have - start, hasher) from e
    return have, hasher


def _chunks(r: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: whatever one socket read returns (up to ``CHUNK``).

    Not ``iter_content``: it gathers a full chunk before yielding, and a dropped connection
    loses the gathered bytes, which would then be downloaded again.
    """
    raw = r.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        yield from r.iter_content(64 * 1024)
        return
    while chunk := read1(CHUNK, decode_content=False):
        yield chunk


class _ServerBusy(Exception):
    """5xx or 429: worth another try after a pause."""


def _write_all(out: Any, chunk: bytes, job: FileJob, have: int) -> None:
    view = memoryview(chunk)
    try:
        while view:
            n = out.write(view)
            view = view[n:]
    except OSError as e:
        # Keep only whole chunks: the file stays a clean prefix that the next run continues.
        with contextlib.suppress(OSError):
            os.ftruncate(out.fileno(), have)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = space.free_bytes(job.partial.parent)
            raise DiskSpaceError(
                f"the disk filled up while downloading {job.name}: {have:,} of {job.size:,} "
                f"bytes are kept in {job.partial} ({free / 1024**3:.2f} GiB free now); "
                "nothing was installed",
                hint=f"free at least {(job.size - have) / 1024**3:.2f} GiB and run the same "
                "command again: it continues from there",
            ) from e
        raise


def _raise_for_status(r: requests.Response, job: FileJob) -> None:
    code = r.status_code
    if code < 400:
        return
    if code in (401, 403):
        raise HubAccessError(
            f"{job.name}: the hub refused the download (HTTP {code}: gated or private repo)",
            hint="set a token that has access (HF_TOKEN for Hugging Face, MODELSCOPE_API_TOKEN "
            "for ModelScope) and accept the model's license on its hub page",
        )
    if code == 404:
        raise ModelNotFoundError(
            f"{job.name} is no longer on the hub (HTTP 404 for {r.url})",
            hint="the repo changed since it was listed: run the command again",
        )
    if code == 429 or code >= 500:
        raise _ServerBusy(f"HTTP {code}")
    raise NetworkError(f"{job.name}: the hub answered HTTP {code} for {r.url}")


def _short(e: BaseException | None) -> str:
    text = str(e) if e is not None else "unknown error"
    if isinstance(e, _ServerBusy):
        return f"server answered {text}"
    return (text.splitlines() or ["?"])[0][:160]
