"""The installed llama.cpp libraries: their version, folder and identity, and the tool cache root.

Everything here answers "which llama.cpp is this" without loading it (``llama_cpp`` loads the
libraries on import): the tool builds (``tools.py``) and the repack verdicts (``repack.py``) are
cached under keys made from these answers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from .. import paths
from ..errors import BackendError

TOOLS_DIR_ENV = "LLAMA3ZH_TOOLS_DIR"
DIST = "llama-cpp-python"


def tools_root() -> Path:
    """The tool cache: ``$LLAMA3ZH_TOOLS_DIR``, else ``paths.tools_dir()``."""
    if env := os.environ.get(TOOLS_DIR_ENV):
        return Path(env).expanduser()
    return paths.tools_dir()


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version (without importing it, which loads the libraries)."""
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise BackendError(
            "llama-cpp-python is not installed", hint=f"pip install {DIST}"
        ) from None


def lib_dir() -> Path:
    """Where llama_cpp loads libllama and libggml from (``$LLAMA_CPP_LIB_PATH`` wins, as there)."""
    if env := os.environ.get("LLAMA_CPP_LIB_PATH"):
        return Path(env)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("llama-cpp-python is not installed", hint=f"pip install {DIST}")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def cache_key(version: str) -> str:
    """The cache folder name of a llama-cpp-python version (``0.3.36``, ``0.3.36+cu124``)."""
    key = re.sub(r"[^A-Za-z0-9._+-]", "_", version.strip())
    if not key.strip("."):
        raise ValueError(f"not a version: {version!r}")
    return key


_LIBRARY_KEYS: dict[Path, str] = {}


def library_key(libs: Path | None = None) -> str:
    """``libs-<hash>`` of a folder of llama.cpp libraries: its path and its files' contents.

    A tool's RUNPATH names the folder it was linked to, so the folder is part of the key; the
    contents tell a rebuilt or reinstalled llama-cpp-python (same version, other flags) apart.
    """
    folder = (libs or lib_dir()).resolve()
    if folder not in _LIBRARY_KEYS:
        h = hashlib.sha256(str(folder).encode())
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file() and _is_library(p.name))
        except OSError:
            files = []
        for path in files:
            h.update(b"\0" + path.name.encode() + b"\0")
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            h.update(digest.digest())
        _LIBRARY_KEYS[folder] = f"libs-{h.hexdigest()[:16]}"
    return _LIBRARY_KEYS[folder]


def _is_library(name: str) -> bool:
    return ".so" in name or name.endswith((".dylib", ".dll"))


def tool_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a tool: llama_cpp's library dir first on the loader path.

    The rpath points at the libraries the tool was linked with; this makes a tool follow
    ``LLAMA_CPP_LIB_PATH`` and a reinstalled llama-cpp-python the way ``llama_cpp`` does.
    """
    env = dict(os.environ if base is None else base)
    var = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    env[var] = os.pathsep.join(p for p in (str(lib_dir()), env.get(var, "")) if p)
    return env
