"""Where llama3zh keeps models, caches and its config (all overridable by environment)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The root of llama3zh's own data: ``$LLAMA3ZH_HOME``, else ``$XDG_CACHE_HOME/llama3zh``."""
    if env := os.environ.get("LLAMA3ZH_HOME"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "llama3zh"


def models_dir() -> Path:
    """One folder per model repo (``<repo-name>/<file>``): stable local paths of pulled models."""
    return home() / "models"


def tools_dir() -> Path:
    """llama.cpp tools compiled against the installed llama-cpp-python, one folder per version."""
    return home() / "tools"


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/llama3zh`` (chat history, remembered choices)."""
    if env := os.environ.get("LLAMA3ZH_CONFIG_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "llama3zh"


def data_file(name: str) -> Path:
    """A file shipped in ``llama3zh_local/data`` (calibration and evaluation text, templates)."""
    from importlib import resources  # here, not at the top: `llama3zh --help` does not need it

    return Path(str(resources.files("llama3zh_local.data").joinpath(name)))
