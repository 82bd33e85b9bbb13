"""What a training run does: LoRA shape, optimiser, schedule, precision, devices.

The defaults are the upstream recipes, ymcui/Chinese-LLaMA-Alpaca-3
``scripts/training/run_pt.sh`` and ``run_sft.sh`` (the scripts every model of the family was
trained with); where the two differ, :meth:`TrainOptions.for_kind` picks the script's value.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

from ..errors import MissingExtraError, UsageError
from .env import CUDA_HINT, INSTALL

KINDS = ("pt", "sft")
# run_pt.sh / run_sft.sh: lora_trainable="q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_TARGETS = TARGETS[:4]
# run_pt.sh: modules_to_save="embed_tokens,lm_head" (the scripts pass it for SFT too; here SFT
# trains them only with --train-embeddings: they add ~1B trainable parameters to an 8B model)
EMBEDDINGS = ("embed_tokens", "lm_head")
DTYPES = ("auto", "bf16", "fp16", "fp32")
BITS = (None, 4, 8)
DEEPSPEED = (None, "zero2", "zero3")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")

# the values that differ between run_pt.sh and run_sft.sh
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    # run_pt.sh: --warmup_ratio 0.05 --weight_decay 0.01 --num_train_epochs 1 block_size=1024
    "pt": {
        "warmup_ratio": 0.05,
        "weight_decay": 0.01,
        "epochs": 1.0,
        "block_size": 1024,
        "modules_to_save": EMBEDDINGS,
    },
    # run_sft.sh: --warmup_ratio 0.03 (no --weight_decay: the Trainer's 0.0)
    # --num_train_epochs 3 max_seq_length=512
    "sft": {
        "warmup_ratio": 0.03,
        "weight_decay": 0.0,
        "epochs": 3.0,
        "block_size": 512,
        "modules_to_save": (),
    },
}

# the one install command (train/env.py, which doctor reports with)
INSTALL_HINT = f"{INSTALL} ({CUDA_HINT})"


@dataclass(frozen=True)
class TrainOptions:
    """One training run's settings; build them with :meth:`for_kind` to get the kind's defaults.

    ``modules_to_save`` are trained in full (PT: embed_tokens and lm_head, as upstream).
    ``bits``: None trains on the weights at ``dtype``; 4 or 8 loads them through bitsandbytes
    (QLoRA). ``dtype`` auto: bf16 where the GPU supports it, fp16 on other CUDA GPUs, fp32 on
    CPU and Apple MPS (fp16 training there is not reliable). ``max_steps`` overrides ``epochs``.
    """

    kind: str = "pt"
    lora_rank: int = 64  # run_*.sh: lora_rank=64
    lora_alpha: int = 128  # lora_alpha=128
    lora_dropout: float = 0.05  # lora_dropout=0.05
    target_modules: tuple[str, ...] = TARGETS
    modules_to_save: tuple[str, ...] = EMBEDDINGS
    learning_rate: float = 1e-4  # run_pt.sh and run_sft.sh: lr=1e-4
    lr_scheduler: str = "cosine"  # --lr_scheduler_type cosine
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    batch_size: int = 1  # per_device_train_batch_size=1
    grad_accum: int = 8  # gradient_accumulation_steps=8
    epochs: float = 1.0
    max_steps: int | None = None
    block_size: int = 1024
    gradient_checkpointing: bool = True
    seed: int = 42  # upstream passes $RANDOM; a fixed seed makes a rerun resume the same run
    save_steps: int = 200  # --save_steps 200
    save_total_limit: int = 3  # --save_total_limit 3
    max_grad_norm: float = 1.0  # the Trainer's default, which upstream keeps
    bits: int | None = None  # --load_in_kbits 16 (None here), 8 or 4
    dtype: str = "auto"  # upstream: --bf16 --torch_dtype bfloat16
    gpus: int = 1
    deepspeed: str | None = None

    @classmethod
    def for_kind(
        cls, kind: str, *, train_embeddings: bool | None = None, **changes: Any
    ) -> TrainOptions:
        """The upstream defaults for ``kind`` ("pt" or "sft") with ``changes`` applied.

        ``train_embeddings`` adds (True) or removes (False) embed_tokens and lm_head from
        ``modules_to_save``; None keeps the kind's default (on for PT, off for SFT).

        Raises:
            UsageError: an unknown kind or option, or a value out of range.
        """
        if kind not in KINDS:
            raise UsageError(f"unknown training kind {kind!r}: expected pt or sft")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        values = {**_KIND_DEFAULTS[kind], **changes, "kind": kind}
        if train_embeddings is not None:
            rest = tuple(m for m in values["modules_to_save"] if m not in EMBEDDINGS)
            values["modules_to_save"] = rest + (EMBEDDINGS if train_embeddings else ())
        return cls(**values)

    def __post_init__(self) -> None:
        def bad(msg: str, hint: str | None = None) -> UsageError:
            return UsageError(msg, hint=hint)

        if self.kind not in KINDS:
            raise bad(f"unknown training kind {self.kind!r}: expected pt or sft")
        for name in (
            "lora_rank",
            "lora_alpha",
            "batch_size",
            "grad_accum",
            "block_size",
            "gpus",
            "save_steps",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(f"--{name.replace('_', '-')} must be a positive integer (got {v!r})")
        if self.save_total_limit < 1:
            raise bad(f"save_total_limit must be at least 1 (got {self.save_total_limit})")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad(f"--max-steps must be a positive integer (got {self.max_steps})")
        if not self.epochs > 0:
            raise bad(f"--epochs must be above 0 (got {self.epochs})")
        if not self.learning_rate > 0:
            raise bad(f"--learning-rate must be above 0 (got {self.learning_rate})")
        if not 0 <= self.lora_dropout < 1:
            raise bad(f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        if not 0 <= self.warmup_ratio < 1:
            raise bad(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.weight_decay < 0:
            raise bad(f"--weight-decay must not be negative (got {self.weight_decay})")
        if not self.target_modules:
            raise bad("no LoRA target modules", hint=f"the default is {','.join(TARGETS)}")
        overlap = set(self.target_modules) & set(self.modules_to_save)
        if overlap:
            raise bad(
                f"{', '.join(sorted(overlap))} cannot be both a LoRA target and trained in full"
            )
        if self.lr_scheduler not in SCHEDULERS:
            raise bad(f"--lr-scheduler {self.lr_scheduler}: expected {', '.join(SCHEDULERS)}")
        if self.dtype not in DTYPES:
            raise bad(f"--dtype {self.dtype}: expected one of {', '.join(DTYPES)}")
        if self.bits not in BITS:
            raise bad(f"--bits {self.bits}: expected 4 or 8 (or none, for 16-bit weights)")
        if self.deepspeed not in DEEPSPEED:
            raise bad(f"--deepspeed {self.deepspeed}: expected zero2 or zero3")
        if self.bits is not None and self.deepspeed == "zero3":
            raise bad(
                "--bits and --deepspeed zero3 cannot be combined",
                hint="use --deepspeed zero2 with --bits, or zero3 with 16-bit weights",
            )

    @property
    def train_embeddings(self) -> bool:
        return any(m in EMBEDDINGS for m in self.modules_to_save)

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def to_json(self) -> dict[str, Any]:
        """The options as JSON values (the state file records them; tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def changed_from(self, recorded: dict[str, Any]) -> list[str]:
        """The option names whose value differs from ``recorded`` (a :meth:`to_json` dict)."""
        mine = self.to_json()
        return sorted(k for k in set(mine) | set(recorded) if mine.get(k) != recorded.get(k))


def resolve_dtype(dtype: str, *, device: str, bf16_supported: bool = False) -> str:
    """The precision a run uses: ``dtype`` unless "auto"; ``device`` is cuda, mps or cpu.

    auto: bf16 on a CUDA GPU that supports it, fp16 on other CUDA GPUs, fp32 on CPU and MPS.

    Raises:
        UsageError: fp16 on CPU (torch has no fp16 training there), bf16 on a GPU without it.
    """
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if device == "cuda":
            return "bf16" if bf16_supported else "fp16"
        return "fp32"
    if dtype == "fp16" and device == "cpu":
        raise UsageError("--dtype fp16 needs a GPU", hint="use --dtype fp32 (or bf16) on CPU")
    if dtype == "bf16" and device == "cuda" and not bf16_supported:
        raise UsageError(
            "this GPU does not support bf16", hint="use --dtype fp16 (or leave --dtype auto)"
        )
    return dtype


def require_extra(*, bits: int | None = None, deepspeed: str | None = None) -> None:
    """Check that the packages a run needs are importable (without importing them).

    Raises:
        MissingExtraError: one line naming what is missing and the install command.
    """
    missing = [
        m for m in ("torch", "transformers", "peft", "accelerate", "safetensors")
        if importlib.util.find_spec(m) is None
    ]  # fmt: skip
    if missing:
        raise MissingExtraError(
            f"training needs the [train] extra ({', '.join(missing)} not installed)",
            hint=INSTALL_HINT,
        )
    if bits is not None and importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtraError(
            f"--bits {bits} needs bitsandbytes, which is not installed",
            hint='pip install "llama3zh-local[qlora]" (bitsandbytes needs a CUDA GPU)',
        )
    if deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        raise MissingExtraError(
            f"--deepspeed {deepspeed} needs DeepSpeed, which is not installed",
            hint="pip install deepspeed (it needs a CUDA GPU and its compiler toolchain)",
        )
