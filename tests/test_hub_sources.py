"""hub/sources.py: which source is asked, and failing fast (one error, one hint) when no hub
answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from llama3zh_local.catalog import Source
from llama3zh_local.errors import (
    NetworkError,
    UsageError,
)
from llama3zh_local.files import userconfig
from llama3zh_local.hub import sources, store

# -- which source --------------------------------------------------------------------------------


@pytest.fixture
def closed_port_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    return url


def test_source_precedence(closed_port_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = store.parse_ref("hf:org/name")
    fixed = {"fixed": ref.source, "model": ref.text}
    assert sources.decide_source(**fixed).reason == "named in the model id (hf:)"
    with pytest.raises(UsageError, match="names Hugging Face, but --source is modelscope"):
        sources.decide_source(requested="modelscope", **fixed)
    assert sources.decide_source(requested="modelscope").source is Source.MODELSCOPE
    monkeypatch.setenv("LLAMA3ZH_SOURCE", "ms")
    d = sources.decide_source()
    assert (d.source, d.reason) == (Source.MODELSCOPE, "LLAMA3ZH_SOURCE=ms")
    assert sources.decide_source(requested="hf").source is Source.HF  # the flag beats the variable
    monkeypatch.delenv("LLAMA3ZH_SOURCE")
    userconfig.update(source="hf")
    assert "in " + str(userconfig.config_file()) in sources.decide_source().reason
    userconfig.update(source=None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = sources.decide_source()
    assert (d.source, d.online) == (None, False)
    d = sources.decide_source(requested="hf")
    assert (d.source, d.online) == (Source.HF, False)
    assert sources.decide_source(requested="modelscope").online  # HF's switch, not ModelScope's


def test_auto_probe_is_remembered_for_a_day(closed_port_endpoint: str) -> None:
    d = sources.decide_source()
    assert d.source is Source.MODELSCOPE and "is unreachable" in d.reason
    saved = userconfig.load()["auto_source"]
    assert saved["source"] == "modelscope" and saved["hf_endpoint"] == closed_port_endpoint
    userconfig.update(auto_source={**saved, "source": "hf"})  # proves the probe is skipped
    assert sources.decide_source().source is Source.HF
    userconfig.update(auto_source={**saved, "source": "hf", "checked_at": time.time() - 2 * 86400})
    assert sources.decide_source().source is Source.MODELSCOPE  # stale: checked again


def test_dry_run_decisions_are_not_remembered(closed_port_endpoint: str) -> None:
    sources.decide_source(remember=False)
    assert not userconfig.config_file().exists()


# -- no hub reachable ----------------------------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both hubs' endpoints on a port of 127.0.0.1 that is bound but never listens (refused)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for var in ("HF_ENDPOINT", "MODELSCOPE_ENDPOINT"):
        monkeypatch.setenv(var, url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("LLAMA3ZH_DEBUG", "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS", "MODELSCOPE_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield url
    finally:
        closed.close()


def _cli(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The CLI in a fresh process (the client reads its settings when first imported)."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "llama3zh_local", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return proc, time.monotonic() - t0


@pytest.mark.parametrize("command", ["run", "pull"])
def test_a_dry_run_with_no_hub_fails_fast_in_two_lines(no_hub: str, command: str) -> None:
    proc, seconds = _cli(command, "instruct-v3", "--dry-run")
    assert proc.returncode == 1, proc.stderr
    assert seconds < 10, f"took {seconds:.1f} s"
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr  # no client log lines, no notes, no traceback
    error, hint = lines
    repo = "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-v3-gguf"
    assert error == (
        f"Error: cannot reach ModelScope at {no_hub}: connection refused "
        f"(asked for the file list of {repo}, tried 2 times)"
    )
    assert hint.startswith(  # --source auto fell back to ModelScope: say that HF is down too
        "Hint: check the network or proxy (HTTPS_PROXY); Hugging Face did not answer either: "
        f"{no_hub} is unreachable (connection refused)"
    )  # run's plan remembers the check (pull's dry run does not): "(checked 1 s ago; ...)"


def test_debug_shows_the_retries_and_the_client_logs(no_hub: str) -> None:
    proc, _ = _cli("pull", "instruct-v3", "--dry-run", env={"LLAMA3ZH_DEBUG": "1"})
    assert proc.returncode == 1
    err = proc.stderr
    assert "WARNING modelscope_hub.legacy_api:" in err and "retry in 1s (1/2)" in err
    assert "DEBUG urllib3.connectionpool: Starting new HTTP connection (2)" in err
    assert "Traceback" in err and "ConnectionRefusedError" in err


def test_a_host_that_just_failed_is_not_asked_again(no_hub: str) -> None:
    with pytest.raises(NetworkError, match="connection refused") as first:
        sources.list_remote(Source.HF, "org/a")
    assert first.value.unreachable
    sources._unreachable[no_hub] = (time.monotonic() - sources.UNREACHABLE_TTL - 1, first.value)
    with pytest.raises(NetworkError):  # stale: asked again (and remembered again)
        sources.list_remote(Source.HF, "org/b")
    assert "org/b" in str(sources._unreachable[no_hub][1])
    with pytest.raises(NetworkError, match="org/b"):  # fresh: the same error, not asked
        sources.list_remote(Source.HF, "org/c")
