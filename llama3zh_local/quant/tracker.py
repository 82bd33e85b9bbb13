"""Chunk progress from llama-imatrix / llama-perplexity output, as :mod:`progress` events.

Both tools print ``[3]12.3456,`` on stdout as each chunk finishes (llama-perplexity's
``--kl-divergence`` prints a table row instead); the output arrives in pieces that may cut a
number, so only complete matches count.
"""

from __future__ import annotations

import re
import time

from .. import progress as p

# a number as the tools print it: 12.34, 1e-05, nan, inf
NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|-?inf))"
CHUNK = re.compile(rf"\[(\d+)\]\s*{NUM},")


class ChunkTracker:
    """Turns a tool's stdout into ADVANCE events (``chunks``; ``ppl`` and ``eta_seconds`` in
    ``figures``) and its build/load notes into NOTE events, for one ``task``."""

    def __init__(self, progress: p.Callback | None, *, stage: str, task: str, total: int,
                 rows: re.Pattern[str] | None = None, digits: int = 2) -> None:  # fmt: skip
        self.emit = p.emitter(progress, stage)
        self.task = task
        self.total = total
        self.patterns = [CHUNK] if rows is None else [CHUNK, rows]
        self.digits = digits
        self.buf = ""
        self.done = 0
        self.t0 = time.perf_counter()

    def note(self, message: str) -> None:
        """A line from building or starting the tool."""
        self.emit(p.NOTE, self.task, message=message)

    def feed(self, stream: str, text: str) -> None:
        """``on_output`` of ``tools.run_tool``: the chunk results are LOG() lines on stdout."""
        if stream != "stdout":
            return
        self.buf += text
        last = 0
        found: list[tuple[int, str]] = []
        for pattern in self.patterns:
            for m in pattern.finditer(self.buf):
                found.append((int(m.group(1)), m.group(2)))
                last = max(last, m.end())
        for chunk, value in sorted(found):
            if chunk > self.done:
                self._advance(chunk, float(value))
        self.buf = self.buf[last:][-512:]

    def _advance(self, chunk: int, ppl: float) -> None:
        self.done = chunk
        seconds = time.perf_counter() - self.t0
        figures = {"ppl": ppl, "seconds": seconds}
        if self.total > chunk:
            figures["eta_seconds"] = seconds / chunk * (self.total - chunk)
        self.emit(p.ADVANCE, self.task, done=chunk, total=self.total, unit="chunks",
                  message=f"PPL {ppl:.{self.digits}f}", figures=figures)  # fmt: skip
