"""Ollama's API, as Open WebUI, Cherry Studio, Chatbox and the ``ollama`` client call it."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from ..errors import UsageError
from ..gguf.info import read_gguf_info
from ..llamacpp.batch import Record, Request
from ..llamacpp.engine import SamplingParams
from . import params as P
from .registry import ModelEntry
from .scheduler import parse_duration
from .streams import Generation, StreamResponse, collect

# The Ollama API version these routes follow; clients compare it against their minimum.
OLLAMA_VERSION = "0.9.0"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _now() -> str:
    return _iso(time.time())


def _details(e: ModelEntry, info: Any = None) -> dict[str, Any]:
    arch = getattr(info, "architecture", None) or "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": "",
        "quantization_level": (e.quant or "").upper(),
    }


async def root(request: HttpRequest) -> Response:
    """``/``: the chat page for browsers, "Ollama is running" for API clients."""
    if "text/html" in request.headers.get("accept", "") and request.method == "GET":
        return request.app.state.server.page()
    return PlainTextResponse("Ollama is running")


async def version(_request: HttpRequest) -> Response:
    return JSONResponse({"version": OLLAMA_VERSION, "llama3zh": __version__})


async def tags(request: HttpRequest) -> Response:
    server = request.app.state.server
    models = [
        {
            "name": e.name,
            "model": e.name,
            "modified_at": _iso(e.modified),
            "size": e.size,
            "digest": e.digest,
            "details": _details(e),
        }
        for e in server.registry.entries()
    ]
    return JSONResponse({"models": models})


async def ps(request: HttpRequest) -> Response:
    res = request.app.state.server.scheduler.resident
    models = []
    if res is not None:
        e = res.entry
        expires = (
            "2318-01-01T00:00:00Z"
            if res.users or math.isinf(res.expires)
            else _iso(time.time() + max(0.0, res.expires - time.monotonic()))
        )
        models.append(
            {
                "name": e.name,
                "model": e.name,
                "size": e.size,
                "digest": e.digest,
                "details": _details(e, res.info),
                "expires_at": expires,
                "size_vram": e.size if res.model.n_gpu_layers else 0,
                "context_length": res.engine.n_ctx,
            }
        )
    return JSONResponse({"models": models})


async def show(request: HttpRequest) -> Response:
    server = request.app.state.server
    body = await P.json_body(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise P.bad("model is required", "model")
    entry = server.registry.find(name)
    info = read_gguf_info(entry.path)
    arch = info.architecture or "llama"
    model_info: dict[str, Any] = {
        k: v for k, v in info.metadata.items() if isinstance(v, (int, float, str, bool))
    }
    model_info.pop("tokenizer.chat_template", None)
    model_info["general.architecture"] = arch
    model_info[f"{arch}.context_length"] = info.n_ctx_train
    template = info.chat_template or ""
    params = "\n".join(f'stop "{s}"' for s in ("<|eot_id|>", "<|end_of_text|>"))
    return JSONResponse(
        {
            "modelfile": f"# served by llama3zh\nFROM {entry.path}\n",
            "parameters": params,
            "template": template,
            "details": _details(entry, info),
            "model_info": model_info,
            "capabilities": ["completion"],
            "modified_at": _iso(entry.modified),
            "context_length": server.scheduler.settings.n_ctx,
        }
    )


def _options(body: dict[str, Any]) -> tuple[SamplingParams, int | None, tuple[str, ...]]:
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise P.bad("options must be an object", "options")
    grammar = P.response_grammar(body.get("format"), param="format")
    sampling = P.sampling(opts, where="options.", grammar=grammar)
    limit = P.opt_int(opts, "num_predict", -2, P.MAX_TOKENS_LIMIT, where="options.")
    P.opt_int(opts, "num_ctx", 1, 1 << 24, where="options.")  # checked; the server's is used
    if limit is not None and limit < 0:
        limit = None  # -1: no limit, -2: fill the context
    if limit == 0:
        raise P.bad("options.num_predict must not be 0", "options.num_predict")
    return sampling, limit, P.stops(opts.get("stop"), "options.stop")


def _keep_alive(body: dict[str, Any]) -> float | None:
    if "keep_alive" not in body or body["keep_alive"] is None:
        return None
    try:
        return parse_duration(body["keep_alive"])
    except UsageError as err:
        raise P.bad(str(err), "keep_alive") from None


def _final(rec: Record, started: int, load_ns: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "length" if rec.finish_reason == "length" else "stop",
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": load_ns,
        "prompt_eval_count": rec.prompt_evaluated,
        "prompt_eval_duration": rec.prompt_ns,
        "eval_count": rec.completion_tokens,
        "eval_duration": rec.eval_ns,
    }


async def chat(request: HttpRequest) -> Response:
    server = request.app.state.server
    body = await P.json_body(request)
    name = P.model_name(body, None)
    keep = _keep_alive(body)
    raw_msgs = body.get("messages")
    if raw_msgs in (None, []):  # Ollama: no messages loads (or with keep_alive 0, unloads)
        return await _load_only(request, name, keep)
    msgs = P.messages(raw_msgs)
    sampling, limit, stop = _options(body)
    stream = P.opt_bool(body, "stream", True)
    if body.get("tools"):
        raise P.bad("tools are not supported by this server", "tools")
    server.check_prompt_chars(msgs)

    build = P.chat_builder(msgs, sampling=sampling, max_tokens=limit, stop=stop,
                           default_system=server.scheduler.default_system)  # fmt: skip

    return await _run(request, name, build, keep=keep, stream=stream, chat=True)


async def generate(request: HttpRequest) -> Response:
    server = request.app.state.server
    body = await P.json_body(request)
    name = P.model_name(body, None)
    keep = _keep_alive(body)
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise P.bad("prompt must be a string", "prompt")
    if not prompt:
        return await _load_only(request, name, keep, generate=True)
    P.text(prompt, "prompt")
    system = body.get("system")
    if system is not None:
        P.text(system, "system")
    if body.get("template"):
        raise P.bad("template is not supported: the model's own chat template is used", "template")
    if body.get("images"):
        raise P.bad("images: this model takes text only", "images")
    raw = P.opt_bool(body, "raw", False)
    sampling, limit, stop = _options(body)
    stream = P.opt_bool(body, "stream", True)
    server.check_prompt_chars([{"content": prompt}, {"content": system or ""}])

    def raw_request(res: Any) -> Request:  # the prompt as it is: no template around it
        ids = res.model.tokenize(prompt, add_special=res.model.add_bos, parse_special=True)
        return P.limited(res, ids, sampling=sampling, max_tokens=limit, stop=stop)

    msgs = [{"role": "system", "content": system}] if system else []
    build = raw_request if raw else P.chat_builder(
        [*msgs, {"role": "user", "content": prompt}], sampling=sampling, max_tokens=limit,
        stop=stop, default_system=server.scheduler.default_system,
    )  # fmt: skip

    return await _run(request, name, build, keep=keep, stream=stream, chat=False)


async def _load_only(
    request: HttpRequest, name: str, keep: float | None, *, generate: bool = False
) -> Response:
    server = request.app.state.server
    base: dict[str, Any] = {"model": name, "created_at": _now()}
    if generate:
        base["response"] = ""
    else:
        base["message"] = {"role": "assistant", "content": ""}
    if keep == 0:
        await server.scheduler.unload(name)
        return JSONResponse({**base, "done": True, "done_reason": "unload"})
    async with server.scheduler.use(name, keep_alive=keep) as (res, _):
        base["model"] = res.entry.name
    return JSONResponse({**base, "done": True, "done_reason": "load"})


async def _run(
    request: HttpRequest, name: str, build: Any, *, keep: float | None, stream: bool, chat: bool
) -> Response:
    server = request.app.state.server
    started = time.perf_counter_ns()
    stack = contextlib.AsyncExitStack()
    try:
        res, load_ns = await stack.enter_async_context(server.scheduler.use(name, keep_alive=keep))
        gen = Generation(res, build(res), stream=stream)
    except BaseException:
        await stack.aclose()
        raise
    model = res.entry.name

    def piece(text: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": _now()}
        if chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        return out

    if not stream:
        try:
            text, last = await collect(request, gen)
        finally:
            await stack.aclose()
        return JSONResponse({**piece(text), **_final(last, started, load_ns)})

    async def lines() -> AsyncIterator[bytes]:
        async for rec in gen:
            if rec.finish_reason in ("error", "cancelled"):
                why = rec.error or "the answer was cancelled (the server is stopping)"
                yield json.dumps({"error": why}).encode() + b"\n"
                return
            if rec.text:
                line = {**piece(rec.text), "done": False}
                yield json.dumps(line, ensure_ascii=False).encode() + b"\n"
            if rec.finish_reason is not None:
                line = {**piece(""), **_final(rec, started, load_ns)}
                yield json.dumps(line, ensure_ascii=False).encode() + b"\n"

    return StreamResponse(  # type: ignore[return-value]
        lines(), gen=gen, media_type="application/x-ndjson", cleanup=stack.aclose
    )
