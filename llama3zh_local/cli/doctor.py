"""`llama3zh doctor`: what llama.cpp was built with and what this machine has.

Library modules are imported inside the function: `llama3zh --help` starts without them.
"""

from __future__ import annotations

import json
import platform
from typing import TYPE_CHECKING

from . import _output
from ._errors import handle_errors
from ._options import JsonOpt

if TYPE_CHECKING:
    from ..train.env import TrainEnv

QLORA_MISSING = 'not installed (for --bits 4|8: pip install "llama3zh-local[qlora]")'


@handle_errors
def doctor(as_json: JsonOpt = False) -> None:
    """Show llama.cpp's backend, devices, VRAM/RAM and versions; say how to enable the GPU.

    Also reports the training stack (llama3zh train): torch, its CUDA / MPS support,
    transformers, peft and bitsandbytes, and flags a CPU-only torch on a machine with an
    NVIDIA GPU.

    Examples:

      llama3zh doctor

      llama3zh doctor --json
    """
    from .. import __version__, hardware
    from ..llamacpp import repack
    from ..train.env import training_environment

    hw = hardware.detect()
    cpu_repack = repack.current()
    hint = hardware.reinstall_hint(hw)
    gib = hardware.GIB
    train = training_environment()
    data = {
        "llama3zh": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "llama_cpp_python": hw.llama_cpp_python,
        "backend": hw.backend,
        "backends": list(hw.backends),
        "gpu_offload": hw.gpu_offload,
        "devices": [
            {
                "name": d.name,
                "description": d.description,
                "kind": d.kind,
                "free_bytes": d.free,
                "total_bytes": d.total,
            }
            for d in hw.devices
        ],
        "ram_total_bytes": hw.ram_total,
        "ram_available_bytes": hw.ram_available,
        "gpu_hardware": hardware.gpu_hardware_present(),
        "system_info": hw.system_info,
        "cpu_repack": cpu_repack.as_dict(),
        "reinstall": hint,
        "training": train.as_dict(),
    }
    if as_json:
        _output.result(json.dumps(data, indent=2))
        return
    lines = [
        f"llama3zh          {__version__} (Python {data['python']}, {data['platform']})",
        f"llama-cpp-python  {hw.llama_cpp_python}",
        f"backend           {hw.backend}"
        + ("" if hw.gpu_offload else " (this build cannot offload to a GPU)"),
        f"RAM               {hw.ram_available / gib:.1f} GiB free of {hw.ram_total / gib:.1f} GiB",
    ]
    for d in hw.devices:
        mem = f"{d.free / gib:.1f} GiB free of {d.total / gib:.1f} GiB" if d.total else ""
        lines.append(f"device            {d.name} ({d.kind}): {d.description} {mem}".rstrip())
    lines.append(f"features          {hw.system_info}")
    lines.append(f"weight repacking  {'on' if cpu_repack.enabled else 'off'}: {cpu_repack.reason}")
    lines += training_lines(train)
    for line in lines:
        _output.result(line)
    if hint:
        _output.warn(
            f"this machine has a {data['gpu_hardware']} GPU but llama-cpp-python was built for the "
            f"CPU only. Reinstall it with GPU support:\n  {hint}"
        )
    if train.installed and train.hint:
        _output.warn(f"this machine has an NVIDIA GPU but torch cannot use it: {train.hint}")


def training_lines(env: TrainEnv) -> list[str]:
    """The training stack in doctor's layout: one line when it is not installed."""
    if not env.installed:
        what = "not installed" if not env.error else env.error
        missing = (
            f"; missing {', '.join(env.missing)}" if env.missing and env.versions["torch"] else ""
        )
        return [f"training          {what}{missing} ({env.hint})"]
    v = env.versions
    if env.cuda_available:
        build = f"CUDA {env.torch_cuda}: {', '.join(env.cuda_devices)}"
    elif env.torch_cuda:
        build = f"CUDA {env.torch_cuda} build, no GPU available"
    else:
        build = "CPU build"
    if env.mps_available:
        build += ", MPS available"
    qlora = v["bitsandbytes"] or QLORA_MISSING
    return [
        f"torch             {v['torch']} ({build}); training runs on {env.device}",
        f"transformers      {v['transformers']}",
        f"peft              {v['peft']}",
        f"bitsandbytes      {qlora}",
    ]
