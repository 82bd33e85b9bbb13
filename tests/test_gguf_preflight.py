"""Issue 12, item 5: the GGUF preflight checks what llama.cpp asserts on (compile-time limits,
head/dim consistency, tensor shapes against the metadata) before llama.cpp sees the file.

Files come from ``ggufgen.write_model`` (a small Llama that llama.cpp loads and chats with), one
metadata field changed. Many runs share one interpreter (``cli_batch``); an abort there kills the
batch, and the test names the case that did it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from .ggufgen import write_model
from .oneline import assert_error, assert_no_crash_output
from .test_numeric_options import run_batch

pytestmark = pytest.mark.slow

T = gguf.GGUFValueType
A = "llama."
SMALL = {"n_embd": 64, "n_ff": 64}  # head size 16

# field -> (change, what the Error: line says); each of these llama.cpp aborts on, hangs on,
# or refuses with a log line the user cannot act on
REFUSED: dict[str, tuple[dict, str]] = {
    "513 layers": ({A + "block_count": 513}, "at most 512"),
    "2^31 layers": ({A + "block_count": 2**31}, "at most 512"),
    "2^32-1 layers": ({A + "block_count": 2**32 - 1}, "at most 512"),
    "3 layers, tensors for 2": ({A + "block_count": 3}, "is missing"),
    "1 layer, tensors for 2": ({A + "block_count": 1}, "beyond the 1 layers"),
    "embd not a multiple": ({A + "embedding_length": 63}, "not a multiple of head_count"),
    "embd 2^31": ({A + "embedding_length": 2**31}, "n_rot"),
    "ff 0": ({A + "feed_forward_length": 0}, "has shape"),
    "ff array of 3": ({A + "feed_forward_length": ((T.ARRAY, T.UINT32), [64] * 3)}, "3 values"),
    "head 3": ({A + "attention.head_count": 3}, "does not divide"),
    "head 2^31": ({A + "attention.head_count": 2**31}, "not a multiple"),
    "head as i32": ({A + "attention.head_count": (T.INT32, 4)}, "GGUF type"),
    "kv 0": ({A + "attention.head_count_kv": 0}, "does not divide"),
    "kv 8": ({A + "attention.head_count_kv": 8}, "does not divide"),
    "n_rot 0": ({A + "rope.dimension_count": 0}, "invalid n_rot"),
    "n_rot 15": ({A + "rope.dimension_count": 15}, "invalid n_rot"),
    "n_rot 2^31": ({A + "rope.dimension_count": 2**31}, "invalid n_rot"),
    "key_length 7": ({A + "attention.key_length": 7}, "invalid n_rot"),
    "value_length 0": ({A + "attention.value_length": 0}, "has shape"),
    "eps 0": ({A + "attention.layer_norm_rms_epsilon": 0.0}, "positive number"),
    "eps NaN (hung)": ({A + "attention.layer_norm_rms_epsilon": math.nan}, "positive number"),
    "eps -1 (aborted)": ({A + "attention.layer_norm_rms_epsilon": -1.0}, "positive number"),
    "eps inf": ({A + "attention.layer_norm_rms_epsilon": math.inf}, "positive number"),
    "eps as u32": ({A + "attention.layer_norm_rms_epsilon": (T.UINT32, 1)}, "positive number"),
    "eps missing": ({A + "attention.layer_norm_rms_epsilon": None}, "is missing"),
    "ctx as u64": ({A + "context_length": (T.UINT64, 2048)}, "GGUF type"),
    "1000 experts": ({A + "expert_count": 1000, A + "expert_used_count": 2}, "experts"),
    "4 of 2 experts (aborted)": ({A + "expert_count": 2, A + "expert_used_count": 4}, "experts"),
    "bert vocab (aborted)": ({"tokenizer.ggml.model": "bert"}, "tokenizer.ggml.model"),
    "no tokens": ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens"),
    "token types short": (
        {"tokenizer.ggml.token_type": ((T.ARRAY, T.INT32), [1, 1, 1])},
        "entries for",
    ),
}
SHAPES: dict[str, tuple[dict, str]] = {
    "attn_q rows": ({"blk.0.attn_q.weight": (63, 64)}, "blk.0.attn_q.weight has shape"),
    "token_embd vocab": ({"token_embd.weight": (200, 64)}, "token_embd.weight has shape"),
    "norm size": ({"blk.1.ffn_norm.weight": (32,)}, "blk.1.ffn_norm.weight has shape"),
    "output width": ({"output.weight": (265, 32)}, "output.weight has shape"),
}


def _no_byte_tokens(path: Path) -> Path:
    """A SentencePiece vocabulary without its <0xNN> byte tokens: tokenizing aborted."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(262)]
    return write_model(path, **SMALL, meta={"tokenizer.ggml.tokens": ((T.ARRAY, T.STRING), tokens)})


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("refused")
    out = {}
    for i, (name, (meta, needle)) in enumerate(REFUSED.items()):
        out[name] = (write_model(d / f"m{i}.gguf", **SMALL, meta=meta), needle)
    for i, (name, (shapes, needle)) in enumerate(SHAPES.items()):
        out[name] = (write_model(d / f"s{i}.gguf", **SMALL, shapes=shapes), needle)
    out["no byte tokens (aborted)"] = (_no_byte_tokens(d / "nobytes.gguf"), "byte tokens")
    return out


