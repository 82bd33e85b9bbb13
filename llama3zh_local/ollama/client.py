"""``ollama create`` through the Ollama server's API: upload the GGUF as a blob, create the model.

Progress is reported as ``progress.Event``s of stage "create": a byte bar while the GGUF is
hashed, and a line per upload step and per status the server streams back.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import progress as events
from ..errors import OllamaError, UsageError
from .modelfile import Modelfile
from .quoting import check_ollama_name

# /api/create takes JSON fields (files, template, parameters, ...) since Ollama 0.5.5; before it
# took a Modelfile string and a path that the server itself had to read.
MIN_OLLAMA_VERSION = (0, 5, 5)
OLLAMA_DOWNLOAD = "https://ollama.com/download"


STAGE = "create"  # the progress stage of ollama_create


@dataclass(frozen=True)
class OllamaCreateResult:
    name: str
    host: str
    server_version: str
    files: tuple[tuple[str, str], ...]  # (file name, sha256 digest), the GGUF then an adapter
    uploaded: tuple[str, ...] = field(default=())  # digests uploaded (others were there)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``(0, 6, 5)`` from Ollama's version string (``0.6.5``, ``0.12.0-rc1``), else None."""
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def _no_server(base: str, err: BaseException) -> OllamaError:
    why = str(err) or type(err).__name__
    return OllamaError(
        f"no Ollama server answers at {base} ({why})",
        hint=f"install Ollama ({OLLAMA_DOWNLOAD}) and start it with `ollama serve`, "
        "or set OLLAMA_HOST (or --host) to where it runs",
    )


def sha256_digest(
    path: Path, *, progress: Callable[[int, int], None] | None = None, chunk: int = 8 << 20
) -> str:
    """``sha256:<hex>`` of a file, as Ollama names blobs; ``progress(done, total)`` per chunk."""
    total = path.stat().st_size
    h = hashlib.sha256()
    done = 0
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return f"sha256:{h.hexdigest()}"


def ollama_create(
    *,
    name: str,
    modelfile: Modelfile,
    host: str | None = None,
    progress: events.Callback | None = None,
) -> OllamaCreateResult:
    """Create model ``name`` in Ollama from ``modelfile``'s GGUF through the ollama client.

    Uploads the GGUF (and adapter) as blobs unless the server has them, then calls the create
    API with the template, system prompt, parameters and license.

    Args:
        host: the Ollama server; None for ``$OLLAMA_HOST``, else ``127.0.0.1:11434``.
        progress: gets "create" events: a byte count while each file is hashed, a note per
            upload step and per status line of the server.

    Raises:
        UsageError: the name is invalid for Ollama, or the Modelfile names no local GGUF.
        OllamaError: no server answers, it is older than 0.5.5, or it refused the model.
    """
    check_ollama_name(name)
    if modelfile.gguf is None:
        raise UsageError(
            f"the Modelfile for {modelfile.title} names no local GGUF",
            hint="build it from a file: llama3zh ollama-create NAME MODEL",
        )
    client = _client(host)
    import httpx
    import ollama  # imported by _client already: the address in OLLAMA_HOST was checked there

    # The client has no version or blob-exists call; its httpx client carries the resolved host
    # (OLLAMA_HOST), headers and auth, so these two requests go exactly where the others go.
    http: httpx.Client = client._client
    base = str(http.base_url).rstrip("/")
    local = [("files", modelfile.gguf)]
    if modelfile.adapter is not None:
        local.append(("adapters", modelfile.adapter))
    note = _noter(progress)
    try:
        version = _server_version(http, base)
        pushed = [(k, p.name, *_push_blob(client, http, p, progress, note)) for k, p in local]
        note(f"creating {name}")
        last = ""
        for part in client.create(
            model=name,
            files={fname: d for kind, fname, d, _ in pushed if kind == "files"},
            adapters={fname: d for kind, fname, d, _ in pushed if kind == "adapters"} or None,
            template=modelfile.template,
            system=modelfile.system,
            license=modelfile.license,
            # a plain dict: the client's Options model would drop keys it does not know (min_p)
            parameters=modelfile.parameters_dict(),
            stream=True,
        ):
            last = part.status or last
            note(last)
    except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError) as err:
        raise _no_server(base, err) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as err:
        raise UsageError(
            f"cannot reach Ollama at {base}: {err}",
            hint="give --host (or OLLAMA_HOST) as HOST[:PORT] or http://HOST:PORT",
        ) from None
    except (httpx.TransportError, httpx.StreamError) as err:
        raise OllamaError(
            f"the connection to Ollama at {base} failed: {err}",
            hint="check the server's log (`journalctl -u ollama` on Linux), then retry",
        ) from None
    except ollama.ResponseError as err:
        raise OllamaError(
            f"Ollama refused to create {name}: {err.error}",
            hint="check the server's log; `ollama --version` shows both client and server",
        ) from None
    if last != "success":
        raise OllamaError(
            f"Ollama stopped creating {name} without success (last status: {last or 'none'})",
            hint="check the server's log, then retry",
        )
    return OllamaCreateResult(
        name=name,
        host=base,
        server_version=version,
        files=tuple((fname, d) for _, fname, d, _ in pushed),
        uploaded=tuple(d for _, _, d, up in pushed if up),
    )


