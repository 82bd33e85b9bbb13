"""kill -9 anywhere in `llama3zh run` (pull, convert, imatrix, quantize), then run it again.

Each trial starts `llama3zh run instruct-v3 --imatrix` as a real process against the loopback
hub, waits until a chosen step has started, sleeps a seeded random part of that step's length
(measured in an uninterrupted reference run), and sends SIGKILL. The rerun must end with every
artifact byte-identical to the reference run's, and no temporary file anywhere.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama3zh_local.files import state

from . import models
from .hub_server import HubServer, client_env

pytestmark = pytest.mark.slow

V3 = "llama-3-chinese-8b-instruct-v3"
STAGES = ("pull", "convert", "imatrix", "quantize")
TRIALS = 24  # 6 kill points per stage
ARGS = ["run", "instruct-v3", "--imatrix", "--chunks", "2", "-y", "--source", "hf"]
STEP_LINE = re.compile(r"^\[(\d)/(\d)\] (\w+): (?!done)")
# bookkeeping that records times, not artifacts
NOT_ARTIFACTS = {state.STATE_NAME, state.STATE_NAME + ".lock", ".llama3zh.json", "rates.json"}


@pytest.fixture(scope="module")
def server(tiny_llama3_gguf: Path, tiny_llama3_hf: Path) -> Iterator[HubServer]:
    # ~1.5 s to pull the 41 MB checkpoint, so kills land inside the download
    with HubServer(throttle=28e6) as s:
        s.add_repo(f"hfl/{V3}-gguf", {"ggml-model-q4_k.gguf": tiny_llama3_gguf})
        s.add_repo(f"hfl/{V3}", {p.name: p for p in tiny_llama3_hf.iterdir()})
        yield s


class Run:
    """`llama3zh run` in a subprocess, its step lines timestamped as they arrive."""

    def __init__(self, home: Path, url: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(client_env(url, home))
        env.update(
            LLAMA3ZH_HOME=str(home / "llama3zh"),
            HF_HOME=str(home / "hf"),
            MODELSCOPE_CACHE=str(home / "ms"),
            XDG_CACHE_HOME=str(home / "xdg"),
            LLAMA3ZH_CONFIG_DIR=str(home / "config"),
            LLAMA3ZH_TOOLS_DIR=str(models.cache_root() / "tools"),
        )
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama3zh_local", *ARGS],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.started: dict[str, float] = {}
        self.lines: list[str] = []
        self.stdout = ""
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                m = STEP_LINE.match(line)
                if m:
                    self.started.setdefault(m[3], time.monotonic() - self.t0)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, stage: str, timeout: float = 120) -> bool:
        """Until ``stage`` has started (False: the run ended first)."""
        with self._seen:
            return self._seen.wait_for(
                lambda: stage in self.started or self.proc.poll() is not None, timeout
            ) and (stage in self.started)

    def finish(self, timeout: float = 300) -> int:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def kill(self, sig: int = signal.SIGKILL) -> str:
        """Send ``sig`` (SIGKILL: no cleanup possible); the step it was in."""
        self.proc.send_signal(sig)
        self.rc = self.finish()
        landed = [s for s in STAGES if s in self.started]
        return landed[-1] if landed else "startup"


def artifacts(home: Path) -> dict[str, str]:
    """sha256 of every model file (links followed), by path under the models folder."""
    root = home / "llama3zh" / "models"
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in NOT_ARTIFACTS:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temporaries(home: Path) -> list[str]:
    return sorted(
        str(p.relative_to(home))
        for p in home.rglob("*")
        if ".tmp-" in p.name or p.name.endswith((".incomplete", ".tmp")) or "-pid" in p.name
    )


@pytest.fixture(scope="module")
def reference(server: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("reference")
    run = Run(home, server.url)
    rc = run.finish()
    assert rc == 0, "\n".join(run.lines)
    end = time.monotonic() - run.t0
    starts = [run.started[s] for s in STAGES] + [end]
    assert temporaries(home) == []
    return {
        "artifacts": artifacts(home),
        "stdout": run.stdout,
        "length": {s: max(0.05, starts[i + 1] - starts[i]) for i, s in enumerate(STAGES)},
    }


def test_reference_run_made_every_artifact(reference: dict) -> None:
    names = set(reference["artifacts"])
    gguf = f"{V3}-gguf"
    assert {f"{gguf}/ggml-model-f16.gguf", f"{gguf}/ggml-model-q4_k-im.gguf"} <= names
    assert any(n.startswith(f"{gguf}/.imatrix/") for n in names)
    assert f"{V3}/model.safetensors" in names
    assert reference["stdout"].strip().endswith("ggml-model-q4_k-im.gguf")


def test_sigkill_anywhere_then_rerun_gives_identical_artifacts(
    server: HubServer, reference: dict, tmp_path: Path
) -> None:
    landed: dict[str, int] = dict.fromkeys([*STAGES, "startup"], 0)
    for trial in range(TRIALS):
        rng = random.Random(1000 + trial)
        stage = STAGES[trial % len(STAGES)]
        home = tmp_path / f"trial-{trial}"
        run = Run(home, server.url)
        if not run.wait_for(stage):
            run.finish()
            pytest.fail(f"trial {trial}: the run ended before {stage}:\n" + "\n".join(run.lines))
        time.sleep(rng.random() * reference["length"][stage])
        landed[run.kill()] += 1

        again = Run(home, server.url)
        rc = again.finish()
        assert rc == 0, f"trial {trial} ({stage}): rerun failed:\n" + "\n".join(again.lines)
        assert artifacts(home) == reference["artifacts"], f"trial {trial} ({stage})"
        assert temporaries(home) == [], f"trial {trial} ({stage})"
        target = home / "llama3zh" / "models" / f"{V3}-gguf" / "ggml-model-q4_k-im.gguf"
        assert again.stdout == f"{target}\n"
    print(f"kills landed in: {landed}")  # shown with pytest -s
    # the kills really were spread over the steps (a step may end before its kill lands)
    assert sum(landed.values()) == TRIALS
    assert all(landed[s] >= 3 for s in STAGES), landed


def test_ctrl_c_in_each_step_cleans_up_at_once(
    server: HubServer, reference: dict, tmp_path: Path
) -> None:
    """SIGINT (Ctrl-C): exit 130 and no temporary file even before the rerun; only a resumable
    partial download may stay, which the rerun continues."""
    for trial, stage in enumerate(STAGES):
        home = tmp_path / f"ctrl-c-{stage}"
        run = Run(home, server.url)
        assert run.wait_for(stage), "\n".join(run.lines)
        time.sleep(random.Random(trial).random() * reference["length"][stage] / 2)
        run.kill(signal.SIGINT)
        print(f"ctrl-c in {stage}: exit {run.rc}")  # shown with pytest -s
        if run.rc == 0:  # the step (and the run) ended before the signal
            continue
        assert run.rc == 130 and "Interrupted." in run.lines, "\n".join(run.lines)
        assert not any("Traceback" in ln for ln in run.lines)
        assert [t for t in temporaries(home) if not t.endswith(".incomplete")] == [], stage

        again = Run(home, server.url)
        assert again.finish() == 0, "\n".join(again.lines)
        assert artifacts(home) == reference["artifacts"], stage
        assert temporaries(home) == [], stage
