"""The README's walk-through, done as a new user would: a fresh copy, virtualenv and HOME.

The code blocks under ``<!-- walkthrough: ... -->`` (one in each language, the same commands) are
run command by command in bash. Hugging Face is the loopback hub (``HF_ENDPOINT``, as for a
mirror), serving the tiny model under the real instruct-v3 repo names. Two shortcuts keep this
inside CI's time: pip's real cache (llama-cpp-python takes 9+ minutes to compile otherwise) and
the tests' cache of compiled llama.cpp tools.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from llama3zh_local.files import state

from . import models
from .hub_server import HubServer, client_env

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- walkthrough:"
# read before the autouse fixture points XDG_CACHE_HOME elsewhere
PIP_CACHE = Path(
    os.environ.get("PIP_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip"
)
CONFIG_HOME = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
USER_PIP_CONF = CONFIG_HOME / "pip" / "pip.conf"
PASS_THROUGH = {"PYENV_ROOT", "PYENV_VERSION", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}  # fmt: skip
V3 = "llama-3-chinese-8b-instruct-v3"


def walkthroughs(text: str) -> list[list[str]]:
    """The commands of each marked ``bash`` block (comments and blank lines dropped)."""
    out = []
    for m in re.finditer(re.escape(MARK) + r".*?-->\s*```bash\n(.*?)```", text, re.S):
        lines = [ln.split("  #", 1)[0].strip() for ln in m[1].splitlines()]
        out.append([ln for ln in lines if ln and not ln.startswith("#")])
    return out


def test_both_languages_walk_the_same_path() -> None:
    blocks = walkthroughs((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 2 and blocks[0] == blocks[1]
    assert blocks[0][0].startswith("python3 -m venv") and "llama3zh demo" in blocks[0]


def test_extraction_keeps_order_and_drops_comments() -> None:
    text = f"x\n{MARK} t -->\n```bash\n# note\na --b  # why\n\nc\n```\n```bash\nnot me\n```\n"
    assert walkthroughs(text) == [["a --b", "c"]]


def project_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them (tracked and new, not ignored)."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, names):
        src = ROOT / raw.decode()
        if src.is_file():
            (dest / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / raw.decode())
    return dest


def fresh_env(home: Path, hub_url: str) -> dict[str, str]:
    """A login-like environment: new HOME, no virtualenv, no test settings, the hub as a mirror."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env = {
        "HOME": str(home),
        "PATH": os.pathsep.join(path),
        "LANG": "C.UTF-8",
        "PIP_CACHE_DIR": str(PIP_CACHE),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "LLAMA3ZH_TOOLS_DIR": str(models.cache_root() / "tools"),
        "CI": "true",
    }
    # this machine's package settings (indexes, certificates, proxies) go with the user
    for var, value in os.environ.items():
        if var.startswith("PIP_") or var in PASS_THROUGH:
            env.setdefault(var, value)
    if USER_PIP_CONF.is_file():
        env.setdefault("PIP_CONFIG_FILE", str(USER_PIP_CONF))
    env.update(client_env(hub_url, home))
    env.pop("MODELSCOPE_HOME", None)
    return env


@pytest.fixture(scope="module")
def hub(tiny_llama3_gguf: Path) -> Iterator[HubServer]:
    with HubServer() as s:
        s.add_repo(f"hfl/{V3}-gguf", {"ggml-model-q4_k.gguf": tiny_llama3_gguf})
        yield s


@pytest.mark.slow
def test_readme_walkthrough_in_a_fresh_virtualenv(hub: HubServer, tmp_path: Path) -> None:
    commands = walkthroughs((ROOT / "README.md").read_text(encoding="utf-8"))[0]
    project = project_copy(tmp_path / "llama3zh-local")
    home = tmp_path / "home"
    home.mkdir()
    script = ["set -euo pipefail"]
    for cmd in commands:
        script += [f"echo {shlex.quote('$ ' + cmd)} >&2", cmd]
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=project,
        env=fresh_env(home, hub.url),
        capture_output=True,
        text=True,
        timeout=2400,
        stdin=subprocess.DEVNULL,
    )
    steps = [ln[2:] for ln in proc.stderr.splitlines() if ln.startswith("$ ")]
    assert proc.returncode == 0, f"failed at: {steps[-1] if steps else '?'}\n{proc.stderr[-4000:]}"
    assert steps == commands  # every command ran

    assert (project / ".venv" / "bin" / "llama3zh").is_file()
    demo = home / ".cache" / "llama3zh" / "demo"
    quant = demo / "ggml-model-q4_k-im.gguf"
    f16 = demo / "ggml-model-f16.gguf"
    for p in (quant, f16, demo / "Modelfile"):
        assert p.is_file(), sorted(x.name for x in demo.iterdir())
    reader = gguf.GGUFReader(quant)
    ftype = reader.fields[gguf.Keys.General.FILE_TYPE].contents()
    assert ftype == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert "quantize.imatrix.file" in reader.fields
    recorded = state.read_state(demo)
    for p in (quant, f16):
        assert recorded[p.name].sha256 == state.sha256_file(p)
    assert f"FROM ./{quant.name}" in (demo / "Modelfile").read_text(encoding="utf-8")
    # the demo lists what it made ("what  path" lines on stdout): every one is there
    # (only the demo's names: `run`'s answer from the tiny random model is random text that may
    # look like such a line, e.g. 'expirymovierequire />";')
    artifacts = {"hf", "f16", "imatrix", "quant", "eval", "modelfile", "answer", "state"}
    listed = dict(
        ln.split(None, 1)
        for ln in proc.stdout.splitlines()
        if re.match(rf"^({'|'.join(artifacts)})\s+/", ln)
    )
    assert set(listed) >= artifacts
    for what, where in listed.items():
        assert Path(where.strip()).exists(), what
    hf = Path(listed["hf"].strip())
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in hf.iterdir()}
    assert Path(listed["imatrix"].strip()).stat().st_size > 0
    table = Path(listed["eval"].strip()).read_text(encoding="utf-8")
    assert "f16" in table.lower() and "q4_k-im" in table.lower()
    assert "Paris" in Path(listed["answer"].strip()).read_text(encoding="utf-8")
    assert proc.stdout.count("Paris") >= 2  # the demo's answer and the chat's (both greedy)
    pulled = home / ".cache" / "llama3zh" / "models" / f"{V3}-gguf" / "ggml-model-q4_k.gguf"
    assert pulled.is_file()
    assert "instruct-v3" in proc.stdout  # llama3zh list
    assert re.search(r"freed \S+ \S+ \(0 files\)", proc.stdout)  # gc: nothing left behind
