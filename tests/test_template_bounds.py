"""Issue 12, item 7: untrusted chat templates are bounded in time, size and recursion; every
failure is a ChatTemplateError with the --template llama3 hint, and the REPL survives it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest

from llama3zh_local import templating as chat
from llama3zh_local.chat.template import ChatTemplate
from llama3zh_local.errors import ChatTemplateError

from .ggufgen import write_model
from .oneline import assert_error
from .test_numeric_options import run_batch

MESSAGES = [{"role": "user", "content": "hi"}]

HOSTILE = {
    # the four classes
    "string repetition": "{{ 'a' * 10000000000 }}",
    "nested range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}",
    "macro recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "range step 0": "{{ range(1, 2, 0) }}",
    # and their kin
    "doubling concatenation": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "list repetition": "{{ [1] * 10000000000 }}",
    "repeated repetition": "{% set s = 'ab' * 4000000 %}{{ s * 3 }}",
    "huge power": "{{ 2 ** 100000000 }}",
    "tower of powers": "{% set a = 2 ** 256 %}{% set b = a ** 256 %}{% set c = b ** 256 %}"
    "{{ c ** 256 }}",
    "center filter": "{{ 'x' | center(1000000000) }}",
    "center method": "{{ 'x'.center(1000000000) }}",
    "indent filter": "{{ 'x\ny' | indent(1000000000) }}",
    "format width": "{{ '{0:>{1}}'.format(1, 1000000000) }}",
    "format width in the string": "{{ '{:>1000000000}'.format(1) }}",
    "percent width": "{{ '%1000000000s' % 'x' }}",
    "lipsum": "{{ lipsum(100000) }}",
    "while-like loop": "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}"
    "{% endfor %}{% endfor %}",
    "recursive loop": "{% for m in [[1]] recursive %}{{ loop([m]) }}{% endfor %}",
    "division by zero": "{{ 1 / 0 }}",
    "dict of a list": "{{ dict(**messages) }}",
    "empty cycler": "{{ cycler().next() }}",
    "wordwrap 0": "{{ 'x y' | wordwrap(0) }}",
    "huge int to text": "{% set x = 2 ** 200 %}{{ x ** 200 }}",
    "raise_exception": "{{ raise_exception('no') }}",
    "syntax error": "{% for %}",
    "undefined call": "{{ nothing() }}",
}


@pytest.fixture
def quick_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    """The render deadline, shortened for the tests (read at each render)."""
    monkeypatch.setattr(chat, "MAX_RENDER_SECONDS", 0.5)
    return 0.5


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_a_template_error(name: str, quick_deadline: float) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError, match="evil.gguf") as e:
        ChatTemplate(HOSTILE[name], origin="evil.gguf").render(MESSAGES)
    if "width" in name or "repetition" in name:  # refused before the value is built
        assert "too large" in str(e.value) and "built a value" not in str(e.value)
    assert e.value.hint == "use the built-in template instead: --template llama3"
    assert time.perf_counter() - t0 < quick_deadline + 3


def test_bounds_hold_in_a_thread_too(quick_deadline: float) -> None:
    """Threads get no SIGALRM: the deadline is a trace function there."""
    caught: list[BaseException] = []

    def work() -> None:
        try:
            ChatTemplate(HOSTILE["nested range"], origin="evil.gguf").render(MESSAGES)
        except BaseException as e:  # noqa: BLE001
            caught.append(e)

    before = sys.gettrace()
    t0 = time.perf_counter()
    th = threading.Thread(target=work)
    th.start()
    th.join(timeout=60)
    assert not th.is_alive()
    assert isinstance(caught[0], ChatTemplateError) and "took more than" in str(caught[0])
    assert time.perf_counter() - t0 < quick_deadline + 5
    assert sys.gettrace() is before  # the main thread's tracer is untouched


def test_ordinary_templates_still_render() -> None:
    from llama3zh_local.chat.template import llama3_template

    long = [{"role": "user", "content": "你好" * 100_000}] * 4  # 800k characters
    text = ChatTemplate(llama3_template()).render(long)
    assert text.count("你好") == 400_000


@pytest.mark.slow
def test_hostile_templates_through_the_cli(tmp_path: Path) -> None:
    names = ["string repetition", "nested range", "macro recursion", "range step 0",
             "dict of a list", "tower of powers"]  # fmt: skip
    cases = []
    for i, name in enumerate(names):
        path = write_model(
            tmp_path / f"t{i}.gguf", n_embd=64, n_ff=64,
            meta={"tokenizer.chat_template": HOSTILE[name]},
        )  # fmt: skip
        cases.append(["chat", str(path), "-p", "hi", "-n", "2"])
    for args, r in zip(cases, run_batch(cases, tmp_path), strict=True):
        proc = subprocess.CompletedProcess(r["args"], r["code"], r["out"], r["err"])
        assert_error(proc, "chat template")
        assert "Hint: use the built-in template instead: --template llama3" in proc.stderr, args
        # and the hint works: the built-in template answers
        ok = subprocess.run(
            [sys.executable, "-m", "llama3zh_local", *args, "--template", "llama3"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ok.returncode == 0, ok.stderr
        break  # one such control run is enough


@pytest.mark.slow
def test_repl_survives_hostile_templates(tmp_path: Path) -> None:
    for name in ("macro recursion", "range step 0", "nested range"):
        path = write_model(
            tmp_path / "evil.gguf", n_embd=64, n_ff=64,
            meta={"tokenizer.chat_template": HOSTILE[name]},
        )  # fmt: skip
        child = pexpect.spawn(
            sys.executable,
            ["-m", "llama3zh_local", "chat", str(path), "-n", "2"],
            env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"},
            encoding="utf-8",
            codec_errors="replace",
            timeout=60,
            dimensions=(40, 300),
        )
        child.expect_exact(">>> ")
        for _ in range(2):
            child.sendline("hello")
            child.expect_exact("--template llama3")
            child.expect_exact(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, name
        assert "Traceback" not in (child.before or "")
