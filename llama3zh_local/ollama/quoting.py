"""Ollama's rules for what a Modelfile may say: parameter names and types, quoting, model names.

Quoting follows Ollama's own Modelfile parser (``parser/parser.go``): it has no escape sequences, a
value in ``\"\"\"`` ends at the first line that ends with ``\"\"\"``, and it silently drops
characters that Go's ``strconv.IsPrint`` rejects. Values it cannot read back unchanged are refused
with the reason instead of being written.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping

from ..errors import InputError, UsageError

# The upstream project's Ollama settings (Chinese-LLaMA-Alpaca-3 wiki), in PARAMETER order.
# num_keep: upstream keeps the first 24 tokens (BOS, the system header and the default system
# prompt) when Ollama shifts a full context. Current Ollama still has it: api/types.go Options
# has NumKeep (`json:"num_keep"`, DefaultOptions sets 4 "to avoid issues on context shifts"), and
# the runner honours it on a context shift, so it stays.
DEFAULT_PARAMETERS: tuple[tuple[str, int | float], ...] = (
    ("temperature", 0.2),
    ("top_p", 0.9),
    ("top_k", 40),
    ("repeat_penalty", 1.1),
    ("num_ctx", 8192),
    ("num_keep", 24),
)

ParamValue = int | float | bool | str | tuple[str, ...]

# Mirrors Ollama's api/types.go `Options` (with its embedded `Runner`): every JSON name Ollama
# accepts in PARAMETER, with the Go kind FormatParams parses it as. Names are case-sensitive there
# too. Update this table (and the parity test) when upstream adds or removes an option.
OLLAMA_OPTION_TYPES: Mapping[str, type] = {
    # Runner: set when the model is loaded
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    # predict options
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}
# Mirrors parser/parser.go `deprecatedParameters`: `ollama create` drops them with a warning.
OLLAMA_DEPRECATED_PARAMETERS = frozenset(
    {
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
)


_INT_RE = re.compile(r"[+-]?[0-9]+")  # strconv.ParseInt(s, 10, 64)
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # decimal only
_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_GO_BOOLS |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_FLOAT32_MAX = 3.4028234663852886e38


def parse_param(text: str) -> tuple[str, ParamValue]:
    """``NAME=VALUE`` as Ollama types it: ``("num_ctx", 4096)``; ``stop`` gives a str.

    Raises:
        UsageError: no ``=``, an unknown or deprecated name, or a value of the wrong type.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UsageError(
            f"--param {text!r} is not NAME=VALUE",
            hint="for example: --param num_ctx=4096 --param temperature=0.7",
        )
    return name, check_param(name, value)


