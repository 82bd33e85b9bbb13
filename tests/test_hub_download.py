"""hub/download.py: the downloader's edge cases (resume, servers that ignore ranges, verification,
persistent errors) against a loopback server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llama3zh_local.errors import (
    IntegrityError,
)
from llama3zh_local.hub import download

from .hub_server import HubServer

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
