"""A loopback HTTP server that speaks the Hugging Face Hub and ModelScope protocols, with faults.

It serves the endpoints the real clients call, so tests point ``huggingface_hub`` (``HF_ENDPOINT``)
and ``modelscope`` (``MODELSCOPE_ENDPOINT``) at it and run unchanged:

* Hugging Face: ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes, blob ids
  and LFS sha256), ``GET /api/models/{repo}/tree/{rev}``, ``HEAD``/``GET
  /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``,
  ``X-Linked-Size``, ``Content-Length`` and ``Range``; errors carry the Hub's ``X-Error-Code``.
* ModelScope: ``GET /api/v1/models/{repo}/repo/files`` (``Path``, ``Size``, ``Sha256``) and
  ``HEAD``/``GET /api/v1/models/{repo}/repo?Revision=&FilePath=`` with ``Range``.

Faults (``HubServer.fault``): answer a status (404/401/500...), drop the connection or corrupt a
byte at a file offset, stall (before answering, or mid-body), ignore ``Range``. ``throttle`` slows
file bodies down.
The server counts the file bytes it sends. No pytest here: bench scripts import it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN = 1024 * 1024  # files this big (and every .gguf/.safetensors/.bin) are "LFS" files
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pth", ".pt")


@dataclass
class HubFile:
    path: str  # inside the repo
    source: Path | bytes
    size: int = 0
    sha256: str = ""
    git_sha1: str = ""  # git blob id of the content (what the Hub reports for non-LFS files)
    lfs: bool = False

    def __post_init__(self) -> None:
        sha256 = hashlib.sha256()
        data = self.source if isinstance(self.source, bytes) else None
        self.size = len(data) if data is not None else Path(self.source).stat().st_size  # type: ignore[arg-type]
        git = hashlib.sha1(b"blob %d\0" % self.size)
        for block in self.blocks(0, self.size):
            sha256.update(block)
            git.update(block)
        self.sha256, self.git_sha1 = sha256.hexdigest(), git.hexdigest()
        self.lfs = self.size >= LFS_MIN or self.path.endswith(LFS_SUFFIXES)

    def blocks(self, start: int, end: int, size: int = 1 << 20) -> Any:
        if isinstance(self.source, bytes):
            for off in range(start, end, size):
                yield self.source[off : min(end, off + size)]
            return
        with open(self.source, "rb") as fh:
            fh.seek(start)
            left = end - start
            while left > 0:
                block = fh.read(min(size, left))
                if not block:
                    return
                left -= len(block)
                yield block

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {self.size}\n"
        ).encode()

    @property
    def blob_id(self) -> str:
        """The git blob id the Hub lists: of the LFS pointer for LFS files."""
        if not self.lfs:
            return self.git_sha1
        p = self.pointer
        return hashlib.sha1(b"blob %d\0" % len(p) + p).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex[:8])
    token: str | None = None  # gated: this token is required


@dataclass
class Fault:
    """A misbehaviour for requests whose ``METHOD path?query`` matches ``match`` (a regex)."""

    kind: str  # "status", "drop", "corrupt", "stall", "ignore-range"
    match: str = ""
    status: int = 500
    error_code: str | None = None  # X-Error-Code of a Hub error
    offset: int = 0  # drop / corrupt / stall-mid-body: at this file offset
    seconds: float = 5.0  # stall length
    times: int = 1  # requests it applies to (0: all)
    hits: int = 0

    def applies(self, line: str) -> bool:
        return (self.times == 0 or self.hits < self.times) and re.search(
            self.match, line
        ) is not None


class HubServer:
    """``with HubServer() as hub: hub.add_repo("test/tiny-gguf", {...}); hub.url``."""

    def __init__(self, *, throttle: float | None = None, host: str = "127.0.0.1") -> None:
        self.repos: dict[str, HubRepo] = {}
        self.faults: list[Fault] = []
        self.throttle = throttle  # bytes per second for file bodies
        self.bytes_served = 0
        self.served: Counter[str] = Counter()  # file path -> body bytes sent
        self.requests: list[str] = []
        self.ranges: list[tuple[str, str | None]] = []  # (file path, Range header) of bodies
        self.on_bytes: Any = None  # callback(file_path, bytes_sent_so_far) during bodies
        self.errors: list[str] = []  # exceptions in request handlers
        self.active = 0  # file bodies being sent right now
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.hub = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(
        self, repo_id: str, files: Mapping[str, Path | bytes], *, token: str | None = None
    ) -> HubRepo:
        repo = HubRepo(repo_id, {p: HubFile(p, src) for p, src in files.items()}, token=token)
        self.repos[repo_id] = repo
        return repo

    def fault(self, kind: str, match: str = "", **kw: Any) -> Fault:
        f = Fault(kind, match, **kw)
        self.faults.append(f)
        return f

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.bytes_served = 0
            self.served.clear()
            self.requests.clear()
            self.ranges.clear()
        self.throttle = None
        self.on_bytes = None

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no file body is being sent (a client that hung up is noticed late)."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def start(self) -> HubServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_fault(
        self, line: str, kind: str, span: tuple[int, int] | None = None
    ) -> Fault | None:
        """The first matching fault of ``kind`` (mid-body ones: with an offset inside ``span``)."""
        with self._lock:
            for f in self.faults:
                if f.kind != kind or not f.applies(line):
                    continue
                if span is None and kind == "stall" and f.offset:
                    continue
                if span is not None and not span[0] <= f.offset < span[1]:
                    continue
                f.hits += 1
                return f
        return None

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_served += n
            self.served[path] += n


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    hub: HubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-body is what several tests do on purpose: no traceback on
        # stderr (it would land in the output a test is checking).
        import sys

        self.hub.errors.append(repr(sys.exc_info()[1]))


_HF_INFO = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?/?$")
_HF_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_HF_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_MS_FILES = re.compile(r"^/api/v1/models/([^/]+/[^/]+)/repo/files$")
_MS_FILE = re.compile(r"^/api/v1/models/([^/]+/[^/]+)/repo$")
_MS_INFO = re.compile(r"^/api/v1/models/([^/]+/[^/]+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    # -- routing ---------------------------------------------------------------------------------

    def _route(self, *, head: bool) -> None:
        line = f"{self.command} {self.path}"
        with self.hub._lock:
            self.hub.requests.append(line)
        stall = self.hub._take_fault(line, "stall")
        if stall is not None:  # accept the connection, never answer
            self.hub.stopping.wait(stall.seconds)
            self.close_connection = True
            return
        bad = self.hub._take_fault(line, "status")
        if bad is not None:
            self._error(bad.status, f"injected {bad.status}", code=bad.error_code)
            return
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if path == "/":
            self._json({"ok": True}, head=head)
        elif m := _HF_INFO.match(path):
            self._hf_info(m.group(1), m.group(2), query, head=head)
        elif m := _HF_TREE.match(path):
            self._hf_tree(m.group(1), m.group(2), m.group(3) or "", head=head)
        elif m := _HF_RESOLVE.match(path):
            self._hf_resolve(m.group(1), m.group(2), m.group(3), head=head, line=line)
        elif m := _MS_FILES.match(path):
            self._ms_files(m.group(1), query, head=head)
        elif m := _MS_FILE.match(path):
            self._ms_file(m.group(1), query, head=head, line=line)
        elif m := _MS_INFO.match(path):
            self._ms_info(m.group(1), head=head)
        else:
            self._error(404, f"no route {path}")

    def _repo(self, repo_id: str, *, ms: bool = False) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            if ms:
                self._ms_error(404, f"model {repo_id} does not exist")
            else:
                self._error(404, "Repository not found", code="RepoNotFound")
            return None
        if repo.token and not self._authorized(repo.token):
            if ms:
                self._ms_error(401, "Unauthorized: this model needs an access token")
            else:
                msg = f"Access to model {repo_id} is restricted. You must be authenticated."
                self._error(401, msg, code="GatedRepo")
            return None
        return repo

    def _authorized(self, token: str) -> bool:
        auth = self.headers.get("Authorization", "")
        cookie = self.headers.get("Cookie", "")
        return auth == f"Bearer {token}" or f"m_session_id={token}" in cookie

    # -- Hugging Face ----------------------------------------------------------------------------

    def _hf_info(self, repo_id: str, rev: str | None, query: dict, *, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if rev not in (None, "main", repo.commit):
            self._error(404, "Revision Not Found", code="RevisionNotFound")
            return
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for f in repo.files.values():
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(s)
        org = repo_id.split("/")[0]
        self._json(
            {
                "_id": repo.commit[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": org,
                "sha": repo.commit,
                "lastModified": "2024-05-01T00:00:00.000Z",
                "createdAt": "2024-05-01T00:00:00.000Z",
                "private": False,
                "gated": "manual" if repo.token else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": ["gguf"],
                "siblings": siblings,
            },
            head=head,
        )

    def _hf_tree(self, repo_id: str, rev: str, sub: str, *, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for f in repo.files.values():
            if sub and not f.path.startswith(sub.rstrip("/") + "/"):
                continue
            parts = f.path.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
            e: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            entries.append(e)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in dirs]
        self._json(entries, head=head)

    def _hf_resolve(self, repo_id: str, rev: str, path: str, *, head: bool, line: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if rev not in ("main", repo.commit):
            self._error(404, "Revision Not Found", code="RevisionNotFound")
            return
        f = repo.files.get(path)
        if f is None:
            self._error(
                404, "Entry not found", code="EntryNotFound", extra={"X-Repo-Commit": repo.commit}
            )
            return
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.etag}"'}
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        self._file(f, headers, head=head, line=line)

    # -- ModelScope ------------------------------------------------------------------------------

    def _ms_files(self, repo_id: str, query: dict, *, head: bool) -> None:
        repo = self._repo(repo_id, ms=True)
        if repo is None:
            return
        rev = query.get("Revision", ["master"])[0]
        if rev not in ("master", repo.commit):
            self._ms_error(404, f"revision {rev} does not exist")
            return
        files = [
            {
                "Name": f.path.rsplit("/", 1)[-1],
                "Path": f.path,
                "Size": f.size,
                "Sha256": f.sha256,
                "Type": "blob",
                "IsLFS": f.lfs,
                "Revision": repo.commit,
                "CommittedDate": 1714521600,
            }
            for f in repo.files.values()
        ]
        self._json(
            {
                "Code": 200,
                "Data": {"Files": files},
                "Message": "success",
                "Success": True,
                "RequestId": uuid.uuid4().hex,
            },
            head=head,
        )

    def _ms_file(self, repo_id: str, query: dict, *, head: bool, line: str) -> None:
        repo = self._repo(repo_id, ms=True)
        if repo is None:
            return
        f = repo.files.get(query.get("FilePath", [""])[0])
        if f is None:
            self._ms_error(404, "file does not exist")
            return
        self._file(f, {}, head=head, line=line)

    def _ms_info(self, repo_id: str, *, head: bool) -> None:
        repo = self._repo(repo_id, ms=True)
        if repo is None:
            return
        org, name = repo_id.split("/")
        self._json(
            {"Code": 200, "Data": {"Path": org, "Name": name, "Id": 1}, "Success": True}, head=head
        )

    # -- responses -------------------------------------------------------------------------------

    def _json(
        self, obj: Any, *, head: bool, status: int = 200, extra: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        headers = dict(extra or {})
        if code:
            headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message
        self._json({"error": message}, head=self.command == "HEAD", status=status, extra=headers)

    def _ms_error(self, status: int, message: str) -> None:
        self._json(
            {
                "Code": 10010205 + status,
                "Message": message,
                "Success": False,
                "RequestId": uuid.uuid4().hex,
            },
            head=self.command == "HEAD",
            status=status,
        )

    def _file(self, f: HubFile, headers: Mapping[str, str], *, head: bool, line: str) -> None:
        start, end = 0, f.size
        rng = self.headers.get("Range")
        status = 200
        if rng and self.hub._take_fault(line, "ignore-range") is not None:
            rng = None  # like a proxy that strips Range: the whole file, 200
        if rng:
            m = re.match(r"bytes=(\d+)-(\d*)$", rng.strip())
            if not m or int(m.group(1)) >= f.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{f.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m.group(1))
            end = min(f.size, int(m.group(2)) + 1) if m.group(2) else f.size
            status = 206
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.end_headers()
        if head:
            return
        with self.hub._lock:
            self.hub.ranges.append((f.path, rng))
            self.hub.active += 1
        try:
            self._body(f, start, end, line)
        finally:
            with self.hub._lock:
                self.hub.active -= 1

    def _body(self, f: HubFile, start: int, end: int, line: str) -> None:
        hub = self.hub
        drop = hub._take_fault(line, "drop", (start, end))
        corrupt = hub._take_fault(line, "corrupt", (start, end))
        stall = hub._take_fault(line, "stall", (max(start, 1), end))
        stop = drop.offset if drop is not None else end
        plain = (
            hub.throttle is None
            and corrupt is None
            and stall is None
            and hub.on_bytes is None
            and isinstance(f.source, Path)
        )
        try:
            if plain:
                self.wfile.flush()
                with open(f.source, "rb") as fh:  # type: ignore[arg-type]
                    off = start
                    while off < stop:
                        n = os.sendfile(self.connection.fileno(), fh.fileno(), off, stop - off)
                        if n == 0:
                            break
                        off += n
                        hub._count(f.path, n)
            else:
                self._slow_body(f, start, stop, corrupt, stall)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if drop is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _slow_body(
        self, f: HubFile, start: int, stop: int, corrupt: Fault | None, stall: Fault | None
    ) -> None:
        hub = self.hub
        slice_size = 64 * 1024
        t0 = time.monotonic()
        sent = 0
        off = start
        for block in f.blocks(start, stop, slice_size):
            if hub.stopping.is_set():
                raise ConnectionResetError
            if corrupt is not None and off <= corrupt.offset < off + len(block):
                i = corrupt.offset - off
                block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1 :]
            if stall is not None and off <= stall.offset < off + len(block):
                hub.stopping.wait(stall.seconds)
                stall = None
            self.wfile.write(block)
            off += len(block)
            sent += len(block)
            hub._count(f.path, len(block))
            if hub.on_bytes is not None:
                hub.on_bytes(f.path, off)
            if hub.throttle:
                ahead = sent / hub.throttle - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        self.wfile.flush()


def client_env(url: str, home: Path) -> dict[str, str]:
    """Environment variables that point both real clients at ``url`` (added to os.environ)."""
    return {
        "HF_ENDPOINT": url,
        "MODELSCOPE_ENDPOINT": url,
        "MODELSCOPE_HOME": str(home / "modelscope-home"),  # the client's session-id file
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


@contextlib.contextmanager
def online(server: HubServer, home: Path, monkeypatch: Any) -> Iterator[HubServer]:
    """Point the real clients at ``server`` for one test (conftest keeps everything offline)."""
    from llama3zh_local.cli import _output

    for k, v in client_env(server.url, home).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("LLAMA3ZH_READ_TIMEOUT", "2")
    monkeypatch.setenv("COLUMNS", "250")  # rich tables unwrapped, so tests can match their text
    _output.err.cache_clear()
    _output.out.cache_clear()
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import (conftest had set it then)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server.reset()
    try:
        yield server
    finally:
        server.reset()
        _output.err.cache_clear()
        _output.out.cache_clear()


def main() -> None:
    """``python -m tests.hub_server DIR [REPO_ID]``: serve a folder as one repo (both protocols)."""
    import sys

    folder = Path(sys.argv[1])
    repo_id = sys.argv[2] if len(sys.argv) > 2 else "test/" + folder.name
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    with HubServer() as hub:
        hub.add_repo(repo_id, files)
        sys.stdout.write(f"{hub.url} {repo_id}\n")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
