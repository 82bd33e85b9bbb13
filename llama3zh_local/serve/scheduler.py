"""The resident model: loaded on demand, shared by all requests, unloaded after its keep-alive.

One model is resident at a time. A request for another one waits until the running requests
finish, then the models are swapped. Requests reach the model's ``BatchEngine`` and get their
records back on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .. import hardware
from ..catalog import DEFAULT_SYSTEM_PROMPT
from ..chat.prompt_tokens import next_turn_tokens
from ..chat.template import choose_template
from ..errors import UsageError
from ..gguf.info import read_gguf_info
from ..llamacpp.batch import BatchEngine, Busy
from ..llamacpp.engine import Model
from .registry import ModelEntry, Registry

LLAMA3_STOPS = ("<|eot_id|>", "<|end_of_text|>")


def parse_duration(value: Any, *, what: str = "keep_alive") -> float:
    """Seconds from Ollama's keep-alive forms: ``"5m"``, ``"1h30m"``, ``"90s"``, ``300``, ``0``,
    ``-1`` / ``"-1m"`` (forever: ``math.inf``).

    Raises:
        UsageError: anything else.
    """
    if isinstance(value, bool):
        raise UsageError(f"{what} {value!r}: not a duration", hint='e.g. "5m", "1h", 0 or -1')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|h|m|s)", text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise UsageError(
                    f"{what} {value!r}: not a duration", hint='e.g. "5m", "1h", "30s", 0 or -1'
                )
            unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
            seconds = sum(float(n) * unit[u] for n, u in parts)
    else:
        raise UsageError(f"{what} {value!r}: not a duration", hint='e.g. "5m", "1h", 0 or -1')
    if seconds != seconds:
        raise UsageError(f"{what} {value!r}: not a duration", hint='e.g. "5m"')
    return float("inf") if seconds < 0 else seconds


@dataclass
class Resident:
    """A loaded model with its engine, template and stop tokens."""

    entry: ModelEntry
    model: Any  # llamacpp.engine.Model
    engine: BatchEngine
    template: Any  # chat.conversation.ChatTemplate
    stop_tokens: frozenset[int]
    loaded_at: float
    load_ns: int
    info: Any = None  # gguf.info.GGUFInfo
    next_turn: tuple[int, ...] = ()  # the template's tokens after an answer (chat requests)
    users: int = 0
    keep_alive: float = 300.0
    expires: float = field(default=float("inf"))

    def close(self) -> None:
        self.engine.close()
        self.model.close()


@dataclass(frozen=True)
class EngineSettings:
    parallel: int = 4
    n_ctx: int = 4096
    n_gpu_layers: int | None = None  # None: as many as fit
    threads: int | None = None
    max_queue: int = 16
    keep_alive: float = 300.0
    flash_attn: str = "auto"


def load(entry: ModelEntry, settings: EngineSettings) -> Resident:
    """Check, load and start the engine for ``entry`` (blocking: run it in a thread).

    Raises:
        ModelNotFoundError, InvalidModelError, UsageError, BackendError: as ``chat`` would.
    """
    t0 = time.perf_counter_ns()
    info = read_gguf_info(entry.path)
    info.check_loadable()
    info.check_vocab()
    hw = hardware.detect()
    total_ctx = settings.n_ctx * settings.parallel
    plan = hardware.plan_offload(info, n_ctx=total_ctx, requested=settings.n_gpu_layers, hw=hw)
    model = Model(entry.path, n_gpu_layers=plan.n_gpu_layers)
    try:
        template = choose_template(model, "auto")
        stops = frozenset(t for t in (model.token_id(s) for s in LLAMA3_STOPS) if t is not None)
        engine = BatchEngine(
            model,
            parallel=settings.parallel,
            n_ctx=settings.n_ctx,
            n_threads=settings.threads,
            max_queue=settings.max_queue,
            flash_attn=settings.flash_attn,
        )
    except BaseException:
        model.close()
        raise
    return Resident(
        entry=entry,
        model=model,
        engine=engine,
        template=template,
        stop_tokens=stops,
        loaded_at=time.time(),
        load_ns=time.perf_counter_ns() - t0,
        info=info,
        keep_alive=settings.keep_alive,
        next_turn=next_turn_tokens(model, template),
    )


class Scheduler:
    """Loads the model a request names (one resident), runs requests on it, unloads it."""

    def __init__(self, registry: Registry, settings: EngineSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.resident: Resident | None = None
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self.default_system = DEFAULT_SYSTEM_PROMPT
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._reaper = self.loop.create_task(self._reap())

    def begin_shutdown(self, drain: float) -> None:
        """Refuse new requests; cancel the running ones after ``drain`` seconds."""
        self.stopping = True
        if self.loop is not None:
            self.loop.call_later(drain, self.cancel_all)

    def cancel_all(self) -> None:
        if self.resident is not None:
            self.resident.engine.cancel_all()

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        async with self._lock:
            if self.resident is not None:
                res, self.resident = self.resident, None
                await asyncio.to_thread(res.close)

    @contextlib.asynccontextmanager
    async def use(
        self, name: str, *, keep_alive: float | None = None
    ) -> AsyncIterator[tuple[Resident, int]]:
        """The resident model for ``name`` (loaded when needed) and the ns its loading took."""
        entry = self.registry.find(name)
        if self.stopping:
            raise Busy("the server is shutting down")
        load_ns = 0
        async with self._lock:
            res = self.resident
            if res is not None and res.engine.dead and res.users == 0:
                self.resident = None  # its engine failed: load it again
                await asyncio.to_thread(res.close)
                res = None
            if res is None or res.entry.path != entry.path:
                if res is not None:
                    while res.users > 0:
                        await asyncio.sleep(0.05)
                    self.resident = None
                    await asyncio.to_thread(res.close)
                res = await asyncio.to_thread(load, entry, self.settings)
                self.resident = res
                load_ns = res.load_ns
            res.users += 1
            if keep_alive is not None:
                res.keep_alive = keep_alive
            res.expires = float("inf")
        try:
            yield res, load_ns
        finally:
            res.users -= 1
            if res.users == 0:
                res.expires = time.monotonic() + res.keep_alive
                if res.keep_alive == 0:
                    await self._unload_if_idle(res)

    async def unload(self, name: str) -> bool:
        """Unload ``name`` now if it is resident and idle (Ollama's ``keep_alive: 0``)."""
        entry = self.registry.find(name)
        res = self.resident
        if res is None or res.entry.path != entry.path:
            return False
        return await self._unload_if_idle(res)

    async def _unload_if_idle(self, res: Resident) -> bool:
        async with self._lock:
            if self.resident is not res or res.users > 0:
                return False
            self.resident = None
        await asyncio.to_thread(res.close)
        return True

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            res = self.resident
            if res is not None and res.users == 0 and time.monotonic() >= res.expires:
                await self._unload_if_idle(res)
