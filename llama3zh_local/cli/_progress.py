"""A progress bar on stderr for imatrix / quantize / eval: chunks or tensors, with ETA.

On a terminal: a transient rich bar. Piped (CI, `2>log`): one plain line now and then, so logs
stay readable.
"""

from __future__ import annotations

import time
from typing import Any

from . import _output


class Bar:
    def __init__(self, unit: str, *, enabled: bool = True) -> None:
        self.unit = unit
        self.live = enabled and _output.err().is_terminal
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None
        self._last_plain = 0.0
        self._key: object = None

    def __enter__(self) -> Bar:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}", style="dim"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit, style="dim"),
                TimeElapsedColumn(),
                TextColumn("ETA", style="dim"),
                TimeRemainingColumn(),
                console=_output.err(),
                transient=True,
            )
            self.bar.start()
        return self

    def update(self, key: object, description: str, done: int, total: int) -> None:
        """Show ``done`` of ``total`` for the piece of work ``key`` (a new key: a new bar)."""
        if not self.enabled:
            return
        if self.live:
            if key != self._key:
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task(description, total=total)
                self._key = key
            self.bar.update(self.task, completed=done, total=total, description=description)
            return
        now = time.monotonic()
        if done >= total or key != self._key or now - self._last_plain >= 10:
            self._key = key
            self._last_plain = now
            _output.note(f"{description}: {done}/{total} {self.unit}")

    def note(self, message: str) -> None:
        if self.enabled:
            if self.live:
                self.bar.console.print(message, style="dim", soft_wrap=True, markup=False)
            else:
                _output.note(message)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
