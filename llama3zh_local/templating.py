"""Chat templates rendered in a bounded Jinja sandbox: the built-in Llama-3 one, a GGUF's own, or
a checkpoint's tokenizer_config.json one (shared by chat/, serve/ and train/)."""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import paths
from .errors import ChatTemplateError

__all__ = ["MAX_RENDER_CHARS", "MAX_RENDER_SECONDS", "ChatTemplate", "llama3_template"]


@lru_cache(maxsize=1)
def llama3_template() -> str:
    """The Llama-3-Instruct chat template (Meta's, as in its tokenizer_config.json)."""
    text = paths.data_file("llama3_instruct.jinja").read_text("utf-8")
    return text.rstrip("\n")


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special-token strings it may use."""

    source: str
    bos_token: str = "<|begin_of_text|>"
    eos_token: str = "<|eot_id|>"
    origin: str = "built-in Llama-3-Instruct"
    hint: str = "use the built-in template instead: --template llama3"

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render in a sandbox: GGUF templates are untrusted input (cf. CVE-2024-34359).

        Bounded as well as sandboxed: at most ``MAX_RENDER_SECONDS``, ``MAX_RENDER_CHARS`` of
        output (and of any one string it builds), and Python's recursion limit.

        Raises:
            ChatTemplateError: the template is invalid, unsafe, too slow or too large, or fails
                in any other way (always with ``self.hint``).
        """
        from jinja2 import TemplateError
        from jinja2.sandbox import SecurityError

        hint = self.hint
        where = f"the chat template from {self.origin}"
        try:
            with _deadline(MAX_RENDER_SECONDS):
                template = _compiled(self.source)
                pieces, size = [], 0
                for piece in template.generate(
                    messages=messages,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                ):
                    size += len(piece)
                    if size > MAX_RENDER_CHARS:
                        raise SecurityError(f"its output passed {MAX_RENDER_CHARS:,} characters")
                    pieces.append(piece)
                return "".join(pieces)
        except _RenderTimeout:
            raise ChatTemplateError(
                f"{where} took more than {MAX_RENDER_SECONDS:g} s to render and was stopped",
                hint=hint,
            ) from None
        except SecurityError as err:
            raise ChatTemplateError(
                f"{where} tried an unsafe operation and was stopped ({err})", hint=hint
            ) from err
        except TemplateError as err:
            raise ChatTemplateError(f"{where} failed: {err}", hint=hint) from err
        except RecursionError:
            raise ChatTemplateError(
                f"{where} recursed too deeply and was stopped", hint=hint
            ) from None
        except MemoryError:
            raise ChatTemplateError(
                f"{where} ran out of memory and was stopped", hint=hint
            ) from None
        except Exception as err:  # noqa: BLE001 - untrusted code: any failure is the template's
            raise ChatTemplateError(
                f"{where} failed: {type(err).__name__}: {err}", hint=hint
            ) from None


# Bounds on rendering an untrusted template: a prompt is never near these (a 128k-token context
# is ~0.5 M characters); a template that reaches them is broken or hostile.
MAX_RENDER_SECONDS = 2.0
MAX_RENDER_CHARS = 8 << 20


class _RenderTimeout(Exception):
    """Raised into the rendering template when its time is up."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise _RenderTimeout in this thread's Python code once ``seconds`` have passed.

    SIGALRM in the main thread (no cost); a trace function elsewhere (threads get no signals).
    """
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def on_alarm(_sig: int, _frame: Any) -> None:
            raise _RenderTimeout

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        return
    end = time.monotonic() + seconds
    previous = sys.gettrace()

    def tracer(_frame: Any, _event: str, _arg: Any) -> Any:
        if time.monotonic() > end:
            raise _RenderTimeout
        return tracer

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)


_HUGE_WIDTH = re.compile(r"\d{8,}")  # a format width such as {:>100000000} or %100000000s


def _too_big(value: Any) -> bool:
    """An argument that would make a string or list too large (a width, a count)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > MAX_RENDER_CHARS
    if isinstance(value, str):
        return len(value) > MAX_RENDER_CHARS or _HUGE_WIDTH.search(value) is not None
    return False


def _checked(result: Any) -> Any:
    from jinja2.sandbox import SecurityError

    if isinstance(result, (str, list, tuple)) and len(result) > MAX_RENDER_CHARS:
        raise SecurityError(f"it built a value of more than {MAX_RENDER_CHARS:,} items")
    return result


def _bounded_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    from jinja2.sandbox import SecurityError

    @functools.wraps(fn)  # keeps jinja's pass_context / pass_environment markers
    def call(*args: Any, **kwargs: Any) -> Any:
        if any(_too_big(a) for a in args[1:]) or any(_too_big(v) for v in kwargs.values()):
            raise SecurityError(f"filter {fn.__name__} was given a size that is too large")
        return _checked(fn(*args, **kwargs))

    return call


@lru_cache(maxsize=8)
def _compiled(source: str) -> Any:
    """The template compiled once: compiling took about as long as rendering, and a server
    renders one template per request. (A failure is not cached: it is raised again each time.)"""
    return _sandbox().from_string(source)


@lru_cache(maxsize=1)
def _sandbox() -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, with sizes bounded: repetition, powers, formatting, concatenation."""

        intercepted_binops = frozenset(["*", "**", "+", "%"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(right, int) and abs(right) > 256:
                raise SecurityError(f"the power {right} is too large")
            if operator in ("**", "*") and isinstance(left, int) and isinstance(right, int):
                bits = (
                    left.bit_length() * abs(right)
                    if operator == "**"
                    else (left.bit_length() + right.bit_length())
                )
                if bits > 1 << 20:  # a number one multiplication takes seconds to make
                    raise SecurityError("a number that is too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                        if len(seq) * n > MAX_RENDER_CHARS:
                            raise SecurityError("a repetition that is too large")
            if operator == "%" and isinstance(left, str):
                args = right if isinstance(right, tuple) else (right,)
                if _too_big(left) or any(_too_big(a) for a in args):
                    raise SecurityError("a format that is too large")
            if operator == "+" and isinstance(left, (str, list)) and isinstance(right, type(left)):
                if len(left) + len(right) > MAX_RENDER_CHARS:
                    raise SecurityError("a concatenation that is too large")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            # "{:>100000000}".format(...): the sandbox wraps str.format; the string is its owner
            owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
            if (
                any(_too_big(a) for a in args)
                or any(_too_big(v) for v in kwargs.values())
                or (isinstance(owner, str) and _too_big(owner))
            ):
                name = getattr(__obj, "__name__", "a call")
                raise SecurityError(f"{name} was given a size that is too large")
            return _checked(super().call(__context, __obj, *args, **kwargs))

    # The same settings transformers uses for chat templates.
    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters = {name: _bounded_filter(fn) for name, fn in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    return env
