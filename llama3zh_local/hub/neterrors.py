"""What went wrong with a connection, in a few words for a one-line error message.

The hubs' clients (requests, urllib3, huggingface_hub, modelscope) wrap the socket error that
matters in layers of their own exceptions; these helpers find it and keep messages short.
"""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name when empty), shortened."""
    text = str(e).strip() or type(e).__name__
    return shorten(text.splitlines()[0], limit)


def shorten(text: str, limit: int) -> str:
    """``text`` cut after the last whole word that fits ``limit`` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:(") + "…"


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and what caused it, outermost first (``__cause__``/``__context__``, urllib3's
    ``reason``)."""
    out: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and x not in out:
        out.append(x)
        reason = getattr(x, "reason", None)
        nxt = x.__cause__ or x.__context__
        x = nxt if nxt is not None else (reason if isinstance(reason, BaseException) else None)
    return out


def network_cause(e: BaseException) -> str:
    """Why a connection failed, in a few words: the innermost socket error of the chain."""
    import socket
    import ssl

    chain = _chain(e)
    for x in reversed(chain):
        if isinstance(x, ConnectionRefusedError):
            return "connection refused"
        if isinstance(x, socket.gaierror):
            return "host name not resolved"
        if isinstance(x, ConnectionResetError):
            return "connection reset"
        if isinstance(x, ssl.SSLError):
            return "TLS error: " + first_line(x, 80)
        if isinstance(x, TimeoutError) or "Timeout" in type(x).__name__:
            return "timed out"
    inner = chain[-1]
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    return first_line(inner, 100)
