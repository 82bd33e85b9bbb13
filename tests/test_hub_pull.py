"""`llama3zh pull / list / show / rm` against a loopback hub server, with the real clients.

``tests/hub_server.py`` speaks the Hugging Face and ModelScope protocols; ``huggingface_hub`` and
``modelscope`` are pointed at it with ``HF_ENDPOINT`` / ``MODELSCOPE_ENDPOINT`` and run unchanged.
At the end, the plan's pure logic (hub/pull.py): which files of a repo, and the disk check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama3zh_local import paths
from llama3zh_local.catalog import Source, Variant
from llama3zh_local.cli import app
from llama3zh_local.errors import DiskSpaceError, ModelNotFoundError, UsageError
from llama3zh_local.hub import pull as hub
from llama3zh_local.hub import sources

from .hub_server import HubServer, client_env, online

runner = CliRunner()

TINY = "test/tiny-gguf"
V3_HF = "hfl/llama-3-chinese-8b-instruct-v3-gguf"
V3_MS = "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-v3-gguf"
Q8 = os.urandom(300_000)  # a stand-in q8_0 file: pull does not parse GGUFs
SMALL = os.urandom(3 * 1024 * 1024)
GIB = 1024**3


@pytest.fixture(scope="module")
def server(tiny_llama3_gguf: Path, tiny_llama3_hf: Path) -> Iterator[HubServer]:
    with HubServer() as s:
        s.add_repo(
            TINY,
            {
                "ggml-model-q4_k.gguf": tiny_llama3_gguf,
                "ggml-model-q8_0.gguf": Q8,
                "README.md": b"# tiny\n",
            },
        )
        for repo in (V3_HF, V3_MS):
            s.add_repo(repo, {"ggml-model-q4_k.gguf": SMALL, "ggml-model-q8_0.gguf": Q8})
        full = {p.name: p for p in tiny_llama3_hf.iterdir()}
        full |= {
            "pytorch_model.bin": b"a pickle duplicate of the safetensors",
            "README.md": b"# tiny llama3\n",
            "original/consolidated.00.pth": b"meta's format",
        }
        s.add_repo("test/tiny-llama3", full)
        s.add_repo("test/gated-gguf", {"ggml-model-q4_k.gguf": SMALL}, token="sekrit")
        s.add_repo("test/escape-rel", {"../../escape/ggml-model-q4_k.gguf": SMALL})
        s.add_repo("test/escape-abs", {"/tmp/llama3zh-escape-q4_k.gguf": SMALL})
        yield s


@pytest.fixture
def hub_env(
    server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubServer]:
    """Online against the loopback server (conftest keeps everything else offline)."""
    with online(server, tmp_path, monkeypatch):
        yield server


def pull(*args: str) -> object:
    return runner.invoke(app, ["pull", *args])


def ok(result: object) -> object:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return result


def one_line_error(result: object, needle: str) -> tuple[str, str]:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    hints = [ln for ln in err.splitlines() if ln.startswith("Hint:")]
    assert len(errors) == 1 and needle in errors[0], err
    assert len(hints) == 1, err
    assert "Traceback" not in err
    assert result.stdout == ""  # type: ignore[attr-defined]
    return errors[0], hints[0]


def tree(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): (p.lstat().st_size if not p.is_dir() else -1)
        for p in sorted(root.rglob("*"))
    }


# -- acceptance: both protocols, verified, a second run downloads nothing --------------------------


@pytest.mark.parametrize("prefix", ["hf", "ms"])
def test_pull_verifies_and_second_run_downloads_nothing(
    hub_env: HubServer, prefix: str, tiny_llama3_gguf: Path
) -> None:
    size = tiny_llama3_gguf.stat().st_size
    r = ok(pull(f"{prefix}:{TINY}", "--quant", "q4_k"))
    store_path = paths.models_dir() / "tiny-gguf" / "ggml-model-q4_k.gguf"
    assert r.stdout.splitlines() == [str(store_path)]  # type: ignore[attr-defined]
    assert store_path.read_bytes() == tiny_llama3_gguf.read_bytes()
    assert hub_env.served["ggml-model-q4_k.gguf"] == size
    assert "ggml-model-q8_0.gguf" not in hub_env.served  # only the chosen quant
    assert "verified (sha256)" in r.stderr  # type: ignore[attr-defined]
    cache = store_path.resolve()
    if prefix == "hf":  # huggingface_hub's own layout: blobs/<sha256>, snapshots/<commit>, refs
        repo = hub_env.repos[TINY]
        blob = (
            sources.hf_cache_dir()
            / "models--test--tiny-gguf"
            / "blobs"
            / repo.files["ggml-model-q4_k.gguf"].sha256
        )
        assert cache == blob
        refs = sources.hf_cache_dir() / "models--test--tiny-gguf" / "refs" / "main"
        assert refs.read_text() == repo.commit
    else:  # modelscope's: models/<org>--<name>/snapshots/master/<file>
        assert cache == sources.ms_cache_dir() / "models/test--tiny-gguf/snapshots/master" / (
            "ggml-model-q4_k.gguf"
        )

    hub_env.reset()
    r = ok(pull(f"{prefix}:{TINY}", "-q", "q4_k"))
    assert hub_env.bytes_served == 0
    assert "nothing to download" in r.stderr  # type: ignore[attr-defined]
    assert r.stdout.splitlines() == [str(store_path)]  # type: ignore[attr-defined]


def test_pulled_files_are_where_the_clients_look(hub_env: HubServer) -> None:
    """Our cache entries are valid for huggingface_hub and modelscope themselves (offline)."""
    ok(pull(f"hf:{TINY}", "-q", "q8_0"))
    ok(pull(f"ms:{TINY}", "-q", "q8_0"))
    from huggingface_hub import hf_hub_download
    from modelscope_hub import HubApi, HubConfig

    hf_path = hf_hub_download(
        TINY, "ggml-model-q8_0.gguf", cache_dir=sources.hf_cache_dir(), local_files_only=True
    )
    assert Path(hf_path).read_bytes() == Q8
    ms_path = HubApi(config=HubConfig()).download_file(
        TINY, "model", "ggml-model-q8_0.gguf", local_files_only=True
    )
    assert Path(ms_path).read_bytes() == Q8


def test_files_other_tools_downloaded_are_reused(hub_env: HubServer) -> None:
    from huggingface_hub import hf_hub_download
    from modelscope_hub import HubApi, HubConfig

    hf_hub_download(
        TINY, "ggml-model-q8_0.gguf", cache_dir=sources.hf_cache_dir(), endpoint=hub_env.url
    )
    HubApi(config=HubConfig()).download_file(TINY, "model", "ggml-model-q8_0.gguf")
    hub_env.reset()
    for prefix in ("hf", "ms"):
        r = ok(pull(f"{prefix}:{TINY}", "-q", "q8_0"))
        assert "in the cache: will be verified" in r.stderr  # type: ignore[attr-defined]
    assert hub_env.bytes_served == 0


# -- acceptance: damaged bytes, dropped and stalled connections ------------------------------------


@pytest.mark.parametrize("prefix", ["hf", "ms"])
def test_corrupted_byte_is_reported_not_installed_then_healthy_rerun(
    hub_env: HubServer, prefix: str
) -> None:
    hub_env.fault("corrupt", "ggml-model-q4_k", offset=123_456)
    err, hint = one_line_error(pull(f"{prefix}:{TINY}", "-q", "q4_k"), "sha256 mismatch")
    assert "nothing installed" in err and "again" in hint
    store_path = paths.models_dir() / "tiny-gguf" / "ggml-model-q4_k.gguf"
    assert not store_path.exists() and not store_path.is_symlink()
    caches = [sources.hf_cache_dir(), sources.ms_cache_dir()]
    leftovers = [p for c in caches if c.exists() for p in c.rglob("*") if p.is_file()]
    assert [p for p in leftovers if not p.name.endswith(".lock")] == []

    hub_env.reset()  # a healthy server
    ok(pull(f"{prefix}:{TINY}", "-q", "q4_k"))
    assert store_path.is_file()


def test_dropped_connection_resumes_within_the_run(
    hub_env: HubServer, tiny_llama3_gguf: Path
) -> None:
    size = tiny_llama3_gguf.stat().st_size
    hub_env.fault("drop", "ggml-model-q4_k", offset=size // 3)
    ok(pull(f"hf:{TINY}", "-q", "q4_k"))
    assert hub_env.served["ggml-model-q4_k.gguf"] == size  # not one byte twice
    ranges = [r for p, r in hub_env.ranges if p == "ggml-model-q4_k.gguf"]
    assert ranges == [None, f"bytes={size // 3}-"]


def test_stalled_transfer_is_dropped_and_resumed(
    hub_env: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA3ZH_READ_TIMEOUT", "0.5")
    hub_env.fault("stall", "ggml-model-q4_k", offset=1_000_000, seconds=30)
    t0 = time.monotonic()
    ok(pull(f"ms:{V3_MS}", "-q", "q4_k"))
    assert time.monotonic() - t0 < 10
    assert len([p for p, _ in hub_env.ranges if p == "ggml-model-q4_k.gguf"]) == 2


# -- acceptance: --source auto ---------------------------------------------------------------------


def test_auto_picks_modelscope_when_hf_does_not_answer(
    hub_env: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA3ZH_PROBE_TIMEOUT", "0.5")
    hub_env.fault("stall", r"^HEAD /$", seconds=30)
    t0 = time.monotonic()
    r = ok(pull("instruct-v3", "-q", "q4_k"))
    assert time.monotonic() - t0 < 8
    err = r.stderr  # type: ignore[attr-defined]
    assert "source: ModelScope" in err and "did not answer within 0.5 s" in err
    assert any("/api/v1/models/" + V3_MS in line for line in hub_env.requests)
    assert not any("/resolve/" in line for line in hub_env.requests)
    remembered = json.loads((paths.config_dir() / "config.json").read_text())["auto_source"]
    assert remembered["source"] == "modelscope"

    # remembered: the next run does not wait for Hugging Face again
    hub_env.reset()
    r = ok(pull("instruct-v3", "-q", "q4_k"))
    assert "source: ModelScope" in r.stderr and "remembered" in r.stderr  # type: ignore[attr-defined]
    assert "HEAD /" not in hub_env.requests


def test_auto_picks_hf_when_it_answers(hub_env: HubServer) -> None:
    r = ok(pull("instruct-v3", "-q", "q4_k"))
    assert "source: Hugging Face" in r.stderr and "answered in" in r.stderr  # type: ignore[attr-defined]
    assert "HEAD /" in hub_env.requests
    assert any(f"/{V3_HF}/resolve/" in line for line in hub_env.requests)
    remembered = json.loads((paths.config_dir() / "config.json").read_text())["auto_source"]
    assert remembered["source"] == "hf"


def test_explicit_source_wins_without_probing(hub_env: HubServer) -> None:
    ok(pull("instruct-v3", "-q", "q4_k", "--source", "modelscope"))
    assert "HEAD /" not in hub_env.requests
    assert not (paths.config_dir() / "config.json").exists()


# -- acceptance: dry run, disk space ---------------------------------------------------------------


@pytest.mark.parametrize("args", [[f"hf:{TINY}", "-q", "all"], ["instruct-v3", "-q", "q4_k"]])
def test_dry_run_prints_the_plan_and_writes_nothing(
    hub_env: HubServer, tmp_path: Path, args: list[str], tiny_llama3_gguf: Path
) -> None:
    watched = tmp_path / "_env"
    before = tree(watched)
    r = ok(pull(*args, "--dry-run"))
    assert tree(watched) == before
    assert hub_env.bytes_served == 0
    out = r.stdout  # type: ignore[attr-defined]
    assert "ggml-model-q4_k.gguf" in out and "to download:" in out and "free disk:" in out
    if args[0].startswith("hf:"):
        assert "ggml-model-q8_0.gguf" in out
        total = tiny_llama3_gguf.stat().st_size + len(Q8)
        assert f"{total / 1024**2:.1f} MiB" in out


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 20 MB filesystem (a tmpfs; needs root, as CI has)."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_not_enough_disk_is_refused_before_any_byte(
    hub_env: HubServer, small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(small_fs / "hf"))
    err, hint = one_line_error(pull(f"hf:{TINY}", "-q", "q4_k"), "not enough disk space")
    assert "MiB free" in err or "GiB free" in err
    assert "HF_HOME" in hint
    assert hub_env.bytes_served == 0
    assert list(small_fs.iterdir()) == []


def test_disk_full_while_downloading_leaves_nothing_corrupt(
    hub_env: HubServer, small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(small_fs / "ms"))
    filler = small_fs / "filler"

    def fill_disk(path: str, sent: int) -> None:  # another program fills the disk mid-download
        if sent >= 1_000_000 and not filler.exists():
            with filler.open("wb") as fh, __import__("contextlib").suppress(OSError):
                while True:
                    fh.write(b"\0" * 1024 * 1024)

    hub_env.on_bytes = fill_disk
    err, hint = one_line_error(pull(f"ms:{V3_MS}", "-q", "q4_k"), "disk filled up")
    assert "nothing was installed" in err and "continues" in hint
    target = sources.ms_cache_dir() / "models" / V3_MS.replace("/", "--") / "snapshots/master"
    assert not (target / "ggml-model-q4_k.gguf").exists()
    partial = target / "ggml-model-q4_k.gguf.incomplete"
    assert SMALL.startswith(partial.read_bytes())  # a clean prefix, kept for the next run
    kept = partial.stat().st_size

    filler.unlink()
    hub_env.wait_idle()  # the first run's response, cut off by the client
    hub_env.reset()
    ok(pull(f"ms:{V3_MS}", "-q", "q4_k"))
    assert (target / "ggml-model-q4_k.gguf").read_bytes() == SMALL
    assert hub_env.ranges == [("ggml-model-q4_k.gguf", f"bytes={kept}-")]
    assert hub_env.served["ggml-model-q4_k.gguf"] == len(SMALL) - kept


# -- errors: one line and a hint -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "quant", "needle", "hint"),
    [
        ("hf:test/nope", "q4_k", "not found on Hugging Face", "llama3zh models"),
        ("ms:test/nope", "q4_k", "not found on ModelScope", "llama3zh models"),
        ("hf:test/gated-gguf", "q4_k", "gated", "HF_TOKEN"),
        ("ms:test/gated-gguf", "q4_k", "refused access", "MODELSCOPE_API_TOKEN"),
        (f"hf:{TINY}", "q2_k", "quants in the repo: q4_k, q8_0", "--quant"),
        (f"ms:{TINY}", "q2_k", "quants in the repo: q4_k, q8_0", "--quant"),
        ("hf:test/escape-rel", "q4_k", "refusing hub file name", "other source"),
        ("ms:test/escape-abs", "q4_k", "refusing hub file name", "other source"),
    ],
)
def test_errors_are_one_line_with_a_hint(
    hub_env: HubServer, tmp_path: Path, model: str, quant: str, needle: str, hint: str
) -> None:
    _, h = one_line_error(pull(model, "-q", quant), needle)
    assert hint in h
    assert hub_env.bytes_served == 0
    assert not list(tmp_path.rglob("escape*"))
    assert not Path("/tmp/llama3zh-escape-q4_k.gguf").exists()


def test_gated_repo_with_a_token(hub_env: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "sekrit")
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "sekrit")
    ok(pull("hf:test/gated-gguf", "-q", "q4_k"))
    ok(pull("ms:test/gated-gguf", "-q", "q4_k"))


def test_server_error(hub_env: HubServer) -> None:
    hub_env.fault("status", "/api/models/", status=500, times=0)
    _, hint = one_line_error(pull(f"hf:{TINY}", "-q", "q4_k"), "answered HTTP 500")
    assert "--source modelscope" in hint


def test_network_down_suggests_modelscope_or_a_mirror(
    hub_env: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    _, hint = one_line_error(pull(f"hf:{TINY}", "-q", "q4_k"), "cannot reach Hugging Face")
    assert "--source modelscope" in hint and "HF_ENDPOINT=https://hf-mirror.com" in hint


# -- full weights, offline, list / show / rm -------------------------------------------------------


def test_full_repo_gets_safetensors_config_tokenizer_only(hub_env: HubServer) -> None:
    r = ok(pull("hf:test/tiny-llama3"))
    folder = paths.models_dir() / "tiny-llama3"
    assert r.stdout.strip() == str(folder)  # type: ignore[attr-defined]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert "git-sha1" in r.stderr  # small files are checked against their git blob id
    served = set(hub_env.served)
    assert not served & {"pytorch_model.bin", "README.md", "original/consolidated.00.pth"}


def test_offline_uses_the_cache_only(hub_env: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ok(pull(f"hf:{TINY}", "-q", "q8_0"))
    hub_env.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = ok(pull(TINY, "-q", "q8_0"))
    assert "offline" in r.stderr  # type: ignore[attr-defined]
    assert hub_env.requests == []
    _, hint = one_line_error(pull(TINY, "-q", "q4_k"), "offline")
    assert "HF_HUB_OFFLINE" in hint


def test_list_show_rm(hub_env: HubServer, tiny_llama3_gguf: Path) -> None:
    ok(pull(f"hf:{TINY}", "-q", "q4_k,q8_0"))
    ok(pull("instruct-v3", "-q", "q4_k", "-s", "modelscope"))
    rows = json.loads(ok(runner.invoke(app, ["list", "--json"])).stdout)  # type: ignore[attr-defined]
    by_file = {(r["folder"], r["file"]): r for r in rows}
    q4 = by_file[("tiny-gguf", "ggml-model-q4_k.gguf")]
    assert (q4["variant"], q4["quant"], q4["source"], q4["repo"]) == ("gguf", "q4_k", "hf", TINY)
    assert q4["size_bytes"] == tiny_llama3_gguf.stat().st_size and q4["date"] > 0
    v3 = by_file[("llama-3-chinese-8b-instruct-v3-gguf", "ggml-model-q4_k.gguf")]
    assert (v3["alias"], v3["source"]) == ("instruct-v3", "modelscope")
    table = ok(runner.invoke(app, ["list"])).stdout  # type: ignore[attr-defined]
    assert "instruct-v3" in table and "tiny-gguf" in table

    shown = ok(runner.invoke(app, ["show", f"hf:{TINY}"])).stdout  # type: ignore[attr-defined]
    assert "architecture  llama" in shown and "chat_template yes" in shown
    assert shown.count("GGUF /") == 2  # both local GGUFs summarised (the q8_0 one is not a GGUF)
    assert "unreadable" in shown
    shown = ok(runner.invoke(app, ["show", "instruct-v3", "--json"])).stdout  # type: ignore[attr-defined]
    data = json.loads(shown)
    assert data["repos"]["gguf"]["modelscope"] == V3_MS and len(data["local"]) == 1

    r = runner.invoke(app, ["rm", f"hf:{TINY}", "-q", "q8_0"])  # no terminal to ask on
    one_line_error(r, "no terminal")
    blob = (paths.models_dir() / "tiny-gguf" / "ggml-model-q8_0.gguf").resolve()
    r = ok(runner.invoke(app, ["rm", f"hf:{TINY}", "-q", "q8_0", "-y"]))
    assert str(paths.models_dir() / "tiny-gguf" / "ggml-model-q8_0.gguf") in r.stdout  # type: ignore[attr-defined]
    assert not blob.exists()
    left = json.loads(ok(runner.invoke(app, ["list", "--json"])).stdout)  # type: ignore[attr-defined]
    assert sorted(r["file"] for r in left) == ["ggml-model-q4_k.gguf"] * 2
    ok(runner.invoke(app, ["rm", "instruct-v3", "-y"]))
    ok(runner.invoke(app, ["rm", f"hf:{TINY}", "-y"]))
    assert json.loads(ok(runner.invoke(app, ["list", "--json"])).stdout) == []  # type: ignore[attr-defined]
    one_line_error(runner.invoke(app, ["rm", f"hf:{TINY}", "-y"]), "nothing of")


def test_pull_in_a_real_process(hub_env: HubServer, tmp_path: Path) -> None:
    """The installed entry point end to end: exit code, stdout is only the path."""
    env = {**os.environ, **client_env(hub_env.url, tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "llama3zh_local", "pull", f"ms:{TINY}", "-q", "q8_0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{paths.models_dir() / 'tiny-gguf' / 'ggml-model-q8_0.gguf'}\n"


# -- which files ---------------------------------------------------------------------------------


def listing(*names: str, source: Source = Source.HF) -> sources.Listing:
    files = tuple(sources.RemoteFile(n, 100 + i) for i, n in enumerate(names))
    return sources.Listing(source, "org/repo", "main", "c" * 40, files, True)


def test_full_repo_prefers_safetensors_and_skips_the_rest() -> None:
    names = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "README.md",
        ".gitattributes",
        "original/consolidated.00.pth",
        "original/tokenizer.model",
    ]
    variant, files, _ = hub.select_files(listing(*names), variant=None)
    assert variant is Variant.FULL
    assert [f.name for f in files] == sorted(
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )


def test_pickles_only_when_there_are_no_safetensors() -> None:
    _, files, _ = hub.select_files(
        listing("config.json", "pytorch_model.bin", "tokenizer.model"), variant=None
    )
    assert [f.name for f in files] == ["config.json", "pytorch_model.bin", "tokenizer.model"]


def test_lora_repo() -> None:
    variant, files, _ = hub.select_files(
        listing(
            "adapter_config.json",
            "adapter_model.safetensors",
            "adapter_model.bin",
            "tokenizer.json",
        ),
        variant=None,
    )
    assert variant is Variant.LORA
    assert [f.name for f in files] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    ]


def test_gguf_quants() -> None:
    ls = listing(
        "ggml-model-q4_k.gguf", "ggml-model-q4_k-im.gguf", "ggml-model-q8_0.gguf", "README.md"
    )
    pick = lambda *q: [f.name for f in hub.select_files(ls, variant=None, quants=q)[1]]  # noqa: E731
    assert pick("Q4_K_M") == ["ggml-model-q4_k.gguf"]
    assert pick("q4_k-im", "q8_0") == ["ggml-model-q4_k-im.gguf", "ggml-model-q8_0.gguf"]
    assert sorted(pick("all")) == sorted(f.name for f in ls.files if f.name.endswith(".gguf"))
    with pytest.raises(
        ModelNotFoundError,
        match=r"no q2_k GGUF file \(quants in the repo: "
        r"q4_k, q4_k-im, q8_0\)",
    ):
        pick("q2_k")
    offered: list[dict[str, int]] = []

    def largest(sizes: Mapping[str, int]) -> tuple[str, str]:
        offered.append(dict(sizes))
        return max(sizes, key=lambda q: sizes[q]), "the caller's choice"

    _, files, notes = hub.select_files(ls, variant=None, default_quant=largest)
    assert [f.name for f in files] == ["ggml-model-q8_0.gguf"] and notes == ["the caller's choice"]
    assert sorted(offered[0]) == ["q4_k", "q8_0"]  # -im files are never the default
    with pytest.raises(UsageError, match="none was chosen"):
        hub.select_files(ls, variant=None)


def test_quant_for_a_full_repo_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--quant applies to GGUF repos"):
        hub.select_files(listing("config.json", "model.safetensors"), variant=None, quants=["q4_k"])
    with pytest.raises(ModelNotFoundError, match="no GGUF files"):
        hub.select_files(listing("config.json", "model.safetensors"), variant=Variant.GGUF)
    with pytest.raises(ModelNotFoundError, match="neither GGUF files nor model weights"):
        hub.select_files(listing("README.md"), variant=None)


# -- disk space ----------------------------------------------------------------------------------


def test_disk_check_message(tmp_path: Path) -> None:
    plan = hub.PullPlan(
        model="m",
        decision=sources.SourceDecision(Source.HF, True, "x"),
        source=Source.HF,
        repo_id="org/repo",
        revision="main",
        commit=None,
        variant=Variant.GGUF,
        files=(),
        store_dir=tmp_path,
        disk=(hub.DiskNeed(tmp_path, 5 * GIB, 2 * GIB),),
        notes=(),
    )
    needle = r"5.00 GiB to download plus 0.05 GiB kept free, 2.00 GiB free in"
    with pytest.raises(DiskSpaceError, match=needle) as e:
        hub.check_disk(plan)
    assert "HF_HOME" in (e.value.hint or "")
    assert hub.DiskNeed(tmp_path, 100, 101).fits and not hub.DiskNeed(tmp_path, 100, 99).fits
