"""Ollama: a Modelfile for a Chinese Llama-3 GGUF, built from the catalog and the file itself.

Why everything is written out: the most reported failure of an imported Llama-3 GGUF in Ollama is
a model that never stops or answers itself (no TEMPLATE, or missing stop tokens). Ollama detects a
template only when the GGUF's Jinja template is within a few characters of one it knows, so the
TEMPLATE and the stops are explicit here, which works on every Ollama version. The quoting rules
are Ollama's parser's (``quoting.py``); ``client.py`` creates the model through the server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, catalog
from ..catalog import LLAMA3_STOPS
from ..errors import InputError, InvalidModelError, Llama3zhError, UsageError
from ..files import atomic, guard, state
from ..gguf.info import GGUFInfo, read_gguf_info
from ..gguf.reader import read_header
from ..hub import store
from .quoting import DEFAULT_PARAMETERS, ParamValue, format_param, parse_param, quote

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
    chat, warnings = _chat_format(path, info, spec, chat=chat, system=system)
    if chat and system is None:
        system = catalog.DEFAULT_SYSTEM_PROMPT
    adapter_path = Path(adapter).expanduser() if adapter is not None else None
    if adapter_path is not None:
        _check_adapter(adapter_path, info)
    num_ctx = spec.n_ctx if spec else min(8192, info.n_ctx_train or 8192)
    title = spec.title if spec else info.name
    return Modelfile(
        title=title,
        from_ref=_ref(path, relative_to),
        adapter_ref=_ref(adapter_path, relative_to) if adapter_path is not None else None,
        template=LLAMA3_OLLAMA_TEMPLATE if chat else COMPLETION_TEMPLATE,
        system=(system or None) if chat else None,
        parameters=_parameters(parsed_params, num_ctx=num_ctx),
        chat=chat,
        header=_header(title, path, info, spec, adapter_path),
        gguf=_absolute(path),
        adapter=_absolute(adapter_path) if adapter_path is not None else None,
        warnings=warnings,
    )


def _chat_format(
    path: Path,
    info: GGUFInfo,
    spec: catalog.ModelSpec | None,
    *,
    chat: bool | None,
    system: str | None,
) -> tuple[bool, tuple[str, ...]]:
    """Whether the Modelfile gets the Llama-3-Instruct template, and warnings for the user.

    ``chat`` None decides from the catalog, else from the GGUF's own chat template.

    Raises:
        InvalidModelError: a chat format the file cannot have (another template, a small vocab).
        UsageError: a system prompt for a completion template.
    """
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
    if chat:
        return True, ()
    if system:
        raise UsageError(
            f"{path.name} gets a plain completion template (a base model): "
            "a system prompt would be ignored",
            hint="leave out --system, or use a chat model such as instruct-v3",
        )
    why = " (it has no chat template)" if guessed else ", not trained to chat"
    return False, (
        f"{spec.alias if spec else path.name} is a base model{why}: the Modelfile has a "
        "plain completion template (--chat forces the Llama-3-Instruct format; "
        "instruct-v3 is the model to chat with)",
    )


def _header(
    title: str,
    path: Path,
    info: GGUFInfo,
    spec: catalog.ModelSpec | None,
    adapter: Path | None,
) -> tuple[str, ...]:
    """The comment lines at the top: what the model and file are, and how to use it."""
    header = [
        f"Ollama Modelfile: {title}",
        f"GGUF: {path.name} ({info.architecture}, {info.n_layer} layers, {info.file_type}, "
        f"{info.size / 2**30:.2f} GiB)",
    ]
    if spec is not None:
        header.append(f"Model: {spec.repo_id()} (Hugging Face)")
    if adapter is not None:
        header.append(f"LoRA adapter: {adapter.name}")
    header += [
        f"Written by llama3zh {__version__}. TEMPLATE and stops are explicit: Ollama detects",
        "a GGUF's chat template only when it is close to one it knows.",
        "Use: ollama create NAME -f Modelfile && ollama run NAME",
    ]
    return tuple(header)


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
    with atomic.replacing(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
        if derived:  # recorded before the rename, so that the next --force may replace it
            path.unlink(missing_ok=True)  # ours (checked by modelfile_path)
            state.record(path, step="modelfile", measure=tmp)
    if path.read_bytes() != text.encode("utf-8"):
        raise Llama3zhError(f"{path} does not hold what was written (disk full?)")
    return path
