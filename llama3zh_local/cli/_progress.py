"""The one renderer of :mod:`llama3zh_local.progress` events on stderr.

On a terminal: rich bars, one per task (bytes drawn as sizes and speed, other units as counts),
notes as dim lines above them. Piped (CI, ``2>log``): one plain line per note, per finished or
failed task, and per task now and then, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import Any

from ..progress import ADVANCE, DONE, FAILED, NOTE, REUSE, START, Event
from . import _format, _output

PLAIN_EVERY = 10.0  # seconds between plain progress lines of one task


class Progress:
    """Draws events; use as a context manager and pass the instance as ``progress=``.

    ``transient``: bars vanish when their task is done (convert, quantize); otherwise finished
    bars stay on screen (pull). ``enabled=False`` draws nothing (dry runs).
    """

    def __init__(self, *, enabled: bool = True, transient: bool = True) -> None:
        self.enabled = enabled
        self.transient = transient
        self.live = enabled and _output.err().is_terminal
        self.bars: Any = None
        self._tasks: dict[tuple[str, str], Any] = {}
        self._plain: dict[tuple[str, str], float] = {}

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bars = Progress(
                TextColumn("{task.description}", style="dim", markup=False),
                BarColumn(),
                _Amount(),
                TextColumn("ETA", style="dim"),
                TimeRemainingColumn(),
                console=_output.err(),
                transient=self.transient,
            )
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def __call__(self, e: Event) -> None:
        if not self.enabled:
            return
        if e.kind in (NOTE, REUSE) or (e.kind in (START, DONE) and e.message and not e.total):
            # a line of its own: a note, or a step that starts or ends without a count of
            # work (the pipeline's "[2/4] convert: done (12 s)")
            self.note(e.message or e.task)
            return
        key = (e.stage, e.task)
        if self.live:
            self._draw(key, e)
        else:
            self._print(key, e)

    def note(self, message: str) -> None:
        """A line of its own above the bars."""
        if not self.enabled or not message:
            return
        if self.live:
            self.bars.console.print(message, style="dim", soft_wrap=True, markup=False)
        else:
            _output.note(message)

    def _draw(self, key: tuple[str, str], e: Event) -> None:
        desc = f"{e.task}: {e.message}" if e.message and e.task else (e.message or e.task)
        task = self._tasks.get(key)
        if e.kind in (DONE, FAILED):
            if task is not None:
                if e.kind == DONE and e.total:
                    self.bars.update(task, completed=e.total, total=e.total)
                if self.transient or e.kind == FAILED:
                    self.bars.remove_task(task)
                self._tasks.pop(key)
            return
        if task is None:
            task = self._tasks[key] = self.bars.add_task(
                desc, total=e.total or None, completed=e.done, unit=e.unit
            )
        self.bars.update(task, completed=e.done, total=e.total or None, description=desc)

    def _print(self, key: tuple[str, str], e: Event) -> None:
        if e.kind == DONE:
            self._plain.pop(key, None)
            size = f" ({_format.size(e.total)})" if e.unit == "bytes" and e.total else ""
            _output.note(f"done: {e.task}{size}" + (f", {e.message}" if e.message else ""))
        elif e.kind == FAILED:
            self._plain.pop(key, None)
            _output.note(f"failed: {e.task}" + (f": {e.message}" if e.message else ""))
        elif e.kind in (START, ADVANCE) and e.total:
            now = time.monotonic()
            last = self._plain.get(key)
            if last is None or now - last >= PLAIN_EVERY:
                self._plain[key] = now
                _output.note(f"{e.task}: {_amount(e.done, e.total, e.unit)}")


def _amount(done: int, total: int, unit: str) -> str:
    if unit == "bytes":
        return f"{_format.size(done)}/{_format.size(total)}"
    return f"{done}/{total} {unit}".rstrip()


def _Amount() -> Any:  # noqa: N802 - a rich column class, built lazily (rich is slow to import)
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        """``1.2 GB/4.0 GB 85 MB/s`` for bytes, ``12/291 tensors`` otherwise."""

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            done, total = int(task.completed), int(task.total or 0)
            if not total:
                return Text("")
            text = _amount(done, total, unit)
            if unit == "bytes" and task.speed:
                text += f" {_format.size(task.speed)}/s"
            return Text(text, style="dim")

    return Amount()
