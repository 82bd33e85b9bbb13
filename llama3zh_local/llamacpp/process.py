"""Running llama.cpp's programs: an argument list, UTF-8 output kept for the error message.

The tools print Chinese and progress pieces without newlines; their output is decoded as UTF-8
with ``errors="replace"`` and kept, so that a failure can quote its last lines. A child dies with
its parent (Linux), so a killed run never leaves a tool writing on.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Say = Callable[[str], None]  # a progress message for people (building, downloading)


def quiet(_message: str) -> None:
    pass


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when we die (Linux), even by SIGKILL.

    Otherwise a killed run leaves llama-imatrix working on, and writing its output after the
    rerun has already swept and replaced it.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))


def run(
    cmd: Sequence[str],
    *,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """A subprocess from an argument list, its output kept as UTF-8 (the tools print Chinese)."""
    return subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else dict(env),
        check=False,
        preexec_fn=die_with_parent,
    )


def run_streaming(
    cmd: Sequence[str],
    on_output: Callable[[str, str], None],
    *,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``run``, with each piece of output passed to ``on_output`` as it arrives.

    The child is killed when the caller is interrupted (Ctrl-C) or the timeout passes.
    """
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=None if env is None else dict(env),
        preexec_fn=die_with_parent,
    )
    kept: dict[str, list[str]] = {"stdout": [], "stderr": []}
    lock = threading.Lock()

    def pump(name: str, pipe: Any) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            data = os.read(pipe.fileno(), 65536)
            text = decoder.decode(data, final=not data)
            if text:
                kept[name].append(text)
                with lock:  # one callback at a time: callers need no locking of their own
                    with contextlib.suppress(Exception):
                        on_output(name, text)
            if not data:
                break

    threads = [
        threading.Thread(target=pump, args=(name, pipe), daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for t in threads:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except BaseException as e:  # TimeoutExpired, KeyboardInterrupt: the tool must not outlive us
        proc.kill()
        proc.wait()
        for t in threads:
            t.join(timeout=5)
        if isinstance(e, subprocess.TimeoutExpired):
            raise subprocess.TimeoutExpired(
                e.cmd, e.timeout, output="".join(kept["stdout"]), stderr="".join(kept["stderr"])
            ) from None
        raise
    for t in threads:
        t.join()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return subprocess.CompletedProcess(
        list(cmd), proc.returncode, "".join(kept["stdout"]), "".join(kept["stderr"])
    )


# What gdb prints into a dying tool's output when ggml's abort handler (ggml_print_backtrace)
# attaches it: banners, thread notes, stack frames and echoed source lines. Never the tool's own
# words (its GGML_ASSERT line, an exception's what() are kept).
_DEBUGGER_NOISE = re.compile(
    r"#\d+\s+|\d+\s+in\s|\d+\s+\S.*: No such file or directory\.?$|0x[0-9a-fA-F]+ in |"
    r"\[New (LWP|Thread)|\[Thread debugging|\[Inferior \d|Using host libthread_db|warning: |"
    r"To enable execution of this file|add-auto-load-safe-path|line to your configuration file|"
    r"To completely disable this security|set auto-load safe-path|For more information about this "
    r"security|\"Auto-loading safe path\"|info \"\(gdb\)|ptrace: |No stack\.|Could not attach|"
    r"Attaching to |Detaching from |\(gdb\)"
)


def without_debugger_noise(text: str) -> list[str]:
    """The non-empty lines of a tool's output, less what a debugger printed into it."""
    lines = (ln.strip() for ln in text.splitlines())
    return [ln for ln in lines if ln and not _DEBUGGER_NOISE.match(ln)]


def tail(text: str, n: int = 3) -> str:
    return " | ".join(without_debugger_noise(text)[-n:])
