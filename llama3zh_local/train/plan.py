"""The plan of a training run, without torch: samples, tokens, steps, trainable parameters (from
config.json alone) and a memory estimate against this machine, with what to change when the
run will not fit (``llama3zh train --dry-run``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModelError, ModelNotFoundError, UsageError
from .options import ATTENTION_TARGETS, EMBEDDINGS, TARGETS, TrainOptions, resolve_dtype
from .samples import Sample

if TYPE_CHECKING:
    from ..hardware import Hardware

GiB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# bitsandbytes: NF4 packs two weights a byte plus one absmax per 64 weights (double-quantized
# to ~0.127 bits a weight); LLM.int8 one byte plus a scale per row
BITS_BYTES = {4: 0.5 + 0.127 / 8, 8: 1.0 + 0.01}
# a trainable parameter: fp32 weight, fp32 gradient, Adam's two fp32 moments
TRAINABLE_BYTES = 4 + 4 + 8
# activations kept per token per layer, in units of the hidden size times the activation
# width (Korthikanti et al. 2022, "Reducing Activation Recomputation": 34·s·b·h bytes at 16 bit
# for one layer without the attention-score term, which SDPA does not keep)
LAYER_ACTIVATION_FACTOR = 17
OVERHEAD = {"cuda": 0.75 * GiB, "mps": 0.75 * GiB, "cpu": 1.0 * GiB}  # context, allocator, torch
HEADROOM = 0.9  # use at most this share of the budget


@dataclass(frozen=True)
class ModelShape:
    """What config.json says about the parameter counts of a Llama-architecture model."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any], *, where: str = "config.json") -> ModelShape:
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            return cls(
                vocab=int(config["vocab_size"]),
                hidden=hidden,
                intermediate=int(config["intermediate_size"]),
                layers=int(config["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                tied=bool(config.get("tie_word_embeddings", False)),
                attention_bias=bool(config.get("attention_bias", False)),
                mlp_bias=bool(config.get("mlp_bias", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidModelError(
                f"{where} is not a Llama-architecture config ({e})",
                hint="train needs an HF Llama checkpoint folder (config.json + safetensors)",
            ) from None

    def linear(self, name: str) -> tuple[int, int]:
        """(in, out) features of one decoder-layer projection."""
        d, ff = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, ff),
            "up_proj": (d, ff),
            "down_proj": (ff, d),
        }
        if name not in shapes:
            raise UsageError(f"unknown LoRA target {name!r}: a Llama layer has {', '.join(shapes)}")
        return shapes[name]

    @property
    def layer_params(self) -> int:
        attn = sum(math.prod(self.linear(n)) for n in ATTENTION_TARGETS)
        mlp = sum(math.prod(self.linear(n)) for n in ("gate_proj", "up_proj", "down_proj"))
        if self.attention_bias:
            attn += sum(self.linear(n)[1] for n in ATTENTION_TARGETS)
        if self.mlp_bias:
            mlp += 2 * self.intermediate + self.hidden
        return attn + mlp + 2 * self.hidden  # + the two RMSNorm weights

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_params + self.hidden

    def lora_params(self, targets: Sequence[str], rank: int) -> int:
        """LoRA A (rank x in) and B (out x rank) for each target in every layer."""
        return self.layers * sum(rank * sum(self.linear(t)) for t in targets)

    def full_params(self, modules: Sequence[str]) -> int:
        """The parameters of ``modules_to_save`` (PEFT copies each, tied or not)."""
        sizes = {"embed_tokens": self.embedding_params, "lm_head": self.embedding_params}
        unknown = [m for m in modules if m not in sizes]
        if unknown:
            raise UsageError(
                f"modules_to_save {', '.join(unknown)}: only {', '.join(EMBEDDINGS)} are supported"
            )
        return sum(sizes[m] for m in modules)


def read_shape(model_dir: Path) -> ModelShape:
    """The model shape from ``model_dir/config.json``.

    Raises:
        ModelNotFoundError: no config.json. InvalidModelError: not a Llama config.
    """
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(
            f"{model_dir} is not an HF checkpoint folder (no config.json)",
            hint="give --base a catalog alias that is pulled, or an HF Llama checkpoint folder",
        ) from None
    except (OSError, ValueError) as e:
        raise InvalidModelError(f"{path} cannot be read: {e}") from None
    if not isinstance(config, dict):
        raise InvalidModelError(f"{path} is not a JSON object")
    return ModelShape.from_config(config, where=str(path))


@dataclass(frozen=True)
class Memory:
    """Estimated peak memory of one training process, in bytes, by what holds it."""

    weights: int  # the frozen base weights at dtype or bits
    trainable: int  # LoRA and modules_to_save: fp32 weights + gradients + Adam moments
    activations: int  # kept for the backward pass (less with gradient checkpointing)
    logits: int  # the fp32 logits over the vocabulary and their gradient
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.logits + self.overhead


@dataclass(frozen=True)
class TrainPlan:
    """What a run would do and whether it fits; nothing is loaded or written."""

    samples: int
    tokens: int
    trained_tokens: int
    truncated: int
    longest: int
    steps_per_epoch: int
    steps: int
    trainable_params: int
    total_params: int
    device: str  # cuda, mps or cpu: where the estimate is for
    dtype: str
    memory: Memory
    budget: int  # bytes the device has for this run (GPU VRAM or available RAM)
    budget_what: str  # e.g. "VRAM of NVIDIA GeForce RTX 4090" or "available RAM"
    advice: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.budget * HEADROOM


def count_steps(n_samples: int, options: TrainOptions) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) as the Trainer counts them: each process gets
    ceil(n / gpus) samples in batches of ``batch_size``, ``grad_accum`` batches a step."""
    per_process = math.ceil(n_samples / options.gpus)
    batches = math.ceil(per_process / options.batch_size)
    per_epoch = max(1, math.ceil(batches / options.grad_accum))
    if options.max_steps is not None:
        return per_epoch, options.max_steps
    return per_epoch, max(1, math.ceil(options.epochs * per_epoch))


def estimate_memory(
    shape: ModelShape, options: TrainOptions, *, dtype: str, device: str, seq_len: int
) -> Memory:
    """Peak memory of one process training ``shape`` with ``options`` on sequences of
    ``seq_len`` tokens. With ``--deepspeed`` over ``gpus`` processes, ZeRO-2 shards the
    gradients and Adam's moments, ZeRO-3 the weights too."""
    act_bytes = DTYPE_BYTES[dtype]
    full = shape.full_params(options.modules_to_save)
    frozen = shape.total_params
    if options.bits is None:
        weights = frozen * act_bytes
    else:  # bitsandbytes quantizes the decoder's linear layers; embeddings and norms stay
        linear = shape.layers * sum(math.prod(shape.linear(n)) for n in TARGETS)
        weights = int(linear * BITS_BYTES[options.bits]) + (frozen - linear) * act_bytes
    trainable = shape.lora_params(options.target_modules, options.lora_rank) + full
    shards = options.gpus if options.deepspeed else 1
    per_trainable = {
        None: TRAINABLE_BYTES,
        "zero2": 4 + (TRAINABLE_BYTES - 4) / shards,
        "zero3": TRAINABLE_BYTES / shards,
    }[options.deepspeed]
    tokens = options.batch_size * seq_len
    per_layer = LAYER_ACTIVATION_FACTOR * tokens * shape.hidden * act_bytes
    # LoRA keeps its inputs and the rank-sized intermediate for each target
    per_layer += (
        tokens
        * sum(shape.linear(t)[0] + options.lora_rank for t in options.target_modules)
        * act_bytes
    )
    if options.gradient_checkpointing:  # each layer's input, plus one layer recomputed
        activations = shape.layers * tokens * shape.hidden * act_bytes + per_layer
    else:
        activations = shape.layers * per_layer
    logits = 3 * tokens * shape.vocab * 4  # logits, log-softmax, their gradient in fp32
    return Memory(
        weights=int(weights / shards if options.deepspeed == "zero3" else weights),
        trainable=int(trainable * per_trainable),
        activations=int(activations),
        logits=int(logits),
        overhead=int(OVERHEAD.get(device, OVERHEAD["cpu"])),
    )


def device_budget(hw: Hardware | None) -> tuple[str, int, str]:
    """(device, bytes, what) that a run on this machine gets: the first GPU's VRAM, else RAM."""
    if hw is None:
        from ..hardware import detect

        hw = detect()
    gpus = hw.gpus
    if gpus:
        gpu = gpus[0]
        device = "mps" if hw.backend.upper() == "METAL" else "cuda"
        return device, gpu.total, f"VRAM of {gpu.description or gpu.name}"
    return "cpu", hw.ram_available, "available RAM"


def _gb(n: float) -> str:
    return f"{n / GiB:.1f} GB"


def plan_training(
    samples: Sequence[Sample],
    options: TrainOptions,
    *,
    model_dir: Path,
    hw: Hardware | None = None,
    device: str | None = None,
    budget: int | None = None,
) -> TrainPlan:
    """Plan a run: counts, steps, trainable parameters and memory against this machine.

    Args:
        samples: what the data side produced.
        model_dir: the base model's HF folder (only config.json is read).
        hw: the hardware to plan for (default: ``hardware.detect()``).
        device, budget: plan for this device ("cuda", "mps", "cpu") and this many bytes instead.

    Raises:
        UsageError: no samples. ModelNotFoundError / InvalidModelError: no usable config.json.
    """
    if not samples:
        raise UsageError(
            "no training samples", hint="check the data with `llama3zh train check-data`"
        )
    shape = read_shape(model_dir)
    if device is None or budget is None:
        d, b, what = device_budget(hw)
        device = device or d
        budget = budget if budget is not None else b
    else:
        what = "VRAM" if device != "cpu" else "RAM"
    dtype = resolve_dtype(options.dtype, device=device, bf16_supported=device == "cuda")
    lengths = [len(s.input_ids) for s in samples]
    longest = max(lengths)
    seq_len = min(longest, options.block_size)
    per_epoch, steps = count_steps(len(samples), options)
    memory = estimate_memory(shape, options, dtype=dtype, device=device, seq_len=seq_len)
    plan = TrainPlan(
        samples=len(samples),
        tokens=sum(lengths),
        trained_tokens=sum(s.trained_tokens for s in samples),
        truncated=sum(1 for s in samples if s.truncated),
        longest=longest,
        steps_per_epoch=per_epoch,
        steps=steps,
        trainable_params=shape.lora_params(options.target_modules, options.lora_rank)
        + shape.full_params(options.modules_to_save),
        total_params=shape.total_params,
        device=device,
        dtype=dtype,
        memory=memory,
        budget=budget,
        budget_what=what,
        advice=(),
    )
    if plan.fits:
        return plan
    return replace(plan, advice=_advice(shape, options, plan, seq_len))


def _advice(
    shape: ModelShape, options: TrainOptions, plan: TrainPlan, seq_len: int
) -> tuple[str, ...]:
    """What to change, each with the estimate it gives; the cheapest in quality first."""
    limit = plan.budget * HEADROOM

    def total(o: TrainOptions, n: int = seq_len) -> int:
        return estimate_memory(shape, o, dtype=plan.dtype, device=plan.device, seq_len=n).total

    out = [
        f"estimated peak {_gb(plan.memory.total)} > {_gb(limit)} usable of {_gb(plan.budget)} "
        f"{plan.budget_what}; each change below adds to the ones before it"
    ]
    tried, n = options, seq_len
    steps: list[tuple[bool, str, dict[str, Any]]] = [
        (
            bool(options.modules_to_save),
            "train embed_tokens/lm_head through LoRA only (no --train-embeddings)",
            {"modules_to_save": ()},
        ),
        (
            options.bits is None and plan.device == "cuda",  # bitsandbytes needs a GPU
            "--bits 4 (QLoRA, needs bitsandbytes)",
            {"bits": 4},
        ),
        (
            not options.gradient_checkpointing,
            "gradient checkpointing on",
            {"gradient_checkpointing": True},
        ),
    ]
    for applies, label, change in steps:
        if applies and total(tried, n) > limit:
            tried = replace(tried, **change)
            out.append(f"{label}: {_gb(total(tried, n))}")
    while n > 256 and total(tried, n) > limit:
        n //= 2
    if n < seq_len:
        tried = replace(tried, block_size=n)
        out.append(f"--block-size {n}: {_gb(total(tried, n))}")
    if set(tried.target_modules) - set(ATTENTION_TARGETS) and total(tried, n) > limit:
        tried = replace(tried, target_modules=ATTENTION_TARGETS)
        out.append(
            f"--targets {','.join(ATTENTION_TARGETS)} (attention only): {_gb(total(tried, n))}"
        )
    if total(tried, n) > limit:
        out.append(
            f"even then it needs {_gb(total(tried, n) / HEADROOM)}: use a machine with more "
            "memory, or --gpus N with --deepspeed zero3 to shard the model"
        )
    return tuple(out)
