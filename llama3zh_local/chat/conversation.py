"""Chat: the prompt template, the conversation, context trimming, and streaming answers."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..catalog import DEFAULT_SYSTEM_PROMPT
from ..errors import ChatTemplateError, InputError, UsageError
from ..files import atomic
from ..llamacpp.engine import GenerationStats, Model, SamplingParams, Session

# Special tokens that end an assistant turn in the Llama-3 format; llama.cpp marks them as
# end-of-generation in well-made GGUFs, we also stop on them explicitly for older files.
LLAMA3_STOPS = ("<|eot_id|>", "<|end_of_text|>")


@lru_cache(maxsize=1)
def llama3_template() -> str:
    """The Llama-3-Instruct chat template (Meta's, as in its tokenizer_config.json)."""
    text = (
        resources.files("llama3zh_local.data").joinpath("llama3_instruct.jinja").read_text("utf-8")
    )
    return text.rstrip("\n")


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and the special-token strings it may use."""

    source: str
    bos_token: str = "<|begin_of_text|>"
    eos_token: str = "<|eot_id|>"
    origin: str = "built-in Llama-3-Instruct"

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render in a sandbox: GGUF templates are untrusted input (cf. CVE-2024-34359).

        Bounded as well as sandboxed: at most ``MAX_RENDER_SECONDS``, ``MAX_RENDER_CHARS`` of
        output (and of any one string it builds), and Python's recursion limit.

        Raises:
            ChatTemplateError: the template is invalid, unsafe, too slow or too large, or fails
                in any other way (always with the ``--template llama3`` hint).
        """
        from jinja2 import TemplateError
        from jinja2.sandbox import SecurityError

        hint = "use the built-in template instead: --template llama3"
        where = f"the chat template from {self.origin}"
        try:
            with _deadline(MAX_RENDER_SECONDS):
                template = _sandbox().from_string(self.source)
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


def choose_template(model: Model, which: str = "auto") -> ChatTemplate:
    """The template to chat with: ``auto`` (the GGUF's own, else Llama-3), ``llama3``, ``gguf``."""
    bos = model.bos_text() or "<|begin_of_text|>"
    eot = model.token_id("<|eot_id|>")
    eos = "<|eot_id|>" if eot is not None else ""
    embedded = model.meta("tokenizer.chat_template")
    if which == "llama3" or (which == "auto" and not embedded):
        return ChatTemplate(llama3_template(), bos_token=bos, eos_token=eos or "<|eot_id|>")
    if not embedded:
        raise ChatTemplateError(
            f"{model.path.name} has no chat template (tokenizer.chat_template)",
            hint="use the built-in Llama-3 template: --template llama3",
        )
    eos_id = model._ll.llama_vocab_eos(model.vocab)
    eos_text = (
        model.token_bytes(eos_id, special=True).decode("utf-8", "replace") if eos_id >= 0 else ""
    )
    return ChatTemplate(embedded, bos_token=bos, eos_token=eos_text, origin=model.path.name)


@dataclass
class Conversation:
    """System prompt plus alternating user/assistant turns."""

    system: str | None = DEFAULT_SYSTEM_PROMPT
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def clear(self) -> None:
        self.turns.clear()

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON (``{"system": ..., "messages": [...]}``), atomically.

        Raises:
            InputError: the file cannot be written there (a folder, no such folder, no
                permission, disk full); the message names ``path``, not the temporary file.
        """
        path = Path(path).expanduser()
        data = {"system": self.system, "messages": self.turns}
        text = json.dumps(data, ensure_ascii=False, indent=1)
        hint = "give a file path in a folder that exists and you can write to"
        if path.is_dir():
            raise InputError(f"cannot save to {quoted(path)}: it is a folder", hint=hint)
        if not path.parent.is_dir():
            raise InputError(
                f"cannot save to {quoted(path)}: there is no folder {quoted(path.parent)}",
                hint=hint,
            )
        if path.exists() and not path.is_file():  # a device or FIFO must not be replaced
            raise InputError(f"cannot save to {quoted(path)}: it is not a regular file", hint=hint)
        if path.exists() and not os.access(path, os.W_OK):
            raise InputError(f"cannot save to {quoted(path)}: the file is read-only", hint=hint)
        try:
            return atomic.write_text(path, text)
        except (OSError, UnicodeError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise InputError(f"cannot save to {quoted(path)}: {why}", hint=hint) from None

    @classmethod
    def load(cls, path: str | Path) -> Conversation:
        """A conversation written by ``save``; every field is checked for its type.

        Raises:
            InputError: no such file, not JSON, or not a saved conversation.
        """
        path = Path(path).expanduser()
        hint = (
            'files written by /save hold {"system": TEXT or null, "messages": [{"role": '
            '"user" or "assistant", "content": TEXT}, ...]}'
        )
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InputError(
                f"no conversation file at {quoted(path)}",
                hint="give the path of a file written by /save",
            ) from None
        except OSError as err:
            raise InputError(
                f"cannot read {quoted(path)}: {err.strerror or err}",
                hint="give the path of a file written by /save",
            ) from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise InputError(
                f"{quoted(path)} is not a saved conversation (not UTF-8 JSON: {err})", hint=hint
            ) from None

        def bad(why: str) -> InputError:
            return InputError(f"{quoted(path)} is not a saved conversation: {why}", hint=hint)

        if not isinstance(data, dict):
            raise bad(f"it holds a JSON {type(data).__name__}, not an object")
        system = data.get("system")
        messages = data.get("messages")
        if system is not None and not isinstance(system, str):
            raise bad(f'"system" is a {type(system).__name__}, not text or null')
        if not isinstance(messages, list):
            raise bad('"messages" is missing or not a list')
        if system is not None:
            try:
                check_text(system, '"system"')
            except InputError as err:
                raise bad(str(err)) from None
        turns: list[dict[str, str]] = []
        for i, m in enumerate(messages, 1):
            if not isinstance(m, dict):
                raise bad(f"message {i} is a {type(m).__name__}, not an object")
            role, content = m.get("role"), m.get("content")
            if role not in ("user", "assistant"):
                raise bad(f"message {i} has role {role!r} (expected user or assistant)")
            if not isinstance(content, str):
                raise bad(f"message {i}'s content is a {type(content).__name__}, not text")
            try:
                check_text(content, f"message {i}'s content")
            except InputError as err:
                raise bad(str(err)) from None
            turns.append({"role": role, "content": content})
        return cls(system=system, turns=turns)


def quoted(path: str | Path) -> str:
    """A path for a message: as typed, or repr-quoted when it holds anything unprintable."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def check_text(text: str, what: str) -> str:
    """``text`` when it is valid Unicode text (no undecodable bytes smuggled in as surrogates).

    Python hands bytes that are not UTF-8 in arguments and terminal input over as lone
    surrogates (``\\udcff`` for byte 0xff); llama.cpp's tokenizer takes UTF-8 only.

    Raises:
        InputError: the text holds such a byte; the message says which and where.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        ch = ord(text[err.start])
        byte = f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"U+{ch:04X}"
        raise InputError(
            f"{what} is not valid UTF-8 text ({byte} at character {err.start + 1})",
            hint="give it as UTF-8: convert with `iconv -f GBK -t UTF-8`, or set the terminal "
            "to UTF-8 (LANG=C.UTF-8)",
        ) from None
    return text


def decode_input(data: bytes, what: str) -> str:
    """Bytes read from stdin or a file as UTF-8 text.

    Raises:
        InputError: they are not UTF-8; the message gives the first bad byte and its offset.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{what} is not valid UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
            hint="convert it first, e.g. iconv -f GBK -t UTF-8 FILE | llama3zh chat",
        ) from None


