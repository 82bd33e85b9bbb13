"""Output: results on stdout, chatter (progress, notes, warnings, errors) on stderr.

One shared rich console for stderr; it honours NO_COLOR and plain (non-TTY) output by itself.
"""

from __future__ import annotations

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


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
