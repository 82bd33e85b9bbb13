"""OpenAI's API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from ..llamacpp.batch import Record, Request
from ..llamacpp.engine import SamplingParams
from . import params as P
from .streams import Generation, StreamResponse, collect


def usage(rec: Record) -> dict[str, Any]:
    return {
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "total_tokens": rec.prompt_tokens + rec.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": rec.prompt_tokens - rec.prompt_evaluated},
    }


def timings(rec: Record) -> dict[str, Any]:
    """llama-server's ``timings`` object (the web page shows tokens/s from it)."""
    gen_n = max(rec.completion_tokens - 1, 0)  # the first token comes with the prompt
    return {
        "prompt_n": rec.prompt_evaluated,
        "prompt_ms": rec.prompt_ns / 1e6,
        "prompt_per_second": rec.prompt_evaluated / (rec.prompt_ns / 1e9) if rec.prompt_ns else 0,
        "predicted_n": rec.completion_tokens,
        "predicted_ms": rec.eval_ns / 1e6,
        "predicted_per_second": gen_n / (rec.eval_ns / 1e9) if rec.eval_ns and gen_n else 0,
        "cache_n": rec.prompt_tokens - rec.prompt_evaluated,
    }


def finish(rec: Record) -> str:
    return "length" if rec.finish_reason == "length" else "stop"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


async def list_models(request: HttpRequest) -> Response:
    server = request.app.state.server
    data = [
        {"id": e.name, "object": "model", "created": int(e.modified), "owned_by": "llama3zh"}
        for e in server.registry.entries()
    ]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: HttpRequest) -> Response:
    e = request.app.state.server.registry.find(request.path_params["name"])
    return JSONResponse(
        {"id": e.name, "object": "model", "created": int(e.modified), "owned_by": "llama3zh"}
    )


def _common(
    body: dict[str, Any], *, chat: bool
) -> tuple[SamplingParams, int | None, tuple[str, ...]]:
    n = P.opt_int(body, "n", 1, 1 << 30)
    if n not in (None, 1):
        raise P.bad("n must be 1: this server makes one answer per request", "n")
    for key in ("logprobs", "echo") if not chat else ("logprobs",):
        if body.get(key) not in (None, False, 0):
            raise P.bad(f"{key} is not supported by this server", key)
    if chat and (body.get("tools") or body.get("functions")):
        raise P.bad("tools and function calls are not supported by this server", "tools")
    if not chat and body.get("best_of") not in (None, 1):
        raise P.bad("best_of must be 1", "best_of")
    limit = P.opt_int(body, "max_completion_tokens", 1, P.MAX_TOKENS_LIMIT)
    if limit is None:
        limit = P.opt_int(body, "max_tokens", 1, P.MAX_TOKENS_LIMIT)
    grammar = P.response_grammar(body.get("response_format"), param="response_format")
    return P.sampling(body, grammar=grammar), limit, P.stops(body.get("stop"))


async def chat_completions(request: HttpRequest) -> Response:
    server = request.app.state.server
    body = await P.json_body(request)
    name = P.model_name(body, server.default_model())
    msgs = P.messages(body.get("messages"))
    sampling, limit, stop = _common(body, chat=True)
    stream = P.opt_bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise P.bad("stream_options must be an object", "stream_options")
    include_usage = bool(opts and opts.get("include_usage"))
    server.check_prompt_chars(msgs)

    build = P.chat_builder(msgs, sampling=sampling, max_tokens=limit, stop=stop,
                           default_system=server.scheduler.default_system)  # fmt: skip

    return await _run(request, name, build, stream=stream, chat=True, include_usage=include_usage)


async def completions(request: HttpRequest) -> Response:
    server = request.app.state.server
    body = await P.json_body(request)
    name = P.model_name(body, server.default_model())
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    is_ids = (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    )
    if not (isinstance(prompt, str) and prompt) and not is_ids:
        raise P.bad("prompt must be a non-empty string (or one list of token ids)", "prompt")
    sampling, limit, stop = _common(body, chat=False)
    if limit is None:
        limit = 16  # OpenAI's default for this endpoint
    stream = P.opt_bool(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    if isinstance(prompt, str):
        P.text(prompt, "prompt")
        server.check_prompt_chars([{"content": prompt}])

    def build(res: Any) -> Request:
        if isinstance(prompt, str):
            ids = res.model.tokenize(prompt, add_special=res.model.add_bos, parse_special=True)
        else:
            ids = [int(t) for t in prompt or ()]
            if any(not 0 <= t < res.model.n_vocab for t in ids):
                raise P.bad("prompt holds token ids outside the vocabulary", "prompt")
        return P.limited(res, ids, sampling=sampling, max_tokens=limit, stop=stop)

    return await _run(request, name, build, stream=stream, chat=False, include_usage=include_usage)


async def _run(
    request: HttpRequest,
    name: str,
    build: Any,
    *,
    stream: bool,
    chat: bool,
    include_usage: bool,
) -> Response:
    server = request.app.state.server
    stack = contextlib.AsyncExitStack()
    try:
        res, _load_ns = await stack.enter_async_context(server.scheduler.use(name))
        gen = Generation(res, build(res), stream=stream)
    except BaseException:
        await stack.aclose()
        raise
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    model = res.entry.name
    if not stream:
        try:
            text, last = await collect(request, gen)
        finally:
            await stack.aclose()
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish(last)}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": server.fingerprint,
                "choices": [choice],
                "usage": usage(last),
                "timings": timings(last),
            }
        )

    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: dict[str, Any] | str, reason: str | None) -> dict[str, Any]:
        c: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
        if chat:
            c["delta"] = delta
        else:
            c["text"] = delta
        out: dict[str, Any] = {
            "id": rid, "object": kind, "created": created, "model": model,
            "system_fingerprint": server.fingerprint, "choices": [c],
        }  # fmt: skip
        if include_usage:
            out["usage"] = None
        return out

    async def events() -> AsyncIterator[bytes]:
        if chat:
            yield sse(chunk({"role": "assistant", "content": ""}, None))
        async for rec in gen:
            if rec.finish_reason in ("error", "cancelled"):
                why = rec.error or "the answer was cancelled (the server is stopping)"
                yield sse({"error": {"message": why, "type": "server_error"}})
                return
            if rec.text:
                yield sse(chunk({"content": rec.text} if chat else rec.text, None))
            if rec.finish_reason is not None:
                yield sse(chunk({} if chat else "", finish(rec)))
                if include_usage:
                    final = chunk({}, None)
                    final["choices"] = []
                    final["usage"] = usage(rec)
                    final["timings"] = timings(rec)
                    yield sse(final)
        yield b"data: [DONE]\n\n"

    return StreamResponse(  # type: ignore[return-value]
        events(), gen=gen, media_type="text/event-stream; charset=utf-8", cleanup=stack.aclose
    )
