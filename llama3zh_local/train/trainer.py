"""LoRA training with the transformers Trainer and PEFT: the samples in, a PEFT LoRA folder out
(``adapter_config.json`` + ``adapter_model.safetensors``, the base recorded) that
``llama3zh merge-lora`` takes as it is.

``out`` holds the run: ``adapter/`` (written when training completes, renamed into place),
``loss.csv`` and ``loss.png`` beside it, ``checkpoints/checkpoint-N`` (the Trainer's, every
``save_steps``; a ``.complete`` marker says it was written in full) and ``train-state.json``
(the options, base and data of the run, so that the same command resumes and another one is
refused). torch, transformers and peft are imported only when :func:`train` runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
import warnings
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..files import atomic
from ..progress import Callback
from . import launch
from .options import TrainOptions, require_extra, resolve_dtype
from .plan import read_shape
from .samples import IGNORE_INDEX, Sample

if TYPE_CHECKING:
    import torch

STATE_NAME = "train-state.json"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
PARTIAL_ADAPTER = ".adapter.partial"  # one name for every DDP process (save_model runs on all)
COMPLETE_MARKER = ".complete"
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class TrainResult:
    """A finished (or interrupted) run.

    ``adapter_dir`` is the PEFT LoRA folder, None when the run was interrupted (then
    ``checkpoint`` is where the rerun resumes). ``final_loss`` is the last logged training loss.
    """

    adapter_dir: Path | None
    steps: int  # optimizer steps done, counting those before a resume
    total_steps: int
    final_loss: float | None
    resumed_from_step: int | None
    loss_csv: Path | None
    loss_png: Path | None
    interrupted: bool = False
    checkpoint: Path | None = None
    eval_loss: float | None = None
    reused: bool = False  # the same run had completed already: nothing was trained
    seconds: float = 0.0


# -- the data as the Trainer sees it --------------------------------------------------------------


class SampleDataset:
    """The samples as a map-style dataset of ``{"input_ids", "labels"}`` lists."""

    def __init__(self, samples: Sequence[Sample], block_size: int) -> None:
        self.samples = samples
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        s = self.samples[i]
        n = self.block_size  # the data side cuts to the block size; this only guards it
        return {"input_ids": list(s.input_ids[:n]), "labels": list(s.labels[:n])}


class PaddingCollator:
    """Pads a batch to its longest sample (right side): ids with ``pad_id``, labels with -100,
    attention mask 0; counts the real tokens it has handed out (for tokens/s)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.tensor(b["labels"], dtype=torch.long)
            mask[i, :k] = 1
            self.tokens += k
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def samples_digest(samples: Sequence[Sample]) -> str:
    """A sha256 of the token ids and labels (the state file's identity of the data)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(array("q", s.input_ids).tobytes())
        h.update(b"|")
        h.update(array("q", s.labels).tobytes())
        h.update(b"\n")
    return h.hexdigest()


# -- checkpoints and the state file ---------------------------------------------------------------


def complete_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints in ``folder`` that were written in full, oldest first."""
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            name, _, step = p.name.partition("-")
            if name == "checkpoint" and step.isdigit() and (p / COMPLETE_MARKER).is_file():
                found.append((int(step), p))
    return sorted(found)


def _remove_incomplete(folder: Path) -> None:
    if not folder.is_dir():
        return
    done = {p for _, p in complete_checkpoints(folder)}
    for p in folder.glob("checkpoint-*"):
        if p.is_dir() and p not in done:
            shutil.rmtree(p, ignore_errors=True)


