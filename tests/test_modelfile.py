"""Ollama: Modelfile text (golden, parsed the way Ollama parses it), the TEMPLATE executed by Go's
text/template against Meta's Jinja template, modelfiles/ drift, and ollama-create on a fake server.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import gguf
import jinja2
import numpy as np
import pytest
from typer.testing import CliRunner

from llama3zh_local import catalog, paths
from llama3zh_local.chat.template import llama3_template
from llama3zh_local.cli import app
from llama3zh_local.errors import InputError, InvalidModelError, OllamaError, UsageError
from llama3zh_local.ollama.client import ollama_create
from llama3zh_local.ollama.modelfile import (
    COMPLETION_TEMPLATE,
    DEFAULT_STORE_REF,
    LLAMA3_OLLAMA_TEMPLATE,
    OLLAMA_STOPS,
    build_modelfile,
    ready_modelfile,
    write_ready_modelfiles,
)
from llama3zh_local.ollama.quoting import (
    OLLAMA_DEPRECATED_PARAMETERS,
    OLLAMA_OPTION_TYPES,
    check_ollama_name,
    check_param,
    parse_param,
    quote,
)
from llama3zh_local.progress import Event

from . import ollama_parser
from .fake_ollama import FakeOllama
from .test_cli import assert_one_line_error, run

REPO = Path(__file__).resolve().parent.parent
GOTEMPLATE_SRC = Path(__file__).resolve().parent / "gotemplate"
runner = CliRunner()

SYSTEM = catalog.DEFAULT_SYSTEM_PROMPT
THREE_TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "你好，请介绍一下北京。"},
    {"role": "assistant", "content": "北京是中华人民共和国的首都，有三千多年的历史。"},
    {"role": "user", "content": 'What about Shanghai? Answer in "English".\n\nBe brief.'},
    {"role": "assistant", "content": "Shanghai is China's largest city {{ .System }}."},
    {"role": "user", "content": "谢谢！Which one is older?"},
]
EXPECTED_PARAMETERS = {
    "temperature": 0.2,
    "top_p": 0.9,
    "top_k": 40,
    "repeat_penalty": 1.1,
    "num_ctx": 8192,
    "num_keep": 24,
    "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"],
}


# ---------------------------------------------------------------------------------------------
# GGUF files for the tests
# ---------------------------------------------------------------------------------------------


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str = "Tiny Llama-3",
    chat_template: str | None = None,
    n_vocab: int = 128256,
    n_embd: int = 64,
    n_layer: int = 2,
) -> Path:
    """A small GGUF with a model's header keys (llama3zh's header check reads them)."""
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_context_length(8192)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_lora(path: Path, *, arch: str = "llama", n_embd: int = 64, rank: int = 4) -> Path:
    """A LoRA adapter GGUF as llama.cpp's convert_lora_to_gguf.py writes one."""
    w = gguf.GGUFWriter(path, arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 16.0)
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_a", np.zeros((rank, n_embd), np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight.lora_b", np.zeros((n_embd, rank), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ggufs")
    return {
        "chat": write_gguf(d / "chat.gguf", chat_template=llama3_template()),
        "base": write_gguf(d / "base.gguf", name="some base model"),
        "chatml": write_gguf(
            d / "chatml.gguf",
            chat_template="{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}",
        ),
        "small_vocab": write_gguf(d / "small.gguf", n_vocab=1000),
        "qwen": write_gguf(d / "qwen.gguf", arch="qwen2"),
        "lora": write_lora(d / "lora.gguf"),
        "lora_wide": write_lora(d / "lora-wide.gguf", n_embd=128),
        "lora_qwen": write_lora(d / "lora-qwen.gguf", arch="qwen2"),
    }


# ---------------------------------------------------------------------------------------------
# Parameters, quoting and names: table-driven
# ---------------------------------------------------------------------------------------------


def test_option_table_mirrors_upstream() -> None:
    """llama3zh's copy of Ollama's Options equals the test parser's (both from api/types.go)."""
    kinds = {int: "int", float: "float32", bool: "*bool", list: "[]string"}
    assert {k: kinds[v] for k, v in OLLAMA_OPTION_TYPES.items()} == ollama_parser.OPTIONS
    assert set(OLLAMA_DEPRECATED_PARAMETERS) == ollama_parser.DEPRECATED
    assert "num_keep" in OLLAMA_OPTION_TYPES  # the upstream default stays valid


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("num_ctx", "4096", 4096),
        ("num_ctx", "+4096", 4096),
        ("seed", "-1", -1),
        ("temperature", "0.7", 0.7),
        ("temperature", "1", 1.0),
        ("temperature", "1e-3", 0.001),
        ("top_p", ".95", 0.95),
        ("min_p", "0.05", 0.05),
        ("use_mmap", "false", False),
        ("use_mmap", "T", True),
        ("stop", "<|im_end|>", "<|im_end|>"),
        ("stop", "User:", "User:"),
    ],
)
def test_param_typed_like_ollama(name: str, value: str, expected: Any) -> None:
    got = check_param(name, value)
    assert got == expected and type(got) is type(expected)
    # the test parser's FormatParams agrees
    upstream = ollama_parser.format_param(name, value)
    assert (upstream[0] if isinstance(upstream, list) else upstream) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("num_ctx=4096.0", "whole number"),
        ("num_ctx=4k", "whole number"),
        ("num_ctx=0x10", "whole number"),
        ("top_k=1e3", "whole number"),
        ("temperature=abc", "decimal number"),
        ("temperature=nan", "decimal number"),
        ("temperature=inf", "decimal number"),
        ("temperature=1e39", "decimal number"),
        ("use_mmap=yes", "true or false"),
        ("Temperature=0.5", "case-sensitive"),
        ("tfs_z=1", "unknown Ollama parameter"),
        ("mirostat=1", "deprecated"),
        ("penalize_newline=true", "deprecated"),
        ("num_ctx", "NAME=VALUE"),
        ("=3", "NAME=VALUE"),
        ("stop=", "needs a value"),
    ],
)
def test_param_refused(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as info:
        parse_param(text)
    assert info.value.hint
    name, _, value = text.partition("=")
    if name and value and name in ollama_parser.OPTIONS:
        with pytest.raises(ollama_parser.ParserError):
            ollama_parser.format_param(name, value)


def test_unknown_param_suggests_the_right_case() -> None:
    with pytest.raises(UsageError) as info:
        parse_param("Temperature=0.5")
    assert info.value.hint and info.value.hint.startswith("did you mean temperature?")


def roundtrip(value: str, *, always: bool = True) -> str:
    """What Ollama's parser reads back from ``SYSTEM <quoted value>``."""
    commands = ollama_parser.parse(
        f"FROM ./m.gguf\nSYSTEM {quote(value, what='x', always=always)}\n"
    )
    assert [c.name for c in commands] == ["model", "system"]
    return commands[1].args


@pytest.mark.parametrize(
    "value",
    [
        SYSTEM,
        "  leading and trailing blanks  ",
        "\tTabbed\t",
        "line one\nline two\n\n",
        '"starts with a quote',
        'ends with three quotes"""',
        'a """ in the middle\nof two lines',
        '"""',
        '""',
        "two\r\nline endings",
        "你好\n世界",
        "",
    ],
)
def test_quoted_values_round_trip(value: str) -> None:
    assert roundtrip(value) == value
    if value:
        assert roundtrip(value, always=False) == value


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('first line ends """\nsecond', 'line 1 of the x ends with """'),
        ('a\nb"""   \nc', 'line 2 of the x ends with """'),
        ("full-width\u3000space", "U+3000"),
        ("zero\u200dwidth joiner", "U+200D"),
        ("bell\x07", "U+0007"),
        ("nbsp\u00a0", "U+00A0"),
    ],
)
def test_unquotable_values_refused(value: str, needle: str) -> None:
    with pytest.raises(InputError, match=re.escape(needle)) as info:
        quote(value, what="x", always=True)
    assert info.value.hint


