"""Checks for issue 12's promise: bad input ends in one ``Error:`` and one ``Hint:`` line.

``assert_error`` is stricter than test_cli's ``assert_one_line_error``: exit code exactly 1,
exactly one ``Hint:`` line, no traceback, no catch-all "unexpected … report it", and no debugger
output (the backtrace ggml prints through gdb when it aborts). ``snapshot`` records a folder so a
test can show that nothing in it changed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# What gdb / ggml_print_backtrace print when llama.cpp aborts, and what an abort looks like.
DEBUGGER_NOISE = (
    "GGML_ASSERT",
    "[New LWP",
    "[Thread debugging",
    "Using host libthread_db",
    "ptrace:",
    "No stack.",
    "#0  0x",
    "__libc_start_main",
    "[Inferior 1",
    "gdb",
    "Aborted",
    "core dumped",
    "terminate called",
    "std::bad_alloc",
)


def assert_no_crash_output(proc: subprocess.CompletedProcess[str]) -> None:
    """No traceback, no catch-all, no debugger or abort output on either stream."""
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both, proc.stderr
    assert "unexpected" not in proc.stderr, proc.stderr
    for noise in DEBUGGER_NOISE:
        assert noise not in both, (noise, proc.stderr[-2000:])
    assert proc.returncode in (0, 1, 2), (proc.returncode, proc.stderr[-2000:])


def assert_error(proc: subprocess.CompletedProcess[str], needle: str = "") -> str:
    """Exit code 1, exactly one ``Error:`` line (containing ``needle``) and one ``Hint:`` line.

    Returns the ``Error:`` line.
    """
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("Error:")]
    hints = [ln for ln in lines if ln.startswith("Hint:")]
    assert len(errors) == 1, proc.stderr
    assert len(hints) == 1, proc.stderr
    assert lines.index(hints[0]) == lines.index(errors[0]) + 1, proc.stderr
    assert needle in errors[0], (needle, proc.stderr)
    assert_no_crash_output(proc)
    return errors[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime_ns).

    conftest's ``_env`` folder (the tool's own home: its journal of temporary names, speed.json)
    is left out: the tool's own files may change, nothing else may.
    """
    out = {}
    for root, dirs, files in os.walk(folder):
        if Path(root) == folder and "_env" in dirs:
            dirs.remove("_env")
        for name in files:
            p = Path(root) / name
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out
