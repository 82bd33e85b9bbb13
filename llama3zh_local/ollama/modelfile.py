"""Ollama: a Modelfile for a Chinese Llama-3 GGUF, and ``ollama create`` through the ollama client.

Why everything is written out: the most reported failure of an imported Llama-3 GGUF in Ollama is
a model that never stops or answers itself (no TEMPLATE, or missing stop tokens). Ollama detects a
template only when the GGUF's Jinja template is within a few characters of one it knows, so the
TEMPLATE and the stops are explicit here, which works on every Ollama version.

Quoting follows Ollama's own Modelfile parser (``parser/parser.go``): it has no escape sequences, a
value in ``\"\"\"`` ends at the first line that ends with ``\"\"\"``, and it silently drops
characters that Go's ``strconv.IsPrint`` rejects. Values it cannot read back unchanged are refused
with the reason instead of being written.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__, catalog
from ..chat.conversation import LLAMA3_STOPS
from ..errors import InputError, InvalidModelError, Llama3zhError, OllamaError, UsageError
from ..files import atomic, guard, state
from ..gguf.reader import read_header
from ..hub import store

if TYPE_CHECKING:
    from ..gguf.info import GGUFInfo

# ---------------------------------------------------------------------------------------------
# Facts about Ollama
# ---------------------------------------------------------------------------------------------

# /api/create takes JSON fields (files, template, parameters, ...) since Ollama 0.5.5; before it
# took a Modelfile string and a path that the server itself had to read.
MIN_OLLAMA_VERSION = (0, 5, 5)
OLLAMA_DOWNLOAD = "https://ollama.com/download"

# The Llama-3-Instruct format in Go text/template, executed by Ollama with its chat data:
# .System (the system messages, joined) and .Messages (system, user and assistant turns, the
# system ones included, which this template skips). A user turn that is last gets the assistant
# header to answer after; a last assistant turn is left open so that Ollama continues it.
# It renders exactly what Meta's Jinja template renders for the same messages, minus the leading
# <|begin_of_text|> (Ollama's tokenizer adds BOS itself) and minus Jinja's `| trim` of each
# message (Ollama's template functions have no trim; Ollama's clients send trimmed text).
LLAMA3_OLLAMA_TEMPLATE = """\
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}
{{- if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""

# Base (non-chat) models: the prompt as is, no chat markup.
COMPLETION_TEMPLATE = "{{ .Prompt }}"

# Every special token that can follow an answer in the Llama-3 format: stopping on the headers too
# keeps a model that skipped <|eot_id|> from writing the next turn itself.
OLLAMA_STOPS: tuple[str, ...] = ("<|start_header_id|>", "<|end_header_id|>", *LLAMA3_STOPS)

LLAMA3_N_VOCAB = 128256  # 128,000 BPE tokens + 256 special tokens; the chat format needs them

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

LLAMA3_LICENSE_URL = "https://llama.meta.com/llama3/license/"
LICENSE_TEXT = f"""\
The Llama-3-Chinese-8B models (https://github.com/ymcui/Chinese-LLaMA-Alpaca-3) are derived from
Meta Llama 3. Their use is governed by the META LLAMA 3 COMMUNITY LICENSE AGREEMENT:
{LLAMA3_LICENSE_URL}
Acceptable Use Policy: https://llama.meta.com/llama3/use-policy/
Built with Meta Llama 3."""

# Where `llama3zh pull` puts models when LLAMA3ZH_HOME / XDG_CACHE_HOME are not set
# (paths.models_dir()); Ollama expands "~/" in FROM to the home of the user running `ollama create`.
DEFAULT_STORE_REF = "~/.cache/llama3zh/models"
READY_MODELFILES = ("instruct", "instruct-v2", "instruct-v3")  # the chat models of the catalog


# ---------------------------------------------------------------------------------------------
# Modelfile values: parameters and quoting
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Model names
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The Modelfile
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Modelfile:
    """An Ollama Modelfile for one GGUF: what it says, and the local files it names."""

    title: str  # what the model is, for the header and messages
    from_ref: str  # the FROM argument as written (absolute, relative, or ~/ path)
    template: str
    system: str | None
    parameters: tuple[tuple[str, ParamValue], ...]  # stop holds a tuple of strings
    chat: bool
    license: str = LICENSE_TEXT
    adapter_ref: str | None = None
    header: tuple[str, ...] = ()  # comment lines, without "# "
    gguf: Path | None = None  # the local GGUF (None for the ready Modelfiles of modelfiles/)
    adapter: Path | None = None
    warnings: tuple[str, ...] = ()  # for the user: base model, guessed format

    def commands(self) -> list[tuple[str, str]]:
        """The commands as Ollama's parser returns them: (name, argument), FROM as ``model``."""
        out = [("model", self.from_ref)]
        if self.adapter_ref:
            out.append(("adapter", self.adapter_ref))
        out.append(("template", self.template))
        if self.system:
            out.append(("system", self.system))
        for name, value in self.parameters:
            values = value if isinstance(value, tuple) else (value,)
            out.extend((name, format_param(v)) for v in values)
        out.append(("license", self.license))
        return out

    @property
    def text(self) -> str:
        """The Modelfile, ready to write.

        Raises:
            InputError: a value (the system prompt, a path) Ollama's parser would not read back.
        """
        # a line break in a header (a GGUF's general.name, a file name) would end the comment
        lines = [f"# {' '.join(h.split())}".rstrip() for h in self.header]
        if lines:
            lines.append("")
        for name, arg in self.commands():
            if name == "model":
                lines.append(f"FROM {quote(arg, what='FROM path')}")
            elif name in ("template", "system", "license"):
                lines.append(f"{name.upper()} {quote(arg, what=name.upper(), always=True)}")
            elif name == "adapter":
                lines.append(f"ADAPTER {quote(arg, what='ADAPTER path')}")
            else:
                lines.append(f"PARAMETER {name} {quote(arg, what=f'PARAMETER {name}')}")
        return "\n".join(lines) + "\n"

    def parameters_dict(self) -> dict[str, Any]:
        """The parameters as Ollama's /api/create JSON wants them: typed values, stop a list."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters}


def _parameters(params: Sequence[str], *, num_ctx: int) -> tuple[tuple[str, ParamValue], ...]:
    values: dict[str, ParamValue] = dict(DEFAULT_PARAMETERS)
    values["num_ctx"] = num_ctx
    stops: list[str] = list(OLLAMA_STOPS)
    for text in params:
        name, value = parse_param(text)
        if name == "stop":
            if value not in stops:
                stops.append(str(value))
        else:
            values[name] = value
    return (*values.items(), ("stop", tuple(stops)))


def _spec_of(path: Path, info: GGUFInfo) -> catalog.ModelSpec | None:
    """The catalog model a GGUF file is, by its store folder or its general.name."""
    for candidate in (path.parent.name, info.name):
        try:
            return catalog.get_model(candidate)
        except Llama3zhError:
            continue
    return None


def _absolute(path: Path) -> Path:
    # not resolve(): a symlink's target may be a hash-named blob, and Ollama goes by ".gguf"
    return Path(os.path.abspath(path.expanduser()))


def _ref(path: Path, relative_to: Path | None) -> str:
    """A file as FROM/ADAPTER names it: absolute, or relative to the Modelfile's folder."""
    path = _absolute(path)
    if relative_to is None:
        return str(path)
    try:
        rel = os.path.relpath(path, _absolute(relative_to))
    except ValueError as err:  # another drive on Windows
        raise UsageError(
            f"{path} cannot be named relative to {relative_to} ({err})",
            hint="leave out --relative to write an absolute path",
        ) from err
    return rel if rel.startswith("..") else f".{os.sep}{rel}"


def _check_adapter(adapter: Path, base: GGUFInfo) -> None:
    """Refuse a file that is not a LoRA adapter GGUF for ``base``'s architecture and shape."""
    import gguf

    if not adapter.is_file():
        raise InputError(
            f"no adapter file at {adapter}", hint="give the path of a LoRA adapter .gguf file"
        )
    convert_hint = "convert a PEFT LoRA with llama.cpp's convert_lora_to_gguf.py"
    with adapter.open("rb") as fh:
        magic = fh.read(4)
    # llama.cpp's C reader first: gguf.GGUFReader takes seconds on a full model's vocab
    header = read_header(adapter) if magic == b"GGUF" else None
    if header is None:
        raise InvalidModelError(f"{adapter} is not a readable GGUF file", hint=convert_hint)
    kv = header.kv
    gtype, atype = kv.get(gguf.Keys.General.TYPE), kv.get(gguf.Keys.Adapter.TYPE)
    if gtype != gguf.GGUFType.ADAPTER or atype != "lora":
        raise InvalidModelError(
            f"{adapter} is not a LoRA adapter GGUF (general.type {gtype!r}, adapter.type "
            f"{atype!r})",
            hint=convert_hint,
        )
    arch = kv.get(gguf.Keys.General.ARCHITECTURE)
    if arch != base.architecture:
        raise InvalidModelError(
            f"{adapter.name} is a LoRA for {arch!r} models, "
            f"{base.path.name} is {base.architecture!r}",
            hint="use the adapter with the base model it was trained on",
        )
    # lora_a maps a weight's input, lora_b its output: their model-side sizes must be the base's
    n_in = ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")
    n_out = ("attn_q", "attn_output", "ffn_down")
    for t in header.tensors:
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight\.lora_([ab])", t.name)
        if not m:
            continue
        block, kind, ab = int(m[1]), m[2], m[3]
        dims = [int(d) for d in t.shape]
        wrong_width = (ab == "a" and kind in n_in and dims[0] != base.n_embd) or (
            ab == "b" and kind in n_out and dims[-1] != base.n_embd
        )
        if block >= base.n_layer or wrong_width:
            raise InvalidModelError(
                f"{adapter.name} does not fit {base.path.name}: its tensor {t.name} "
                f"{dims} is for another model ({base.n_layer} layers, {base.n_embd} wide here)",
                hint="use the adapter with the base model it was trained on",
            )


def build_modelfile(
    *,
    model: str,
    quant: str | None = None,
    system: str | None = None,
    params: Sequence[str] = (),
    adapter: str | Path | None = None,
    chat: bool | None = None,
    relative_to: Path | None = None,
) -> Modelfile:
    """The Modelfile for a local GGUF (a path or a pulled alias), after checking the file.

    Args:
        system: the SYSTEM prompt; None for the default (chat models), "" for none.
        params: ``NAME=VALUE`` overrides of the defaults; ``stop=…`` adds a stop string.
        adapter: a LoRA adapter GGUF for this model (ADAPTER).
        chat: force the Llama-3-Instruct template (True) or a completion template (False);
            None decides from the catalog, else from the GGUF's own chat template.
        relative_to: write FROM/ADAPTER relative to this folder (the Modelfile's), not absolute.

    Raises:
        ModelNotFoundError, InvalidModelError: the GGUF or adapter is missing or unusable.
        UsageError, InputError: a parameter or system prompt Ollama would not read back.
    """
    from ..gguf.info import read_gguf_info

    # cheap checks of the user's input first
    parsed_params = list(params)
    for text in parsed_params:
        parse_param(text)
    path = store.resolve_gguf(model, quant=quant)
    info = read_gguf_info(path)
    if info.architecture != "llama":
        raise InvalidModelError(
            f"{path.name} is a {info.architecture!r} model, not a Llama-3 one",
            hint="this Modelfile's template and stops are for the Llama-3 family",
        )
    spec = None if store.looks_like_path(model) else catalog.get_model(model)
    spec = spec or _spec_of(path, info)
    warnings: list[str] = []
    guessed = False
    if chat is None:
        if spec is not None:
            chat = spec.chat
        elif info.chat_template:
            if "<|start_header_id|>" not in info.chat_template:
                raise InvalidModelError(
                    f"{path.name}'s chat template is not the Llama-3-Instruct format",
                    hint="--chat forces the Llama-3 template, --base a plain completion one",
                )
            chat = True
        else:
            chat, guessed = False, True
    if chat and info.n_vocab and info.n_vocab < LLAMA3_N_VOCAB:
        raise InvalidModelError(
            f"{path.name} has {info.n_vocab:,} tokens, not Llama-3's {LLAMA3_N_VOCAB:,}: "
            "its vocabulary lacks the special tokens of the Llama-3 chat format",
            hint="--base writes a plain completion template instead",
        )
    if not chat:
        if system:
            raise UsageError(
                f"{path.name} gets a plain completion template (a base model): "
                "a system prompt would be ignored",
                hint="leave out --system, or use a chat model such as instruct-v3",
            )
        why = " (it has no chat template)" if guessed else ", not trained to chat"
        warnings.append(
            f"{spec.alias if spec else path.name} is a base model{why}: the Modelfile has a "
            "plain completion template (--chat forces the Llama-3-Instruct format; "
            "instruct-v3 is the model to chat with)"
        )
    if chat and system is None:
        system = catalog.DEFAULT_SYSTEM_PROMPT
    adapter_path = Path(adapter).expanduser() if adapter is not None else None
    if adapter_path is not None:
        _check_adapter(adapter_path, info)
    num_ctx = spec.n_ctx if spec else min(8192, info.n_ctx_train or 8192)
    title = spec.title if spec else info.name
    header = [
        f"Ollama Modelfile: {title}",
        f"GGUF: {path.name} ({info.architecture}, {info.n_layer} layers, {info.file_type}, "
        f"{info.size / 2**30:.2f} GiB)",
    ]
    if spec is not None:
        header.append(f"Model: {spec.repo_id()} (Hugging Face)")
    if adapter_path is not None:
        header.append(f"LoRA adapter: {adapter_path.name}")
    header += [
        f"Written by llama3zh {__version__}. TEMPLATE and stops are explicit: Ollama detects",
        "a GGUF's chat template only when it is close to one it knows.",
        "Use: ollama create NAME -f Modelfile && ollama run NAME",
    ]
    return Modelfile(
        title=title,
        from_ref=_ref(path, relative_to),
        adapter_ref=_ref(adapter_path, relative_to) if adapter_path is not None else None,
        template=LLAMA3_OLLAMA_TEMPLATE if chat else COMPLETION_TEMPLATE,
        system=(system or None) if chat else None,
        parameters=_parameters(parsed_params, num_ctx=num_ctx),
        chat=chat,
        header=tuple(header),
        gguf=_absolute(path),
        adapter=_absolute(adapter_path) if adapter_path is not None else None,
        warnings=tuple(warnings),
    )


def ready_modelfile(alias: str) -> Modelfile:
    """The Modelfile of ``modelfiles/`` for a chat model of the catalog, for the default quant.

    FROM is where ``llama3zh pull`` stores the file by default, as a ``~/`` path; no file is read.
    """
    spec = catalog.get_model(alias)
    if not spec.chat:
        raise UsageError(f"{spec.alias} is a base model: modelfiles/ has chat models only")
    quant = catalog.get_quant(catalog.DEFAULT_QUANT)
    repo = spec.repo_id(catalog.Variant.GGUF)
    folder = repo.split("/", 1)[1]
    header = (
        f"Ollama Modelfile: {spec.title}",
        f"Model: {repo} (Hugging Face), file {quant.filename} ({quant.ftype})",
        f"Download it first: llama3zh pull {spec.alias} --quant {quant.short}",
        "FROM is where llama3zh stores it by default; edit FROM if the file is elsewhere.",
        "Generated by llama3zh_local/ollama/modelfile.py (ready_modelfile); a test checks it is "
        "current.",
        f"Use: ollama create llama3-zh-{spec.alias} -f modelfiles/{spec.alias}.Modelfile",
    )
    return Modelfile(
        title=spec.title,
        from_ref=f"{DEFAULT_STORE_REF}/{folder}/{quant.filename}",
        template=LLAMA3_OLLAMA_TEMPLATE,
        system=catalog.DEFAULT_SYSTEM_PROMPT,
        parameters=_parameters((), num_ctx=spec.n_ctx),
        chat=True,
        header=header,
    )


def write_ready_modelfiles(directory: str | Path) -> list[Path]:
    """Write ``<alias>.Modelfile`` for every chat model into ``directory`` (``modelfiles/``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [
        write_modelfile(ready_modelfile(a), path=directory / f"{a}.Modelfile", force=True)
        for a in READY_MODELFILES
    ]


def modelfile_path(output: str | Path, *, force: bool = False) -> Path:
    """Where ``-o output`` writes: the path itself, or ``output/Modelfile`` for a folder.

    Raises:
        UsageError: the file exists and ``force`` is not set.
    """
    path = Path(output).expanduser()
    named = not path.is_dir()
    if not named:
        path = path / "Modelfile"
    if path.exists() and not force:
        raise UsageError(
            f"{path} already exists",
            hint="delete it, pass --force to replace it, or choose another -o path",
        )
    if path.exists() and not named and not guard.owned_file(path):
        # -o FOLDER: its Modelfile is replaced only when llama3zh wrote (and recorded) it
        raise UsageError(
            f"{path} already exists and llama3zh did not write it",
            hint=f"name it to replace it: -o {path} --force (or choose another -o)",
        )
    guard.check_replaceable(path)
    return path


def write_modelfile(modelfile: Modelfile, *, path: str | Path, force: bool = False) -> Path:
    """Write ``modelfile`` to ``path`` through a temporary file, and check what landed.

    Raises:
        UsageError: ``path`` exists and ``force`` is not set.
    """
    derived = Path(path).expanduser().is_dir()
    path = modelfile_path(path, force=force)
    guard.check_not_input(path, [p for p in (modelfile.gguf, modelfile.adapter) if p is not None])
    text = modelfile.text
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.sweep(path)
    tmp = atomic.temp_path(path)
    try:
        tmp.write_bytes(text.encode("utf-8"))
        if derived:  # recorded before the rename, so that the next --force may replace it
            path.unlink(missing_ok=True)  # ours (checked by modelfile_path)
            state.record(path, step="modelfile", measure=tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    if path.read_bytes() != text.encode("utf-8"):
        raise Llama3zhError(f"{path} does not hold what was written (disk full?)")
    return path


# ---------------------------------------------------------------------------------------------
# ollama create
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateProgress:
    """One step of ``ollama_create``: hashing, uploading, or a status line of the server."""

    stage: str  # "hash", "upload", "create"
    message: str
    completed: int | None = None
    total: int | None = None


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
    progress: Callable[[CreateProgress], None] | None = None,
) -> OllamaCreateResult:
    """Create model ``name`` in Ollama from ``modelfile``'s GGUF through the ollama client.

    Uploads the GGUF (and adapter) as blobs unless the server has them, then calls the create
    API with the template, system prompt, parameters and license.

    Args:
        host: the Ollama server; None for ``$OLLAMA_HOST``, else ``127.0.0.1:11434``.

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
    import httpx

    report = progress or (lambda _p: None)

    def bad_address(where: str, err: ValueError) -> UsageError:
        return UsageError(
            f"{where} is not a server address ({err})",
            hint="give HOST[:PORT] or http://HOST:PORT, e.g. 127.0.0.1:11434",
        )

    try:
        import ollama  # it makes a default client from $OLLAMA_HOST on import
    except ValueError as err:  # a malformed address: a bad port, an unclosed [IPv6 bracket
        raise bad_address(f"OLLAMA_HOST {os.environ.get('OLLAMA_HOST', '')!r}", err) from None
    try:
        client = ollama.Client(host=host)
    except ValueError as err:
        where = f"--host {host!r}" if host is not None else "OLLAMA_HOST"
        raise bad_address(where, err) from None
    # The client has no version or blob-exists call; its httpx client carries the resolved host
    # (OLLAMA_HOST), headers and auth, so these two requests go exactly where the others go.
    http: httpx.Client = client._client
    base = str(http.base_url).rstrip("/")
    local = [("files", modelfile.gguf)]
    if modelfile.adapter is not None:
        local.append(("adapters", modelfile.adapter))
    try:
        version = _server_version(http, base)
        pushed = [(k, p.name, *_push_blob(client, http, p, report)) for k, p in local]
        report(CreateProgress("create", f"creating {name}"))
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
            report(CreateProgress("create", last, part.completed, part.total))
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
    client: Any, http: Any, path: Path, report: Callable[[CreateProgress], None]
) -> tuple[str, bool]:
    """Upload ``path`` as a blob unless the server has it already: (digest, uploaded)."""
    size = path.stat().st_size
    digest = sha256_digest(
        path,
        progress=lambda done, total: report(
            CreateProgress("hash", f"checking {path.name}", done, total)
        ),
    )
    if http.head(f"/api/blobs/{digest}", timeout=30).status_code == 200:
        report(CreateProgress("upload", f"{path.name} is on the server already", size, size))
        return digest, False
    report(CreateProgress("upload", f"uploading {path.name}", 0, size))
    sent = client.create_blob(path)
    if sent != digest:
        raise OllamaError(
            f"{path} changed while it was uploaded ({digest} before, {sent} after)",
            hint="wait until whatever writes the file is done, then retry",
        )
    report(CreateProgress("upload", f"uploaded {path.name}", size, size))
    return digest, True
