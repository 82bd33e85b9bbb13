"""The training plan (llama3zh_local/train/plan.py): parameter counts from config.json equal
PEFT's, steps as the Trainer counts them, memory that grows with what it should, advice when
the run does not fit. Pure Python except the PEFT comparison."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from llama3zh_local.errors import InvalidModelError, ModelNotFoundError, UsageError
from llama3zh_local.hardware import Device, Hardware
from llama3zh_local.train import plan as tp
from llama3zh_local.train.options import TrainOptions, resolve_dtype
from llama3zh_local.train.samples import IGNORE_INDEX, Sample
from tests import models

GiB = 1024**3
# Llama-3-8B's config.json (meta-llama/Meta-Llama-3-8B)
LLAMA3_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
}


def _write_config(folder: Path, config: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _samples(n: int, length: int, *, truncated: int = 0) -> list[Sample]:
    ids = tuple(range(1, length + 1))
    labels = (IGNORE_INDEX,) * (length // 2) + ids[length // 2 :]
    return [Sample(ids, labels, f"d:{i + 1}", truncated=i < truncated) for i in range(n)]


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("pt", {"lora_rank": 8, "lora_alpha": 16}),
        ("sft", {"lora_rank": 4}),
        ("sft", {"lora_rank": 16, "target_modules": ("q_proj", "v_proj")}),
        ("pt", {"lora_rank": 2, "modules_to_save": ("lm_head",)}),
    ],
)
def test_trainable_parameters_equal_peft(tmp_path: Path, kind: str, changes: dict) -> None:
    import peft
    import torch
    import transformers

    config = {**models.TINY_LLAMA3_CONFIG}
    cfg = transformers.LlamaConfig(**config)
    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only
        model = transformers.LlamaForCausalLM(cfg)
    total = sum(t.numel() for t in model.parameters())
    opts = TrainOptions.for_kind(kind, **changes)
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=opts.lora_rank,
        lora_alpha=opts.lora_alpha,
        target_modules=list(opts.target_modules),
        modules_to_save=list(opts.modules_to_save) or None,
    )
    trainable, _ = peft.get_peft_model(model, lora).get_nb_trainable_parameters()
    folder = _write_config(tmp_path / "m", config)
    p = tp.plan_training(_samples(3, 10), opts, model_dir=folder, device="cpu", budget=64 * GiB)
    assert p.trainable_params == trainable
    assert p.total_params == total


def test_llama3_8b_counts() -> None:
    shape = tp.ModelShape.from_config(LLAMA3_8B)
    assert shape.total_params == 8_030_261_248  # Meta-Llama-3-8B's published count
    # rank 64 on the seven targets: 167.8M; embed_tokens + lm_head in full: 1.05B (issue 15)
    assert shape.lora_params(TrainOptions().target_modules, 64) == 167_772_160
    assert shape.full_params(("embed_tokens", "lm_head")) == 1_050_673_152


@pytest.mark.parametrize(
    ("n", "changes", "per_epoch", "steps"),
    [
        (100, {}, 13, 13),  # ceil(100 / 8)
        (100, {"epochs": 3.0}, 13, 39),
        (100, {"gpus": 2}, 7, 7),  # ceil(ceil(100 / 2) / 8)
        (100, {"batch_size": 4, "grad_accum": 2}, 13, 13),  # ceil(ceil(100 / 4) / 2)
        (5, {}, 1, 1),
        (100, {"max_steps": 7}, 13, 7),
        (16, {"epochs": 1.5}, 2, 3),
    ],
)
def test_steps(n: int, changes: dict, per_epoch: int, steps: int) -> None:
    assert tp.count_steps(n, TrainOptions.for_kind("pt", **changes)) == (per_epoch, steps)


def test_plan_counts_the_data(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", models.TINY_LLAMA3_CONFIG)
    samples = _samples(10, 20, truncated=3)
    p = tp.plan_training(samples, TrainOptions.for_kind("sft"), model_dir=folder,
                         device="cpu", budget=64 * GiB)  # fmt: skip
    assert (p.samples, p.tokens, p.trained_tokens, p.truncated, p.longest) == (10, 200, 100, 3, 20)
    assert (p.steps_per_epoch, p.steps) == (2, 6)  # run_sft.sh: 3 epochs
    assert p.fits and p.advice == () and p.dtype == "fp32"


def _total(opts: TrainOptions, *, seq: int, dtype: str = "bf16") -> int:
    shape = tp.ModelShape.from_config(LLAMA3_8B)
    return tp.estimate_memory(shape, opts, dtype=dtype, device="cuda", seq_len=seq).total


def test_memory_grows_with_block_size_and_bits() -> None:
    opts = TrainOptions.for_kind("pt")
    sizes = [_total(opts, seq=n) for n in (128, 256, 512, 1024, 2048)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    by_bits = [_total(dataclasses.replace(opts, bits=b), seq=1024) for b in (4, 8, None)]
    assert by_bits == sorted(by_bits) and len(set(by_bits)) == 3
    no_ckpt = dataclasses.replace(opts, gradient_checkpointing=False)
    assert _total(no_ckpt, seq=1024) > _total(opts, seq=1024)
    sft = TrainOptions.for_kind("sft", block_size=1024)
    assert _total(sft, seq=1024) < _total(opts, seq=1024) - 15 * GiB  # 1.05B params x 16 bytes
    eight = dataclasses.replace(opts, gpus=8)
    z2, z3 = (dataclasses.replace(eight, deepspeed=z) for z in ("zero2", "zero3"))
    assert _total(z3, seq=1024) < _total(z2, seq=1024) < _total(eight, seq=1024)
    assert _total(eight, seq=1024) == _total(opts, seq=1024)  # DDP: a full copy per GPU
    # the 8B PT recipe in bf16: 16 GB weights + ~19 GB trainable state and more
    assert 32 * GiB < _total(opts, seq=1024) < 48 * GiB


@pytest.mark.parametrize(
    ("device", "budget_gb", "kind", "expect"),
    [
        ("cuda", 24, "pt", ["--train-embeddings"]),  # that alone makes it fit
        ("cuda", 16, "pt", ["--train-embeddings", "--bits 4"]),
        ("cuda", 8, "sft", ["--bits 4"]),
        ("cuda", 2, "sft", ["--bits 4", "--block-size", "even then"]),
        ("cpu", 16, "pt", ["--train-embeddings"]),
    ],
)
def test_advice_when_it_does_not_fit(
    tmp_path: Path, device: str, budget_gb: int, kind: str, expect: list[str]
) -> None:
    folder = _write_config(tmp_path / "m", LLAMA3_8B)
    p = tp.plan_training(_samples(4, 1024), TrainOptions.for_kind(kind), model_dir=folder,
                         device=device, budget=budget_gb * GiB)  # fmt: skip
    assert not p.fits
    text = "\n".join(p.advice)
    assert p.advice[0].startswith("estimated peak")
    for phrase in expect:
        assert phrase in text, text
    if device == "cpu" or budget_gb == 24:
        assert "--bits" not in text  # bitsandbytes needs a GPU; or not needed


def test_budget_from_the_hardware(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", models.TINY_LLAMA3_CONFIG)
    gpu = Device("CUDA0", "NVIDIA GeForce RTX 4090", "gpu", 20 * GiB, 24 * GiB)
    hw = Hardware(("CUDA", "CPU"), True, (gpu,), 64 * GiB, 60 * GiB, "", "0.3.36")
    p = tp.plan_training(_samples(2, 8), TrainOptions.for_kind("sft"), model_dir=folder, hw=hw)
    assert (p.device, p.budget, p.dtype) == ("cuda", 24 * GiB, "bf16")
    assert "RTX 4090" in p.budget_what
    cpu = Hardware(("CPU",), False, (), 16 * GiB, 12 * GiB, "", "0.3.36")
    p = tp.plan_training(_samples(2, 8), TrainOptions.for_kind("sft"), model_dir=folder, hw=cpu)
    assert (p.device, p.budget, p.dtype) == ("cpu", 12 * GiB, "fp32")


@pytest.mark.parametrize(
    ("dtype", "device", "bf16", "want"),
    [
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp16"),
        ("auto", "cpu", False, "fp32"),
        ("auto", "mps", False, "fp32"),
        ("bf16", "cpu", False, "bf16"),
        ("fp16", "cpu", False, UsageError),
        ("bf16", "cuda", False, UsageError),
    ],
)
def test_resolve_dtype(dtype: str, device: str, bf16: bool, want: object) -> None:
    if want is UsageError:
        with pytest.raises(UsageError):
            resolve_dtype(dtype, device=device, bf16_supported=bf16)
    else:
        assert resolve_dtype(dtype, device=device, bf16_supported=bf16) == want


def test_upstream_defaults() -> None:
    pt, sft = TrainOptions.for_kind("pt"), TrainOptions.for_kind("sft")
    for o in (pt, sft):
        assert (o.lora_rank, o.lora_alpha, o.lora_dropout) == (64, 128, 0.05)
        assert (o.learning_rate, o.lr_scheduler, o.batch_size, o.grad_accum) == (
            1e-4, "cosine", 1, 8
        )  # fmt: skip
        assert set(o.target_modules) == {
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
        }  # fmt: skip
    assert (pt.warmup_ratio, pt.weight_decay, pt.epochs, pt.block_size) == (0.05, 0.01, 1, 1024)
    assert (sft.warmup_ratio, sft.weight_decay, sft.epochs, sft.block_size) == (0.03, 0, 3, 512)
    assert pt.modules_to_save == ("embed_tokens", "lm_head") and sft.modules_to_save == ()
    assert TrainOptions.for_kind("sft", train_embeddings=True).train_embeddings
    assert not TrainOptions.for_kind("pt", train_embeddings=False).train_embeddings


@pytest.mark.parametrize(
    "changes",
    [
        {"lora_rank": 0},
        {"lora_dropout": 1.0},
        {"bits": 3},
        {"dtype": "fp8"},
        {"deepspeed": "zero1"},
        {"bits": 4, "deepspeed": "zero3"},
        {"target_modules": ()},
        {"target_modules": ("lm_head",), "modules_to_save": ("lm_head",)},
        {"epochs": 0},
        {"nonsense": 1},
    ],
)
def test_bad_options(changes: dict) -> None:
    with pytest.raises(UsageError):
        TrainOptions.for_kind("sft", **changes)


def test_bad_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        tp.plan_training(_samples(1, 4), TrainOptions(), model_dir=tmp_path, device="cpu",
                         budget=GiB)  # fmt: skip
    _write_config(tmp_path, {"model_type": "llama"})
    with pytest.raises(InvalidModelError, match="not a Llama-architecture config"):
        tp.plan_training(_samples(1, 4), TrainOptions(), model_dir=tmp_path, device="cpu",
                         budget=GiB)  # fmt: skip
    with pytest.raises(UsageError, match="no training samples"):
        tp.plan_training([], TrainOptions(), model_dir=tmp_path, device="cpu", budget=GiB)
