"""The generation engine: llama.cpp's C API through llama_cpp's ctypes bindings.

Why not ``llama_cpp.Llama``: its generate loop copies the full logits row into numpy and
re-detokenizes on every token, which measured 0.81-0.90x of ``llama-bench`` here. This engine keeps
sampling in llama.cpp's sampler chain, reuses one token buffer, decodes UTF-8 incrementally and
keeps the KV cache between turns (only the new suffix of the prompt is evaluated).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackendError, UsageError
from . import repack as repacking
from .native import last_log_lines, lib

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed per sampler


def default_threads() -> int:
    """Physical cores available to this process (what llama.cpp's tools default to)."""
    try:
        n_avail = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n_avail = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                core = line.split(":", 1)[1].strip()
                cores.add((phys, core))
    except OSError:
        pass
    n_phys = len(cores) or n_avail
    return max(1, min(n_phys, n_avail))


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; defaults are the upstream project's (Chinese-LLaMA-Alpaca-3)."""

    temperature: float = 0.2
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int | None = None
    # OpenAI's penalties and a response grammar (GBNF, root rule "root"): set by serve
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    grammar: str | None = None

    @property
    def penalized(self) -> bool:
        return self.repeat_penalty != 1.0 or bool(self.frequency_penalty or self.presence_penalty)

    def validate(self) -> None:
        """Refuse values llama.cpp's samplers would misbehave on (NaN and infinities too).

        Raises:
            UsageError: the option, its value, the range and (hint) a usual value.
        """
        checks = (
            ("--temperature", self.temperature, self.temperature >= 0, ">= 0 (0: greedy)",
             "0.2 (the default) to 1.0; 0 always picks the likeliest token"),
            ("--top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]",
             "0.9 (the default); 1 turns it off"),
            ("--top-k", self.top_k, 0 <= self.top_k <= 1 << 30, "in [0, 2^30] (0 disables it)",
             "40 (the default); 0 turns it off"),
            ("--min-p", self.min_p, 0 <= self.min_p <= 1, "in [0, 1]",
             "0 (the default) turns it off; 0.05 is a common value"),
            ("--repeat-penalty", self.repeat_penalty, self.repeat_penalty > 0, "> 0",
             "1.1 (the default); 1 turns it off"),
        )  # fmt: skip
        for option, value, ok, allowed, usual in checks:
            if not ok or not math.isfinite(value):
                raise UsageError(f"{option} {value}: must be {allowed}", hint=f"use {usual}")


@dataclass(frozen=True)
class GenerationRecord:
    """One step of a streamed answer, carrying the answer's figures so far.

    ``Session.generate`` yields one per piece of text (as mlx-lm's ``GenerationResponse``), so a
    consumer that stops early still holds the figures up to there; the last record of a finished
    answer has a ``finish_reason`` and may have no text. The counts and durations are what an
    OpenAI ``usage`` and Ollama's ``prompt_eval_count``/``eval_count``/``*_duration`` report.
    """

    text: str  # the new piece of the answer ("" on a last record that only finishes it)
    tokens: tuple[int, ...]  # the token ids this piece came from (a character may span several)
    prompt_tokens: int  # tokens of the whole prompt
    prompt_evaluated: int  # of those, evaluated now (the rest came from the KV cache)
    prompt_seconds: float
    generation_tokens: int  # tokens of the answer so far (the stop token not counted)
    generation_seconds: float  # from the first token to this record
    first_token_seconds: float  # from the start of prompt evaluation to the first token
    finish_reason: str | None = None  # on the last record: "stop" or "length"

    @property
    def prompt_tps(self) -> float:
        return self.prompt_evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        # The first token comes from the prompt's logits; the rest each cost one decode.
        n = self.generation_tokens - 1
        return n / self.generation_seconds if n > 0 and self.generation_seconds > 0 else 0.0

    @property
    def total_seconds(self) -> float:
        """Prompt evaluation and generation together (Ollama's ``total_duration``)."""
        return self.first_token_seconds + self.generation_seconds


@contextlib.contextmanager
def _ctrl_c_sets(flag: threading.Event) -> Iterator[None]:
    """Ctrl-C sets ``flag`` while the block runs in the main thread.

    During a long C call llama.cpp calls back into Python (logs, progress); a KeyboardInterrupt
    raised there is swallowed by ctypes and lost. A flag that the progress callback reads lets
    llama.cpp stop at its next step instead.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Model:
    """A loaded GGUF model (weights + vocabulary). Use as a context manager or call ``close()``."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        repack: bool | None = None,
    ) -> None:
        """Load ``path``.

        Args:
            repack: let llama.cpp repack weights for this CPU (its AMX / CPU_REPACK buffer
                types); None: what ``repack.enabled()`` decided for this machine.
        """
        ll = lib()
        self.path = Path(path)
        if repack is None:
            repack = repacking.enabled()
        self.repack = repack
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_mmap = use_mmap
        params.use_extra_bufts = repack
        self._ll = ll
        stop = threading.Event()

        def keep_loading(_progress: float, _user: Any) -> bool:
            return not stop.is_set()

        on_progress = ll.llama_progress_callback(keep_loading)
        params.progress_callback = on_progress
        with _ctrl_c_sets(stop):
            self.ptr = ll.llama_model_load_from_file(str(self.path).encode(), params)
        if stop.is_set():
            self.close()
            raise KeyboardInterrupt
        if not self.ptr:
            raise BackendError(
                f"llama.cpp could not load {self.path}: {last_log_lines() or 'no reason given'}",
                hint="check the file with `llama3zh doctor` or download it again",
            )
        self.vocab = ll.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = ll.llama_vocab_n_tokens(self.vocab)
        self.n_layer: int = ll.llama_model_n_layer(self.ptr)
        self.n_ctx_train: int = ll.llama_model_n_ctx_train(self.ptr)
        self.n_gpu_layers = n_gpu_layers
        self._piece_buf = ctypes.create_string_buffer(256)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._ll.llama_model_free(self.ptr)
            self.ptr = None

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string (None when absent)."""
        buf = ctypes.create_string_buffer(4096)
        n = self._ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (ctypes.c_int32 * cap)()
        n = self._ll.llama_tokenize(
            self.vocab, data, len(data), arr, cap, add_special, parse_special
        )
        if n < 0:  # the buffer was too small: -n is the size needed
            arr = (ctypes.c_int32 * -n)()
            n = self._ll.llama_tokenize(
                self.vocab, data, len(data), arr, -n, add_special, parse_special
            )
        return list(arr[:n])

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        buf = self._piece_buf
        n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return b"".join(self.token_bytes(t, special=special) for t in tokens).decode(
            "utf-8", errors="replace"
        )

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self.vocab, token))

    def token_id(self, text: str) -> int | None:
        """The id of a special token given by its text (``<|eot_id|>``), or None."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    @property
    def add_bos(self) -> bool:
        return bool(self._ll.llama_vocab_get_add_bos(self.vocab))

    @property
    def bos_id(self) -> int:
        """The beginning-of-text token (-1: none)."""
        return int(self._ll.llama_vocab_bos(self.vocab))

    @property
    def eos_id(self) -> int:
        """The end-of-text token (-1: none)."""
        return int(self._ll.llama_vocab_eos(self.vocab))

    def bos_text(self) -> str:
        return self._special_text(self.bos_id)

    def eos_text(self) -> str:
        return self._special_text(self.eos_id)

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.token_bytes(token, special=True).decode("utf-8", errors="replace")


