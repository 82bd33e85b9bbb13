"""The user's settings file, ``paths.config_dir()/config.json``: a few remembered choices.

Keys written here: ``auto_source`` (the last ``--source auto`` decision, see ``hub/pull.py``).
Keys a user may set by hand: ``source`` (``hf`` or ``modelscope``: always use that hub).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import paths
from . import atomic


def config_file() -> Path:
    return paths.config_dir() / "config.json"


def load() -> dict[str, Any]:
    """The settings (empty when the file is missing or unreadable)."""
    try:
        data = json.loads(config_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update(**values: Any) -> None:
    """Set keys (None removes one); written to a temporary name and renamed."""
    data = load()
    for key, value in values.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
