"""Issue 12, item 9: eval --kld-base of another model is refused before llama-perplexity runs;
when a llama.cpp tool dies, the message is its own last lines, never the debugger's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama3zh_local.llamacpp.process import tail as _tail
from llama3zh_local.llamacpp.process import without_debugger_noise

from .ggufgen import write_model
from .oneline import DEBUGGER_NOISE, assert_error, snapshot
from .test_oneline_errors import cli

SMALL = {"n_embd": 64, "n_ff": 64}


def _other_tokens(path: Path) -> Path:
    """The same size of vocabulary, two tokens swapped: another model's."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁", "▁a", "▁the", "▁hi", "是", "的"]
    return write_model(
        path, **SMALL, meta={"tokenizer.ggml.tokens": ((gguf.GGUFValueType.ARRAY,
                                                         gguf.GGUFValueType.STRING), tokens)}
    )  # fmt: skip


@pytest.mark.slow
def test_kld_base_of_another_model(
    tiny_llama3_gguf: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    env = {"LLAMA3ZH_TOOLS_DIR": str(tools)}
    a = write_model(tmp_path / "a.gguf", **SMALL)
    b = _other_tokens(tmp_path / "b.gguf")
    before = snapshot(tmp_path)
    cases = [
        [str(smollm2_gguf), "--kld-base", str(tiny_llama3_gguf)],  # the issue's case
        [str(tiny_llama3_gguf), "--kld-base", str(smollm2_gguf)],
        [str(b), "--kld-base", str(a)],  # as many tokens, not the same ones
        [str(a), str(b), "--kld-base", str(a)],  # one of several
        [str(tiny_llama3_gguf), "--kld-base", str(a)],
    ]
    for args in cases:
        proc = cli("eval", *args, "--chunks", "1", env=env)
        assert_error(proc, "another vocabulary")
        assert "--kld-base the F16" in proc.stderr
    assert not any(tools.iterdir())  # llama-perplexity was never even built
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_kld_base_of_the_same_vocabulary_passes_the_check(tmp_path: Path) -> None:
    a = write_model(tmp_path / "a.gguf", **SMALL)
    c = write_model(tmp_path / "c.gguf", **SMALL, seed=1)  # other weights, one vocabulary
    short = tmp_path / "short.txt"
    short.write_text("你好。", encoding="utf-8")
    proc = cli("eval", str(c), "--kld-base", str(a), "--text", str(short))
    assert_error(proc, "too short")  # past the vocabulary check, stopped before any tool


@pytest.fixture(scope="module")
def real_abort(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The output of a process llama.cpp aborted (GGML_ASSERT), gdb backtrace and all."""
    path = write_model(
        tmp_path_factory.mktemp("abort") / "m.gguf", **SMALL, meta={"llama.block_count": 513}
    )
    code = "import sys; from llama3zh_local.llamacpp import engine; engine.Model(sys.argv[1])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert proc.returncode in (-6, 134), proc.returncode
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_tool_message_keeps_its_own_words_not_the_debuggers(real_abort: str) -> None:
    tail = _tail(real_abort)
    assert "GGML_ASSERT" in tail and "LLAMA_MAX_LAYERS" in tail
    for noise in ("#0 ", "#1 ", "libthread_db", "auto-load", "[Inferior", "No such file", "0x0"):
        assert noise not in tail, (noise, tail)
    # and nothing a debugger printed survives, whichever lines are asked for
    for line in without_debugger_noise(real_abort):
        assert not any(n in line for n in DEBUGGER_NOISE if n not in ("GGML_ASSERT", "Aborted"))


GDB_SAMPLE = """\
llama_perplexity: tokenizing the input ..
perplexity: the KL-divergence base was made with another vocabulary
[New LWP 4242]
[Thread debugging using libthread_db enabled]
Using host libthread_db library "/lib/x86_64-linux-gnu/libthread_db.so.1".
0x00007f7400ef1c17 in __GI___wait4 (pid=23848, stat_loc=0x0) at ../sysdeps/unix/wait4.c:30
30	../sysdeps/unix/sysv/linux/wait4.c: No such file or directory.
#0  0x00007f7400ef1c17 in __GI___wait4 (pid=23848) at ../sysdeps/unix/sysv/linux/wait4.c:30
#1  0x00007ff9c9a4e68b in ggml_print_backtrace () from libggml-base.so
30	in ../sysdeps/unix/sysv/linux/wait4.c
[Inferior 1 (process 23846) detached]
ptrace: Operation not permitted.
No stack.
warning: File "/usr/bin/python3.11-gdb.py" auto-loading has been declined
"""


def test_noise_filter_on_each_kind_of_debugger_line() -> None:
    assert without_debugger_noise(GDB_SAMPLE) == [
        "llama_perplexity: tokenizing the input ..",
        "perplexity: the KL-divergence base was made with another vocabulary",
    ]
    plain = "main: loading model\nperplexity: 12.5 chunks\n[1]5.1234,\n"
    assert without_debugger_noise(plain) == ["main: loading model", "perplexity: 12.5 chunks",
                                             "[1]5.1234,"]  # fmt: skip
