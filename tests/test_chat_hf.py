"""`llama3zh chat --engine hf`: transformers behind the same REPL, template, stops and sampling."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pexpect
import pytest
from typer.testing import CliRunner

from llama3zh_local.chat.session import open_chat, open_hf_chat
from llama3zh_local.cli import app
from llama3zh_local.convert.llama import convert
from llama3zh_local.convert.lora import merge_lora
from llama3zh_local.hf import engine as hf_engine
from llama3zh_local.llamacpp.engine import GenerationRecord, SamplingParams

from . import lorafix, models
from .test_cli import assert_one_line_error, run
from .test_repl import PROMPT, spawn

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_hf() -> Path:
    return models.cached("tiny-llama3-hf-f32", models.build_tiny_llama3_hf, dtype="float32")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chat-hf")


def test_one_shot_answers_paris(smollm2_hf: Path) -> None:
    proc = run("chat", str(smollm2_hf), "--engine", "hf", "-p", "What is the capital of France?",
               "--temp", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    # stdout carries only the answer; what was loaded, and how, goes to stderr
    assert "transformers" in proc.stderr and "cpu, float32" in proc.stderr
    assert "transformers" not in proc.stdout


def test_question_on_stdin_with_stats(smollm2_hf: Path) -> None:
    proc = run("chat", str(smollm2_hf), "--engine", "hf", "--temp", "0", "--stats",
               stdin="What is the capital of France?\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "tok/s" in proc.stderr and "first token" in proc.stderr


def test_repl_two_turns_commands_and_exit(smollm2_hf: Path) -> None:
    child = spawn(smollm2_hf, "--engine", "hf", "--temp", "0", "-n", "48")
    child.sendline("What is the capital of France?")
    child.expect("Paris")
    child.expect_exact(PROMPT)
    child.sendline("And what is the capital of Germany?")
    child.expect("Berlin")
    child.expect_exact(PROMPT)
    child.sendline("/stats")
    child.expect(r"prompt \d+ tokens \((\d+) cached")
    assert int(child.match.group(1)) > 0  # the second turn reused the first one's KV cache
    child.expect_exact(PROMPT)
    child.sendline("/clear")
    child.expect_exact("Conversation cleared.")
    child.expect_exact(PROMPT)
    child.sendline("/help")
    child.expect_exact("/system TEXT")
    child.expect_exact(PROMPT)
    child.sendline('"""Reply with one word:')
    child.sendline('what is the capital of Italy?"""')
    child.expect("Rome")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def _answer(chat: object, text: str) -> tuple[list[int], GenerationRecord]:
    ids: list[int] = []
    last = None
    with contextlib.closing(chat.ask(text)) as records:  # type: ignore[attr-defined]
        for last in records:
            ids.extend(last.tokens)
    assert last is not None
    return ids, last


def test_same_tokens_as_the_gguf_engine(tiny_hf: Path, work: Path) -> None:
    """Greedy with the default repeat penalty: transformers and llama.cpp (f32 GGUF) pick the same
    tokens for the same conversation (same template, BOS handling, penalties, stops)."""
    gguf = convert(source=tiny_hf, output=work / "tiny-f32.gguf", outtype="f32").path
    greedy = SamplingParams(temperature=0.0)
    hf = open_hf_chat(tiny_hf, sampling=greedy, max_tokens=24, n_ctx=512)
    gg = open_chat(gguf, sampling=greedy, max_tokens=24, n_ctx=512, threads=2)
    try:
        for question in ("你好，请介绍一下你自己。", "Tell me more."):
            a, last_a = _answer(hf.chat, question)
            b, last_b = _answer(gg.chat, question)
            assert a == b and len(a) == 24
            assert last_a.finish_reason == last_b.finish_reason == "length"
            assert last_a.prompt_tokens == last_b.prompt_tokens
        assert hf.chat.template.source == gg.chat.template.source
        assert hf.chat.stop_tokens == gg.chat.stop_tokens == {models.LLAMA3_EOT_ID,
                                                              models.LLAMA3_EOS_ID}  # fmt: skip
    finally:
        for c in (hf.chat, gg.chat):
            c.session.close()
            c.model.close()


def test_unmerged_lora_answers_as_the_merged_gguf(tiny_hf: Path, work: Path) -> None:
    lora = lorafix.build_lora(work / "lora", tiny_hf, dtype="float32")
    merged = merge_lora(lora=lora, base=tiny_hf, output=work / "merged.gguf", outtype="f32").path
    greedy = SamplingParams(temperature=0.0, repeat_penalty=1.0)
    hf = open_hf_chat(tiny_hf, lora=lora, sampling=greedy, max_tokens=16, n_ctx=512)
    gg = open_chat(merged, sampling=greedy, max_tokens=16, n_ctx=512, threads=2)
    base = open_hf_chat(tiny_hf, sampling=greedy, max_tokens=16, n_ctx=512)
    try:
        a, _ = _answer(hf.chat, "你好")
        b, _ = _answer(gg.chat, "你好")
        c, _ = _answer(base.chat, "你好")
        assert a == b and a != c
    finally:
        for ch in (hf.chat, gg.chat, base.chat):
            ch.session.close()
            ch.model.close()


def test_options_of_the_other_engine_are_refused(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    proc = run("chat", str(smollm2_gguf), "--lora", str(smollm2_hf), "-p", "hi")
    assert_one_line_error(proc, "--lora applies an adapter with transformers")
    proc = run("chat", str(smollm2_hf), "--engine", "hf", "-q", "q4_k", "-p", "hi")
    assert_one_line_error(proc, "--quant is an option of the GGUF engine")
    proc = run("chat", str(smollm2_gguf), "--engine", "hf", "-p", "hi")
    assert_one_line_error(proc, "is not a folder")
    proc = run("chat", str(smollm2_hf), "--engine", "hf", "--lora", str(smollm2_hf), "-p", "hi")
    assert_one_line_error(proc, "not a PEFT LoRA folder")


def test_missing_torch_is_one_clear_line(smollm2_hf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = hf_engine.importlib.util.find_spec

    def find_spec(name: str, *a: object) -> object:
        return None if name in ("torch", "transformers") else real(name, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(hf_engine.importlib.util, "find_spec", find_spec)
    result = runner.invoke(app, ["chat", str(smollm2_hf), "--engine", "hf", "-p", "hi"])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.startswith(("Error:", "Hint:"))]
    assert (
        lines[0] == "Error: --engine hf needs the [train] extra (torch, transformers not installed)"
    )
    assert lines[1].startswith("Hint: pip install torch==") and "pytorch.org" in lines[1]
    assert "Traceback" not in result.output


def test_install_hint_is_the_training_one() -> None:
    from llama3zh_local.train import options

    assert hf_engine.INSTALL_HINT == options.INSTALL_HINT


def test_ctrl_c_stops_the_answer_and_the_next_one_works(tiny_hf: Path) -> None:
    # random weights never say <|eot_id|>: the answer runs until Ctrl-C
    child = spawn(tiny_hf, "--engine", "hf", "--ctx", "4096", "--seed", "3")
    child.sendline("写一个很长的故事。")
    child.expect_exact("写一个很长的故事。\r\n")  # the terminal's echo of the line
    child.expect(r"\S{3}")  # the answer is streaming
    child.sendintr()
    child.expect_exact("(answer stopped)")
    child.expect_exact(PROMPT)
    child.sendline("/stats")
    child.expect("answer \\d+ tokens")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
