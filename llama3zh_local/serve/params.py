"""Request bodies checked field by field, and turned into a ``batch.Request``.

Both APIs share this: a wrong type or range is a 400 that names the field, never a 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..chat.prompt_tokens import chat_prompt_tokens
from ..errors import Llama3zhError
from ..llamacpp.batch import Request
from ..llamacpp.engine import SamplingParams

MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_TOKENS_LIMIT = 1 << 20


class ApiError(Exception):
    """An HTTP error: status, message, the field at fault and OpenAI's type/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.code = code
        self.headers = headers or {}


def busy(why: object) -> ApiError:
    """503 with Retry-After: the slots and the queue are full, or the server is stopping."""
    return ApiError(
        503,
        f"the server is busy ({why}); try again shortly",
        kind="server_error",
        code="server_busy",
        headers={"Retry-After": "1"},
    )


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


async def json_body(request: Any) -> dict[str, Any]:
    """The request's JSON object (the body size is limited by the app's middleware)."""
    raw = await request.body()
    if not raw.strip():
        raise bad("the request body is empty: send a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise bad(f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise bad(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def opt_number(
    body: dict[str, Any], key: str, lo: float, hi: float, *, where: str = ""
) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    name = where + key
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{name} must be a number, not {json.dumps(value)[:40]}", name)
    if not lo <= value <= hi:
        raise bad(f"{name} {value} is out of range: it must be between {lo:g} and {hi:g}", name)
    return float(value)


def opt_int(body: dict[str, Any], key: str, lo: int, hi: int, *, where: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    name = where + key
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer, not {json.dumps(value)[:40]}", name)
    if not lo <= value <= hi:
        raise bad(f"{name} {value} is out of range: it must be between {lo} and {hi}", name)
    return value


def opt_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{key} must be true or false, not {json.dumps(value)[:40]}", key)
    return value


def text(value: Any, name: str) -> str:
    """A string field that llama.cpp can take (valid Unicode: no lone surrogates)."""
    if not isinstance(value, str):
        raise bad(f"{name} must be a string", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(f"{name} is not valid Unicode text", name) from None
    return value


def model_name(body: dict[str, Any], default: str | None) -> str:
    value = body.get("model")
    if value is None or value == "":
        if default:
            return default
        raise bad("model is required: GET /v1/models lists the names", "model")
    if not isinstance(value, str):
        raise bad("model must be a string", "model")
    return value


def stops(value: Any, name: str = "stop") -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad(f"{name} must be a string or a list of strings", name)
    if len(items) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in items):
        raise bad(f"{name}: at most {MAX_STOPS} strings of {MAX_STOP_CHARS} characters", name)
    return tuple(s for s in items if s)


VALID_ROLES = ("system", "user", "assistant", "tool", "developer")


def messages(value: Any, *, param: str = "messages") -> list[dict[str, str]]:
    """Chat messages as role/content text (OpenAI's text parts are joined)."""
    if not isinstance(value, list) or not value:
        raise bad(f"{param} must be a non-empty list of messages", param)
    out = []
    for i, m in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where)
        role = m.get("role")
        if role not in VALID_ROLES:
            raise bad(
                f"{where}.role {json.dumps(role)[:40]} is not one of {', '.join(VALID_ROLES)}",
                f"{where}.role",
            )
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: text only
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise bad(f"{where}.content: only text parts are supported", f"{where}.content")
                if not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content: a text part needs text", f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string", f"{where}.content")
        if m.get("images"):
            raise bad(f"{where}.images: this model takes text only", f"{where}.images")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"{where}.content is not valid Unicode text", f"{where}.content") from None
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def response_grammar(fmt: Any, *, param: str) -> str | None:
    """GBNF for OpenAI's ``response_format`` or Ollama's ``format`` ("json" or a schema)."""
    from llama_cpp import llama_grammar

    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return str(llama_grammar.JSON_GBNF)
    if isinstance(fmt, dict) and "type" in fmt and fmt.get("type") in ("text", "json_object"):
        return None if fmt["type"] == "text" else str(llama_grammar.JSON_GBNF)
    schema: Any = None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise bad(f"{param}.json_schema.schema must be a JSON schema object", param)
        schema = spec["schema"]
    elif isinstance(fmt, dict) and param == "format":
        schema = fmt
    else:
        raise bad(f"{param} {json.dumps(fmt)[:60]} is not supported", param)
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as err:  # noqa: BLE001 - the converter raises plain exceptions
        raise bad(f"{param}: the JSON schema cannot be enforced: {err}", param) from None


