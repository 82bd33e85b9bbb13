"""Acceptance: kill -9 a real `llama3zh pull` after ~40% of a large file; the rerun resumes.

The server sends the file slowly, so the kill lands mid-file; it counts every byte it sends.
Over both runs it must send at most 1.1x the file's size, for both protocols.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama3zh_local import paths
from llama3zh_local.hub import sources

from .hub_server import HubServer, client_env

SIZE = 128 * 1024 * 1024
RATE = 64 * 1024 * 1024  # bytes/s while the first run is alive: the whole file would take 2 s


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "ggml-model-q8_0.gguf"
    with path.open("wb") as fh:
        for _ in range(SIZE // (8 * 1024 * 1024)):
            fh.write(os.urandom(8 * 1024 * 1024))
    return path


@pytest.fixture(scope="module")
def server(big_file: Path) -> Iterator[HubServer]:
    with HubServer() as s:
        s.add_repo("test/big-gguf", {big_file.name: big_file, "README.md": b"# big\n"})
        yield s


def start_pull(model: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llama3zh_local", "pull", model, "-q", "q8_0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("prefix", ["hf", "ms"])
def test_kill_9_mid_file_then_rerun_resumes(
    server: HubServer, big_file: Path, tmp_path: Path, prefix: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= client_env(server.url, tmp_path)
    server.reset()
    server.throttle = RATE
    proc = start_pull(f"{prefix}:test/big-gguf", env)
    try:
        deadline = time.monotonic() + 60
        while server.served[big_file.name] < 0.4 * SIZE:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    first = settled(server, big_file.name)
    assert 0.4 * SIZE <= first < 0.9 * SIZE  # killed mid-file

    if prefix == "hf":
        digest = server.repos["test/big-gguf"].files[big_file.name].sha256
        final = sources.hf_cache_dir() / "models--test--big-gguf" / "blobs" / digest
    else:
        final = sources.ms_cache_dir() / "models/test--big-gguf/snapshots/master" / big_file.name
    partial = final.with_name(final.name + ".incomplete")
    on_disk = partial.stat().st_size
    assert not final.exists() and on_disk > 0.35 * SIZE

    server.throttle = None
    rerun = start_pull(f"{prefix}:test/big-gguf", env)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert "resumed from" in err
    total = server.served[big_file.name]
    print(f"\n{prefix}: first run {first / SIZE:.3f}, both runs {total / SIZE:.4f}x the size")
    assert total <= 1.1 * SIZE, f"{total / SIZE:.3f}x the file size was sent"
    assert server.ranges[-1] == (big_file.name, f"bytes={on_disk}-")  # from the bytes on disk
    assert total - first == SIZE - on_disk
    store_path = paths.models_dir() / "big-gguf" / big_file.name
    assert out == f"{store_path}\n"
    assert store_path.resolve() == final.resolve() and not partial.exists()
    assert final.stat().st_size == SIZE


def settled(server: HubServer, name: str) -> int:
    """Bytes sent of ``name`` once the server has noticed the client is gone."""
    last = -1
    while (now := server.served[name]) != last:
        last = now
        time.sleep(0.2)
    return now