def sampler_chain(model: Model, p: SamplingParams) -> Any:
    """llama.cpp's sampler chain for ``p`` on ``model``'s vocabulary (the caller frees it).

    Raises:
        BackendError: llama.cpp rejected ``p.grammar``.
    """
    ll = lib()
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    add = ll.llama_sampler_chain_add
    if p.grammar:
        grammar = ll.llama_sampler_init_grammar(model.vocab, p.grammar.encode("utf-8"), b"root")
        if not grammar:
            ll.llama_sampler_free(chain)
            raise BackendError(
                f"llama.cpp rejected the response grammar: {last_log_lines()}",
                hint="simplify the JSON schema",
            )
        add(chain, grammar)
    if p.penalized:
        keep = 1 if p.temperature <= 0 else p.top_k  # what is sampled from after the penalties
        lowers = p.repeat_penalty >= 1 and p.frequency_penalty >= 0 and p.presence_penalty >= 0
        if keep > 0 and p.repeat_last_n > 0 and lowers:
            # The penalty sampler looks up every candidate in a hash map (the whole vocab:
            # 128k lookups a token for Llama-3). Penalties that only lower logits and touch at
            # most repeat_last_n tokens keep the top ``keep`` after them within the top
            # (keep + repeat_last_n) before them: cutting to that first is exact and cheap.
            add(chain, ll.llama_sampler_init_top_k(keep + p.repeat_last_n))
        # The first argument is the vocabulary size (0 only works while sampling on the CPU).
        add(chain, ll.llama_sampler_init_penalties(
            model.n_vocab, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty,
            p.presence_penalty,
        ))  # fmt: skip
    if p.temperature <= 0:
        add(chain, ll.llama_sampler_init_greedy())
        return chain
    if p.top_k > 0:
        add(chain, ll.llama_sampler_init_top_k(p.top_k))
    if p.top_p < 1.0:
        add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0:
        add(chain, ll.llama_sampler_init_min_p(p.min_p, 1))
    add(chain, ll.llama_sampler_init_temp(p.temperature))
    seed = DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF
    add(chain, ll.llama_sampler_init_dist(seed))
    return chain


