"""Many sequences in one llama.cpp context: slots, prefix reuse and continuous batching.

One engine thread owns the context. Requests reach it through a thread-safe inbox; each request
gets its records through a callback it gives (a queue's ``put``, or ``call_soon_threadsafe`` for
asyncio). Every step builds one ``llama_batch`` holding one token for each generating sequence
plus a chunk of the prompt of each sequence still evaluating its prompt, so a request that joins
never waits for another to finish and never cancels it (cf. llama-cpp-python #897, #1062).

Each slot has its own KV stream (``kv_unified=False``): a sequence's attention spans only its own
cells, so one conversation does not slow down when the other slots fill up (in one unified cache
every token attended over all slots' cells: single-stream decode measured 0.65x with three other
slots holding 170-340 tokens each). Each slot remembers the tokens whose keys/values it holds; a
request goes to the free slot whose tokens its prompt mostly reuses (else an empty or the least
recently used one, with a long shared prefix copied in from the slot that holds it) and only the
rest of its prompt is evaluated (``llama_memory_seq_rm`` trims the slot's KV to the shared prefix).
With separate streams llama.cpp splits a step into micro-batches that each take as many tokens
from every one of a run of consecutive sequence ids (as in llama-server): the generating tokens
come first, in slot order, so that they share the first one.

A chat request may name the tokens that follow its answer when the conversation goes on (the
template's end of the assistant turn and the next user header, ``Request.next_turn``). When the
answer ends, the idle slot evaluates them while the user reads and types, so the next turn's
prompt finds them cached and its first token comes that much sooner. (llama-server and Ollama
evaluate them with the next prompt.) They ride along in a step that runs anyway; a step of their
own waits ``PREFILL_DELAY``, so a client that sends its next request the moment an answer ends
(a title request, a scripted conversation) finds the CPU free for it and gets all its new tokens
evaluated in one step, not after a step that would only have saved it a few. A next turn that
goes another way just trims them.
"""

from __future__ import annotations

import codecs
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError, UsageError
from .engine import (
    ContextSettings,
    Model,
    SamplingParams,
    default_threads,
    new_context,
    sampler_chain,
)
from .native import last_log_lines, lib

# Seconds an idle slot waits before a step of its own evaluates its next-turn tokens. Longer than
# a client takes to send a follow-up request on its own (milliseconds), far shorter than a person
# takes to read an answer and type.
PREFILL_DELAY = 0.2
# Fewest prompt tokens that a copy from another slot's KV stream must spare from evaluation: the
# copy moves the whole stream (n_ctx cells of every layer) however few tokens it saves.
COPY_MIN = 32


