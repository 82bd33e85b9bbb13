"""The HTTP app: routes, the API key, CORS, body limits and the error shape."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import Llama3zhError, ModelNotFoundError, UsageError
from ..llamacpp.batch import Busy
from . import ollama_api, openai_api
from .params import ApiError, busy
from .registry import Registry
from .scheduler import EngineSettings, Scheduler

# the page and its script carry no data: a browser loads them before it knows the key
OPEN_PATHS = frozenset({"/health", "/", "/ui", "/ui/app.js"})


@dataclass(frozen=True)
class ServeConfig:
    """What ``llama3zh serve`` was started with."""

    models: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 11434
    engine: EngineSettings = field(default_factory=EngineSettings)
    api_key: str | None = None
    cors: tuple[str, ...] = ()  # origins besides loopback ones; "*" allows any
    max_body_bytes: int = 8 << 20
    max_prompt_chars: int = 1 << 20


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and is_loopback_host(parts.hostname or "")


class Server:
    """The app's state: registry, scheduler, settings."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.registry = Registry(list(config.models))
        self.scheduler = Scheduler(self.registry, config.engine)
        self.fingerprint = "llama3zh-" + __version__

    def default_model(self) -> str | None:
        e = self.registry.default()
        return e.name if e else None

    def check_prompt_chars(self, msgs: list[dict[str, str]]) -> None:
        n = sum(len(m.get("content", "")) for m in msgs)
        if n > self.config.max_prompt_chars:
            raise ApiError(
                400,
                f"the prompt has {n:,} characters; this server takes at most "
                f"{self.config.max_prompt_chars:,}",
                code="context_length_exceeded",
            )

    def page(self, name: str = "index.html") -> Response:
        """The chat page (or its script), shipped in the package: nothing from a CDN."""
        static = resources.files("llama3zh_local.serve").joinpath("static")
        data = static.joinpath(name).read_bytes()
        kind = "text/html" if name.endswith(".html") else "text/javascript"
        return Response(
            data,
            media_type=f"{kind}; charset=utf-8",
            headers={
                # only this server's own script runs, and it talks to this server only
                "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )


def error_response(err: ApiError, *, ollama: bool) -> Response:
    if ollama:
        body: dict[str, Any] = {"error": err.message}
    else:
        body = {
            "error": {
                "message": err.message,
                "type": err.kind,
                "param": err.param,
                "code": err.code,
            }
        }
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Busy):
        return busy(exc)
    if isinstance(exc, ModelNotFoundError):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc))
    if isinstance(exc, Llama3zhError):
        hint = f" ({exc.hint})" if exc.hint else ""
        return ApiError(500, f"{exc}{hint}", kind="server_error")
    return ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error")