def test_refused_before_loading(refused: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    """chat, imatrix and eval refuse each file with one Error: and one Hint: line."""
    cases, needles = [], []
    for path, needle in refused.values():
        cases.append(["chat", str(path), "-p", "hi", "-n", "2"])
        needles.append(needle)
    short = tmp_path / "t.txt"
    short.write_text("你好。" * 50, encoding="utf-8")
    for path, needle in list(refused.values())[::4]:  # a sample through the other commands
        cases.append(["imatrix", str(path), "--calibration", str(short), "--dry-run"])
        needles.append(needle)
        cases.append(["eval", str(path), "--text", str(short)])
        needles.append(needle)
    for args, needle, r in zip(cases, needles, run_batch(cases, tmp_path), strict=True):
        proc = subprocess.CompletedProcess(r["args"], r["code"], r["out"], r["err"])
        assert r["args"] == args
        try:
            assert_error(proc, needle)
        except AssertionError as e:
            raise AssertionError(f"{args[:2]}: {e}") from None


def test_the_checked_model_itself_loads_and_chats(tmp_path: Path) -> None:
    """The control: the unchanged file passes the preflight and answers."""
    path = write_model(tmp_path / "ok.gguf", **SMALL)
    proc = subprocess.run(
        [sys.executable, "-m", "llama3zh_local", "chat", str(path), "-p", "hi", "-n", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


LOAD = "import sys; from llama3zh_local.llamacpp import engine; m = engine.Model(sys.argv[1]); "


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("513 layers", LOAD),
        ("4 of 2 experts (aborted)", LOAD),
        ("no byte tokens (aborted)", LOAD + "m.tokenize('hi', add_special=True)"),
    ],
)  # fmt: skip
def test_llama_cpp_itself_aborts_on_them(
    name: str, code: str, refused: dict[str, tuple[Path, str]]
) -> None:
    """Parity: without the preflight, llama.cpp kills the process on these files."""
    proc = subprocess.run(
        [sys.executable, "-c", code, str(refused[name][0])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert proc.returncode < 0 or proc.returncode == 134, (proc.returncode, proc.stderr[-500:])


# -- the property test over the metadata fields llama.cpp asserts on ------------------------------

U32_FIELDS = [
    "block_count", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "rope.dimension_count", "context_length",
    "attention.key_length", "attention.value_length", "expert_count", "expert_used_count",
    "vocab_size",
]  # fmt: skip
U32_VALUES = [0, 1, 2, 3, 7, 16, 64, 511, 512, 513, 2**31 - 1, 2**31, 2**32 - 1]
FLOAT_FIELDS = ["attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.scaling.factor"]
FLOAT_VALUES = [0.0, -0.0, -1.0, 1e-45, 1e-5, 1.0, 1e38, math.inf, -math.inf, math.nan]
OTHER_TYPES = [(T.INT32, -1), (T.UINT64, 2**40), (T.FLOAT32, 1.5), (T.STRING, "64"),
               (T.STRING, "x"), (T.BOOL, True)]  # fmt: skip


def test_metadata_fields_never_abort(tmp_path: Path) -> None:
    files: list[Path] = []
    n = 0

    def add(meta: dict) -> None:
        nonlocal n
        n += 1
        files.append(write_model(tmp_path / f"p{n}.gguf", **SMALL, meta=meta))

    for field in U32_FIELDS:
        for value in U32_VALUES:
            add({A + field: (T.UINT32, value)})
        for typed in OTHER_TYPES:
            add({A + field: typed})
    for field in FLOAT_FIELDS:
        for fvalue in FLOAT_VALUES:
            add({A + field: (T.FLOAT32, fvalue)})
        add({A + field: (T.UINT32, 1)})
    cases = [["chat", str(f), "-p", "hi", "-n", "2"] for f in files]
    results = run_batch(cases, tmp_path)
    assert len(results) == len(cases)
    for r in results:
        proc = subprocess.CompletedProcess(r["args"], r["code"], r["out"], r["err"])
        try:
            assert_no_crash_output(proc)
            if proc.returncode == 1:
                assert_error(proc)
        except AssertionError as e:
            raise AssertionError(f"{r['args'][1]}: {e}") from None
    assert any(r["code"] == 0 for r in results) and any(r["code"] == 1 for r in results)
