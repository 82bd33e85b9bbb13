"""A stand-in for `ollama serve` on 127.0.0.1: the endpoints `ollama create` from a GGUF uses.

``/api/version``, ``HEAD``/``POST /api/blobs/sha256:<hex>`` (the body's sha256 must match, as
Ollama checks) and a streaming ``/api/create`` (NDJSON status lines, errors as ``{"error": …}``
lines). Every request is recorded. It listens on an ephemeral port, serves each connection in a
thread, and stops by itself after ``lifetime`` seconds if a test never stops it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None  # the parsed body of JSON requests
    size: int = 0  # body bytes
    sha256: str = ""  # of the body


@dataclass
class FakeOllama:
    version: str | None = "0.6.5"  # None: a server too old to have /api/version (404)
    lifetime: float = 120.0
    create_error: str | None = None  # streamed as {"error": ...} instead of success
    requests: list[Recorded] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._stopped = False

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the form OLLAMA_HOST takes."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FakeOllama:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, r: Recorded) -> None:
        with self._lock:
            self.requests.append(r)

    def find(self, method: str, path_prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]


def _handler(fake: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _body(self) -> tuple[bytes, int, str]:
            h = hashlib.sha256()
            data = bytearray()
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if n == 0:
                        self.rfile.readline()
                        break
                    chunk = self.rfile.read(n)
                    self.rfile.readline()
                    h.update(chunk)
                    data += chunk
            else:
                left = int(self.headers.get("Content-Length") or 0)
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                    h.update(chunk)
                    data += chunk
            return bytes(data), len(data), f"sha256:{h.hexdigest()}"

        def _record(self, body: bytes = b"", size: int = 0, digest: str = "") -> Recorded:
            parsed = None
            # the ollama client labels every body JSON, blob uploads too: only the API's are
            if self.path.startswith("/api/") and not self.path.startswith("/api/blobs/") and body:
                parsed = json.loads(body)
            rec = Recorded(self.command, self.path, dict(self.headers), parsed, size, digest)
            fake.record(rec)
            return rec

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode())

        def _not_found(self) -> None:
            self._send(404, b"404 page not found", "text/plain")

        def do_GET(self) -> None:
            self._record()
            if self.path == "/api/version" and fake.version is not None:
                self._json(200, {"version": fake.version})
            else:
                self._not_found()

        def do_HEAD(self) -> None:
            self._record()
            m = re.fullmatch(r"/api/blobs/(sha256:[0-9a-f]{64})", self.path)
            if not m:
                self._not_found()
            elif m[1] in fake.blobs:
                self._send(200, b"")
            else:
                self._send(404, b"")

        def do_POST(self) -> None:
            body, size, digest = self._body()
            rec = self._record(body, size, digest)
            m = re.fullmatch(r"/api/blobs/(sha256:[0-9a-f]{64})", self.path)
            if m:
                if digest != m[1]:
                    msg = f"digest mismatch, expected {m[1]!r}, got {digest!r}"
                    self._json(400, {"error": msg})
                    return
                fake.blobs[digest] = size
                self._send(201, b"")
            elif self.path == "/api/create":
                self._create(rec.json or {})
            else:
                self._not_found()

        def _create(self, req: dict[str, Any]) -> None:
            if not req.get("model"):
                self._json(400, {"error": "invalid model name"})
                return
            if not req.get("files") and not req.get("from"):
                self._json(400, {"error": "neither 'from' or 'files' was specified"})
                return
            lines: list[dict[str, Any]] = [{"status": "parsing GGUF"}]
            for digest in [*req.get("files", {}).values(), *req.get("adapters", {}).values()]:
                if digest not in fake.blobs:
                    lines.append({"error": f"open blob {digest}: no such file or directory"})
                    break
                lines.append({"status": f"using existing layer {digest}"})
            else:
                if fake.create_error:
                    lines.append({"error": fake.create_error})
                else:
                    lines += [{"status": "writing manifest"}, {"status": "success"}]
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                data = json.dumps(line).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    return Handler
