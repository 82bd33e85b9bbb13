"""A disk that fills up during convert and quantize, on a real (small) tmpfs.

The output folder is a tmpfs mounted for the test, holding a good artifact from before. The
command starts with enough free space (so its own up-front check passes); once its temporary
file appears, another writer fills the disk, as a download or a second job would. The command
must fail with one clear line, leave nothing under a final name but the old good file, and
leave no temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def can_mount() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount")


@contextlib.contextmanager
def tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``700m``) at ``tmp_path/disk``; skips the test unless root on Linux."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root on Linux")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 700 MB tmpfs at ``tmp_path/disk`` (root only: CI runs as root)."""
    with tmpfs(tmp_path, "700m") as mnt:
        yield mnt


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill_when_temp_appears(folder: Path, stop: threading.Event) -> threading.Thread:
    """Write filler files into ``folder`` until ENOSPC, once a ``.*.tmp-PID`` file shows up."""

    def work() -> None:
        while not stop.is_set():
            if any(".tmp-" in p.name for p in folder.iterdir()):
                break
            time.sleep(0.002)
        n = 0
        chunk = b"\0" * (1 << 20)
        while not stop.is_set():
            try:
                with open(folder / f"filler-{n}", "wb") as fh:
                    for _ in range(64):
                        fh.write(chunk)
                n += 1
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    return
                raise

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llama3zh_local", *args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def check_clean_failure(proc: subprocess.CompletedProcess[str], disk: Path, good: Path,
                        good_sha: str, needle: str) -> None:  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    hints = [ln for ln in proc.stderr.splitlines() if ln.startswith("Hint:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert len(hints) == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert sha(good) == good_sha  # the previous good artifact is untouched
    left = sorted(p.name for p in disk.iterdir() if not p.name.startswith("filler-"))
    assert left == [good.name], left  # nothing else under a final name, no temporary file


def test_disk_fills_during_convert(small_disk: Path, smollm2_hf: Path) -> None:
    good = small_disk / "ggml-model-f16.gguf"
    first = run_cli("convert", str(smollm2_hf), "-o", str(good))
    assert first.returncode == 0, first.stderr
    good_sha = sha(good)

    stop = threading.Event()
    filler = fill_when_temp_appears(small_disk, stop)
    proc = run_cli("convert", str(smollm2_hf), "-o", str(good), "--force")
    stop.set()
    filler.join(30)
    check_clean_failure(proc, small_disk, good, good_sha, "is full")

    for f in small_disk.glob("filler-*"):
        f.unlink()
    again = run_cli("convert", str(smollm2_hf), "-o", str(good), "--force")
    assert again.returncode == 0, again.stderr
    assert sha(good) == good_sha  # the rerun, with room again, makes the same file


def test_disk_fills_during_quantize(small_disk: Path, smollm2_hf: Path, tmp_path: Path) -> None:
    f16 = tmp_path / "ggml-model-f16.gguf"
    assert run_cli("convert", str(smollm2_hf), "-o", str(f16)).returncode == 0
    good = small_disk / "ggml-model-q8_0.gguf"
    first = run_cli("quantize", str(f16), "-q", "Q8_0", "-o", str(good))
    assert first.returncode == 0, first.stderr
    good_sha = sha(good)

    stop = threading.Event()
    filler = fill_when_temp_appears(small_disk, stop)
    proc = run_cli("quantize", str(f16), "-q", "Q8_0", "-o", str(good), "--force")
    stop.set()
    filler.join(30)
    check_clean_failure(proc, small_disk, good, good_sha, "full")

    for f in small_disk.glob("filler-*"):
        f.unlink()
    again = run_cli("quantize", str(f16), "-q", "Q8_0", "-o", str(good), "--force")
    assert again.returncode == 0, again.stderr
    assert sha(good) == good_sha


def test_no_room_at_all_is_refused_before_writing(small_disk: Path, smollm2_hf: Path) -> None:
    with open(small_disk / "filler-0", "wb") as fh:
        fh.truncate(0)
        try:
            while True:
                fh.write(b"\0" * (8 << 20))
        except OSError:
            pass
    proc = run_cli("convert", str(smollm2_hf), "-o", str(small_disk / "ggml-model-f16.gguf"))
    assert proc.returncode == 1 and "not enough free space" in proc.stderr, proc.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler-0"]
