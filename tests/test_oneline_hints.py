"""Issue 12, item 12: every error has its Hint: line, paths cannot forge one, disk-space messages
name the reserve, the context-overflow hint never suggests the context in use, -n matches --help."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama3zh_local.errors import DiskSpaceError, InputError

from . import lorafix
from .oneline import assert_error, snapshot
from .quantfix import write_llama_gguf
from .test_diskfull import tmpfs
from .test_oneline_errors import cli


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("synth") / "ggml-model-f16.gguf")


# -- sampling options out of range (checked before the model loads) -------------------------------

BAD_SAMPLING = [
    ("--top-p", "0"),  # the examples
    ("--top-p", "1.5"),
    ("--repeat-penalty", "0"),
    ("--repeat-penalty", "-1"),
    ("--top-p", "-0.1"),
    ("--top-p", "nan"),
    ("--top-p", "inf"),
    ("--repeat-penalty", "nan"),
    ("--repeat-penalty", "inf"),
    ("--temp", "nan"),
    ("--temp", "inf"),
    ("--min-p", "nan"),
    ("--top-k", str(2**40)),
]


@pytest.mark.parametrize(("option", "value"), BAD_SAMPLING)
def test_sampling_out_of_range_has_a_hint(option: str, value: str, synth: Path) -> None:
    proc = cli("chat", str(synth), "-p", "hi", option, value)
    if proc.returncode == 2:  # typer's own range check (a usage message, also fine)
        assert "Traceback" not in proc.stderr and "Usage:" in proc.stderr
        return
    err = assert_error(proc, "must be")
    assert value in err or option in err


@pytest.mark.parametrize("n", ["0", "-2", "-100", str(2**40)])
def test_max_tokens_follows_the_help(n: str, synth: Path) -> None:
    # --help says "-1: no limit"; 0 used to mean no limit as well
    assert_error(cli("chat", str(synth), "-p", "hi", "-n", n), f"-n {n}")


# -- a path with a newline cannot print a line of its own -----------------------------------------

TRICKY = ["a\nHint: all is fine", "b\rHint: fake", "c\x1b[2KHint: fake", "d\nError: second", "e\t"]


@pytest.mark.parametrize("name", TRICKY)
def test_path_cannot_forge_a_line(name: str, tmp_path: Path) -> None:
    folder = tmp_path / name
    proc = cli("chat", str(folder / "m.gguf"), "-p", "hi")
    err = assert_error(proc, "no model file")
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    assert repr(name)[1:-1] in err  # escaped, still readable
    proc = cli("chat", "x.gguf", "-p", "hi", "--load", str(folder / "c.json"))
    assert_error(proc, "no conversation file")
    proc = cli("convert", str(folder), "-o", str(tmp_path / "o.gguf"))
    assert_error(proc)


# -- config.json, tokenizer.json and LoRA kinds: each refusal has a hint -------------------------


def hf_copy(
    src: Path, dest: Path, *, config: dict | None = None, files: dict | None = None
) -> Path:
    """``src``'s checkpoint with config.json changed and files replaced; weights are symlinks."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "config.json" and f.name not in (files or {}):
            (dest / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    for key, value in (config or {}).items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dest / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    for name, content in (files or {}).items():
        (dest / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return dest


def convert_fails(src: Path, tmp_path: Path, needle: str = "") -> str:
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    err = assert_error(cli("convert", str(src), "-o", str(out / "m.gguf")), needle)
    assert snapshot(tmp_path) == before
    return err


BAD_HEADS = [
    {"num_key_value_heads": 3},  # the example: 3 does not divide 4
    {"num_key_value_heads": 8},
    {"num_key_value_heads": "2"},
    {"num_key_value_heads": 2.0},
    {"head_dim": 15},
    {"head_dim": "16"},
    {"rope_scaling": "linear"},
    {"rope_scaling": [1, 2]},
]


@pytest.mark.slow
@pytest.mark.parametrize("config", BAD_HEADS, ids=lambda c: json.dumps(c))
def test_bad_heads_have_a_hint(config: dict, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    src = hf_copy(tiny_llama3_hf, tmp_path / "src", config=config)
    convert_fails(src, tmp_path, "config.json")


BAD_TOKENIZERS = [
    b"{not json",
    b"\xff\xfe",
    b"[]",
    b'"a string"',
    b'{"model": "BPE"}',
    b'{"model": {"type": "BPE", "vocab": [], "merges": []}, "decoder": {"type": "ByteLevel"}}',
    b'{"model": {"type": "BPE"}, "decoder": [1, 2]}',
    b'{"model": {"type": "Unigram"}, "decoder": {"type": "Metaspace"}}',
]


@pytest.mark.slow
@pytest.mark.parametrize("raw", BAD_TOKENIZERS)
def test_invalid_tokenizer_json_has_a_hint(raw: bytes, tiny_llama3_hf: Path, tmp_path: Path):
    src = hf_copy(tiny_llama3_hf, tmp_path / "src", files={"tokenizer.json": raw})
    convert_fails(src, tmp_path, "tokenizer")


@pytest.mark.slow
def test_invalid_tokenizer_json_shapes(
    tiny_llama3_hf: Path, llama3_tokenizer_json: Path, tmp_path: Path
) -> None:
    """The real Llama-3 tokenizer.json with one field of the wrong type."""
    tok = json.loads(llama3_tokenizer_json.read_text(encoding="utf-8"))
    cases = {
        "merges": lambda t: t["model"].__setitem__("merges", [1, 2, 3]),
        "added": lambda t: t.__setitem__("added_tokens", [{"id": "x", "content": 5}]),
        "vocab": lambda t: t["model"].__setitem__("vocab", ["a", "b"]),
    }
    for i, (name, spoil) in enumerate(cases.items()):
        bad = json.loads(json.dumps(tok))
        spoil(bad)
        src = hf_copy(
            tiny_llama3_hf, tmp_path / f"src{i}", files={"tokenizer.json": json.dumps(bad)}
        )
        case = tmp_path / f"case{i}"
        case.mkdir()
        err = convert_fails(src, case)
        assert "tokenizer" in err, (name, err)


UNSUPPORTED_LORA = [
    {"use_dora": True},  # the kinds
    {"fan_in_fan_out": True},
    {"peft_type": "IA3"},
    {"peft_type": "ADALORA"},
    {"rank_pattern": {"q_proj": 4}},
    {"alpha_pattern": {"q_proj": 4}},
    {"r": 0},
    {"r": "8"},
    {"lora_alpha": "16"},
    {"lora_alpha": None},
]


@pytest.mark.slow
@pytest.mark.parametrize("extra", UNSUPPORTED_LORA, ids=lambda c: json.dumps(c))
def test_unsupported_lora_kinds_have_a_hint(
    extra: dict, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    lora = lorafix.build_lora(
        tmp_path / "lora",
        tiny_llama3_hf,
        targets=lorafix.ATTN,
        full=(),
        tokenizer=False,
        extra_config=extra,
    )
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    proc = cli("merge-lora", str(lora), "--base", str(tiny_llama3_hf), "-o", str(out / "m.gguf"))
    assert_error(proc, "adapter_config.json")
    assert snapshot(tmp_path) == before


# -- the disk-space message names the reserve -----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path, "256m") as mnt:
        yield mnt


def test_disk_space_names_the_reserve(small_disk: Path) -> None:
    from llama3zh_local.convert import llama as convert
    from llama3zh_local.files import space

    free = shutil.disk_usage(small_disk).free
    need = free - (16 << 20)  # fits, but eats into the space kept free
    with pytest.raises(DiskSpaceError) as e:
        convert.check_space(small_disk / "m.gguf", need)
    assert "kept free" in str(e.value) and "GB" in (e.value.hint or "")
    with pytest.raises(DiskSpaceError) as e:
        space.check_space(small_disk, need, what="the outputs", hint="write elsewhere")
    assert "kept free" in str(e.value)
    convert.check_space(small_disk / "m.gguf", free - (80 << 20))  # and room is room


# -- the context-overflow hint suggests a larger context, or none --------------------------------


@pytest.mark.slow
def test_context_overflow_hint(tiny_llama3_gguf: Path) -> None:
    from llama3zh_local.chat.session import open_chat

    for n_ctx, words in ((128, 200), (512, 400), (8192, 3000)):
        loaded = open_chat(tiny_llama3_gguf, n_ctx=n_ctx)
        try:
            with pytest.raises(InputError, match="too long") as e:
                "".join(loaded.chat.ask("很长的问题 " * words))
        finally:
            loaded.chat.session.close()
            loaded.chat.model.close()
        hint = e.value.hint or ""
        assert f"--ctx {n_ctx}" not in hint, hint
        if n_ctx < 8192:  # the model was trained on 8192
            suggested = int(hint.split("--ctx ")[1].split()[0])
            assert n_ctx < suggested <= 8192 and math.log2(suggested).is_integer()
        else:
            assert "--ctx" not in hint and "maximum (8192" in hint


@pytest.mark.slow
def test_context_overflow_cli(tiny_llama3_gguf: Path) -> None:
    proc = cli("chat", str(tiny_llama3_gguf), "--ctx", "128", "-p", "很长的问题 " * 200)
    err = assert_error(proc, "too long")
    hint = proc.stderr.split("Hint:")[1]
    assert "--ctx 128" not in hint and "--ctx" in hint, err
