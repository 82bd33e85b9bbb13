"""A chat session: a conversation bound to a loaded model, context trimming, streamed answers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from .. import hardware
from ..catalog import DEFAULT_SYSTEM_PROMPT, LLAMA3_STOPS
from ..errors import InputError, UsageError
from ..gguf.info import GGUFInfo, read_gguf_info
from ..hf.engine import HFModel, HFSession
from ..llamacpp.engine import (
    ContextSettings,
    GenerationRecord,
    Model,
    SamplingParams,
    Session,
    default_threads,
)
from ..quant.recommend import record_speed
from .conversation import Conversation, check_text
from .prompt_tokens import chat_prompt_tokens
from .template import ChatTemplate, choose_template


class Chat:
    """A conversation bound to a model session.

    Args:
        notify: called with a one-line message when the library has something to tell the user
            (turns dropped to fit the context, answer cut at the context end).
    """

    def __init__(
        self,
        session: Session | HFSession,
        *,
        template: ChatTemplate,
        sampling: SamplingParams,
        conversation: Conversation | None = None,
        max_tokens: int = -1,
        notify: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.session = session
        self.model: Model | HFModel = session.model
        self.template = template
        self.sampling = sampling
        self.conversation = conversation or Conversation()
        self.max_tokens = max_tokens
        self.notify = notify
        self.stop_tokens = frozenset(
            t for t in (self.model.token_id(s) for s in LLAMA3_STOPS) if t is not None
        )
        # "cpu" or "gpu" (all layers) when open_chat knows: answers' tok/s go to speed.json
        self.speed_device: str | None = None
        self.path: Path | None = None

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the rendered prompt, with the assistant header to answer after.

        Only the template's own scaffolding becomes control tokens: a message that contains
        ``<|eot_id|><|start_header_id|>system<|end_header_id|>`` is read as text, not as a turn.
        """
        return chat_prompt_tokens(self.model, self.template, messages).ids

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

    def ask(self, text: str) -> Generator[GenerationRecord, None, None]:
        """Add a user message and stream the answer's records; the answer joins the conversation.

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
        last: GenerationRecord | None = None
        try:
            for last in self.session.generate(
                tokens, self.sampling, max_tokens=self.max_tokens, stop_tokens=self.stop_tokens
            ):
                parts.append(last.text)
                yield last
        finally:
            self.conversation.turns.append({"role": "assistant", "content": "".join(parts)})
            if last is not None and last.finish_reason is not None:
                self._record_speed(last)
            if last is not None and last.finish_reason == "length":
                if len(self.session.cached) >= self.session.n_ctx:
                    self.notify("the answer reached the end of the context and was cut")

    def _record_speed(self, answer: GenerationRecord) -> None:
        # Only whole answers long enough to time: recommend's expected tok/s come from these.
        if self.speed_device is None or self.path is None:
            return
        if answer.generation_tokens < MIN_TIMED_TOKENS or answer.generation_tps <= 0:
            return
        with contextlib.suppress(OSError):
            record_speed(
                self.path,
                tps=answer.generation_tps,
                device=self.speed_device,
                tokens=answer.generation_tokens,
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


def format_stats(answer: GenerationRecord) -> str:
    """One line of per-answer statistics, from the last record of the answer."""
    cached = answer.prompt_tokens - answer.prompt_evaluated
    return (
        f"prompt {answer.prompt_tokens} tokens ({cached} cached, {answer.prompt_evaluated} "
        f"evaluated at {answer.prompt_tps:.1f} tok/s) | answer {answer.generation_tokens} tokens "
        f"at {answer.generation_tps:.1f} tok/s | first token after "
        f"{answer.first_token_seconds:.2f} s"
    )


@dataclass(frozen=True)
class LoadedChat:
    """What ``open_chat`` made, and the facts the CLI reports."""

    chat: Chat
    info: GGUFInfo
    plan: hardware.OffloadPlan
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


@dataclass(frozen=True)
class LoadedHFChat:
    """What ``open_hf_chat`` made, and the facts the CLI reports."""

    chat: Chat
    model: HFModel
    n_ctx: int


def open_hf_chat(
    path: Path,
    *,
    lora: Path | None = None,
    n_ctx: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    template: str = "auto",
    sampling: SamplingParams | None = None,
    system: str | None = DEFAULT_SYSTEM_PROMPT,
    max_tokens: int = -1,
    notify: Callable[[str], None] = lambda _msg: None,
) -> LoadedHFChat:
    """Load an HF checkpoint (and an unmerged LoRA) with transformers; a chat ready to ``ask``.

    The same template choice, stops and context trimming as ``open_chat`` on a GGUF.

    Raises:
        MissingExtraError: torch / transformers / peft are not installed.
        ModelNotFoundError, InvalidModelError: not an HF checkpoint (or not a LoRA folder).
        UsageError: options out of range.
    """
    sampling = sampling or SamplingParams()
    sampling.validate()
    if sampling.grammar:
        raise UsageError("response grammars need the GGUF engine", hint="leave out --engine hf")
    check_max_tokens(max_tokens)
    hardware.check_threads(threads)
    model = HFModel(path, lora=lora, device=device, dtype=dtype)
    if threads:
        import torch

        torch.set_num_threads(threads)
    ctx = n_ctx or min(8192, model.n_ctx_train or 8192)
    if model.n_ctx_train and ctx > model.n_ctx_train:
        model.close()
        raise UsageError(
            f"--ctx {ctx} exceeds the {model.n_ctx_train} tokens {path.name} was trained on",
            hint=f"use --ctx {model.n_ctx_train} or less",
        )
    session = HFSession(model, n_ctx=ctx)
    try:
        tmpl = choose_template(model, template)
    except Exception:
        model.close()
        raise
    chat = Chat(
        session,
        template=tmpl,
        sampling=sampling,
        conversation=Conversation(system=system),
        max_tokens=max_tokens,
        notify=notify,
    )
    return LoadedHFChat(chat=chat, model=model, n_ctx=ctx)