@dataclass
class ContextSettings:
    n_ctx: int = 4096  # in all: n_seq_max sequences share it (each gets n_ctx / n_seq_max)
    n_batch: int = 2048
    n_ubatch: int = 512
    n_threads: int = field(default_factory=default_threads)
    n_threads_batch: int | None = None
    flash_attn: str = "auto"  # auto | on | off
    n_seq_max: int = 1  # parallel sequences (serve's slots)
    # n_seq_max > 1: one KV cache for all sequences (True), or a stream of n_ctx / n_seq_max
    # cells for each (False: a sequence's attention spans only its own cells)
    kv_unified: bool = True
    kv_f32: bool = False  # keys and values in f32, not f16 (fidelity: only the weights differ)


def new_context(model: Model, settings: ContextSettings) -> Any:
    """A llama.cpp context on ``model`` (the caller frees it with ``llama_free``).

    Raises:
        BackendError: llama.cpp could not create it (out of memory, most often).
    """
    ll = lib()
    cp = ll.llama_context_default_params()
    cp.n_ctx = settings.n_ctx
    cp.n_batch = min(settings.n_batch, settings.n_ctx)
    cp.n_ubatch = min(settings.n_ubatch, cp.n_batch)
    cp.n_threads = settings.n_threads
    cp.n_threads_batch = settings.n_threads_batch or settings.n_threads
    cp.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[settings.flash_attn]
    cp.no_perf = True
    if settings.kv_f32:
        cp.type_k = cp.type_v = 0  # GGML_TYPE_F32
    if settings.n_seq_max > 1:
        cp.n_seq_max = settings.n_seq_max
        cp.kv_unified = settings.kv_unified
    ptr = ll.llama_init_from_model(model.ptr, cp)
    if not ptr:
        what = f"{settings.n_ctx} tokens" + (
            f" for {settings.n_seq_max} sequences" if settings.n_seq_max > 1 else ""
        )
        raise BackendError(
            f"llama.cpp could not create a context of {what}: "
            f"{last_log_lines() or 'no reason given'}",
            hint="try a smaller --ctx"
            + (", a smaller --parallel" if settings.n_seq_max > 1 else "")
            + " or fewer GPU layers (-ngl)",
        )
    return ptr


