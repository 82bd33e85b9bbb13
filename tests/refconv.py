"""llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py) for tests, bench.

They are not in any installable package and need torch + transformers, which llama3zh does not
depend on. This module builds, once per cache, a separate virtual environment with what
llama.cpp's ``requirements-convert_hf_to_gguf.txt`` asks for (torch from the CPU wheel on local
disk), and extracts the converters with their ``conversion/`` package and vendored ``gguf-py``
from the sdist of the installed llama-cpp-python, so the reference is the llama.cpp that the
product runs.

Cache layout under ``models.cache_root()`` (``~/.cache/llama3zh-test``)::

    refconv-<key>/venv/         python with torch, transformers, sentencepiece
    refconv-<key>/llama.cpp/    convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/,
                                gguf-py/
    refconv-<key>/ready.json    written last: what was installed and how long it took

``<key>`` changes with the llama-cpp-python version and the pinned requirements. No pytest here:
``bench/convert_speed.py`` and ``bench/refconv_env.py`` import it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import models

# llama.cpp's requirements/requirements-convert_hf_to_gguf.txt pins transformers 4.57.6 and
# numpy ~2.2.6 (and torch 2.11, of which 2.13's CPU wheel is the one on this machine's disk).
REQUIREMENTS = (
    "torch==2.13.0",
    "transformers==4.57.6",
    "numpy~=2.2.6",
    "sentencepiece>=0.1.98,<0.3.0",
    "protobuf>=4.21.0",
    "tqdm>=4.27",
    "pyyaml>=5.1",
    "requests>=2.25",
)
SDIST_PREFIX = "vendor/llama.cpp/"
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")


@dataclass(frozen=True)
class RefConv:
    """A ready reference-converter environment."""

    root: Path
    python: Path
    llama_cpp: Path  # holds convert_hf_to_gguf.py
    build_seconds: float  # how long building it took (0.0 when it was cached)

    def convert_hf(
        self, model_dir: Path, outfile: Path, *, outtype: str, timeout: float = 3600
    ) -> subprocess.CompletedProcess[str]:
        """Run ``convert_hf_to_gguf.py MODEL_DIR --outfile OUT --outtype T``; raise on failure."""
        return self.run(
            [
                str(self.llama_cpp / "convert_hf_to_gguf.py"),
                str(model_dir),
                "--outfile",
                str(outfile),
                "--outtype",
                outtype,
            ],
            timeout=timeout,
        )

    def run(
        self, args: Sequence[str], *, timeout: float = 3600
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.pop("NO_LOCAL_GGUF", None)  # the converter must use its vendored gguf-py
        env.pop("PYTHONPATH", None)
        done = subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).splitlines()[-25:])
            raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}):\n{tail}")
        return done


def llama_cpp_python_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("llama-cpp-python")


def env_key(version: str) -> str:
    h = hashlib.sha256(json.dumps([version, REQUIREMENTS, sys.version_info[:2]]).encode())
    return h.hexdigest()[:12]


def ensure_refconv(*, root: Path | None = None, log: bool = False) -> RefConv:
    """The reference converters in their own venv, built on first use (a few minutes, once)."""
    version = llama_cpp_python_version()
    base = (models.cache_root() if root is None else root) / f"refconv-{env_key(version)}"
    ready = base / "ready.json"
    seconds = 0.0
    if not ready.is_file():
        base.parent.mkdir(parents=True, exist_ok=True)
        with _lock(base.parent / f".{base.name}.lock"):
            if not ready.is_file():
                t0 = time.perf_counter()
                _build(base, version, log=log)
                seconds = time.perf_counter() - t0
    return RefConv(
        root=base,
        python=base / "venv" / "bin" / "python",
        llama_cpp=base / "llama.cpp",
        build_seconds=seconds,
    )


def _build(base: Path, version: str, *, log: bool) -> None:
    t0 = time.perf_counter()
    if base.exists():  # a build that died halfway
        shutil.rmtree(base)
    base.mkdir(parents=True)
    say = (lambda m: sys.stderr.write(f"[refconv] {m}\n")) if log else (lambda m: None)
    say(f"extracting llama.cpp's converters from the llama-cpp-python {version} sdist")
    _extract(version, base)
    shutil.rmtree(base / "download", ignore_errors=True)
    say("creating the venv and installing " + ", ".join(REQUIREMENTS))
    venv = base / "venv"
    _check([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    _check([*pip, *REQUIREMENTS], timeout=3600)
    seconds = time.perf_counter() - t0
    say(f"ready in {seconds:.0f} s: {base}")
    (base / "ready.json").write_text(
        json.dumps({"llama_cpp_python": version, "requirements": REQUIREMENTS,
                    "seconds": round(seconds, 1)}, indent=2) + "\n",
        encoding="utf-8",
    )  # fmt: skip


def _extract(version: str, base: Path) -> None:
    """llama.cpp's converters, with their ``conversion/`` package and vendored ``gguf-py``."""
    from llama3zh_local.llamacpp import sdist

    def wanted(rel: str) -> bool:
        return "__pycache__" not in rel and any(
            rel == w or (w.endswith("/") and rel.startswith(w)) for w in WANTED
        )

    archive = sdist.find_sdist(version, base / "download")
    sdist.copy_llama_cpp(archive, base / "llama.cpp", wanted)
    if not (base / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
        raise RuntimeError(f"{archive} has no {SDIST_PREFIX}convert_hf_to_gguf.py")


def _check(cmd: Sequence[str], *, timeout: float = 600) -> None:
    done = subprocess.run(
        list(cmd), capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{tail}")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run ``cmd``; its wall time (s) and peak RSS (bytes).

    The peak is the child's VmHWM, polled from /proc: ``ru_maxrss`` of a child includes the
    parent's resident set from before the exec, which would swamp a streaming converter's.
    """
    import re

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=log, env=env)
        status = Path(f"/proc/{proc.pid}/status")
        peak = 0
        while proc.poll() is None:
            try:
                m = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
            except OSError:
                m = None
            if m:
                peak = max(peak, int(m.group(1)) * 1024)
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace").splitlines()[-20:]
            raise RuntimeError(f"{list(cmd)[:3]} failed:\n" + "\n".join(tail))
    return seconds, peak
