"""pytest plugin: tests marked ``isolated`` run in a child pytest process.

A test that runs llama.cpp's compute in-process (a decode, a matrix product) can die from a native
crash (SIGSEGV in a CPU kernel, an abort on a failed assertion) that no ``try`` can catch; in the
pytest process that would end the whole run. In a child process it fails as that one test, with
the signal and the child's last lines. The child is a fresh interpreter (not a fork: llama.cpp's
OpenMP thread pool does not survive ``fork``), run with the parent's environment, so it uses the
same model caches; its fixtures are set up again there.

pytest-forked and pytest-xdist's ``--boxed`` do this by forking, which the OpenMP pool rules out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

CHILD_ENV = "LLAMA3ZH_TEST_CHILD"
TIMEOUT = 1800


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "isolated: runs llama.cpp in-process; run in a child pytest so that a native crash "
        "fails only this test",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(CHILD_ENV):
        return None
    root = Path(str(pyfuncitem.config.rootpath))
    cmd = [sys.executable, "-m", "pytest", pyfuncitem.nodeid, "-q", "--no-header",
           "-p", "no:cacheprovider", "-o", "addopts=-ra --strict-markers"]  # fmt: skip
    for plugin in pyfuncitem.config.getoption("plugins") or ():
        cmd += ["-p", plugin]
    env = {**os.environ, CHILD_ENV: "1"}
    try:
        done = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, errors="replace",
            timeout=TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"the isolated test did not finish within {TIMEOUT} s", pytrace=False)
    out = (done.stdout + done.stderr).strip()
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        pytest.fail(f"the test crashed its interpreter ({name}):\n{out[-4000:]}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"failed in the child pytest (exit {done.returncode}):\n{out[-6000:]}",
                    pytrace=False)  # fmt: skip
    if " passed" in out:
        return True
    if " skipped" in out:
        reasons = [ln.split(": ", 1)[-1] for ln in out.splitlines() if ln.startswith("SKIPPED")]
        pytest.skip(reasons[0] if reasons else "skipped in the child pytest")
    pytest.fail(f"the child pytest ran no test for {pyfuncitem.nodeid}:\n{out[-2000:]}",
                pytrace=False)  # fmt: skip