def check_param(name: str, value: str) -> ParamValue:
    """The typed value of Ollama parameter ``name`` written as ``value`` (as FormatParams does).

    Raises:
        UsageError: an unknown or deprecated name, or a value Ollama would not parse.
    """
    if name in OLLAMA_DEPRECATED_PARAMETERS:
        raise UsageError(
            f"parameter {name!r} is deprecated in Ollama: `ollama create` ignores it",
            hint="leave it out (Ollama's parameters: " + ", ".join(OLLAMA_OPTION_TYPES) + ")",
        )
    kind = OLLAMA_OPTION_TYPES.get(name)
    if kind is None:
        close = difflib.get_close_matches(name.lower(), list(OLLAMA_OPTION_TYPES), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(
            f"unknown Ollama parameter {name!r} (names are case-sensitive)",
            hint=hint + "Ollama's parameters: " + ", ".join(OLLAMA_OPTION_TYPES),
        )
    if kind is list:
        if not value:
            raise UsageError(
                f"parameter {name} needs a value", hint=f"for example: {name}='<|im_end|>'"
            )
        return value
    if kind is int:
        if not _INT_RE.fullmatch(value) or not -(2**63) <= int(value) < 2**63:
            raise UsageError(
                f"parameter {name} must be a whole number, not {value!r}",
                hint=f"for example {name}={dict(DEFAULT_PARAMETERS).get(name, 4096)}",
            )
        return int(value)
    if kind is float:
        if not _FLOAT_RE.fullmatch(value) or abs(float(value)) > _FLOAT32_MAX:
            raise UsageError(
                f"parameter {name} must be a decimal number, not {value!r}",
                hint=f"for example {name}={dict(DEFAULT_PARAMETERS).get(name, 0.5)}",
            )
        return float(value)
    if value not in _GO_BOOLS:
        raise UsageError(
            f"parameter {name} must be true or false, not {value!r}",
            hint=f"for example {name}=false (Go's 1, t, T, TRUE, true, True and their opposites)",
        )
    return _GO_BOOLS[value]


def format_param(value: ParamValue) -> str:
    """A typed parameter value as Modelfile text that Ollama parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        raise TypeError("one PARAMETER line per stop value")
    return value


def _unprintable(value: str) -> str | None:
    """The first character Ollama's parser would drop (not Go-printable, not space/tab/newline)."""
    for ch in value:
        if not (ch.isprintable() or ch in " \t\n\r"):
            name = unicodedata.name(ch, "a control character")
            return f"U+{ord(ch):04X} ({name})"
    return None


def _closes_early(value: str) -> int | None:
    """The line at which a ``\"\"\"``-quoted ``value`` would end too soon, if one would.

    Ollama's parser checks the buffer at every line break: when it (trimmed) starts and ends
    with ``\"\"\"`` and is at least 6 characters long, the value ends there.
    """
    for line, match in enumerate(re.finditer(r"[\r\n]", value), start=1):
        buffered = ('"""' + value[: match.start()]).strip(" \t\r\n")
        if len(buffered) >= 6 and buffered.endswith('"""'):
            return line
    return None


def quote(value: str, *, what: str, always: bool = False) -> str:
    """``value`` as a Modelfile argument that Ollama's parser reads back unchanged.

    Plain when it can be (one line, no outer blanks, no leading quote), else in ``\"\"\"``; with
    ``always``, in ``\"\"\"`` whenever possible.

    Raises:
        InputError: a character the parser drops, or a line ending in ``\"\"\"`` (no escapes).
    """
    bad = _unprintable(value)
    if bad:
        raise InputError(
            f"the {what} contains {bad}, which Ollama's Modelfile parser silently drops",
            hint="remove that character (write plain spaces and line breaks only)",
        )
    plain = (
        value
        and value == value.strip(" \t")
        and not re.search(r"[\r\n]", value)
        and not value.startswith('"')
    )
    if plain and not always:
        return value
    line = _closes_early(value)
    if line is not None:
        raise InputError(
            f'line {line} of the {what} ends with """, which ends a quoted Modelfile value '
            "early (Ollama's parser has no escape sequences)",
            hint='add a character after that """ (a period, say) or break the line elsewhere',
        )
    return f'"""{value}"""'


_NAME_PART = re.compile(r"[A-Za-z0-9_.-]+")


def check_ollama_name(name: str) -> str:
    """``name`` when Ollama accepts it as a new model's name (``[host/][namespace/]model[:tag]``).

    Mirrors Ollama's types/model/name.go ParseName: at most 128 characters, parts of letters,
    digits, ``_``, ``-`` and ``.`` (none in the namespace, never ``..``).

    Raises:
        UsageError: the name Ollama would refuse, with the reason.
    """

    def bad(why: str) -> UsageError:
        return UsageError(
            f"{name!r} is not a valid Ollama model name: {why}",
            hint="use letters, digits, '-', '_' and '.', with an optional :tag, "
            "e.g. llama3-zh or llama3-zh:8b-q4_k",
        )

    s = name.removeprefix("http://") if name.startswith("http://") else name
    s = s.removeprefix("https://")
    if not s:
        raise bad("it is empty")
    if len(s) > 128:
        raise bad(f"it has {len(s)} characters, more than 128")
    if "@" in s or "+" in s:
        raise bad("a new model's name has no @digest or +build part")
    if ".." in s:
        raise bad("it contains '..'")
    parts = s.split("/")
    if len(parts) > 3:
        raise bad("it has more than host/namespace/model")
    model, colon, tag = parts[-1].partition(":")
    if any(":" in p for p in parts[:-1]) or ":" in tag:
        raise bad("':' may only separate the model from its tag (no host port)")
    named = [*parts[:-1], model] + ([tag] if colon else [])
    for part in named:
        if not part:
            raise bad("a part of it is empty")
        if not _NAME_PART.fullmatch(part):
            wrong = next(c for c in part if not _NAME_PART.fullmatch(c))
            raise bad(f"{wrong!r} is not allowed")
    if len(parts) >= 2 and "." in parts[-2]:
        raise bad("the namespace (before the last '/') may not contain '.'")
    return name