class Guard:
    """ASGI middleware: Host check, CORS, API key, body size, errors in the right shape."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server
        cfg = server.config
        self.any_origin = "*" in cfg.cors
        self.origins = {o.rstrip("/").lower() for o in cfg.cors if o != "*"}
        self.key = cfg.api_key.encode() if cfg.api_key else None
        self.check_host = is_loopback_host(cfg.host)

    def origin_ok(self, origin: str) -> bool:
        return (
            self.any_origin
            or _loopback_origin(origin)
            or origin.rstrip("/").lower() in self.origins
        )

    def key_ok(self, headers: dict[str, str]) -> bool:
        if self.key is None:
            return True
        given = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        digest = hashlib.sha256
        return hmac.compare_digest(digest(given.encode()).digest(), digest(self.key).digest())

    def _refusal(
        self,
        scope: Any,
        headers: dict[str, str],
        cors: list[tuple[bytes, bytes]],
        *,
        ollama: bool,
    ) -> Response | None:
        """What to answer instead of the app: a 403 for a foreign Host or Origin, a CORS
        preflight's 204, a 401 without the key, a 413 for a body over the limit; else None."""
        path: str = scope["path"]
        origin = headers.get("origin")

        def refuse(status: int, message: str, code: str, kind: str) -> Response:
            return error_response(ApiError(status, message, code=code, kind=kind), ollama=ollama)

        # DNS rebinding: a loopback server answers only to loopback host names
        host = headers.get("host", "")
        hostname = urlsplit("//" + host).hostname or ""
        if self.check_host and host and not is_loopback_host(hostname):
            why = (
                f"host {host!r} is not allowed: this server listens on loopback only; use "
                "http://127.0.0.1 or http://localhost (or start it with --host)"
            )
            return refuse(403, why, "forbidden_host", "permission")
        if origin is not None and not cors:
            # a web page elsewhere may not drive this server (nor read its answers)
            return refuse(
                403,
                f"origin {origin!r} is not allowed; start the server with --cors {origin}",
                "forbidden_origin",
                "permission",
            )
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            resp = Response(status_code=204)
            resp.headers.update(
                {
                    "access-control-allow-methods": "GET, POST, HEAD, OPTIONS",
                    "access-control-allow-headers": headers.get(
                        "access-control-request-headers", "authorization, content-type"
                    ),
                    "access-control-max-age": "600",
                }
            )
            return resp
        if path not in OPEN_PATHS and not self.key_ok(headers):
            return refuse(
                401,
                "invalid or missing API key: send it as 'Authorization: Bearer KEY' or "
                "'x-api-key: KEY'",
                "invalid_api_key",
                "invalid_request_error",
            )
        length = headers.get("content-length")
        limit = self.server.config.max_body_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            return refuse(
                413,
                f"the request body is larger than {limit:,} bytes",
                "body_too_large",
                "invalid_request_error",
            )
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        ollama = not path.startswith("/v1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and self.origin_ok(origin):
            cors = [
                (b"access-control-allow-origin", b"*" if self.any_origin else origin.encode()),
                (b"vary", b"Origin"),
            ]

        async def reply(resp: Response) -> None:
            resp.headers.update({k.decode(): v.decode() for k, v in cors})
            await resp(scope, receive, send)

        refusal = self._refusal(scope, headers, cors, ollama=ollama)
        if refusal is not None:
            await reply(refusal)
            return
        limit = self.server.config.max_body_bytes
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, f"the request body is larger than {limit:,} bytes")
            return message

        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
            if started:
                raise
            err = _as_api_error(exc)
            await error_response(err, ollama=ollama)(scope, receive, tracking_send)


async def health(request: HttpRequest) -> Response:
    res = request.app.state.server.scheduler.resident
    return JSONResponse(
        {
            "status": "ok",
            "model": res.entry.name if res else None,
            "busy": res.engine.busy if res else 0,
        }
    )


async def ui(request: HttpRequest) -> Response:
    return request.app.state.server.page()


async def ui_script(request: HttpRequest) -> Response:
    return request.app.state.server.page("app.js")


async def api_error(request: HttpRequest, exc: Exception) -> Response:
    ollama = not request.url.path.startswith("/v1")
    return error_response(_as_api_error(exc), ollama=ollama)


async def not_found(request: HttpRequest, _exc: Exception) -> Response:
    ollama = not request.url.path.startswith("/v1")
    return error_response(
        ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"),
        ollama=ollama,
    )


async def method_not_allowed(request: HttpRequest, _exc: Exception) -> Response:
    ollama = not request.url.path.startswith("/v1")
    return error_response(
        ApiError(405, f"{request.method} is not allowed on {request.url.path}"), ollama=ollama
    )


def create_app(config: ServeConfig) -> Any:
    """The ASGI app for ``config`` (models load on the first request that names them)."""
    server = Server(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        server.scheduler.start()
        try:
            yield
        finally:
            await server.scheduler.close()

    routes = [
        Route("/", ollama_api.root, methods=["GET", "HEAD"]),
        Route("/ui", ui, methods=["GET"]),
        Route("/ui/app.js", ui_script, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", openai_api.get_model, methods=["GET"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/api/version", ollama_api.version, methods=["GET"]),
        Route("/api/tags", ollama_api.tags, methods=["GET"]),
        Route("/api/ps", ollama_api.ps, methods=["GET"]),
        Route("/api/show", ollama_api.show, methods=["POST"]),
        Route("/api/chat", ollama_api.chat, methods=["POST"]),
        Route("/api/generate", ollama_api.generate, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            404: not_found,
            405: method_not_allowed,
            ApiError: api_error,
            Llama3zhError: api_error,
            Exception: api_error,
        },
    )
    app.state.server = server
    return Guard(app, server)
