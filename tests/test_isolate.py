"""tests/isolate.py: a test that crashes its interpreter fails as that test, the run goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INNER = '''
import os, signal
import pytest

@pytest.mark.isolated
def test_crashes():
    os.kill(os.getpid(), signal.SIGSEGV)

@pytest.mark.isolated
def test_fails():
    assert 1 + 1 == 3

@pytest.mark.isolated
@pytest.mark.parametrize("n", [1, 2])
def test_passes(n):
    assert os.environ["LLAMA3ZH_TEST_CHILD"] == "1"

@pytest.mark.isolated
def test_skips():
    pytest.skip("not here")

def test_runs_in_the_parent():
    assert "LLAMA3ZH_TEST_CHILD" not in os.environ
'''


def test_a_crash_fails_only_its_test(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "LLAMA3ZH_TEST_CHILD"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.isolate", "-p", "no:cacheprovider",
         "-q", "-rA", "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "2 failed, 3 passed, 1 skipped" in out, out
    assert "FAILED test_inner.py::test_crashes - Failed: the test crashed its interpreter" in out
    assert "the test crashed its interpreter (SIGSEGV)" in out
    assert "FAILED test_inner.py::test_fails" in out and "assert (1 + 1) == 3" in out
    assert any(ln.startswith("SKIPPED") and ln.endswith("not here") for ln in out.splitlines())
    assert "PASSED test_inner.py::test_runs_in_the_parent" in out
