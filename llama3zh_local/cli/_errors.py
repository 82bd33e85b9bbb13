"""The one place where errors become what the user sees: ``Error:``/``Hint:`` on stderr, exit 1.

Tracebacks only with ``LLAMA3ZH_DEBUG=1``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ..errors import Llama3zhError

F = TypeVar("F", bound=Callable[..., Any])


def debug() -> bool:
    return os.environ.get("LLAMA3ZH_DEBUG", "") not in ("", "0")


def report(message: str, hint: str | None = None) -> None:
    # Plain writes, not rich: this must work even when rich itself is the problem.
    sys.stderr.write(f"Error: {message}\n")
    if hint:
        sys.stderr.write(f"Hint: {hint}\n")
    sys.stderr.flush()


def handle_errors(func: F) -> F:
    """Wrap a command: library errors and other failures become one line + hint and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Llama3zhError as e:
            if debug():
                raise
            report(str(e), e.hint)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if debug():
                raise
            sys.stderr.write("\nInterrupted.\n")
            raise typer.Exit(130) from None
        except OSError as e:
            if debug():
                raise
            where = f": {e.filename}" if e.filename else ""
            report(
                f"{e.strerror or e}{where}", "check the path, its permissions and free disk space"
            )
            raise typer.Exit(1) from None
        except Exception as e:  # noqa: BLE001 - the last line of defence for the user
            if debug():
                raise
            report(
                f"unexpected {type(e).__name__}: {e}",
                "rerun with LLAMA3ZH_DEBUG=1 for the traceback, and report it",
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