class Chat:
    """A conversation bound to a model session.

    Args:
        notify: called with a one-line message when the library has something to tell the user
            (turns dropped to fit the context, answer cut at the context end).
    """

    def __init__(
        self,
        session: Session,
        *,
        template: ChatTemplate,
        sampling: SamplingParams,
        conversation: Conversation | None = None,
        max_tokens: int = -1,
        notify: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.session = session
        self.model = session.model
        self.template = template
        self.sampling = sampling
        self.conversation = conversation or Conversation()
        self.max_tokens = max_tokens
        self.notify = notify
        self.stop_tokens = frozenset(
            t for t in (self.model.token_id(s) for s in LLAMA3_STOPS) if t is not None
        )
        self.last_stats: GenerationStats | None = None
        # "cpu" or "gpu" (all layers) when open_chat knows: answers' tok/s go to speed.json
        self.speed_device: str | None = None
        self.path: Path | None = None

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the rendered prompt, with the assistant header to answer after."""
        text = self.template.render(messages, add_generation_prompt=True)
        # The template writes BOS itself when it wants one; add it only when it did not.
        add_bos = self.model.add_bos and not (
            self.template.bos_token and text.startswith(self.template.bos_token)
        )
        return self.model.tokenize(text, add_special=add_bos, parse_special=True)

    def _reserve(self) -> int:
        n_ctx = self.session.n_ctx
        if self.max_tokens > 0:
            return min(self.max_tokens, n_ctx // 2)
        return min(512, n_ctx // 4)

    def _overflow_hint(self, n_prompt: int) -> str:
        """What to do when one message does not fit: a larger --ctx only if there is one."""
        n_ctx, reserve = self.session.n_ctx, self._reserve()
        need = n_prompt + reserve
        bigger = 1 << max(need - 1, 1).bit_length()  # the next power of two that holds it
        limit = self.model.n_ctx_train or bigger
        if n_ctx < limit:
            return f"shorten it, or start with a larger context: --ctx {min(bigger, limit)}"
        also = ", or ask for a shorter answer (-n)" if self.max_tokens > 0 else ""
        return f"shorten it{also}: the context is already the model's maximum ({limit} tokens)"

    def fit(self) -> list[int]:
        """Prompt tokens for the conversation, dropping the oldest turns until they fit.

        The system prompt and the latest user message are always kept.
        """
        conv = self.conversation
        budget = self.session.n_ctx - self._reserve()
        dropped = 0
        while True:
            tokens = self.prompt_tokens(conv.messages())
            if len(tokens) <= budget:
                break
            if len(conv.turns) <= 1:
                raise InputError(
                    f"the message is too long: the prompt needs {len(tokens)} tokens, the context "
                    f"holds {self.session.n_ctx} (with {self._reserve()} kept for the answer)",
                    hint=self._overflow_hint(len(tokens)),
                )
            # drop the oldest exchange: a user turn and the assistant answer after it
            n = 2 if len(conv.turns) > 2 and conv.turns[1]["role"] == "assistant" else 1
            del conv.turns[:n]
            dropped += n
        if dropped:
            self.notify(
                f"context full ({self.session.n_ctx} tokens): dropped the {dropped} oldest "
                f"message{'s' if dropped > 1 else ''}, kept the system prompt"
            )
        return tokens

    def ask(self, text: str) -> Generator[str, None, None]:
        """Add a user message and stream the answer; the answer joins the conversation.

        When the consumer stops early (Ctrl-C), the part already generated is kept.
        """
        if not text.strip():
            raise InputError("empty message", hint="type a question, or /help for commands")
        check_text(text, "the message")
        self.conversation.turns.append({"role": "user", "content": text})
        try:
            tokens = self.fit()
        except Exception:
            self.conversation.turns.pop()
            raise
        parts: list[str] = []
        try:
            for piece in self.session.generate(
                tokens, self.sampling, max_tokens=self.max_tokens, stop_tokens=self.stop_tokens
            ):
                parts.append(piece)
                yield piece
        finally:
            self.last_stats = self.session.last_stats
            self.conversation.turns.append({"role": "assistant", "content": "".join(parts)})
            self._record_speed(self.last_stats)
            if self.last_stats.finish_reason == "length" and len(self.session.cached) >= (
                self.session.n_ctx
            ):
                self.notify("the answer reached the end of the context and was cut")

    def _record_speed(self, stats: GenerationStats) -> None:
        # Only whole answers long enough to time: recommend's expected tok/s come from these.
        if self.speed_device is None or self.path is None or stats.finish_reason == "interrupted":
            return
        if stats.generated_tokens < MIN_TIMED_TOKENS or stats.generation_tps <= 0:
            return
        from ..quant.recommend import record_speed

        with contextlib.suppress(OSError):
            record_speed(
                self.path,
                tps=stats.generation_tps,
                device=self.speed_device,
                tokens=stats.generated_tokens,
            )


MIN_TIMED_TOKENS = 16  # shorter answers are not timed for recommend


def check_max_tokens(max_tokens: int) -> None:
    """``-n``: a positive number of tokens, or -1 for no limit (0 would mean no answer at all).

    Raises:
        UsageError: any other value.
    """
    if max_tokens == -1 or 0 < max_tokens <= 1 << 30:
        return
    raise UsageError(
        f"-n {max_tokens}: the longest answer must be a positive number of tokens, or -1 for "
        "no limit",
        hint="e.g. -n 256, or leave it out (-1: the answer ends when the model stops or the "
        "context is full)",
    )


def format_stats(stats: GenerationStats) -> str:
    """One line of per-answer statistics."""
    cached = stats.prompt_tokens - stats.prompt_evaluated
    return (
        f"prompt {stats.prompt_tokens} tokens ({cached} cached, {stats.prompt_evaluated} evaluated "
        f"at {stats.prompt_tps:.1f} tok/s) | answer {stats.generated_tokens} tokens at "
        f"{stats.generation_tps:.1f} tok/s | first token after {stats.first_token_seconds:.2f} s"
    )


@dataclass(frozen=True)
class LoadedChat:
    """What ``open_chat`` made, and the facts the CLI reports."""

    chat: Chat
    info: Any  # ggufinfo.GGUFInfo
    plan: Any  # hardware.OffloadPlan
    n_ctx: int
    n_threads: int


def open_chat(
    path: Path,
    *,
    n_ctx: int | None = None,
    gpu_layers: int | None = None,
    threads: int | None = None,
    flash_attn: str = "auto",
    template: str = "auto",
    sampling: SamplingParams | None = None,
    system: str | None = DEFAULT_SYSTEM_PROMPT,
    max_tokens: int = -1,
    notify: Callable[[str], None] = lambda _msg: None,
) -> LoadedChat:
    """Check the GGUF, plan GPU offload, load it and make a chat ready to ``ask``.

    Args:
        gpu_layers: None for auto (as many layers as fit the free VRAM), -1 for all.

    Raises:
        ModelNotFoundError, InvalidModelError: the file is missing or not a usable GGUF.
        UsageError: options out of range (e.g. more GPU layers than the model has).
        BackendError: llama.cpp could not load the model or create the context.
    """
    from .. import hardware
    from ..gguf.info import read_gguf_info
    from ..llamacpp.engine import ContextSettings, default_threads

    sampling = sampling or SamplingParams()
    sampling.validate()
    check_max_tokens(max_tokens)
    hardware.check_threads(threads)
    info = read_gguf_info(path)
    info.check_loadable()
    info.check_vocab()
    ctx = n_ctx or min(8192, info.n_ctx_train or 8192)
    hw = hardware.detect()
    hardware.check_ctx(ctx, info, ram_total=hw.ram_total + sum(g.total for g in hw.gpus))
    plan = hardware.plan_offload(info, n_ctx=ctx, requested=gpu_layers, hw=hw)
    n_threads = threads or default_threads()
    model = Model(path, n_gpu_layers=plan.n_gpu_layers)
    try:
        session = Session(
            model,
            ContextSettings(n_ctx=ctx, n_threads=n_threads, flash_attn=flash_attn),
        )
        tmpl = choose_template(model, template)
    except Exception:
        model.close()
        raise
    conversation = Conversation(system=system)
    chat = Chat(
        session,
        template=tmpl,
        sampling=sampling,
        conversation=conversation,
        max_tokens=max_tokens,
        notify=notify,
    )
    chat.path = path
    if plan.n_gpu_layers == 0:
        chat.speed_device = "cpu"
    elif plan.n_gpu_layers > info.n_layer:
        chat.speed_device = "gpu"
    return LoadedChat(chat=chat, info=info, plan=plan, n_ctx=session.n_ctx, n_threads=n_threads)