def _client(host: str | None) -> Any:
    """An ``ollama.Client`` for ``host`` (None: ``$OLLAMA_HOST``).

    Raises:
        UsageError: the address is malformed (a bad port, an unclosed [IPv6 bracket).
    """

    def bad_address(where: str, err: ValueError) -> UsageError:
        return UsageError(
            f"{where} is not a server address ({err})",
            hint="give HOST[:PORT] or http://HOST:PORT, e.g. 127.0.0.1:11434",
        )

    try:
        import ollama  # it makes a default client from $OLLAMA_HOST on import
    except ValueError as err:
        raise bad_address(f"OLLAMA_HOST {os.environ.get('OLLAMA_HOST', '')!r}", err) from None
    try:
        return ollama.Client(host=host)
    except ValueError as err:
        where = f"--host {host!r}" if host is not None else "OLLAMA_HOST"
        raise bad_address(where, err) from None


def _noter(progress: events.Callback | None) -> Callable[[str], None]:
    """A NOTE event per line for people, each line once (the server repeats its statuses)."""
    emit = events.emitter(progress, STAGE)
    said: set[str] = set()

    def note(message: str) -> None:
        if message and message not in said:
            said.add(message)
            emit(events.NOTE, message=message)

    return note


def _server_version(http: Any, base: str) -> str:
    """The server's version from /api/version; refuse one older than the create API."""
    import httpx

    need = ".".join(map(str, MIN_OLLAMA_VERSION))
    too_old_hint = f"update Ollama ({OLLAMA_DOWNLOAD}), or write a Modelfile: llama3zh modelfile"
    r = http.get("/api/version", timeout=10)
    if r.status_code == 404:  # /api/version came in early 2024, long before the create API
        raise OllamaError(
            f"the Ollama server at {base} is too old to say its version; creating a model from "
            f"a GGUF through its API needs Ollama {need} or newer",
            hint=too_old_hint,
        )
    try:
        r.raise_for_status()
        version = str(r.json()["version"])
    except (ValueError, KeyError, TypeError, httpx.HTTPStatusError) as err:
        raise OllamaError(
            f"{base} does not answer like an Ollama server (/api/version: HTTP {r.status_code})",
            hint="check OLLAMA_HOST / --host: it should point at `ollama serve` (port 11434)",
        ) from err
    parsed = parse_version(version)
    # 0.0.0 is a build from source, and an unknown format may be newer: let the server decide
    if parsed is not None and parsed != (0, 0, 0) and parsed < MIN_OLLAMA_VERSION:
        raise OllamaError(
            f"the Ollama server at {base} is version {version}; creating a model from a GGUF "
            f"through its API needs Ollama {need} or newer",
            hint=too_old_hint,
        )
    return version


def _push_blob(
    client: Any,
    http: Any,
    path: Path,
    progress: events.Callback | None,
    note: Callable[[str], None],
) -> tuple[str, bool]:
    """Upload ``path`` as a blob unless the server has it already: (digest, uploaded)."""
    emit = events.emitter(progress, STAGE)
    task = f"checking {path.name}"
    size = path.stat().st_size
    emit(events.START, task, total=size, unit="bytes")
    digest = sha256_digest(
        path,
        progress=lambda done, total: emit(
            events.ADVANCE, task, done=done, total=total, unit="bytes"
        ),
    )
    emit(events.DONE, task, done=size, total=size, unit="bytes")
    if http.head(f"/api/blobs/{digest}", timeout=30).status_code == 200:
        note(f"{path.name} is on the server already")
        return digest, False
    note(f"uploading {path.name}")
    sent = client.create_blob(path)
    if sent != digest:
        raise OllamaError(
            f"{path} changed while it was uploaded ({digest} before, {sent} after)",
            hint="wait until whatever writes the file is done, then retry",
        )
    note(f"uploaded {path.name}")
    return digest, True
