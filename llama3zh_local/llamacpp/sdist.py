"""llama.cpp's source, as the installed llama-cpp-python's sdist vendors it.

The tools are compiled from exactly the llama.cpp that the installed libraries were built from:
the sdist of the same llama-cpp-python version (``pip download``, or a file or folder given in
``$LLAMA3ZH_LLAMA_CPP_SOURCE`` on machines without PyPI access).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendError
from .installed import DIST
from .process import Say, quiet, run, tail

SOURCE_ENV = "LLAMA3ZH_LLAMA_CPP_SOURCE"
# Where the sdist keeps llama.cpp.
SDIST_LLAMA_CPP = "vendor/llama.cpp"


def sdist_requirement(version: str) -> str:
    """The pip requirement of the sdist: a local version label (``+cu124``) is not on PyPI."""
    return f"{DIST}=={version.split('+', 1)[0]}"


def commit_from_changelog(text: str, version: str) -> str | None:
    """The llama.cpp commit a llama-cpp-python release vendors, from its CHANGELOG.md."""
    public = re.escape(version.split("+", 1)[0])
    section = re.search(rf"^## \[{public}\].*?$(.*?)(?=^## \[|\Z)", text, re.M | re.S)
    if section is None:
        return None
    found = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section.group(1))
    return found.group(1) if found else None


def find_sdist(version: str, into: Path, *, progress: Say | None = None) -> Path:
    """The llama-cpp-python sdist (file or folder): ``$LLAMA3ZH_LLAMA_CPP_SOURCE``, else pip
    downloads it into ``into``."""
    say = progress or quiet
    if origin := os.environ.get(SOURCE_ENV):
        say(f"llama.cpp source: {origin}")
        return Path(origin).expanduser()
    say(f"downloading the llama.cpp source ({sdist_requirement(version)} sdist, pip)")
    return _pip_download_sdist(version, into)


def _pip_download_sdist(version: str, into: Path) -> Path:
    # --no-binary for this one package only: the sdist is the point, and pip may still take
    # wheels for the build backend it installs to read the sdist's metadata.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", DIST,
           sdist_requirement(version), "-d", str(into)]  # fmt: skip
    done = run(cmd, timeout=1800)
    found = sorted(into.glob("*.tar.gz")) if done.returncode == 0 else []
    if not found:
        raise BackendError(
            f"pip could not download the {sdist_requirement(version)} sdist: "
            f"{tail(done.stdout + done.stderr)}",
            hint=f"check the network to PyPI, or download it elsewhere and set {SOURCE_ENV}=<file>",
        )
    return found[0]


def copy_llama_cpp(sdist: Path, dest: Path, wanted: Callable[[str], bool]) -> str | None:
    """Copy the files of an sdist's (file or folder) llama.cpp tree for which ``wanted(path
    inside the tree)`` holds to ``dest``; returns the sdist's CHANGELOG."""
    if sdist.is_dir():
        root = sdist / SDIST_LLAMA_CPP if (sdist / SDIST_LLAMA_CPP).is_dir() else sdist
        for path in root.rglob("*"):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and wanted(rel):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest / rel)
        changelog = sdist / "CHANGELOG.md"
        return changelog.read_text("utf-8", errors="replace") if changelog.is_file() else None
    if not tarfile.is_tarfile(sdist):
        raise BackendError(f"{sdist} is not an sdist archive", hint=f"check {SOURCE_ENV}")
    text = None
    with tarfile.open(sdist) as tar:
        for member in tar:
            _top, _, inner = member.name.partition("/")
            if inner == "CHANGELOG.md" and member.isfile():
                f = tar.extractfile(member)
                text = f.read().decode("utf-8", errors="replace") if f else None
                continue
            if not inner.startswith(SDIST_LLAMA_CPP + "/") or not member.isfile():
                continue
            rel = inner[len(SDIST_LLAMA_CPP) + 1 :]
            if ".." in rel.split("/") or not wanted(rel):
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with f, open(dest / rel, "wb") as out:
                shutil.copyfileobj(f, out)
    return text
