"""The interactive chat driven through a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.slow

PROMPT = ">>> "


def spawn(model: Path, *args: str, **options: object) -> pexpect.spawn:
    """``llama3zh chat MODEL ARGS`` on a pseudo-terminal, at its first prompt; ``options`` go to
    ``pexpect.spawn`` (over these defaults)."""
    kwargs: dict[str, object] = {
        "env": {**os.environ, "NO_COLOR": "1", "TERM": "dumb"},
        "encoding": "utf-8",
        "timeout": 120,
        "dimensions": (40, 200),
        **options,
    }
    child = pexpect.spawn(
        sys.executable, ["-m", "llama3zh_local", "chat", str(model), *args], **kwargs
    )
    child.expect_exact(PROMPT)
    return child


def test_two_turns_clear_and_exit(smollm2_gguf: Path, tmp_path: Path) -> None:
    child = spawn(smollm2_gguf, "--temp", "0", "-n", "48")
    child.sendline("What is the capital of France?")
    child.expect("Paris")
    child.expect_exact(PROMPT)
    child.sendline("And what is the capital of Germany?")
    child.expect("Berlin")
    child.expect_exact(PROMPT)
    saved = tmp_path / "conv.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("Saved to")
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
    child.sendline("/load " + str(saved))
    child.expect_exact("Loaded 4 messages")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    import json

    turns = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert "Berlin" in turns[3]["content"]


def test_ctrl_c_stops_the_answer_not_the_program(tiny_llama3_gguf: Path) -> None:
    # Random weights never say <|eot_id|>: the answer runs until the context is full, so a
    # Ctrl-C sent after the first words always lands mid-answer.
    child = spawn(tiny_llama3_gguf, "--ctx", "8192", "--seed", "3")
    child.sendline("写一个很长的故事。")
    child.expect_exact("写一个很长的故事。\r\n")  # the terminal's echo of the line
    child.expect(r"\S{3}")  # the answer is streaming
    child.sendintr()
    child.expect_exact("(answer stopped)")
    child.expect_exact(PROMPT)
    child.sendline("/stats")
    child.expect("answer \\d+ tokens")
    child.expect_exact(PROMPT)
    child.sendintr()  # at the prompt: a reminder, not an exit
    child.expect_exact("Ctrl-D")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
