"""One progress protocol for every stage: pull, convert, merge, export, imatrix, quantize, eval,
ollama create, tool builds and the pipeline that chains them.

A stage takes ``progress: Callback | None`` and calls it with :class:`Event` records; it never
draws anything. The CLI has one renderer (``cli/_progress.py``) that turns events into bars and
lines; ``pipeline.execute`` passes its callback straight to each stage and adds only its own
step events. The shape follows mlx-lm's ``TrainingCallback`` / ``prompt_progress_callback``: one
small interface, many producers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# what happened to ``task``
START = "start"  # a piece of work begins; ``total`` may be known (0: unknown)
ADVANCE = "advance"  # ``done`` of ``total`` (cumulative, in ``unit``)
NOTE = "note"  # a line for people (``message``): building a tool, loading, a server status
DONE = "done"  # the piece of work is complete
FAILED = "failed"  # it failed (the stage raises afterwards; this only closes the bar)
REUSE = "reuse"  # a pipeline step whose output is already complete
KINDS = (START, ADVANCE, NOTE, DONE, FAILED, REUSE)

@dataclass(frozen=True)
class Event:
    """One report from a stage.

    ``task`` names the piece of work a bar is for (a file, a model, an output type, a pipeline
    step); a new task is a new bar. ``done``/``total`` count ``unit`` ("bytes", "tensors",
    "chunks", "steps"); ``message`` is a line for people (the tensor being written, a build
    note); ``figures`` carries the stage's own numbers (``ppl``, ``eta_seconds``).
    """

    stage: str  # pull, convert, merge, export, imatrix, quantize, eval, create, build, run
    kind: str  # one of KINDS
    task: str = ""
    done: int = 0
    total: int = 0
    unit: str = ""
    message: str = ""
    figures: Mapping[str, float] = field(default_factory=dict)


Callback = Callable[[Event], None]


def emitter(progress: Callback | None, stage: str) -> Callable[..., None]:
    """A function that sends ``Event(stage, kind, ...)`` to ``progress`` (nothing when None)."""
    if progress is None:
        return lambda *_a, **_k: None

    def emit(kind: str, task: str = "", **fields: object) -> None:
        progress(Event(stage, kind, task, **fields))  # type: ignore[arg-type]

    return emit
