"""What this machine trains with: torch (its build, CUDA, MPS), transformers, peft, bitsandbytes.

``doctor`` reports it. Versions come from the installed distributions' metadata, so a machine
without torch answers at once; torch itself is imported only when it is installed, to ask about
CUDA and MPS. A CPU-only torch on a machine with an NVIDIA GPU is flagged with the command that
installs a CUDA build.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

# The torch the CI and the README install first: its CPU wheel (a plain `pip install torch` on
# Linux pulls the multi-GB CUDA build and its NVIDIA libraries).
TORCH_VERSION = "2.13.0"
INSTALL = f'pip install torch=={TORCH_VERSION} && pip install "llama3zh-local[train]"'
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_PAGE = "https://pytorch.org/get-started/locally/"
CUDA_HINT = f"for an NVIDIA GPU, install a CUDA build of torch as {CUDA_PAGE} shows"
# What training imports; bitsandbytes only for --bits 4|8 (the [qlora] extra).
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")
REQUIRED = ("torch", "transformers", "peft", "accelerate")


@dataclass(frozen=True)
class TrainEnv:
    """The training stack on this machine."""

    versions: dict[str, str | None]  # distribution -> version, None when not installed
    torch_cuda: str | None = None  # the CUDA version torch was built with (None: a CPU build)
    cuda_available: bool = False  # torch.cuda.is_available()
    cuda_devices: tuple[str, ...] = ()  # torch.cuda.get_device_name(i)
    mps_available: bool = False  # torch.backends.mps.is_available() (Apple silicon)
    gpu_hardware: str | None = None  # hardware.gpu_hardware_present(): "CUDA", "Metal", None
    error: str | None = None  # torch is installed but failed to import (a broken wheel)

    @property
    def installed(self) -> bool:
        """Everything ``llama3zh train`` needs is there (bitsandbytes is for --bits only)."""
        return all(self.versions.get(p) for p in REQUIRED) and self.error is None

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p for p in REQUIRED if not self.versions.get(p))

    @property
    def device(self) -> str:
        """Where training would run: cuda, mps or cpu."""
        if self.cuda_available:
            return "cuda"
        return "mps" if self.mps_available else "cpu"

    @property
    def cpu_only_torch_on_gpu(self) -> bool:
        """An NVIDIA GPU is here but torch cannot use it: a CPU build (or a broken driver)."""
        return (
            self.gpu_hardware == "CUDA"
            and self.versions.get("torch") is not None
            and self.error is None
            and not self.cuda_available
        )

    @property
    def hint(self) -> str | None:
        """The one command to run next, or None when training can use what this machine has."""
        if not self.installed:
            return f"{INSTALL} ({CUDA_HINT})" if self.gpu_hardware == "CUDA" else INSTALL
        if self.cpu_only_torch_on_gpu:
            if self.torch_cuda is None:
                return (
                    "this torch is a CPU build: install a CUDA build, e.g. pip install "
                    f"--force-reinstall torch=={self.versions['torch']} --index-url "
                    f"https://download.pytorch.org/whl/cu126 (pick the CUDA version at {CUDA_PAGE})"
                )
            return (
                f"torch was built for CUDA {self.torch_cuda} but sees no GPU: check the NVIDIA "
                f"driver (nvidia-smi) and that it supports CUDA {self.torch_cuda}"
            )
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "installed": self.installed,
            "versions": dict(self.versions),
            "torch_cuda": self.torch_cuda,
            "cuda_available": self.cuda_available,
            "cuda_devices": list(self.cuda_devices),
            "mps_available": self.mps_available,
            "device": self.device,
            "cpu_only_torch_on_gpu": self.cpu_only_torch_on_gpu,
            "error": self.error,
            "hint": self.hint,
        }


def version_of(dist: str) -> str | None:
    """The installed version of a distribution, without importing it; None when absent."""
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    # metadata left behind by an uninstalled package: the module must be importable too
    return version if importlib.util.find_spec(dist) is not None else None


def training_environment(*, gpu_hardware: Callable[[], str | None] | None = None) -> TrainEnv:
    """Report the training stack: versions, torch's build, CUDA and MPS availability.

    Args:
        gpu_hardware: tells whether this machine has a GPU ("CUDA", "Metal" or None); default
            ``hardware.gpu_hardware_present``.
    """
    from .. import hardware

    present = (gpu_hardware or hardware.gpu_hardware_present)()
    versions = {p: version_of(p) for p in PACKAGES}
    if versions["torch"] is None:
        return TrainEnv(versions=versions, gpu_hardware=present)
    try:
        import torch
    except Exception as e:  # a broken wheel (missing libraries, ABI) fails in many ways
        return TrainEnv(
            versions=versions, gpu_hardware=present, error=f"import torch failed: {e}".strip()
        )
    cuda_ok = bool(torch.cuda.is_available())
    names = (
        tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if cuda_ok
        else ()
    )
    mps = getattr(torch.backends, "mps", None)
    return TrainEnv(
        versions=versions,
        torch_cuda=torch.version.cuda,
        cuda_available=cuda_ok,
        cuda_devices=names,
        mps_available=bool(mps is not None and mps.is_available()),
        gpu_hardware=present,
    )
