"""SIGTERM handled as Ctrl-C, so that a terminated run cleans up as an interrupted one does."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM: the cleanup of Ctrl-C, but it ends even a REPL (which stays after a
    Ctrl-C)."""


_state = {"terminated": False}


def terminated() -> bool:
    """Whether this process got SIGTERM."""
    return _state["terminated"]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Whatever the SIGINT handler of the moment does (raise KeyboardInterrupt, or set the flag
    that stops a llama.cpp model load); the default one raises ``Terminated`` instead."""
    _state["terminated"] = True
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
        return
    raise Terminated


def install() -> None:
    """Handle SIGTERM (``kill``, a service manager stopping us) like Ctrl-C (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