def reusable_prefix(cached: Sequence[int], tokens: Sequence[int], *, n_ctx: int) -> int:
    """How many leading ``tokens`` a cache holding ``cached`` can keep: the shared prefix, short
    of the last token (its logits must be computed to sample from). Shared by both engines.

    Raises:
        UsageError: an empty prompt, or one longer than the context.
    """
    if not tokens:
        raise UsageError(
            "empty prompt: the chat template rendered no tokens",
            hint="use the built-in template: --template llama3",
        )
    if len(tokens) > n_ctx:
        raise UsageError(
            f"prompt of {len(tokens)} tokens exceeds the context of {n_ctx}",
            hint="shorten it, or start with a larger context (--ctx)",
        )
    keep = 0
    limit = min(len(cached), len(tokens) - 1)
    while keep < limit and cached[keep] == tokens[keep]:
        keep += 1
    return keep


class Session:
    """One llama.cpp context with its KV cache and sampler: evaluates prompts and generates.

    The tokens in the KV cache are tracked so that a new prompt that extends the previous
    conversation evaluates only its new tokens.
    """

    def __init__(self, model: Model, settings: ContextSettings) -> None:
        ll = model._ll
        self._ll = ll
        self.model = model
        self.ptr = new_context(model, settings)
        self.n_ctx: int = ll.llama_n_ctx(self.ptr)
        self.n_batch: int = ll.llama_n_batch(self.ptr)
        self._mem = ll.llama_get_memory(self.ptr)
        self.cached: list[int] = []  # tokens whose keys/values are in the KV cache, in order
        self._tok = (ctypes.c_int32 * 1)()
        self._sampler: Any = None
        self._sampler_key: SamplingParams | None = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sampler:
            self._ll.llama_sampler_free(self._sampler)
            self._sampler = None
        if getattr(self, "ptr", None):
            self._ll.llama_free(self.ptr)
            self.ptr = None

    # -- sampling -------------------------------------------------------------------------

    def _sampler_for(self, p: SamplingParams) -> Any:
        ll = self._ll
        if self._sampler is not None and self._sampler_key == p:
            ll.llama_sampler_reset(self._sampler)
            return self._sampler
        if self._sampler is not None:
            ll.llama_sampler_free(self._sampler)
        chain = sampler_chain(self.model, p)
        self._sampler, self._sampler_key = chain, p
        return chain

    # -- evaluation -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the KV cache."""
        self._ll.llama_memory_clear(self._mem, True)
        self.cached = []

    def _decode(self, tokens: Sequence[int]) -> None:
        ll = self._ll
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            arr = (ctypes.c_int32 * len(chunk))(*chunk)
            rc = ll.llama_decode(self.ptr, ll.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                # keep our record in step with what the cache holds, then fail
                self.reset()
                raise BackendError(
                    f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc}): "
                    f"{last_log_lines() or 'no reason given'}",
                    hint="try a smaller --ctx, or fewer GPU layers (-ngl)",
                )
            self.cached.extend(chunk)

    def evaluate(self, tokens: Sequence[int]) -> int:
        """Make the KV cache hold exactly ``tokens``; returns how many were evaluated now.

        The longest prefix already cached is kept. At least the last token is always evaluated,
        so that its logits are there to sample from.
        """
        keep = reusable_prefix(self.cached, tokens, n_ctx=self.n_ctx)
        # Always trim from `keep`: an interrupted decode (Ctrl-C) can leave positions in the cache
        # that `self.cached` does not list, and llama_batch_get_one places tokens after them.
        if self._ll.llama_memory_seq_rm(self._mem, -1, keep, -1):
            del self.cached[keep:]
        else:
            self.reset()
            keep = 0
        self._decode(tokens[keep:])
        return len(tokens) - keep

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        max_tokens: int = -1,
        stop_tokens: frozenset[int] = frozenset(),
    ) -> Iterator[GenerationRecord]:
        """Evaluate ``prompt`` and yield the answer as it is generated, with its figures.

        Stops at an end-of-generation token (or one of ``stop_tokens``), at ``max_tokens``, or
        when the context is full; the last record says which (``finish_reason``). A consumer
        that stops early keeps the figures of the last record it took.
        """
        ll = self._ll
        model = self.model
        sampler = self._sampler_for(params)
        t0 = time.perf_counter()
        n_evaluated = self.evaluate(prompt)
        t1 = time.perf_counter()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tok_arr = self._tok
        sample = ll.llama_sampler_sample
        decode = ll.llama_decode
        batch = ll.llama_batch_get_one(tok_arr, 1)  # points at tok_arr: reused for every token
        ctx = self.ptr
        cached = self.cached
        n_ctx = self.n_ctx
        is_eog = model.is_eog
        token_bytes = model.token_bytes
        clock = time.perf_counter
        first = 0.0  # seconds from t0 to the first token
        n = 0  # tokens generated
        pending: list[int] = []  # tokens whose text is not out yet (an unfinished character)

        def record(text: str, finish: str | None = None) -> GenerationRecord:
            return GenerationRecord(
                text=text,
                tokens=tuple(pending),
                prompt_tokens=len(prompt),
                prompt_evaluated=n_evaluated,
                prompt_seconds=t1 - t0,
                generation_tokens=n,
                generation_seconds=clock() - t0 - first,
                first_token_seconds=first,
                finish_reason=finish,
            )

        while True:
            tok = sample(sampler, ctx, -1)
            if n == 0:
                first = clock() - t0
            if is_eog(tok) or tok in stop_tokens:
                # Cut at a stop, the answer may end inside a multi-byte character: drop its
                # first bytes (flushing them would print U+FFFD).
                yield record("", "stop")
                return
            n += 1
            pending.append(tok)
            text = decoder.decode(token_bytes(tok))
            if n == max_tokens or len(cached) >= n_ctx:
                yield record(text, "length")  # as at a stop: an unfinished character is dropped
                return
            if text:
                yield record(text)
                pending.clear()
            tok_arr[0] = tok
            rc = decode(ctx, batch)
            if rc != 0:
                raise BackendError(
                    f"llama.cpp failed while generating (llama_decode returned {rc}): "
                    f"{last_log_lines() or 'no reason given'}"
                )
            cached.append(tok)

    def all_logits(self, tokens: Sequence[int]) -> Any:
        """The logits of every position of ``tokens`` (a float32 numpy array, tokens x vocab).

        Evaluates ``tokens`` from an empty KV cache with an output for each position (what
        ``llama-perplexity`` reads, in-process); the cache is empty again afterwards.

        Raises:
            UsageError: more tokens than the context holds.
            BackendError: llama.cpp failed to evaluate them.
        """
        import numpy as np

        if len(tokens) > self.n_ctx:
            raise UsageError(
                f"{len(tokens)} tokens exceed the context of {self.n_ctx}",
                hint="use a larger context, or shorter windows",
            )
        ll = self._ll
        self.reset()
        n_vocab = self.model.n_vocab
        out = np.empty((len(tokens), n_vocab), dtype=np.float32)
        batch = ll.llama_batch_init(self.n_batch, 0, 1)
        try:
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start : start + self.n_batch]
                for i, tok in enumerate(chunk):
                    batch.token[i] = tok
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True
                batch.n_tokens = len(chunk)
                rc = ll.llama_decode(self.ptr, batch)
                if rc != 0:
                    raise BackendError(
                        f"llama.cpp failed to evaluate {len(chunk)} tokens (llama_decode "
                        f"returned {rc}): {last_log_lines() or 'no reason given'}",
                        hint="try fewer tokens, or fewer GPU layers",
                    )
                for i in range(len(chunk)):
                    row = ll.llama_get_logits_ith(self.ptr, i)
                    out[start + i] = np.ctypeslib.as_array(row, shape=(n_vocab,))
        finally:
            ll.llama_batch_free(batch)
            self.reset()
        return out
