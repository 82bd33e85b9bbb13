"""A real ``llama3zh serve`` process on 127.0.0.1 for the serve tests (no pytest here)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from . import models

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(home: Path) -> dict[str, str]:
    """The environment of a server whose caches and config live under ``home``."""
    env = dict(os.environ)
    for var, sub in models.ISOLATED_DIRS.items():
        env[var] = str(home / sub)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.pop("LLAMA3ZH_API_KEY", None)
    return env


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def start(home: Path, *args: str, port: int | None = None, timeout: float = 60) -> Server:
    """``llama3zh serve ARGS --port PORT`` in the background, once /health answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "llama3zh_local", "serve", *args, "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env_for(home), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    server = Server(proc, port, log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"serve did not answer within {timeout} s:\n{server.output()}")


@contextlib.contextmanager
def running(home: Path, *args: str) -> Iterator[Server]:
    server = start(home, *args)
    try:
        yield server
    finally:
        server.stop()


def wait_idle(server: Server, headers: dict[str, str] | None = None, timeout: float = 30) -> float:
    """Seconds until /health reports no running or waiting request."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if httpx.get(server.url + "/health", headers=headers, timeout=5).json()["busy"] == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"the server was still busy after {timeout} s")