def read_run_state(out: Path) -> dict[str, Any]:
    """``out/train-state.json`` (empty when missing or unreadable)."""
    try:
        data = json.loads((out / STATE_NAME).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_run_state(out: Path, record: Mapping[str, Any]) -> None:
    atomic.write_text(out / STATE_NAME, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    changed = []
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    for k in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(k) != new_opts.get(k):
            changed.append(f"{k} {old_opts.get(k)!r} -> {new_opts.get(k)!r}")
    if old.get("base") != new.get("base"):
        changed.append(f"base {old.get('base')} -> {new.get('base')}")
    if old.get("samples") != new.get("samples"):
        changed.append("the training data")
    return changed


def _check_world(options: TrainOptions) -> None:
    ws = launch.world_size()
    if options.gpus == ws:
        return
    if ws == 1:
        raise UsageError(
            f"--gpus {options.gpus} trains in {options.gpus} processes, and this is one",
            hint="start it through llama3zh_local.train.launch.relaunch (the `llama3zh train` "
            "command relaunches itself under torchrun)",
        )
    raise UsageError(f"--gpus {options.gpus}, but torchrun started {ws} processes")


# -- the run --------------------------------------------------------------------------------------


def train(
    samples: Sequence[Sample],
    options: TrainOptions,
    *,
    base: Path,
    out: Path,
    progress: Callback | None = None,
    eval_samples: Sequence[Sample] | None = None,
    restart: bool = False,
) -> TrainResult:
    """Train a LoRA on ``samples`` over the HF checkpoint ``base``; write it to ``out/adapter``.

    Rerunning the same call resumes from the last complete checkpoint in
    ``out/checkpoints`` (or returns the finished run); SIGINT (and SIGTERM under torchrun)
    saves a checkpoint at the end of the step and returns with ``interrupted``.

    Args:
        restart: discard the checkpoints of an earlier run in ``out`` (whatever its options).
        eval_samples: held-out samples; their loss is computed when training ends.
        progress: stage "train" events (steps, with loss, learning rate, tokens/s, ETA).

    Raises:
        UsageError: no samples, ``out`` holds another run's checkpoints, or a process count
            that differs from ``options.gpus``.
        MissingExtraError: torch/transformers/peft (or bitsandbytes, DeepSpeed) missing.
        ModelNotFoundError / InvalidModelError: ``base`` is not an HF Llama checkpoint.
    """
    t0 = time.perf_counter()
    if not samples:
        raise UsageError("no training samples", hint="check the data: llama3zh train check-data")
    require_extra(bits=options.bits, deepspeed=options.deepspeed)
    base = Path(base).expanduser().resolve()
    read_shape(base)  # a clear error before loading anything
    _check_world(options)
    main = launch.is_main_process()
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"--out {out} is a file", hint="give a folder for the run (new or its own)"
        )
    if out == base or base.is_relative_to(out):
        raise UsageError(
            f"--out {out} would hold the base model {base}",
            hint="give the run a folder of its own, e.g. --out runs/my-lora",
        )
    out.mkdir(parents=True, exist_ok=True)
    ckdir = out / CHECKPOINTS_DIR
    record: dict[str, Any] = {
        "version": 1,
        "options": options.to_json(),
        "base": str(base),
        "samples": samples_digest(samples),
        "sample_count": len(samples),
        "complete": False,
    }
    old = read_run_state(out)
    have = complete_checkpoints(ckdir)
    if old and not restart and (have or old.get("complete")):
        changed = _differences(old, record)
        if changed:
            raise UsageError(
                f"{out} holds another training run (changed: {'; '.join(changed)})",
                hint="use a new --out, or --restart to discard its checkpoints",
            )
        if old.get("complete") and (out / ADAPTER_DIR / "adapter_model.safetensors").is_file():
            return _finished(out, old, t0)
    if restart:
        if main:
            shutil.rmtree(ckdir, ignore_errors=True)
        have = []
    elif not old and have:
        raise UsageError(
            f"{ckdir} holds checkpoints without a record of their run",
            hint="use a new --out, or --restart to discard them",
        )
    resume = have[-1][1] if have else None
    if main:
        _remove_incomplete(ckdir)
        shutil.rmtree(out / PARTIAL_ADAPTER, ignore_errors=True)
        _write_run_state(out, record)
    with warnings.catch_warnings():
        # peft calls transformers 5's renamed gradient-checkpointing methods by their old names
        warnings.filterwarnings(
            "ignore", message=".*deprecated and will be removed in v6", category=FutureWarning
        )
        return _run(samples, options, base=base, out=out, resume=resume, record=record,
                    progress=progress, eval_samples=eval_samples, t0=t0)  # fmt: skip


def _finished(out: Path, state: Mapping[str, Any], t0: float) -> TrainResult:
    csv_path, png = out / "loss.csv", out / "loss.png"
    loss = state.get("final_loss")
    return TrainResult(
        adapter_dir=out / ADAPTER_DIR,
        steps=int(state.get("steps", 0)),
        total_steps=int(state.get("total_steps", 0)),
        final_loss=float(loss) if isinstance(loss, (int, float)) else None,
        resumed_from_step=None,
        loss_csv=csv_path if csv_path.is_file() else None,
        loss_png=png if png.is_file() else None,
        reused=True,
        seconds=time.perf_counter() - t0,
    )


def _device() -> tuple[str, bool]:
    import torch

    if torch.cuda.is_available():
        return "cuda", bool(torch.cuda.is_bf16_supported())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps", False
    return "cpu", False


def _pad_id(config: Any) -> int:
    for v in (config.pad_token_id, config.eos_token_id, 0):
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, int):
            return v
    return 0


