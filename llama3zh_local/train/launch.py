"""``--gpus N``: the same command again under ``torchrun --nproc_per_node N`` (DDP through the
Trainer); ``--deepspeed zero2|zero3``: the DeepSpeed config handed to the Trainer.

The relaunched processes carry ``LLAMA3ZH_TRAIN_CHILD=1``, so that they train instead of
launching again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..files import atomic

CHILD_ENV = "LLAMA3ZH_TRAIN_CHILD"


def is_child() -> bool:
    """Whether this process is one that :func:`relaunch` started (or any torchrun worker)."""
    return os.environ.get(CHILD_ENV) == "1" or "LOCAL_RANK" in os.environ


def world_size() -> int:
    """The number of training processes torchrun started (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def torchrun_command(gpus: int, target: Sequence[str], *, module: bool = False) -> list[str]:
    """``python -m torch.distributed.run`` for ``gpus`` processes on this machine running
    ``target`` (a script and its arguments, or with ``module`` a module name and arguments)."""
    if gpus < 1:
        raise UsageError(f"--gpus must be at least 1 (got {gpus})")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port on this machine
        f"--nproc_per_node={gpus}",
    ]
    if module:
        cmd.append("-m")
    return [*cmd, *target]


def relaunch(gpus: int, argv: Sequence[str] | None = None, *, module: str | None = None) -> int:
    """Run this command again in ``gpus`` processes under torchrun and wait; returns the exit
    code (130 when interrupted, as the workers save a checkpoint first).

    ``argv``: the command's arguments (default ``sys.argv[1:]``); ``module``: run
    ``python -m module argv…`` in each process (default: the ``llama3zh`` CLI's module).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = torchrun_command(gpus, [module or "llama3zh_local", *args], module=True)
    env = {**os.environ, CHILD_ENV: "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; it warns without it
    # torchrun answers its own SIGINT by killing the workers, so it runs in a session of its
    # own (the terminal's Ctrl-C reaches only this process), and this process forwards the
    # signal to the workers, which save a checkpoint and stop.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    interrupted = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = signal.signal(signal.SIGINT, forward)
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 130 if interrupted and rc != 0 else rc


def _children(pid: int) -> list[int]:
    """The worker processes under torchrun ``pid`` (Linux: /proc; elsewhere torchrun itself)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(x) for x in text.split()] or [pid]
    except (OSError, ValueError):
        return [pid]


def deepspeed_config(stage: str) -> dict[str, Any]:
    """The DeepSpeed config for ``zero2`` / ``zero3``: the upstream ds_zero2_no_offload.json
    (ymcui/Chinese-LLaMA-Alpaca-2 scripts/training) with the Trainer's "auto" values, and
    stage 3's parameter sharding for zero3."""
    if stage not in ("zero2", "zero3"):
        raise UsageError(f"--deepspeed {stage}: expected zero2 or zero3")
    zero: dict[str, Any] = {
        "stage": 2,
        "allgather_partitions": True,
        "allgather_bucket_size": 1e8,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 1e8,
        "contiguous_gradients": True,
    }
    if stage == "zero3":
        zero = {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    return {
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,
            "loss_scale_window": 100,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1e-10,
        },
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": 2000,
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "wall_clock_breakdown": False,
    }


def write_deepspeed_config(stage: str, folder: Path) -> Path:
    """``folder/ds_<stage>.json`` (written atomically); the path for TrainingArguments."""
    path = folder / f"ds_{stage}.json"
    folder.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(path, json.dumps(deepspeed_config(stage), indent=2) + "\n")
