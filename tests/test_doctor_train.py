"""doctor's training lines: torch's build and devices, the other packages, a CPU-only torch on an
NVIDIA machine flagged with its fix, and one line (without importing torch) when it is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from llama3zh_local.cli import app, doctor
from llama3zh_local.train import env as tenv
from llama3zh_local.train.env import INSTALL, TORCH_VERSION, TrainEnv, training_environment

runner = CliRunner()
ALL = {
    "torch": "2.13.0+cpu",
    "transformers": "5.24.0",
    "peft": "0.21.2",
    "accelerate": "1.0.0",
    "bitsandbytes": None,
}
NONE = dict.fromkeys(ALL)


@pytest.mark.parametrize(
    ("env", "device", "flagged", "hint"),
    [
        # nothing installed: the install command; on an NVIDIA machine also where CUDA torch is
        (TrainEnv(versions=NONE), "cpu", False, INSTALL),
        (TrainEnv(versions=NONE, gpu_hardware="CUDA"), "cpu", False, "pytorch.org/get-started"),
        # torch without peft: still the install command
        (TrainEnv(versions={**ALL, "peft": None}), "cpu", False, INSTALL),
        # a torch that fails to import (a broken wheel): reinstall
        (TrainEnv(versions=ALL, error="import torch failed: libc10.so"), "cpu", False, INSTALL),
        # a CPU torch on a CPU machine, or on a Mac with MPS: fine
        (TrainEnv(versions=ALL), "cpu", False, None),
        (TrainEnv(versions=ALL, mps_available=True, gpu_hardware="Metal"), "mps", False, None),
        # a CPU torch on an NVIDIA machine: the CUDA wheel index
        (TrainEnv(versions=ALL, gpu_hardware="CUDA"), "cpu", True, "download.pytorch.org/whl/cu"),
        # a CUDA torch that sees no GPU: the driver
        (TrainEnv(versions=ALL, torch_cuda="12.6", gpu_hardware="CUDA"), "cpu", True, "driver"),
        # a CUDA torch on its GPU: nothing to say
        (
            TrainEnv(
                versions=ALL,
                torch_cuda="12.6",
                cuda_available=True,
                cuda_devices=("H100",),
                gpu_hardware="CUDA",
            ),  # fmt: skip
            "cuda",
            False,
            None,
        ),
    ],
)
def test_verdicts(env: TrainEnv, device: str, flagged: bool, hint: str | None) -> None:
    assert env.device == device
    assert env.cpu_only_torch_on_gpu is flagged
    if hint is None:
        assert env.hint is None
    else:
        assert env.hint is not None and hint in env.hint
    assert json.loads(json.dumps(env.as_dict()))["device"] == device


def test_install_command_pins_the_cpu_tested_torch() -> None:
    assert INSTALL == f'pip install torch=={TORCH_VERSION} && pip install "llama3zh-local[train]"'
    assert torch.__version__.split("+")[0] == TORCH_VERSION  # what CI installs (.ci/run)


def test_this_machine() -> None:
    env = training_environment()
    assert env.installed and env.error is None
    assert env.versions["torch"] == torch.__version__
    assert env.cuda_available == torch.cuda.is_available()
    assert env.torch_cuda == torch.version.cuda


def test_doctor_shows_the_training_stack() -> None:
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = {ln.split()[0]: ln for ln in result.stdout.splitlines() if ln.strip()}
    assert torch.__version__ in lines["torch"]
    assert ("CPU build" in lines["torch"]) == (torch.version.cuda is None)
    for name in ("transformers", "peft", "bitsandbytes"):
        assert name in lines
    data = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert data["training"]["installed"] is True
    assert data["training"]["versions"]["torch"] == torch.__version__


def test_doctor_flags_a_cpu_torch_on_an_nvidia_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    flagged = TrainEnv(versions=ALL, gpu_hardware="CUDA")
    monkeypatch.setattr(tenv, "training_environment", lambda: flagged)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "torch cannot use it" in result.stderr
    assert "--index-url https://download.pytorch.org/whl/cu" in result.stderr
    assert "torch cannot use it" not in result.stdout  # results on stdout, warnings on stderr


def test_one_line_when_missing() -> None:
    lines = doctor.training_lines(TrainEnv(versions=NONE, gpu_hardware="CUDA"))
    assert len(lines) == 1
    assert lines[0].startswith("training          not installed (pip install torch==")
    assert "pytorch.org" in lines[0]


def test_without_torch_doctor_does_not_import_it() -> None:
    """A machine without torch: one line, and torch (made unimportable here) is never asked."""
    code = textwrap.dedent(
        """
        import sys
        for name in ("torch", "peft", "transformers", "accelerate", "bitsandbytes"):
            sys.modules[name] = None  # find_spec -> None, import -> ImportError
        from typer.testing import CliRunner
        from llama3zh_local.cli import app
        out = CliRunner().invoke(app, ["doctor"])
        assert out.exit_code == 0, out.output
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("training", "torch"))]
        print(lines)
        assert len(lines) == 1 and "not installed (pip install torch==" in lines[0], lines
        assert sys.modules["torch"] is None
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
