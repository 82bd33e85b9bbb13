"""Output: results on stdout, chatter (progress, notes, warnings, errors) on stderr.

One shared rich console for stderr; it honours NO_COLOR and plain (non-TTY) output by itself.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@lru_cache(maxsize=1)
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@lru_cache(maxsize=1)
def out() -> Console:
    from rich.console import Console

    class _Stdout(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit silently; let the one error-translation point say what happened
            self.quiet = True
            raise BrokenPipeError(32, "Broken pipe")

    return _Stdout(highlight=False)


def note(message: str) -> None:
    err().print(f"[dim]{_escape(message)}[/dim]", soft_wrap=True)


def warn(message: str) -> None:
    err().print(f"[yellow]Warning:[/yellow] {_escape(message)}", soft_wrap=True)


def result(text: str) -> None:
    """A plain result line on stdout (no markup, so `$(llama3zh …)` gets the text as is)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# Loggers of the hub clients and their HTTP stacks, and this package's own: on the terminal only
# with LLAMA3ZH_DEBUG=1 (a client's retry warnings are not for the user: the error says it all).
LOGGERS = (
    "llama3zh_local",
    "modelscope_hub",
    "modelscope",
    "huggingface_hub",
    "urllib3",
    "httpx",
    "httpx2",
    "filelock",
)


def route_logs(*, debug: bool) -> None:
    """Send the loggers in ``LOGGERS`` to stderr (debug) or nowhere; replaces their handlers."""
    handler: logging.Handler
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
        # huggingface_hub adds its own stderr handler when first imported (after this runs):
        # its level comes from this variable
        os.environ.setdefault("HF_HUB_VERBOSITY", "critical")
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
