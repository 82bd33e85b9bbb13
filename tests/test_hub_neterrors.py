"""hub/neterrors.py: network errors in one short line, named by their innermost socket error."""

from __future__ import annotations

import socket

import pytest

from llama3zh_local.hub import neterrors


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
