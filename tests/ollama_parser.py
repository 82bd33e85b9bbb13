"""A Modelfile parser that follows Ollama's parser/parser.go rule for rule (tests only).

A port of ``ParseFile`` (its state machine, ``unquote`` and the ``strconv.IsPrint`` filter), of
the PARAMETER typing of ``api.FormatParams`` and of ``Modelfile.CreateRequest`` for the fields a
GGUF import uses. It is written from upstream's source, not from llama3zh's code, so that the
golden tests compare two independent readings of the grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

NIL, NAME, VALUE, PARAMETER, MESSAGE, COMMENT = range(6)

COMMANDS = {
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
}

# api/types.go Options + Runner (current upstream): JSON name -> Go kind.
OPTIONS: dict[str, str] = {
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "*bool",
    "num_thread": "int",
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float32",
    "min_p": "float32",
    "typical_p": "float32",
    "repeat_last_n": "int",
    "temperature": "float32",
    "repeat_penalty": "float32",
    "presence_penalty": "float32",
    "frequency_penalty": "float32",
    "stop": "[]string",
}
DEPRECATED = {
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
}


class ParserError(ValueError):
    pass


@dataclass(frozen=True)
class Command:
    name: str
    args: str


def _is_alpha(r: str) -> bool:
    return "a" <= r <= "z" or "A" <= r <= "Z"


def _is_space(r: str) -> bool:
    return r in (" ", "\t")


def _is_newline(r: str) -> bool:
    return r in ("\r", "\n")


def _is_print(r: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space."""
    return r == " " or r.isprintable()


def _go_trim_space(s: str) -> str:
    # unicode.IsSpace: \t \n \v \f \r, space, U+0085, U+00A0 and the Z categories
    return s.strip(
        " \t\n\v\f\r\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
        "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
    )


def unquote(s: str) -> tuple[str, bool]:
    if s[:3] == '"""':
        if len(s) >= 6 and s[-3:] == '"""':
            return s[3:-3], True
        return "", False
    if s[:1] == '"':
        if len(s) >= 2 and s[-1] == '"':
            return s[1:-1], True
        return "", False
    return s, True


def _next_state(r: str, cs: int) -> tuple[int, str | None]:
    """parseRuneForState: (next state, rune to buffer or None)."""
    if cs == NIL:
        if r == "#":
            return COMMENT, None
        if _is_space(r) or _is_newline(r):
            return NIL, None
        return NAME, r
    if cs == NAME:
        if _is_alpha(r):
            return NAME, r
        if _is_space(r):
            return VALUE, None
        raise ParserError("command must be one of " + ", ".join(sorted(COMMANDS)))
    if cs == VALUE:
        if _is_newline(r) or _is_space(r):
            return NIL, r
        return VALUE, r
    if cs == PARAMETER:
        if _is_alpha(r) or "0" <= r <= "9" or r == "_":
            return PARAMETER, r
        if _is_space(r):
            return VALUE, None
        raise ParserError("unexpected EOF")
    if cs == MESSAGE:
        if _is_alpha(r):
            return MESSAGE, r
        if _is_space(r):
            return VALUE, None
        raise ParserError("unexpected EOF")
    if cs == COMMENT:
        return (NIL, None) if _is_newline(r) else (COMMENT, None)
    raise ParserError("")


def parse(text: str) -> list[Command]:
    """ParseFile: the commands of a Modelfile, FROM as ``model``, PARAMETER by its own name."""
    text = text.removeprefix("\ufeff")
    commands: list[Command] = []
    name = ""
    role = ""
    curr = NIL
    buf: list[str] = []
    line = 1
    for r in text:
        if _is_newline(r):
            line += 1
        try:
            nxt, out = _next_state(r, curr)
        except ParserError as err:
            raise ParserError(f"(line {line}): {err}") from None
        if nxt != curr:
            word = "".join(buf)
            if curr == NAME:
                if word.lower() not in COMMANDS:
                    raise ParserError(f"(line {line}): invalid command {word!r}")
                low = word.lower()
                if low == "from":
                    name = "model"
                elif low == "parameter":
                    nxt = PARAMETER
                elif low == "message":
                    nxt = MESSAGE
                    name = low
                else:
                    name = low
            elif curr == PARAMETER:
                name = word
            elif curr == MESSAGE:
                if word not in ("system", "user", "assistant"):
                    raise ParserError(f"(line {line}): invalid message role {word!r}")
                role = word
            elif curr == VALUE:
                s, ok = unquote(_go_trim_space(word))
                if not ok or _is_space(r):
                    buf.append(r)
                    continue
                if role:
                    s, role = f"{role}: {s}", ""
                commands.append(Command(name, s))
            buf = []
            curr = nxt
        if out is not None and _is_print(out):
            buf.append(out)
    if curr == VALUE:
        s, ok = unquote(_go_trim_space("".join(buf)))
        if not ok:
            raise ParserError("unexpected EOF")
        if role:
            s = f"{role}: {s}"
        commands.append(Command(name, s))
    elif curr not in (NIL, COMMENT):
        raise ParserError("unexpected EOF")
    if not any(c.name == "model" for c in commands):
        raise ParserError("no FROM line")
    return commands


def format_param(name: str, value: str) -> Any:
    """api.FormatParams for one value: the typed value Ollama sends, or ParserError."""
    kind = OPTIONS.get(name)
    if kind is None:
        raise ParserError(f"unknown parameter '{name}'")
    if kind == "float32":
        if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value):
            raise ParserError(f"invalid float value [{value}]")
        if abs(float(value)) > 3.4028234663852886e38:  # ParseFloat(s, 32): ErrRange
            raise ParserError(f"invalid float value [{value}]")
        return float(value)
    if kind == "int":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise ParserError(f"invalid int value [{value}]")
        return int(value)
    if kind == "*bool":
        table = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
        table |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False}
        table |= {"False": False}
        if value not in table:
            raise ParserError(f"invalid bool value [{value}]")
        return table[value]
    return [value]


def create_request(commands: list[Command]) -> dict[str, Any]:
    """Modelfile.CreateRequest minus the file hashing: what `ollama create` sends for these."""
    req: dict[str, Any] = {}
    params: dict[str, Any] = {}
    licenses: list[str] = []
    for c in commands:
        if c.name == "model":
            req["from_path"] = c.args
        elif c.name == "adapter":
            req["adapter_path"] = c.args
        elif c.name in ("template", "system"):
            req[c.name] = c.args
        elif c.name == "license":
            licenses.append(c.args)
        elif c.name in DEPRECATED:
            continue
        elif c.name in ("message", "renderer", "parser", "requires", "draft"):
            req.setdefault(c.name, []).append(c.args)
        else:
            value = format_param(c.name, c.args)
            if isinstance(value, list):
                params[c.name] = [*params.get(c.name, []), *value]
            else:
                params[c.name] = value
    if params:
        req["parameters"] = params
    if licenses:
        req["license"] = licenses
    return req
