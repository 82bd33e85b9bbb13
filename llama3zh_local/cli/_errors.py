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

from .. import errors
from ..errors import Llama3zhError

F = TypeVar("F", bound=Callable[..., Any])


def debug() -> bool:
    return os.environ.get("LLAMA3ZH_DEBUG", "") not in ("", "0")


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x1b``).

    A path or value with a newline in it must not start a line of its own: it could pass for a
    ``Hint:`` line, or end the ``Error:`` line early.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def report(message: str, hint: str | None = None) -> None:
    # Plain writes, not rich: this must work even when rich itself is the problem.
    if sys.stderr is None:  # started with 2>&-: nowhere to say it
        return
    lines = f"Error: {one_line(message)}\n" + (f"Hint: {one_line(hint)}\n" if hint else "")
    # surrogates (undecodable bytes of a path) must not turn the report into an encoding error
    sys.stderr.write(lines.encode("utf-8", "backslashreplace").decode("utf-8"))
    sys.stderr.flush()


def _stdout_pipe_broken() -> bool:
    """Whether stdout is a pipe whose reader has gone (``| head`` that stopped reading)."""
    import select

    try:
        poller = select.poll()
        poller.register(1, 0)  # POLLERR and POLLHUP are reported whatever the mask
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, AttributeError, ValueError):  # no poll() (Windows), or no fd 1
        return False


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def default_hint(err: Llama3zhError) -> str:
    """The next step for an error raised without a hint of its own: every error gets one."""
    hints: tuple[tuple[type[Llama3zhError], str], ...] = (
        (errors.DataError, "fix the file and line named, then check it: llama3zh train check-data"),
        (errors.UsageError, "see the options and examples: llama3zh COMMAND --help"),
        (errors.ModelNotFoundError, "check the path or alias (`llama3zh list` shows the models)"),
        (errors.InvalidModelError, "check the file, or create or download it again"),
        (errors.ChatTemplateError, "use the built-in template instead: --template llama3"),
        (errors.BackendError, "rerun with LLAMA3ZH_DEBUG=1 to see llama.cpp's log"),
        (errors.InputError, "check the input: text as UTF-8, files that exist"),
        (errors.DiskSpaceError, "free some space, or write elsewhere with -o"),
    )
    for cls, hint in hints:
        if isinstance(err, cls):
            return hint
    return "rerun with LLAMA3ZH_DEBUG=1 for the details"


def handle_errors(func: F) -> F:
    """Wrap a command: library errors and other failures become one line + hint and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if sys.stdout is None:  # started with >&-: results would have nowhere to go
            report(
                "standard output is closed: there is nowhere to write the result",
                "leave it open, or discard the result: > /dev/null",
            )
            raise typer.Exit(1)
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Llama3zhError as e:
            if debug():
                raise
            report(str(e), e.hint or default_hint(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if debug():
                raise
            sys.stderr.write("\nInterrupted.\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            if debug():
                raise
            if _stdout_pipe_broken():
                _silence_stdout()
                report(
                    "the program reading the output stopped before all of it was written "
                    "(broken pipe)",
                    "let the reader take all of the output (not `| head`), or write it to a "
                    "file: > out.txt",
                )
            else:
                report(
                    "a pipe or connection closed before all of the data was sent (broken pipe)",
                    "retry; rerun with LLAMA3ZH_DEBUG=1 to see where it happened",
                )
            raise typer.Exit(1) from None
        except (UnicodeDecodeError, UnicodeEncodeError) as e:
            if debug():
                raise
            report(
                f"text that is not valid UTF-8 ({e.reason}"
                + (f", byte 0x{e.object[e.start]:02x}" if isinstance(e.object, bytes) else "")
                + ")",
                "give files, options and input as UTF-8 text (convert with iconv -t UTF-8)",
            )
            raise typer.Exit(1) from None
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
