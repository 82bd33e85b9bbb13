"""The loaded llama.cpp: the ``llama_cpp`` bindings with logging captured, the raw library handle,
and the typed C GGUF parser. Every ctypes call into llama.cpp goes through a handle from here.

Kept apart from ``engine.py`` (generation) so that the modules that only ask llama.cpp a
question (``devices.py``, ``repack.py``, ``gguf/reader.py``) do not import the engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import BackendError

# llama.cpp's log lines, kept so that a failed load or decode can say why.
_LOG_TAIL: deque[str] = deque(maxlen=40)
_log_callback: Any = None  # the ctypes callback must stay referenced for the process lifetime
_LOG_LISTENERS: list[Callable[[str], None]] = []  # see log_listener()
_backend_ready = False


def lib() -> Any:
    """The ``llama_cpp`` module, imported on first use and with llama.cpp's logging captured."""
    global _log_callback, _backend_ready
    import llama_cpp

    if not _backend_ready:

        def _on_log(level: int, text: bytes, _user: Any) -> None:
            line = text.decode("utf-8", errors="replace")
            if os.environ.get("LLAMA3ZH_DEBUG") == "1":
                os.write(2, text)
            _LOG_TAIL.append(line)
            for listener in tuple(_LOG_LISTENERS):
                try:
                    listener(line)
                except Exception:  # noqa: BLE001 - never raise into llama.cpp's C stack
                    pass

        _log_callback = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


@contextlib.contextmanager
def log_listener(fn: Callable[[str], None]) -> Iterator[None]:
    """Call ``fn`` with each piece of text llama.cpp logs while the block runs (progress)."""
    lib()
    _LOG_LISTENERS.append(fn)
    try:
        yield
    finally:
        _LOG_LISTENERS.remove(fn)


def last_log_lines(n: int = 3) -> str:
    """The last non-empty lines llama.cpp logged (for error messages)."""
    joined = "".join(_LOG_TAIL)
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _libllama() -> Any:
    """The libllama handle llama_cpp loaded: ggml and gguf symbols resolve through it.

    Loading libggml*.so by path would not do: the wheel ships copies (libggml.so, .so.0, ...),
    and a second copy in the process has its own logger and device registry.
    """
    import llama_cpp.llama_cpp as bindings

    handle = getattr(bindings, "_lib", None)
    if handle is None:  # layout changed: load the same file again (the same handle)
        base = os.environ.get("LLAMA_CPP_LIB_PATH") or str(Path(bindings.__file__).parent / "lib")
        names = ["libllama.so", "libllama.dylib", "llama.dll"]
        path = next((Path(base) / n for n in names if (Path(base) / n).exists()), None)
        if path is None:
            raise BackendError(
                f"libllama not found in {base}",
                hint="reinstall llama-cpp-python: pip install --force-reinstall llama-cpp-python",
            )
        handle = ctypes.CDLL(str(path))
    return handle


_GGUF: Any = None


class GGUFInitParams(ctypes.Structure):
    """``struct gguf_init_params``: ``ctx`` points to where a ggml context of tensor
    descriptions (shapes, no data) is returned, or is NULL."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def libgguf() -> Any:
    """libggml-base's C GGUF parser, typed: it reads a header in milliseconds
    (``gguf/reader.py`` is the reader built on it). llama.cpp's logging is captured first, so
    ``last_log_lines()`` holds why a file was rejected."""
    global _GGUF
    lib()
    if _GGUF is None:
        g = _libllama()
        vp, i64, cp = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p
        sigs: dict[str, tuple[list[Any], Any]] = {
            "gguf_init_from_file": ([cp, GGUFInitParams], vp),
            "gguf_free": ([vp], None),
            "gguf_get_n_kv": ([vp], i64),
            "gguf_get_key": ([vp, i64], cp),
            "gguf_get_kv_type": ([vp, i64], ctypes.c_int),
            "gguf_get_arr_type": ([vp, i64], ctypes.c_int),
            "gguf_get_val_str": ([vp, i64], cp),
            "gguf_get_val_data": ([vp, i64], vp),
            "gguf_get_arr_n": ([vp, i64], ctypes.c_size_t),
            "gguf_get_arr_data": ([vp, i64], vp),
            "gguf_get_arr_str": ([vp, i64, ctypes.c_size_t], cp),
            "gguf_get_data_offset": ([vp], ctypes.c_size_t),
            "gguf_get_n_tensors": ([vp], i64),
            "gguf_get_tensor_name": ([vp, i64], cp),
            "gguf_get_tensor_offset": ([vp, i64], ctypes.c_size_t),
            "gguf_get_tensor_size": ([vp, i64], ctypes.c_size_t),
            "gguf_get_tensor_type": ([vp, i64], ctypes.c_int),
            "ggml_get_tensor": ([vp, cp], vp),
            "ggml_n_dims": ([vp], ctypes.c_int),
            "ggml_free": ([vp], None),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(g, name)
            fn.argtypes, fn.restype = args, res
        _GGUF = g
    return _GGUF