def _load_model(options: TrainOptions, base: Path, dtype: str) -> Any:
    """The base model with LoRA attached (gradient checkpointing and k-bit preparation done)."""
    import peft
    import torch
    import transformers

    torch_dtype = getattr(torch, TORCH_DTYPES[dtype])
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if options.bits is not None:
        # upstream run_clm_*_with_peft.py: NF4 with double quantization, compute at the dtype
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=options.bits == 4,
            load_in_8bit=options.bits == 8,
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            llm_int8_threshold=6.0,
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    model.config.use_cache = False  # no KV cache in training (and it conflicts with checkpointing)
    ckpt_kwargs = {"use_reentrant": False}  # reentrant checkpointing loses LoRA's gradients
    if options.bits is not None:
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=options.gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    elif options.gradient_checkpointing:  # on the model before PEFT wraps it, not the Trainer's
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's new name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.enable_input_require_grads()  # the frozen embeddings' output must carry grad
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=list(options.target_modules),
        modules_to_save=list(options.modules_to_save) or None,
        bias="none",
    )
    model = peft.get_peft_model(model, config)
    # trainable weights in fp32 (the optimizer's master copy; fp16 ones cannot be unscaled)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def _training_arguments(
    options: TrainOptions, *, out: Path, dtype: str, device: str, eval_samples: bool
) -> Any:
    import dataclasses

    import transformers

    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    kwargs: dict[str, Any] = {
        "output_dir": str(out / CHECKPOINTS_DIR),
        "per_device_train_batch_size": options.batch_size,
        "per_device_eval_batch_size": options.batch_size,
        "gradient_accumulation_steps": options.grad_accum,
        "learning_rate": options.learning_rate,
        "lr_scheduler_type": options.lr_scheduler,
        "weight_decay": options.weight_decay,
        "max_grad_norm": options.max_grad_norm,
        "num_train_epochs": options.epochs,
        "max_steps": options.max_steps if options.max_steps is not None else -1,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": options.save_steps,
        "save_total_limit": options.save_total_limit,
        "seed": options.seed,
        "data_seed": options.seed,
        "bf16": dtype == "bf16",
        "fp16": dtype == "fp16",
        "use_cpu": device == "cpu",
        "report_to": [],
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,  # upstream: --ddp_find_unused_parameters False
        "ddp_timeout": 30000,  # upstream: --ddp_timeout 30000
    }
    if launch.world_size() > 1:
        kwargs["ddp_backend"] = "nccl" if device == "cuda" else "gloo"
    # transformers 5 takes the warm-up ratio as a float warmup_steps; 4.x had warmup_ratio
    if "warmup_ratio" in fields:
        kwargs["warmup_ratio"] = options.warmup_ratio
    else:
        kwargs["warmup_steps"] = options.warmup_ratio
    if options.deepspeed is not None:
        kwargs["deepspeed"] = str(launch.write_deepspeed_config(options.deepspeed, out))
    if options.bits is not None:
        kwargs["optim"] = "paged_adamw_32bit"  # QLoRA's optimizer: no spikes on long batches
    return transformers.TrainingArguments(**{k: v for k, v in kwargs.items() if k in fields})


