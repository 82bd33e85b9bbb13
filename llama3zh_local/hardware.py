"""What this machine can run: llama.cpp's backend, GPU devices, VRAM/RAM, and the offload plan."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .gguf.info import GGUFInfo
from .llamacpp import devices as llama_devices

GIB = 1024**3
# GGML_MAX_N_THREADS (ggml.h): llama.cpp's thread pool holds no more, and asking for far more
# threads than that makes it throw std::bad_alloc (an abort, not an error).
MAX_THREADS = 512
# llama.cpp keeps n_ctx in a uint32_t (and positions in int32_t): larger values wrap around.
MAX_CTX = 1 << 24
# VRAM kept free for the compute buffers, the CUDA/Metal context and other programs.
VRAM_RESERVE = 768 * 1024**2


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # "cpu", "gpu", "igpu", "accel"
    free: int
    total: int


@dataclass(frozen=True)
class Hardware:
    """The installed llama.cpp build and the devices it sees."""

    backends: tuple[str, ...]  # e.g. ("CPU",) or ("CUDA", "CPU")
    gpu_offload: bool  # llama.cpp built with a GPU backend
    devices: tuple[Device, ...]
    ram_total: int
    ram_available: int
    system_info: str
    llama_cpp_python: str

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind in ("gpu", "igpu"))

    @property
    def backend(self) -> str:
        gpu = [b for b in self.backends if b not in ("CPU", "BLAS", "AMX")]
        return gpu[0] if gpu else "CPU"


def system_memory() -> tuple[int, int]:
    """(total, available) bytes of RAM."""
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info[k] = int(v.split()[0]) * 1024
        return info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total // 2


def gpu_hardware_present() -> str | None:
    """A GPU this machine has, whatever llama.cpp was built with: "CUDA", "Metal" or None."""
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "Metal"
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi"):
        return "CUDA"
    return None


REINSTALL = {
    "CUDA": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python==VERSION",
    "Metal": 'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python==VERSION",
}


def detect() -> Hardware:
    """Ask the installed llama.cpp which backends and devices it has."""
    devices = tuple(Device(*d) for d in llama_devices.backend_devices())
    backends: list[str] = []
    for dev in devices:
        reg = dev.name.rstrip("0123456789").upper()
        if reg not in backends:
            backends.append(reg)
    total, avail = system_memory()
    return Hardware(
        backends=tuple(backends) or ("CPU",),
        gpu_offload=llama_devices.supports_gpu_offload(),
        devices=devices,
        ram_total=total,
        ram_available=avail,
        system_info=llama_devices.system_info(),
        llama_cpp_python=llama_devices.bindings_version(),
    )


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, else all of them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> None:
    """Refuse a thread count this machine cannot run (None: the default, always fine).

    More threads than CPUs only slows llama.cpp down; far more makes it abort.

    Raises:
        UsageError: below 1, or more than the CPUs this process may use.
    """
    if threads is None:
        return
    n_cpu = cpu_count()
    limit = min(n_cpu, MAX_THREADS)
    if not 1 <= threads <= limit:
        raise UsageError(
            f"--threads {threads}: must be from 1 to {limit} (the CPUs this process may use)",
            hint="leave it out for the default (the physical cores), or give a smaller number",
        )


def check_ctx(n_ctx: int, info: GGUFInfo, *, ram_total: int | None = None) -> None:
    """Refuse a context llama.cpp cannot honour for this model on this machine.

    Checked: at least 16 tokens; no more than the model was trained on (its
    ``context_length``); no value that wraps around llama.cpp's 32-bit counters; a KV cache
    (f16) that fits in this machine's RAM and GPU memory together.

    Raises:
        UsageError: which limit, and the largest value that works.
    """
    train = info.n_ctx_train
    if n_ctx < 16:
        raise UsageError(f"--ctx {n_ctx}: must be at least 16 tokens", hint="e.g. --ctx 4096")
    if train > 0 and n_ctx > train:
        raise UsageError(
            f"--ctx {n_ctx} exceeds the {train} tokens {info.path.name} was trained on",
            hint=f"use --ctx {train} or less (beyond it the model's answers fall apart)",
        )
    if n_ctx > MAX_CTX:
        raise UsageError(
            f"--ctx {n_ctx}: more than llama.cpp handles ({MAX_CTX} tokens)",
            hint=f"use --ctx {min(train or MAX_CTX, MAX_CTX)} or less",
        )
    if ram_total is None:
        ram_total = system_memory()[0]
    kv = info.kv_bytes_per_token * n_ctx
    if kv > ram_total:
        fits = max(16, ram_total // max(info.kv_bytes_per_token, 1) // 2)
        raise UsageError(
            f"--ctx {n_ctx}: its KV cache alone needs {kv / GIB:.1f} GiB, this machine has "
            f"{ram_total / GIB:.1f} GiB of memory",
            hint=f"use a smaller context, e.g. --ctx {1 << (fits.bit_length() - 1)}",
        )


def reinstall_hint(hw: Hardware) -> str | None:
    """The command that gives GPU offload, when a GPU is there but the build cannot use it."""
    present = gpu_hardware_present()
    if present and not hw.gpu_offload:
        return REINSTALL[present].replace("VERSION", hw.llama_cpp_python)
    return None


@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int  # what llama.cpp gets: 0..n_layer+1 (n_layer+1 includes the output head)
    n_layer: int
    device: str | None
    summary: str  # one line for the user


def parse_gpu_layers(value: str) -> int | None:
    """``auto`` -> None, ``all`` -> -1, else a non-negative integer."""
    v = value.strip().lower()
    if v == "auto":
        return None
    if v in ("all", "-1"):
        return -1
    try:
        n = int(v)
    except ValueError:
        raise UsageError(
            f"-ngl {value!r}: expected auto, all or a number of layers",
            hint="for example `-ngl auto` (default) or `-ngl 20`",
        ) from None
    if n < 0:
        raise UsageError(
            f"-ngl {n}: must be >= 0 (or auto, all)",
            hint="for example `-ngl auto` (default) or `-ngl 20`",
        )
    return n


def plan_offload(info: GGUFInfo, *, n_ctx: int, requested: int | None, hw: Hardware) -> OffloadPlan:
    """How many layers go to the GPU.

    ``requested`` None means auto: as many layers as fit the free VRAM of the largest GPU, each
    layer costing its weights plus its share of the KV cache for ``n_ctx``; the output head
    counts as one more layer.
    """
    n_layer = info.n_layer
    if requested is not None and requested > n_layer + 1:
        raise UsageError(
            f"-ngl {requested}: {info.path.name} has {n_layer} layers "
            f"({n_layer + 1} with the output layer)",
            hint=f"use -ngl all, or a number from 0 to {n_layer + 1}",
        )
    gpus = sorted(hw.gpus, key=lambda d: d.free, reverse=True)
    if not hw.gpu_offload or not gpus:
        reason = (
            "llama-cpp-python was built without GPU support"
            if not hw.gpu_offload
            else ("no GPU device found")
        )
        if requested:
            return OffloadPlan(0, n_layer, None, f"CPU only ({reason}); -ngl {requested} ignored")
        return OffloadPlan(0, n_layer, None, f"CPU only ({reason})")
    gpu = gpus[0]
    if requested is not None:
        n = n_layer + 1 if requested == -1 else requested
        return OffloadPlan(n, n_layer, gpu.name, f"{n}/{n_layer + 1} layers on {gpu.description}")
    per_layer = info.layer_bytes / n_layer + info.kv_bytes_per_token * n_ctx / n_layer
    budget = gpu.free - VRAM_RESERVE
    if budget >= per_layer * n_layer + info.output_bytes:
        n = n_layer + 1
    else:
        n = max(0, min(n_layer, int(budget // per_layer)))
    free_gib = gpu.free / GIB
    summary = f"{n}/{n_layer + 1} layers on {gpu.description} ({free_gib:.1f} GiB free)"
    if n <= n_layer:
        summary += "; the rest on the CPU (use a smaller quant or --ctx to fit more)"
    return OffloadPlan(n, n_layer, gpu.name, summary)