def test_quote_agrees_with_the_parser_on_every_short_string() -> None:
    """Exhaustive over a hostile alphabet: quote() refuses exactly what would not round-trip."""
    alphabet = ['"', "\n", " ", "a"]
    for n in range(1, 8):
        for chars in itertools.product(alphabet, repeat=n):
            value = "".join(chars)
            try:
                quoted = quote(value, what="x")
            except InputError:
                text = f'FROM m\nSYSTEM """{value}"""\n'
                try:
                    got = [c.args for c in ollama_parser.parse(text) if c.name == "system"]
                except ollama_parser.ParserError:
                    continue
                assert got != [value], repr(value)
                continue
            got = [c.args for c in ollama_parser.parse(f"FROM m\nSYSTEM {quoted}\n")]
            assert got[1:] == [value], repr(value)


@pytest.mark.parametrize(
    "name",
    [
        "llama3-zh",
        "llama3-zh:q4_k-im",
        "Llama3_zh.v3",
        "user/llama3-zh:8b",
        "registry.example.com/user/llama3-zh:latest",
        "x" * 128,
    ],
)
def test_valid_ollama_names(name: str) -> None:
    assert check_ollama_name(name) == name


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("", "empty"),
        ("llama 3", "' ' is not allowed"),
        ("中文模型", "is not allowed"),
        ("llama3:", "empty"),
        (":tag", "empty"),
        ("a..b", "'..'"),
        ("user.name/model", "namespace"),
        ("localhost:5000/user/model", "no host port"),
        ("a:b:c", "no host port"),
        ("h/n/m/x", "more than host/namespace/model"),
        ("model@sha256-" + "0" * 64, "@digest"),
        ("model:tag+Q4_0", "+build"),
        ("x" * 129, "more than 128"),
    ],
)
def test_invalid_ollama_names(name: str, needle: str) -> None:
    with pytest.raises(UsageError, match=re.escape(needle)):
        check_ollama_name(name)