@dataclass(frozen=True)
class Request:
    """What to generate: prompt token ids, sampling, limits and stops."""

    prompt: Sequence[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = -1  # -1: until a stop or the end of the sequence's context
    stop: tuple[str, ...] = ()  # stop strings (not part of the answer)
    stop_tokens: frozenset[int] = frozenset()  # besides the vocabulary's end-of-generation ids
    # False: no record per token, the text and tokens come in the last record (a non-streamed
    # answer then costs the consumer's thread nothing per token, on CPUs the decode shares)
    stream: bool = True
    # tokens that follow the answer when the conversation goes on, evaluated once it ends
    next_turn: tuple[int, ...] = ()


@dataclass(frozen=True)
class Record:
    """One step of one request: new text and the running counts (the last has finish_reason).

    Durations are in nanoseconds: ``queue_ns`` waiting for a slot, ``prompt_ns`` evaluating the
    prompt (to the first sampled token), ``eval_ns`` generating after that.
    """

    text: str
    tokens: tuple[int, ...]
    prompt_tokens: int
    prompt_evaluated: int
    completion_tokens: int
    queue_ns: int
    prompt_ns: int
    eval_ns: int
    finish_reason: str | None = None  # "stop", "length", "cancelled", "error"
    error: str | None = None
    slot: int = -1


class Busy(Exception):
    """The engine's queue is full: answer 503 and let the client retry."""


class Job:
    """A submitted request: ``cancel()`` stops it at the next step and frees its slot."""

    def __init__(self, request: Request, emit: Callable[[Record], None]) -> None:
        self.request = request
        self.emit = emit
        self.submitted = time.perf_counter_ns()
        self._cancel = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class _StopFilter:
    """Holds back text that may be the start of a stop string; finds a complete one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is safe to emit, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return buf[:cut], True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class _Slot:
    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.tokens: list[int] = []  # tokens whose KV this sequence holds, in order
        self.job: Job | None = None
        self.last_used = 0.0
        self.prefill: list[int] = []  # next_turn tokens to evaluate while the slot is idle
        self.prefill_at = 0.0  # time.monotonic() after which a step may run for them alone
        self._reset_request()

    def _reset_request(self) -> None:
        self.prompt: list[int] = []
        self.n_past_prompt = 0  # prompt tokens in the KV so far
        self.evaluated = 0
        self.sampler: Any = None
        self.decoder: Any = None
        self.stopper = _StopFilter(())
        self.pending: int | None = None  # sampled, not yet decoded
        self.generated = 0
        self.held_text: list[str] = []  # a non-streamed answer's text, delivered at its end
        self.held_tokens: list[int] = []
        self.batch_index = -1
        self.t_start = 0
        self.t_first = 0


class BatchEngine:
    """``parallel`` sequences of ``n_ctx`` tokens each, decoded together by one thread.

    Args:
        n_ctx: tokens per sequence (prompt + answer); the context holds ``n_ctx * parallel``,
            a KV stream of ``n_ctx`` cells for each sequence.
        max_queue: requests that may wait for a slot; beyond that ``submit`` raises Busy.
        n_batch: tokens per decode step (prompt chunks are cut to fit; cancellation is checked
            between steps).
    """

    def __init__(
        self,
        model: Model,
        *,
        parallel: int = 4,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_threads: int | None = None,
        max_queue: int = 16,
        flash_attn: str = "auto",
    ) -> None:
        if parallel < 1 or n_ctx < 16 or n_batch < 1:
            raise UsageError(
                f"parallel {parallel}, context {n_ctx}, batch {n_batch}: out of range",
                hint="use --parallel 1 or more and --ctx 16 or more",
            )
        ll = lib()
        self._ll = ll
        self.model = model
        self.parallel = parallel
        self.n_ctx = n_ctx
        self.max_queue = max_queue
        threads = n_threads or default_threads()
        self.ctx = new_context(model, ContextSettings(
            n_ctx=n_ctx * parallel, n_batch=max(n_batch, parallel), n_ubatch=512,
            n_threads=threads, flash_attn=flash_attn, n_seq_max=parallel, kv_unified=False,
        ))  # fmt: skip
        self.n_batch = int(ll.llama_n_batch(self.ctx))
        self._mem = ll.llama_get_memory(self.ctx)
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        n_seq_id = self._batch.n_seq_id
        for i in range(self.n_batch):
            n_seq_id[i] = 1  # every token belongs to one sequence: set once, not per step
        self.slots = [_Slot(i) for i in range(parallel)]
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting: deque[Job] = deque()
        self._lock = threading.Lock()
        self._open: set[Job] = set()  # submitted and not finished
        self._closing = False
        self.dead: str | None = None  # why the engine thread stopped, if it did
        self.steps = 0
        self._ready = threading.Event()
        self._warm_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="llama3zh-batch", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._warm_error is not None:
            raise self._warm_error

    def _warm_up(self) -> None:
        """One decode before the first request (as llama.cpp's tools do): the first one allocates
        the compute graph and repacks weights, seconds that a first answer would otherwise wait.

        It runs on the engine thread, as every decode does. llama.cpp's CPU backend computes
        with OpenMP, and libgomp keeps a pool of worker threads for each thread that ever ran a
        parallel region; once its threads outnumber the CPUs it throttles their spin-waiting, so
        the workers sleep on futexes between graph nodes. A warm-up on the constructing thread
        left a second pool behind, and every token decoded at about 0.6x the speed.
        """
        ll = self._ll
        bos = ll.llama_vocab_bos(self.model.vocab)
        tok = bos if bos >= 0 else 0
        b = self._batch
        b.token[0], b.pos[0], b.logits[0] = tok, 0, True
        b.seq_id[0][0] = 0
        b.n_tokens = 1
        ll.llama_decode(self.ctx, b)
        ll.llama_memory_clear(self._mem, True)
        ll.llama_synchronize(self.ctx)

    # -- the public side (any thread) ----------------------------------------------------------

    def submit(self, request: Request, emit: Callable[[Record], None]) -> Job:
        """Queue ``request``; ``emit`` gets its records on the engine thread (keep it quick).

        Raises:
            Busy: all slots are busy and ``max_queue`` requests already wait.
            UsageError: an empty prompt, or one that leaves no room in a sequence's context.
        """
        if not request.prompt:
            raise UsageError("empty prompt", hint="send at least one token of text")
        if len(request.prompt) >= self.n_ctx:
            raise UsageError(
                f"the prompt has {len(request.prompt)} tokens; the context holds {self.n_ctx}",
                hint="shorten it, or start the server with a larger --ctx",
            )
        job = Job(request, emit)
        with self._lock:
            if self._closing:
                raise Busy(self.dead or "the server is shutting down")
            if len(self._open) >= self.parallel + self.max_queue:
                raise Busy(f"{len(self._open)} requests are running or waiting")
            self._open.add(job)
        self._inbox.put(job)
        return job

    def generate(self, request: Request) -> Iterator[Record]:
        """Submit and yield the records in this thread; closing the iterator cancels the job."""
        q: queue.SimpleQueue[Record] = queue.SimpleQueue()
        job = self.submit(request, q.put)
        try:
            while True:
                rec = q.get()
                yield rec
                if rec.finish_reason is not None:
                    return
        finally:
            job.cancel()

    @property
    def busy(self) -> int:
        """Requests running or waiting."""
        with self._lock:
            return len(self._open)

    def cancel_all(self, *, refuse_new: bool = True) -> None:
        """Cancel every running and waiting request (shutdown); new ones get Busy."""
        with self._lock:
            self._closing = self._closing or refuse_new
            jobs = list(self._open)
        for job in jobs:
            job.cancel()

    def close(self) -> None:
        """Cancel everything, stop the thread and free the context."""
        with self._lock:
            self._closing = True
        self._inbox.put(None)
        self._thread.join()
        if self.ctx:
            self._ll.llama_batch_free(self._batch)
            self._ll.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._warm_up()
        except BaseException as err:  # noqa: BLE001 - raised again by __init__
            self._warm_error = err
            return
        finally:
            self._ready.set()
        try:
            while True:
                active = self._waiting or any(s.job is not None for s in self.slots)
                due = min((s.prefill_at for s in self.slots if s.prefill), default=None)
                wait = None if due is None else max(0.0, due - time.monotonic())
                try:
                    item = (
                        self._inbox.get_nowait()
                        if active or wait == 0.0
                        else self._inbox.get(timeout=wait)
                    )
                    while True:
                        if item is None:
                            self._shutdown()
                            return
                        self._waiting.append(item)
                        item = self._inbox.get_nowait()
                except queue.Empty:
                    pass
                self._reap_cancelled()
                self._assign()
                self._step()
        except BaseException as err:  # noqa: BLE001 - never leave a client waiting forever
            why = f"the engine stopped: {type(err).__name__}: {err}"
            with self._lock:
                self._closing = True
                self.dead = why
            self._fail_all(why)
            while True:  # requests that raced in before _closing was set
                try:
                    job = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._finish_waiting(job, "error", error=why)
            raise

    def _shutdown(self) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot, "cancelled")
        while self._waiting:
            self._finish_waiting(self._waiting.popleft(), "cancelled")
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish_waiting(job, "cancelled")

    def _fail_all(self, why: str) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot, "error", error=why)
            slot.tokens = []
            slot.prefill = []
        while self._waiting:
            self._finish_waiting(self._waiting.popleft(), "error", error=why)
        self._ll.llama_memory_clear(self._mem, True)

    def _finish_waiting(self, job: Job, reason: str, error: str | None = None) -> None:
        n = len(job.request.prompt)
        wait = time.perf_counter_ns() - job.submitted
        self._deliver(job, Record("", (), n, 0, 0, wait, 0, 0, reason, error))
        self._close_job(job)

    def _close_job(self, job: Job) -> None:
        job.done.set()
        with self._lock:
            self._open.discard(job)

    @staticmethod
    def _deliver(job: Job, rec: Record) -> None:
        try:
            job.emit(rec)
        except Exception:  # noqa: BLE001 - a consumer that went away: stop its job
            job.cancel()

    def _reap_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, "cancelled")
        if any(j.cancelled for j in self._waiting):
            for job in [j for j in self._waiting if j.cancelled]:
                self._waiting.remove(job)
                self._finish_waiting(job, "cancelled")

    def _assign(self) -> None:
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            prompt = list(job.request.prompt)

            def shared(slot: _Slot, prompt: list[int] = prompt) -> int:
                n, limit = 0, min(len(slot.tokens), len(prompt) - 1)
                while n < limit and slot.tokens[n] == prompt[n]:
                    n += 1
                return n

            # The slot whose tokens the prompt reuses nearly all of (the next turn of its
            # conversation: at most a quarter as many thrown away as kept) takes it. Otherwise
            # the request gets an empty slot, else the one unused the longest, and a shared
            # prefix (a system prompt, a regenerated answer's prompt) is copied into it from the
            # slot that holds it when that spares COPY_MIN tokens or more: a memory copy, no
            # compute.
            # So a side request (a title, a tag) never trims a conversation's cache.
            # (A running sequence's decoded tokens can be copied too.)
            best = max(free, key=lambda s: (shared(s), -s.last_used))
            n = shared(best)
            others = [s for s in free if s is not best]
            if (n > 0 and 4 * (len(best.tokens) - n) <= n) or not others:
                self._start(best, job, prompt, n)
                continue
            empty = [s for s in others if not s.tokens]
            slot = empty[0] if empty else min(others, key=lambda s: s.last_used)
            source = max((s for s in self.slots if s is not slot), key=shared)
            keep, n = shared(slot), shared(source)
            if n - keep >= COPY_MIN:
                # Each slot has its own KV stream, and llama.cpp copies between streams only
                # whole (a GGML_ASSERT otherwise; the copy runs at the next decode): copy the
                # source's stream, then drop what follows the shared prefix.
                ll = self._ll
                ll.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                ll.llama_memory_seq_cp(self._mem, source.seq, slot.seq, -1, -1)
                ll.llama_memory_seq_rm(self._mem, slot.seq, n, -1)
                slot.tokens = source.tokens[:n]
                keep = n
            self._start(slot, job, prompt, keep)

    def _start(self, slot: _Slot, job: Job, prompt: list[int], keep: int) -> None:
        ll = self._ll
        if not ll.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
            ll.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            keep = 0
        del slot.tokens[keep:]
        slot._reset_request()
        slot.prefill = []
        slot.job = job
        slot.prompt = prompt
        slot.n_past_prompt = keep
        slot.evaluated = len(prompt) - keep
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.stopper = _StopFilter(job.request.stop)
        slot.t_start = time.perf_counter_ns()
        slot.last_used = time.monotonic()
        try:
            slot.sampler = sampler_chain(self.model, job.request.sampling)
        except BackendError as err:
            self._finish(slot, "error", error=str(err))

    def _finish(
        self, slot: _Slot, reason: str, error: str | None = None, *, then: Sequence[int] = ()
    ) -> None:
        """End the slot's request; ``then``: tokens to evaluate into the idle slot next."""
        job = slot.job
        assert job is not None
        text = ""
        if reason in ("stop", "length") and slot.stopper.held:
            text = slot.stopper.flush()
        tokens: tuple[int, ...] = ()
        if not job.request.stream:
            text = "".join(slot.held_text) + text
            tokens = tuple(slot.held_tokens)
        if then and len(slot.tokens) + len(then) < self.n_ctx:
            slot.prefill = list(then)  # before the answer is out: the next turn may come at once
            slot.prefill_at = time.monotonic() + PREFILL_DELAY
        now = time.perf_counter_ns()
        self._deliver(job, self._record(slot, text, tokens, now, reason, error))
        if slot.sampler:
            self._ll.llama_sampler_free(slot.sampler)
        slot._reset_request()
        slot.job = None
        slot.last_used = time.monotonic()
        self._close_job(job)

    def _record(
        self,
        slot: _Slot,
        text: str,
        tokens: tuple[int, ...],
        now: int,
        reason: str | None = None,
        error: str | None = None,
    ) -> Record:
        job = slot.job
        assert job is not None
        first = slot.t_first or now
        return Record(
            text=text,
            tokens=tokens,
            prompt_tokens=len(slot.prompt),
            prompt_evaluated=slot.evaluated,
            completion_tokens=slot.generated,
            queue_ns=slot.t_start - job.submitted,
            prompt_ns=first - slot.t_start,
            eval_ns=now - first if slot.t_first else 0,
            finish_reason=reason,
            error=error,
            slot=slot.seq,
        )

    def _step(self) -> None:
        ll = self._ll
        b = self._batch
        # the batch's arrays, looked up once per step (each ctypes field access builds an object)
        b_token, b_pos, b_seq, b_logits = b.token, b.pos, b.seq_id, b.logits
        n = 0
        slots = self.slots
        # generating sequences first: one token each
        for slot in slots:
            slot.batch_index = -1
            if slot.job is not None and slot.pending is not None:
                slot.batch_index = n
                b_token[n] = slot.pending
                b_pos[n] = len(slot.tokens)
                b_seq[n][0] = slot.seq
                b_logits[n] = True
                n += 1
                slot.tokens.append(slot.pending)
                slot.pending = None
        # then prompt chunks, as many as fit
        for slot in slots:
            if slot.job is None or slot.n_past_prompt >= len(slot.prompt):
                continue
            room = self.n_batch - n
            if room <= 0:
                break
            start = slot.n_past_prompt
            chunk = slot.prompt[start : start + room]
            pos0, seq = len(slot.tokens), slot.seq
            for i, tok in enumerate(chunk):
                b_token[n + i] = tok
                b_pos[n + i] = pos0 + i
                b_seq[n + i][0] = seq
                b_logits[n + i] = False
            end = n + len(chunk)
            if start + len(chunk) == len(slot.prompt):  # the prompt's last token: sample there
                b_logits[end - 1] = True
                slot.batch_index = end - 1
            n = end
            slot.tokens.extend(chunk)
            slot.n_past_prompt += len(chunk)
        # then the next-turn tokens of idle slots (no logits: nothing is sampled there): in a
        # step that runs anyway, or once they are due
        now = time.monotonic()
        for slot in slots:
            if slot.job is not None or not slot.prefill or n >= self.n_batch:
                continue
            if n == 0 and slot.prefill_at > now:
                continue
            chunk = slot.prefill[: self.n_batch - n]
            del slot.prefill[: len(chunk)]
            pos0, seq = len(slot.tokens), slot.seq
            for i, tok in enumerate(chunk):
                b_token[n + i] = tok
                b_pos[n + i] = pos0 + i
                b_seq[n + i][0] = seq
                b_logits[n + i] = False
            n += len(chunk)
            slot.tokens.extend(chunk)
        if n == 0:
            return
        b.n_tokens = n
        rc = ll.llama_decode(self.ctx, b)
        self.steps += 1
        if rc != 0:
            self._fail_all(
                f"llama.cpp failed to decode (llama_decode returned {rc}): "
                f"{last_log_lines() or 'no reason given'}"
            )
            return
        now = time.perf_counter_ns()
        sample = ll.llama_sampler_sample
        for slot in slots:
            if slot.job is None or slot.batch_index < 0:
                continue
            tok = sample(slot.sampler, self.ctx, slot.batch_index)
            if not slot.t_first:
                slot.t_first = now
            self._accept(slot, tok, now)

    def _accept(self, slot: _Slot, tok: int, now: int) -> None:
        job = slot.job
        assert job is not None
        then = job.request.next_turn
        if self.model.is_eog(tok) or tok in job.request.stop_tokens:
            self._finish(slot, "stop", then=then)
            return
        slot.generated += 1
        text, stopped = slot.stopper.feed(slot.decoder.decode(self.model.token_bytes(tok)))
        if job.request.stream:
            self._deliver(job, self._record(slot, text, (tok,), now))
        else:
            slot.held_text.append(text)
            slot.held_tokens.append(tok)
        if stopped:
            self._finish(slot, "stop")  # the answer ends inside a token: the next turn differs
            return
        limit = job.request.max_tokens
        if (limit > 0 and slot.generated >= limit) or len(slot.tokens) + 1 >= self.n_ctx:
            self._finish(slot, "length", then=(tok, *then) if then else ())
            return
        slot.pending = tok
