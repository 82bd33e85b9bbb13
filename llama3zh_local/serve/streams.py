"""A running generation as the HTTP layer sees it: submitted at once (so a full queue is a 503
before any byte is sent), read on the event loop, cancelled when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..errors import UsageError
from ..llamacpp.batch import Busy, Record, Request
from .params import ApiError, busy


class _Mailbox:
    """Records from engine threads to one event loop, with one wake-up for all those that came
    meanwhile: an engine step that emits a record for each of its slots wakes the loop once, and
    a loop that is behind takes what piled up at once (not a self-pipe write per token)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[asyncio.Queue[Record], Record]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def post(self, q: asyncio.Queue[Record], rec: Record) -> None:
        """(Any thread.) Raises RuntimeError once the loop is closed, as call_soon_threadsafe."""
        self.items.append((q, rec))
        with self.lock:
            if self.scheduled:
                return  # a drain is due: it runs after this append (it clears the flag first)
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except BaseException:
                self.scheduled = False
                raise

    def _drain(self) -> None:
        with self.lock:
            self.scheduled = False
        items = self.items
        while items:
            q, rec = items.popleft()
            q.put_nowait(rec)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary()
)


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    box = _mailboxes.get(loop)
    if box is None:
        box = _mailboxes[loop] = _Mailbox(loop)
    return box


class Generation:
    """One request on the resident model's engine."""

    def __init__(self, res: Any, request: Request, *, stream: bool = True) -> None:
        post = _mailbox(asyncio.get_running_loop()).post
        q: asyncio.Queue[Record] = asyncio.Queue()
        self._q = q
        if not stream:  # the whole answer in the last record: no wake-up of the loop per token
            request = dataclasses.replace(request, stream=False)
        try:
            self.job = res.engine.submit(request, lambda rec: post(q, rec))
        except Busy as err:
            raise busy(err) from None
        except UsageError as err:
            raise ApiError(400, str(err), code="context_length_exceeded") from None

    def cancel(self) -> None:
        self.job.cancel()

    async def __aiter__(self) -> AsyncIterator[Record]:
        try:
            while True:
                rec = await self._q.get()
                yield rec
                if rec.finish_reason is not None:
                    return
        finally:
            self.job.cancel()


async def _watch_disconnect(receive: Callable[[], Awaitable[Any]], gen: Generation) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gen.cancel()
            return


async def collect(request: Any, gen: Generation) -> tuple[str, Record]:
    """The whole answer; a client that disconnects meanwhile cancels it."""
    watcher = asyncio.create_task(_watch_disconnect(request.receive, gen))
    parts: list[str] = []
    last: Record | None = None
    try:
        async for rec in gen:
            parts.append(rec.text)
            last = rec
    finally:
        watcher.cancel()
        gen.cancel()
    assert last is not None
    if last.finish_reason == "cancelled":  # the client is gone, or the server is stopping
        raise busy("the answer was cancelled: the server is stopping")
    if last.finish_reason == "error":
        raise ApiError(500, last.error or "generation failed", kind="server_error")
    return "".join(parts), last


class StreamResponse:
    """An ASGI response that sends ``chunks`` as they come and cancels ``gen`` on disconnect.

    Starlette's StreamingResponse only notices a disconnect when a send fails (ASGI 2.4), which
    never happens while a long prompt is evaluated; this listens for it all along.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        gen: Generation,
        media_type: str,
        headers: dict[str, str] | None = None,
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.chunks = chunks
        self.gen = gen
        self.media_type = media_type
        self.headers = headers or {}
        self.cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", self.media_type.encode())]
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        watcher = asyncio.create_task(_watch_disconnect(receive, self.gen))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-send
            pass
        finally:
            watcher.cancel()
            self.gen.cancel()
            with contextlib.suppress(Exception):
                await self.chunks.aclose()  # type: ignore[attr-defined]
            if self.cleanup is not None:
                await self.cleanup()
