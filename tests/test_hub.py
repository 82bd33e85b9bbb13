"""Pull's pure logic (names, quants, file choice, source choice) and the downloader's edge cases."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from llama3zh_local import paths
from llama3zh_local.catalog import Source, Variant
from llama3zh_local.errors import (
    DiskSpaceError,
    IntegrityError,
    ModelNotFoundError,
    NetworkError,
    UnsafePathError,
    UsageError,
)
from llama3zh_local.files import userconfig
from llama3zh_local.hub import download, neterrors, sources, store
from llama3zh_local.hub import pull as hub

from .hub_server import HubServer

GIB = 1024**3

# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "variant", "source", "hf_repo", "ms_repo"),
    [
        (
            "instruct-v3",
            None,
            None,
            "hfl/llama-3-chinese-8b-instruct-v3-gguf",
            "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-v3-gguf",
        ),
        (
            "instruct",
            Variant.LORA,
            None,
            "hfl/llama-3-chinese-8b-instruct-lora",
            "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-lora",
        ),
        (
            "llama-3-chinese-8b-lora",
            None,
            None,
            "hfl/llama-3-chinese-8b-lora",
            "ChineseAlpacaGroup/llama-3-chinese-8b-lora",
        ),
        (
            "base",
            Variant.FULL,
            None,
            "hfl/llama-3-chinese-8b",
            "ChineseAlpacaGroup/llama-3-chinese-8b",
        ),
        ("hf:org/Some.Model-1", None, Source.HF, "org/Some.Model-1", "org/Some.Model-1"),
        ("ms:org/name", None, Source.MODELSCOPE, "org/name", "org/name"),
        ("modelscope:org/name", None, Source.MODELSCOPE, "org/name", "org/name"),
        ("org/name", None, None, "org/name", "org/name"),
    ],
)
def test_parse_ref(
    text: str, variant: Variant | None, source: Source | None, hf_repo: str, ms_repo: str
) -> None:
    ref = store.parse_ref(text, variant=variant)
    assert ref.source is source
    assert ref.repo_id(Source.HF) == hf_repo
    assert ref.repo_id(Source.MODELSCOPE) == ms_repo


@pytest.mark.parametrize("text", ["hf:org", "hf:../x", "ms:a/b/c", "hf:org/..", "x/ y", "hf:/abs"])
def test_bad_repo_ids(text: str) -> None:
    with pytest.raises(UsageError, match="not a hub repo id"):
        store.parse_ref(text)


def test_unknown_alias_and_missing_variant() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        store.parse_ref("instruct-v9")
    with pytest.raises(ModelNotFoundError, match="no lora release"):
        store.parse_ref("instruct-v3", variant=Variant.LORA)


@pytest.mark.parametrize(
    "name", ["ggml-model-q4_k.gguf", "sub/dir/model.safetensors", "a..b.json", ".gitattributes"]
)
def test_safe_names(name: str) -> None:
    assert store.safe_relpath(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x.gguf",
        "a/../../x",
        "/etc/passwd",
        "~/x",
        "C:/x.gguf",
        "a\\..\\x",
        "a//b",
        "./x",
        "a/.",
        "x\0y",
    ],
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError, match="refusing hub file name"):
        store.safe_relpath(name)


@pytest.mark.parametrize(
    ("filename", "label"),
    [
        ("ggml-model-q4_k.gguf", "q4_k"),
        ("ggml-model-q4_k-im.gguf", "q4_k-im"),
        ("ggml-model-f16.gguf", "f16"),
        ("Llama3-8B.Q4_K_M.gguf", "q4_k"),
        ("model-Q8_0-00001-of-00002.gguf", "q8_0"),
        ("x-IQ4_XS.gguf", "iq4_xs"),
        ("x-bf16.gguf", "bf16"),
        ("tokenizer-only.gguf", "tokenizer-only"),
    ],
)
def test_file_quant(filename: str, label: str) -> None:
    assert store.file_quant(filename) == label


@pytest.mark.parametrize(
    ("value", "key"),
    [("q4_k", "q4_k"), ("Q4_K_M", "q4_k"), ("q4_k-im", "q4_k-im"), ("IQ4_XS", "iq4_xs")],
)
def test_quant_key(value: str, key: str) -> None:
    assert store.quant_key(value) == key


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


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short enough", 20, "short enough"),
        ("cannot reach the host (Revision=master&Recursive=True)", 30, "cannot reach the host…"),
        ("/api/v1/models/org/name/repo/files?Revision=master", 20, "/api/v1/models/org/…"),
    ],
)
def test_shorten_ends_at_a_word(text: str, limit: int, expected: str) -> None:
    assert neterrors.shorten(text, limit) == expected
    assert len(neterrors.shorten(text, limit)) <= limit


def test_network_cause_is_the_innermost_socket_error() -> None:
    def chained(*excs: BaseException) -> BaseException:
        for outer, inner in zip(excs[:-1], excs[1:], strict=True):
            outer.__cause__ = inner
        return excs[0]

    refused = chained(
        RuntimeError("Max retries exceeded with url: /x?Revi"),
        ConnectionRefusedError(111, "Connection refused"),
    )
    assert neterrors.network_cause(refused) == "connection refused"
    assert (
        neterrors.network_cause(
            chained(OSError("x"), socket.gaierror(-2, "Name or service not known"))
        )
        == "host name not resolved"
    )
    assert neterrors.network_cause(chained(OSError("x"), TimeoutError())) == "timed out"
    unreachable = OSError(101, "Network is unreachable")
    assert neterrors.network_cause(unreachable) == "network is unreachable"


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


# -- the downloader ------------------------------------------------------------------------------

DATA = os.urandom(2_500_000)


@pytest.fixture
def served() -> Iterator[HubServer]:
    with HubServer() as s:
        s.add_repo("t/r", {"f.bin": DATA})
        yield s


def job(server: HubServer, tmp_path: Path, **kw: object) -> download.FileJob:
    args: dict = dict(
        name="f.bin",
        url=f"{server.url}/t/r/resolve/main/f.bin",
        size=len(DATA),
        dest=tmp_path / "blobs" / "f.bin",
        partial=tmp_path / "blobs" / "f.bin.incomplete",
        lock=tmp_path / "locks" / "f.lock",
        sha256=hashlib.sha256(DATA).hexdigest(),
    )
    args.update(kw)
    return download.FileJob(**args)


def test_resume_from_a_partial_file(served: HubServer, tmp_path: Path) -> None:
    j = job(served, tmp_path)
    j.partial.parent.mkdir()
    j.partial.write_bytes(DATA[:1_000_000])
    events: list[tuple[str, int]] = []
    r = download.fetch(j, progress=lambda e: events.append((e.kind, e.done)))
    assert (r.resumed_from, r.downloaded) == (1_000_000, len(DATA) - 1_000_000)
    assert events[0] == ("start", 1_000_000)
    assert j.dest.read_bytes() == DATA and not j.partial.exists()
    assert served.ranges == [("f.bin", "bytes=1000000-")]


def test_server_that_ignores_range_restarts_cleanly(served: HubServer, tmp_path: Path) -> None:
    served.fault("ignore-range", "f.bin")
    j = job(served, tmp_path)
    j.partial.parent.mkdir()
    j.partial.write_bytes(DATA[:1_000_000])
    download.fetch(j)
    assert j.dest.read_bytes() == DATA


def test_complete_partial_is_verified_and_installed_without_a_request(
    served: HubServer, tmp_path: Path
) -> None:
    """Killed between the last byte and the rename: nothing left to fetch."""
    j = job(served, tmp_path)
    j.partial.parent.mkdir()
    j.partial.write_bytes(DATA)
    assert download.fetch(j).downloaded == 0
    assert j.dest.read_bytes() == DATA and served.requests == []


def test_partial_that_is_not_a_prefix_fails_verification_and_is_deleted(
    served: HubServer, tmp_path: Path
) -> None:
    j = job(served, tmp_path)
    j.partial.parent.mkdir()
    j.partial.write_bytes(b"x" * 1000)  # someone else's bytes
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        download.fetch(j)
    assert not j.partial.exists() and not j.dest.exists()
    download.fetch(j)  # and the next run starts from zero
    assert j.dest.read_bytes() == DATA


def test_git_blob_id_and_size_only(served: HubServer, tmp_path: Path) -> None:
    git = hashlib.sha1(b"blob %d\0" % len(DATA) + DATA).hexdigest()
    assert download.fetch(job(served, tmp_path / "a", sha256=None, git_oid=git)).checksum == (
        "git-sha1"
    )
    with pytest.raises(IntegrityError, match="git-sha1 mismatch"):
        download.fetch(job(served, tmp_path / "b", sha256=None, git_oid="0" * 40))
    assert download.fetch(job(served, tmp_path / "c", sha256=None)).checksum == "size"


def test_persistent_server_errors_give_up_with_the_partial_kept(
    served: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    j = job(served, tmp_path)
    served.fault("status", "f.bin", status=503, times=0)
    with pytest.raises(download.NetworkError, match="kept failing.*server answered HTTP 503"):
        download.fetch(j)
    assert not j.partial.exists()  # no bytes: nothing to keep
    served.reset()
    served.fault("drop", "f.bin", offset=700_000)

    def then_503(path: str, sent: int) -> None:  # the hub goes down after 700,000 bytes
        if sent >= 700_000 and not any(f.kind == "status" for f in served.faults):
            served.fault("status", "f.bin", status=503, times=0)

    served.on_bytes = then_503
    with pytest.raises(download.NetworkError, match="700,000 of 2,500,000 bytes are kept"):
        download.fetch(j)
    assert j.partial.stat().st_size == 700_000


# -- the store -----------------------------------------------------------------------------------


def test_manifest_round_trip_and_dangling_links(tmp_path: Path) -> None:
    folder = store.repo_folder("org/repo-gguf")
    cache = tmp_path / "cache" / "blob"
    cache.parent.mkdir()
    cache.write_bytes(b"gguf!")
    entry = store.StoreEntry(
        "m-q4_k.gguf",
        "org/repo-gguf",
        "hf",
        "main",
        "c",
        5,
        "s" * 64,
        None,
        str(cache),
        1.0,
        cache.stat().st_mtime_ns,
    )
    store.link(folder / entry.name, cache)
    store.update_manifest(folder, add=[entry])
    assert store.read_manifest(folder) == {entry.name: entry}
    assert entry.is_verified(cache)
    (f,) = store.local_files()
    assert (f.alias, f.variant, f.quant, f.source, f.size, f.missing) == (
        None,
        Variant.GGUF,
        "q4_k",
        "hf",
        5,
        False,
    )
    cache.unlink()
    (f,) = store.local_files()
    assert f.missing and not entry.is_verified(cache)
    store.update_manifest(folder, remove=[entry.name])
    assert not (folder / store.MANIFEST).exists()
    assert paths.models_dir() in folder.parents
