"""The Trainer's callbacks: progress events (stage "train"), a clean stop on Ctrl-C, and the
loss curve (``loss.csv`` + ``loss.png``) when training ends.

Loaded only by ``train/trainer.py`` (it imports transformers at import time).
"""

from __future__ import annotations

import csv
import io
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..files import atomic
from ..progress import ADVANCE, DONE, NOTE, START, Callback, emitter

STAGE = "train"
TASK = "train"


class StopFlag:
    """Set by the signal handler, read by :class:`InterruptCallback` at each step's end."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None

    def set(self, signum: int) -> None:
        self.requested = True
        self.signal = signum


@contextmanager
def stop_on_signals(flag: StopFlag, signals: tuple[int, ...]) -> Iterator[None]:
    """While the block runs, the first of ``signals`` sets ``flag`` (the run saves a checkpoint
    and stops at the end of the step); a second SIGINT interrupts at once. Only in the main
    thread (Python's handlers live there); elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class InterruptCallback(TrainerCallback):
    """Saves a checkpoint and stops training once ``flag`` is set (every process agrees under
    DDP: the flag is reduced across processes, so that all of them save the same step)."""

    def __init__(self, flag: StopFlag) -> None:
        self.flag = flag
        self.stopped_at: int | None = None

    def _requested(self) -> bool:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import torch

            t = torch.tensor([1.0 if self.flag.requested else 0.0])
            if dist.get_backend() == "nccl":
                t = t.cuda()
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return bool(t.item() > 0)
        return self.flag.requested

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._requested():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class CompleteMarker(TrainerCallback):
    """Writes ``checkpoint-N/.complete`` after the Trainer has saved everything of step N: the
    Trainer writes checkpoints in place, so a checkpoint without it was cut short."""

    NAME = ".complete"

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic.write_text(folder / self.NAME, f"{state.global_step}\n")
        return control


class ProgressCallback(TrainerCallback):
    """Progress events for the CLI's live view: step of total, loss, learning rate, tokens/s,
    ETA and (on CUDA) peak GPU memory; only the first process reports."""

    def __init__(self, progress: Callback | None, tokens_seen: Callable[[], int]) -> None:
        self.emit = emitter(progress, STAGE)
        self.tokens_seen = tokens_seen
        self.t0 = 0.0
        self.start_step = 0
        self.start_tokens = 0
        self.history: list[tuple[int, float, float]] = []  # step, loss, learning rate

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.t0 = time.perf_counter()
        self.start_step = state.global_step
        self.start_tokens = self.tokens_seen()
        if state.is_world_process_zero:
            self.emit(START, TASK, done=state.global_step, total=state.max_steps, unit="steps")
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return control
        step, total = state.global_step, state.max_steps
        elapsed = time.perf_counter() - self.t0
        done_here = step - self.start_step
        figures: dict[str, float] = {
            "loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "epoch": float(logs.get("epoch") or state.epoch or 0.0),
        }
        if elapsed > 0 and done_here > 0:
            world = max(1, getattr(args, "world_size", 1))
            figures["tokens_per_second"] = (
                (self.tokens_seen() - self.start_tokens) * world / elapsed
            )
            figures["eta_seconds"] = (total - step) * elapsed / done_here
        mem = _cuda_peak()
        if mem is not None:
            figures["gpu_memory_bytes"] = float(mem)
        self.emit(ADVANCE, TASK, done=step, total=total, unit="steps", figures=figures,
                  message=figures_line(figures))  # fmt: skip
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.history = loss_history(state.log_history)
        if state.is_world_process_zero:
            self.emit(DONE, TASK, done=state.global_step, total=state.max_steps, unit="steps")
        return control

    def note(self, message: str) -> None:
        self.emit(NOTE, TASK, message=message)


def figures_line(figures: dict[str, float]) -> str:
    """What the live view shows beside the bar: ``loss 2.3101 · lr 9.5e-05 · 1,234 tok/s``."""
    parts = [f"loss {figures['loss']:.4f}", f"lr {figures['learning_rate']:.1e}"]
    if "tokens_per_second" in figures:
        parts.append(f"{figures['tokens_per_second']:,.0f} tok/s")
    if "gpu_memory_bytes" in figures:
        parts.append(f"GPU {figures['gpu_memory_bytes'] / (1 << 30):.1f} GiB")
    return " · ".join(parts)


def _cuda_peak() -> int | None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return None


def loss_history(log_history: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """(step, loss, learning rate) of every logged training step (the Trainer's log history
    holds the steps before a resume too: it is restored from the checkpoint)."""
    rows: dict[int, tuple[int, float, float]] = {}
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            step = int(entry["step"])
            rows[step] = (step, float(entry["loss"]), float(entry.get("learning_rate", 0.0)))
    return [rows[k] for k in sorted(rows)]


def write_loss_curve(history: list[tuple[int, float, float]], folder: Path) -> tuple[Path, Path]:
    """``loss.csv`` (step, loss, lr) and ``loss.png`` in ``folder``, each written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "loss", "learning_rate"])
    w.writerows([s, f"{loss:.6g}", f"{lr:.6g}"] for s, loss, lr in history)
    csv_path = atomic.write_text(folder / "loss.csv", buf.getvalue())

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    steps = [s for s, _, _ in history]
    ax.plot(steps, [loss for _, loss, _ in history], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [lr for _, _, lr in history], color="tab:orange", alpha=0.6, label="lr")
    lr_ax.set_ylabel("learning rate")
    fig.legend(loc="upper right")
    fig.tight_layout()
    png_path = folder / "loss.png"
    with atomic.replacing(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return csv_path, png_path