def sampling(
    body: dict[str, Any], *, where: str = "", grammar: str | None = None
) -> SamplingParams:
    """Sampling from a body (OpenAI) or Ollama's ``options``; unset fields take chat's defaults."""
    base = SamplingParams()
    temp = opt_number(body, "temperature", 0, 2 if not where else 100, where=where)
    top_p = opt_number(body, "top_p", 0, 1, where=where)
    top_k = opt_int(body, "top_k", 0, 1 << 20, where=where)
    min_p = opt_number(body, "min_p", 0, 1, where=where)
    freq = opt_number(body, "frequency_penalty", -2, 2, where=where)
    pres = opt_number(body, "presence_penalty", -2, 2, where=where)
    rep = opt_number(body, "repeat_penalty", 0.01, 100, where=where)
    last_n = opt_int(body, "repeat_last_n", 0, 1 << 20, where=where)
    seed = opt_int(body, "seed", -(1 << 63), (1 << 64) - 1, where=where)
    return SamplingParams(
        temperature=base.temperature if temp is None else temp,
        top_p=base.top_p if top_p is None or top_p == 0 else top_p,
        top_k=base.top_k if top_k is None else top_k,
        min_p=base.min_p if min_p is None else min_p,
        repeat_penalty=base.repeat_penalty if rep is None else rep,
        repeat_last_n=base.repeat_last_n if last_n is None else last_n,
        frequency_penalty=freq or 0.0,
        presence_penalty=pres or 0.0,
        seed=None if seed is None or seed < 0 else seed,
        grammar=grammar,
    )


def chat_request(
    res: Any,
    msgs: list[dict[str, str]],
    *,
    sampling: SamplingParams,
    max_tokens: int | None,
    stop: tuple[str, ...],
    default_system: str | None,
) -> Request:
    """Prompt tokens for ``msgs`` (message text never becomes control tokens) as a Request."""
    if not any(m["role"] == "system" for m in msgs) and default_system:
        msgs = [{"role": "system", "content": default_system}, *msgs]
    if msgs[-1]["role"] == "assistant":
        raise bad("the last message must not be from the assistant", "messages")
    try:
        prompt = chat_prompt_tokens(res.model, res.template, msgs).ids
    except Llama3zhError as err:
        raise ApiError(500, f"{err}", kind="server_error") from None
    request = limited(res, prompt, sampling=sampling, max_tokens=max_tokens, stop=stop)
    return replace(request, next_turn=res.next_turn)


def chat_builder(
    msgs: list[dict[str, str]],
    *,
    sampling: SamplingParams,
    max_tokens: int | None,
    stop: tuple[str, ...],
    default_system: str | None,
) -> Callable[[Any], Request]:
    """``chat_request`` for the resident model the scheduler hands over (its tokenizer and
    template are only known then)."""

    def build(res: Any) -> Request:
        return chat_request(res, msgs, sampling=sampling, max_tokens=max_tokens, stop=stop,
                            default_system=default_system)  # fmt: skip

    return build


def limited(
    res: Any,
    prompt: list[int],
    *,
    sampling: SamplingParams,
    max_tokens: int | None,
    stop: tuple[str, ...],
) -> Request:
    n_ctx = res.engine.n_ctx
    if len(prompt) >= n_ctx:
        raise ApiError(
            400,
            f"the prompt has {len(prompt)} tokens; this server's context holds {n_ctx} per "
            "request (with room for at least one token of answer)",
            param="messages",
            code="context_length_exceeded",
        )
    return Request(
        prompt=prompt,
        sampling=sampling,
        max_tokens=max_tokens if max_tokens is not None else -1,
        stop=stop,
        stop_tokens=res.stop_tokens,
    )