def _run(
    samples: Sequence[Sample],
    options: TrainOptions,
    *,
    base: Path,
    out: Path,
    resume: Path | None,
    record: dict[str, Any],
    progress: Callback | None,
    eval_samples: Sequence[Sample] | None,
    t0: float,
) -> TrainResult:
    import transformers

    from . import callbacks as cb

    transformers.logging.set_verbosity_error()  # the progress events say what happens
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on stderr
    device, bf16_ok = _device()
    dtype = resolve_dtype(options.dtype, device=device, bf16_supported=bf16_ok)
    main = launch.is_main_process()
    collator = PaddingCollator(0)
    reporter = cb.ProgressCallback(progress if main else None, lambda: collator.tokens)
    reporter.note(f"loading {base.name} ({dtype} on {device})")
    transformers.set_seed(options.seed)  # LoRA's A matrices are drawn from this
    model = _load_model(options, base, dtype)
    collator.pad_id = _pad_id(model.config)
    args = _training_arguments(
        options, out=out, dtype=dtype, device=device, eval_samples=bool(eval_samples)
    )
    flag = cb.StopFlag()
    stopper = cb.InterruptCallback(flag)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=SampleDataset(samples, options.block_size),
        eval_dataset=SampleDataset(eval_samples, options.block_size) if eval_samples else None,
        data_collator=collator,
        callbacks=[reporter, cb.CompleteMarker(), stopper],
    )
    trainer.remove_callback(transformers.PrinterCallback)  # it prints the logs on stdout
    resumed_from = None
    if resume is not None:
        resumed_from = int(resume.name.rpartition("-")[2])
        reporter.note(f"resuming from {resume.name}")
    # under torchrun SIGTERM is how the launcher stops its workers: save then too
    signals = (signal.SIGINT, signal.SIGTERM) if launch.world_size() > 1 else (signal.SIGINT,)
    with cb.stop_on_signals(flag, signals):
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    history = reporter.history or cb.loss_history(state.log_history)
    final_loss = history[-1][1] if history else None
    if stopper.stopped_at is not None:
        step = stopper.stopped_at
        return TrainResult(
            adapter_dir=None,
            steps=step,
            total_steps=state.max_steps,
            final_loss=final_loss,
            resumed_from_step=resumed_from,
            loss_csv=None,
            loss_png=None,
            interrupted=True,
            checkpoint=out / CHECKPOINTS_DIR / f"checkpoint-{step}",
            seconds=time.perf_counter() - t0,
        )
    eval_loss = None
    if eval_samples:
        metrics = trainer.evaluate()
        eval_loss = float(metrics["eval_loss"]) if "eval_loss" in metrics else None
    partial = out / PARTIAL_ADAPTER
    trainer.save_model(str(partial))  # every process: ZeRO-3 gathers the weights here
    adapter = out / ADAPTER_DIR
    csv_path = png = None
    if main:
        (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; not the adapter's
        _install_folder(partial, adapter)
        csv_path, png = cb.write_loss_curve(history, out)
        _write_run_state(
            out,
            {
                **record,
                "complete": True,
                "steps": state.global_step,
                "total_steps": state.max_steps,
                "final_loss": final_loss,
                "eval_loss": eval_loss,
            },
        )
    return TrainResult(
        adapter_dir=adapter,
        steps=state.global_step,
        total_steps=state.max_steps,
        final_loss=final_loss,
        resumed_from_step=resumed_from,
        loss_csv=csv_path,
        loss_png=png,
        eval_loss=eval_loss,
        seconds=time.perf_counter() - t0,
    )


def _install_folder(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``dest`` (an earlier adapter is moved aside
    first and removed after: a folder cannot be renamed over a non-empty one)."""
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (tmp / name).is_file():
            raise UsageError(f"the trainer did not write {name} in {tmp}")
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
