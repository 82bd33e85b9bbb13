"""The compute devices llama.cpp can use (CPU, GPUs), from ggml's device registry.

What ``hardware.detect`` (and ``llama3zh doctor``) ask; the engine loads and runs models. The
registry is read through the libllama handle that ``llama_cpp`` loaded (``native._libllama``).
"""

from __future__ import annotations

import ctypes
from typing import Any

from .native import _libllama, lib

_GGML: Any = None
_DEV_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def _libggml() -> Any:
    """ggml's device registry functions, typed."""
    global _GGML
    if _GGML is None:
        g = _libllama()
        g.ggml_backend_dev_count.restype = ctypes.c_size_t
        g.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        g.ggml_backend_dev_get.restype = ctypes.c_void_p
        for fn in (g.ggml_backend_dev_name, g.ggml_backend_dev_description):
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_char_p
        g.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        g.ggml_backend_dev_type.restype = ctypes.c_int
        g.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_size_t),
        ]
        g.ggml_backend_dev_memory.restype = None
        _GGML = g
    return _GGML


def backend_devices() -> list[tuple[str, str, str, int, int]]:
    """(name, description, kind, free bytes, total bytes) of each device llama.cpp can use."""
    lib()
    g = _libggml()
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            (
                g.ggml_backend_dev_name(dev).decode(errors="replace"),
                g.ggml_backend_dev_description(dev).decode(errors="replace"),
                _DEV_KINDS.get(g.ggml_backend_dev_type(dev), "other"),
                free.value,
                total.value,
            )
        )
    return out


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU at all."""
    return bool(lib().llama_supports_gpu_offload())


def system_info() -> str:
    """llama.cpp's one-line list of the CPU features and backends it was built with."""
    return lib().llama_print_system_info().decode("utf-8", errors="replace").strip()


def bindings_version() -> str:
    """The installed llama-cpp-python's version."""
    return str(getattr(lib(), "__version__", "unknown"))