# ---------------------------------------------------------------------------------------------
# The TEMPLATE: Go text/template (as Ollama runs it) against Meta's Jinja template
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gotemplate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/gotemplate built with the local Go toolchain (Debian: apt-get install golang-go)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (Debian/Ubuntu: apt-get install golang-go)")
    d = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GOCACHE": str(d / "cache"),
        "GOPATH": str(d / "gopath"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    exe = d / "gotemplate"
    subprocess.run(
        [go, "build", "-o", str(exe), "."],
        cwd=GOTEMPLATE_SRC,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return exe


def ollama_data(messages: list[dict[str, str]]) -> dict[str, Any]:
    """Ollama's chat data (template.go collate): system messages joined into .System and kept in
    .Messages, consecutive messages of one role merged."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    collated: list[dict[str, str]] = []
    for m in messages:
        if collated and collated[-1]["role"] == m["role"]:
            collated[-1] = {
                **collated[-1],
                "content": collated[-1]["content"] + "\n\n" + m["content"],
            }
        else:
            collated.append(dict(m))
    return {"system": system, "messages": collated}


def execute_go(exe: Path, template: str, data: dict[str, Any]) -> str:
    proc = subprocess.run(
        [str(exe)],
        input=json.dumps({"template": template, **data}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render_jinja(messages: list[dict[str, str]]) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(llama3_template()).render(
        messages=messages, bos_token="<|begin_of_text|>", add_generation_prompt=True
    )
    assert text.startswith("<|begin_of_text|>")
    return text.removeprefix("<|begin_of_text|>")  # Ollama's tokenizer adds BOS


def parsed_template() -> str:
    """The TEMPLATE as Ollama reads it back from the ready instruct-v3 Modelfile."""
    commands = ollama_parser.parse(ready_modelfile("instruct-v3").text)
    (template,) = [c.args for c in commands if c.name == "template"]
    return template


@pytest.mark.parametrize(
    "messages",
    [
        THREE_TURNS,
        THREE_TURNS[1:],  # no system prompt
        THREE_TURNS[:2],  # system + one question
        [{"role": "user", "content": "只有一个问题"}],
        [{"role": "system", "content": "多行\n系统提示"}, *THREE_TURNS[1:4]],
    ],
    ids=["3-turns-system", "3-turns", "1-turn-system", "1-turn", "multiline-system"],
)
def test_go_template_equals_jinja(gotemplate: Path, messages: list[dict[str, str]]) -> None:
    template = parsed_template()
    assert template == LLAMA3_OLLAMA_TEMPLATE
    assert execute_go(gotemplate, template, ollama_data(messages)) == render_jinja(messages)


def test_go_template_three_turns_exact_text(gotemplate: Path) -> None:
    got = execute_go(gotemplate, parsed_template(), ollama_data(THREE_TURNS))
    assert got.startswith(f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>")
    assert got.count("<|start_header_id|>user<|end_header_id|>\n\n") == 3
    assert got.count("<|eot_id|>") == 6
    assert got.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "{{ .System }}" in got  # message text is data, never template code


def test_go_template_continues_a_last_assistant_turn(gotemplate: Path) -> None:
    """Like Ollama's own Llama-3 templates: a last assistant message is left open (prefill)."""
    got = execute_go(gotemplate, parsed_template(), ollama_data(THREE_TURNS[:3]))
    assert got.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n" + THREE_TURNS[2]["content"]
    )


def test_completion_template(gotemplate: Path) -> None:
    data = {"prompt": "从前有座山，", "system": "", "messages": []}
    assert execute_go(gotemplate, COMPLETION_TEMPLATE, data) == "从前有座山，"


# ---------------------------------------------------------------------------------------------
# Golden Modelfiles and modelfiles/
# ---------------------------------------------------------------------------------------------


def test_golden_instruct_v3_parses_and_round_trips() -> None:
    mf = ready_modelfile("instruct-v3")
    commands = ollama_parser.parse(mf.text)
    assert [(c.name, c.args) for c in commands] == mf.commands()
    assert [c.name for c in commands][:3] == ["model", "template", "system"]
    assert commands[0].args == (
        "~/.cache/llama3zh/models/llama-3-chinese-8b-instruct-v3-gguf/ggml-model-q4_k.gguf"
    )
    req = ollama_parser.create_request(commands)
    assert req["template"] == LLAMA3_OLLAMA_TEMPLATE
    assert req["system"] == SYSTEM
    assert req["parameters"] == EXPECTED_PARAMETERS
    assert req["parameters"] == mf.parameters_dict()
    assert [type(v) for v in req["parameters"].values()] == [
        float,
        float,
        int,
        float,
        int,
        int,
        list,
    ]
    assert req["license"] == [mf.license] and "llama.meta.com/llama3/license" in mf.license
    assert tuple(req["parameters"]["stop"]) == OLLAMA_STOPS


def test_modelfiles_dir_is_regenerated_byte_identically(tmp_path: Path) -> None:
    written = write_ready_modelfiles(tmp_path)
    repo_dir = REPO / "modelfiles"
    names = sorted(p.name for p in written)
    assert names == ["instruct-v2.Modelfile", "instruct-v3.Modelfile", "instruct.Modelfile"]
    assert sorted(p.name for p in repo_dir.glob("*.Modelfile")) == names
    regen = (
        "python -c 'from llama3zh_local.ollama.modelfile import write_ready_modelfiles; "
        'write_ready_modelfiles("modelfiles")\''
    )
    for p in written:
        assert (repo_dir / p.name).read_bytes() == p.read_bytes(), f"{p.name} drifted: {regen}"
    readme = (repo_dir / "README.md").read_text(encoding="utf-8")
    for p in written:
        assert f"modelfiles/{p.name}" in readme


def test_ready_modelfiles_are_for_chat_models_only() -> None:
    chat_aliases = tuple(m.alias for m in catalog.MODELS if m.chat)
    from llama3zh_local.ollama.modelfile import READY_MODELFILES

    assert READY_MODELFILES == chat_aliases
    with pytest.raises(UsageError):
        ready_modelfile("base")


def test_store_ref_is_the_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA3ZH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert Path(DEFAULT_STORE_REF).expanduser() == paths.models_dir()


# ---------------------------------------------------------------------------------------------
# build_modelfile on GGUF files
# ---------------------------------------------------------------------------------------------


def test_build_for_a_chat_gguf(ggufs: dict[str, Path]) -> None:
    mf = build_modelfile(model=str(ggufs["chat"]), params=["num_ctx=4096", "stop=User:"])
    assert mf.chat and not mf.warnings
    commands = ollama_parser.parse(mf.text)
    assert [(c.name, c.args) for c in commands] == mf.commands()
    assert commands[0].args == str(ggufs["chat"].resolve())
    params = ollama_parser.create_request(commands)["parameters"]
    assert params["num_ctx"] == 4096 and params["temperature"] == 0.2
    assert params["stop"] == [*EXPECTED_PARAMETERS["stop"], "User:"]
    assert mf.text.startswith(
        "# Ollama Modelfile: Tiny Llama-3\n# GGUF: chat.gguf (llama, 2 layers"
    )


def test_build_system_prompt(ggufs: dict[str, Path]) -> None:
    assert build_modelfile(model=str(ggufs["chat"])).system == SYSTEM
    assert build_modelfile(model=str(ggufs["chat"]), system="").system is None
    mf = build_modelfile(model=str(ggufs["chat"]), system="  你是李白。\n用诗回答。")
    system = [c.args for c in ollama_parser.parse(mf.text) if c.name == "system"]
    assert system == ["  你是李白。\n用诗回答。"]
    with pytest.raises(InputError, match="U\\+3000"):
        build_modelfile(model=str(ggufs["chat"]), system="你好\u3000世界").text  # noqa: B018


def test_build_relative_from(ggufs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "deep" / "dir"
    mf = build_modelfile(model=str(ggufs["chat"]), relative_to=out)
    rel = os.path.relpath(ggufs["chat"].resolve(), out.resolve())
    assert mf.from_ref == rel and rel.startswith("..")
    side = build_modelfile(model=str(ggufs["chat"]), relative_to=ggufs["chat"].parent)
    assert side.from_ref == f".{os.sep}chat.gguf"


def test_build_keeps_a_symlinked_name(ggufs: dict[str, Path], tmp_path: Path) -> None:
    """A store entry that links to a hash-named blob keeps its .gguf name (Ollama goes by it)."""
    blob = tmp_path / "blobs" / "3f2a9c"
    blob.parent.mkdir()
    shutil.copy(ggufs["chat"], blob)
    link = tmp_path / "model.gguf"
    link.symlink_to(blob)
    mf = build_modelfile(model=str(link))
    assert mf.from_ref == str(link) and mf.gguf == link


def test_build_base_model(ggufs: dict[str, Path]) -> None:
    mf = build_modelfile(model=str(ggufs["base"]))
    assert not mf.chat and mf.template == COMPLETION_TEMPLATE and mf.system is None
    assert any("base model" in w for w in mf.warnings)
    commands = ollama_parser.parse(mf.text)
    assert "system" not in [c.name for c in commands]
    with pytest.raises(UsageError, match="system prompt would be ignored"):
        build_modelfile(model=str(ggufs["base"]), system="hi")
    forced = build_modelfile(model=str(ggufs["base"]), chat=True)
    assert forced.chat and forced.template == LLAMA3_OLLAMA_TEMPLATE
    assert build_modelfile(model=str(ggufs["chat"]), chat=False).template == COMPLETION_TEMPLATE


@pytest.mark.parametrize(
    ("which", "needle"),
    [
        ("chatml", "not the Llama-3-Instruct format"),
        ("qwen", "'qwen2' model"),
    ],
)
def test_build_refuses_other_formats(ggufs: dict[str, Path], which: str, needle: str) -> None:
    with pytest.raises(InvalidModelError, match=needle):
        build_modelfile(model=str(ggufs[which]))


def test_build_refuses_chat_without_llama3_vocab(ggufs: dict[str, Path]) -> None:
    with pytest.raises(InvalidModelError, match="1,000 tokens"):
        build_modelfile(model=str(ggufs["small_vocab"]), chat=True)


def test_build_missing_gguf(tmp_path: Path) -> None:
    from llama3zh_local.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        build_modelfile(model=str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFoundError, match="not downloaded yet"):
        build_modelfile(model="instruct-v3")


def test_build_for_a_pulled_alias(ggufs: dict[str, Path]) -> None:
    folder = paths.models_dir() / "llama-3-chinese-8b-instruct-v2-gguf"
    folder.mkdir(parents=True)
    shutil.copy(ggufs["chat"], folder / "ggml-model-q4_k-im.gguf")
    mf = build_modelfile(model="instruct-v2", quant="q4_k-im")
    assert mf.title == catalog.get_model("instruct-v2").title
    assert mf.from_ref.endswith("llama-3-chinese-8b-instruct-v2-gguf/ggml-model-q4_k-im.gguf")
    assert "Model: hfl/llama-3-chinese-8b-instruct-v2 (Hugging Face)" in mf.text
    # the same file found by path is recognised by its store folder
    by_path = build_modelfile(model=str(folder / "ggml-model-q4_k-im.gguf"))
    assert by_path.title == mf.title


def test_adapter(ggufs: dict[str, Path]) -> None:
    mf = build_modelfile(model=str(ggufs["chat"]), adapter=ggufs["lora"])
    commands = ollama_parser.parse(mf.text)
    assert ("adapter", str(ggufs["lora"].resolve())) in [(c.name, c.args) for c in commands]
    assert mf.adapter == ggufs["lora"].resolve()


@pytest.mark.parametrize(
    ("which", "needle"),
    [
        ("lora_wide", "does not fit"),
        ("lora_qwen", "LoRA for 'qwen2' models"),
        ("chat", "not a LoRA adapter GGUF"),
    ],
)
def test_adapter_must_match_the_base(ggufs: dict[str, Path], which: str, needle: str) -> None:
    with pytest.raises(InvalidModelError, match=needle):
        build_modelfile(model=str(ggufs["chat"]), adapter=ggufs[which])


@pytest.mark.slow
def test_build_for_the_tiny_llama3_gguf(tiny_llama3_gguf: Path) -> None:
    """The GGUF llama.cpp's converter writes for a real Llama-3 tokenizer is recognised as chat."""
    mf = build_modelfile(model=str(tiny_llama3_gguf))
    assert mf.chat and mf.template == LLAMA3_OLLAMA_TEMPLATE and not mf.warnings


# ---------------------------------------------------------------------------------------------
# CLI: llama3zh modelfile
# ---------------------------------------------------------------------------------------------


def test_cli_modelfile_to_stdout(ggufs: dict[str, Path]) -> None:
    result = runner.invoke(app, ["modelfile", str(ggufs["chat"]), "--param", "temperature=0.7"])
    assert result.exit_code == 0, result.output
    commands = ollama_parser.parse(result.stdout)
    assert ("temperature", "0.7") in [(c.name, c.args) for c in commands]


def test_cli_modelfile_to_file(ggufs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "Modelfile"
    args = ["modelfile", str(ggufs["chat"]), "-o", str(out), "--relative"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    commands = ollama_parser.parse(out.read_text(encoding="utf-8"))
    assert (out.parent / commands[0].args).resolve() == ggufs["chat"].resolve()

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.stderr and again.stdout == ""
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    into_dir = runner.invoke(app, ["modelfile", str(ggufs["chat"]), "-o", str(tmp_path)])
    assert into_dir.exit_code == 1  # tmp_path/Modelfile exists


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--relative"], "--relative needs -o"),
        (["--param", "num_ctx=4096.0"], "whole number"),
        (["--param", "Temperature=1"], "case-sensitive"),
        (["--system", "a\u3000b"], "U+3000"),
    ],
)
def test_cli_modelfile_refuses(ggufs: dict[str, Path], args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["modelfile", str(ggufs["chat"]), *args])
    assert result.exit_code == 1
    assert needle in result.stderr and "Hint:" in result.stderr and result.stdout == ""


def test_cli_modelfile_base_warns(ggufs: dict[str, Path]) -> None:
    result = runner.invoke(app, ["modelfile", str(ggufs["base"])])
    assert result.exit_code == 0
    assert "base model" in result.stderr
    assert "TEMPLATE {{ .Prompt }}" not in result.stdout  # always quoted
    assert 'TEMPLATE """{{ .Prompt }}"""' in result.stdout


# ---------------------------------------------------------------------------------------------
# ollama-create against a fake Ollama server
# ---------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_ollama_create_through_the_client(
    ggufs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_path = ggufs["chat"]
    with FakeOllama() as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        result = runner.invoke(
            app, ["ollama-create", "llama3-zh:test", str(gguf_path), "--param", "min_p=0.05"]
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "llama3-zh:test"
        assert "ollama run llama3-zh:test" in result.stderr

        methods = [(r.method, r.path.split("/sha256:")[0]) for r in fake.requests]
        assert methods == [
            ("GET", "/api/version"),
            ("HEAD", "/api/blobs"),
            ("POST", "/api/blobs"),
            ("POST", "/api/create"),
        ]
        (upload,) = fake.find("POST", "/api/blobs/")
        assert upload.path == f"/api/blobs/{sha256(gguf_path)}" == f"/api/blobs/{upload.sha256}"
        assert upload.size == gguf_path.stat().st_size

        (create,) = fake.find("POST", "/api/create")
        req = create.json
        assert req["model"] == "llama3-zh:test" and req["stream"] is True
        assert req["files"] == {gguf_path.name: sha256(gguf_path)}
        assert "adapters" not in req
        assert req["template"] == LLAMA3_OLLAMA_TEMPLATE
        assert req["system"] == SYSTEM
        params = req["parameters"]
        assert params == {**EXPECTED_PARAMETERS, "min_p": 0.05}  # min_p kept: a plain dict
        for key in ("temperature", "top_p", "repeat_penalty", "min_p"):
            assert type(params[key]) is float, key
        for key in ("top_k", "num_ctx", "num_keep"):
            assert type(params[key]) is int, key
        assert all(type(s) is str for s in params["stop"])
        assert "llama3/license" in req["license"]

        # the same request as `ollama create -f` on the Modelfile llama3zh writes
        mf = build_modelfile(model=str(gguf_path), params=["min_p=0.05"])
        expected = ollama_parser.create_request(ollama_parser.parse(mf.text))
        assert {k: req[k] for k in ("template", "system", "parameters")} == {
            k: expected[k] for k in ("template", "system", "parameters")
        }
        assert [req["license"]] == expected["license"]

        # a second create finds the blob on the server and uploads nothing
        before = len(fake.find("POST", "/api/blobs/"))
        again = runner.invoke(app, ["ollama-create", "llama3-zh:test", str(gguf_path)])
        assert again.exit_code == 0, again.output
        assert len(fake.find("POST", "/api/blobs/")) == before
        assert "on the server already" in again.stderr


def test_ollama_create_library_with_adapter(ggufs: dict[str, Path]) -> None:
    mf = build_modelfile(model=str(ggufs["chat"]), adapter=ggufs["lora"])
    seen: list[Event] = []
    with FakeOllama() as fake:
        result = ollama_create(
            name="user/llama3-zh-lora",
            modelfile=mf,
            host=fake.url,
            progress=seen.append,
        )
        (create,) = fake.find("POST", "/api/create")
    assert result.files == (
        ("chat.gguf", sha256(ggufs["chat"])),
        ("lora.gguf", sha256(ggufs["lora"])),
    )
    assert set(result.uploaded) == {sha256(ggufs["chat"]), sha256(ggufs["lora"])}
    assert create.json["adapters"] == {"lora.gguf": sha256(ggufs["lora"])}
    assert result.server_version == "0.6.5" and result.host == fake.url
    # hashing (a byte count), uploading and the server's create statuses were all reported
    assert {e.stage for e in seen} == {"create"}
    assert any(e.unit == "bytes" and e.task.startswith("checking") for e in seen)
    assert any(e.message.startswith("upload") for e in seen)
    assert any(e.message == "success" for e in seen)


@pytest.mark.parametrize(
    ("version", "needle"),
    [
        (
            "0.5.4",
            "is version 0.5.4; creating a model from a GGUF through its API needs Ollama 0.5.5",
        ),
        ("0.1.48", "needs Ollama 0.5.5 or newer"),
        (None, "too old to say its version"),
    ],
)
def test_ollama_create_old_server(ggufs: dict[str, Path], version: str | None, needle: str) -> None:
    mf = build_modelfile(model=str(ggufs["chat"]))
    with FakeOllama(version=version) as fake:
        with pytest.raises(OllamaError, match=needle) as info:
            ollama_create(name="m", modelfile=mf, host=fake.host)
        assert [r.method for r in fake.requests] == ["GET"]  # nothing uploaded
    assert info.value.hint and "ollama.com/download" in info.value.hint


@pytest.mark.parametrize("version", ["0.5.5", "0.12.3-rc1", "0.0.0"])
def test_ollama_create_new_enough(ggufs: dict[str, Path], version: str) -> None:
    mf = build_modelfile(model=str(ggufs["chat"]))
    with FakeOllama(version=version) as fake:
        assert ollama_create(name="m", modelfile=mf, host=fake.host).server_version == version


def test_ollama_create_server_error(ggufs: dict[str, Path]) -> None:
    mf = build_modelfile(model=str(ggufs["chat"]))
    with FakeOllama(create_error="unsupported architecture") as fake:
        with pytest.raises(OllamaError, match="refused to create m: unsupported architecture"):
            ollama_create(name="m", modelfile=mf, host=fake.host)


def test_ollama_create_invalid_name_checked_first(
    ggufs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama() as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        result = runner.invoke(app, ["ollama-create", "llama 3", str(ggufs["chat"])])
        assert fake.requests == []
    assert result.exit_code == 1 and "not a valid Ollama model name" in result.stderr


def test_ollama_create_ready_modelfile_has_no_file() -> None:
    with pytest.raises(UsageError, match="names no local GGUF"):
        ollama_create(name="m", modelfile=ready_modelfile("instruct-v3"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ollama_create_without_server_is_one_line(ggufs: dict[str, Path]) -> None:
    port = free_port()
    proc = run(
        "ollama-create", "llama3-zh", str(ggufs["chat"]), env={"OLLAMA_HOST": f"127.0.0.1:{port}"}
    )
    assert_one_line_error(proc, f"no Ollama server answers at http://127.0.0.1:{port}")
    assert "ollama serve" in proc.stderr and "https://ollama.com/download" in proc.stderr
