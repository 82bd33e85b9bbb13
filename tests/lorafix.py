"""PEFT LoRA folders made with numpy, for the merge-lora tests (no torch, no peft).

The layout is what ``peft``'s ``save_pretrained`` writes and the Chinese Llama-3 ``-lora``
releases ship: ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`` (r x in) and ``...lora_B.weight``
(out x r), plus, for ``modules_to_save``, the full ``base_model.model.model.embed_tokens.weight``
and ``base_model.model.lm_head.weight``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import models

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_tensors(
    base_dir: Path,
    *,
    r: int = 8,
    targets: tuple[str, ...] = TARGETS,
    full: tuple[str, ...] = ("embed_tokens", "lm_head"),
    seed: int = 1,
) -> dict[str, np.ndarray]:
    """PEFT key -> float32 array, shaped to fit the checkpoint in ``base_dir``."""
    base = models.read_hf_weights(base_dir)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, w in base.items():
        if not name.startswith("model.layers.") or w.ndim != 2:
            continue
        module = name.rsplit(".", 2)[-2]
        if module not in targets:
            continue
        stem = "base_model.model." + name.removesuffix(".weight")
        out_dim, in_dim = w.shape
        out[stem + ".lora_A.weight"] = rng.normal(0, 0.1, (r, in_dim)).astype(np.float32)
        out[stem + ".lora_B.weight"] = rng.normal(0, 0.1, (out_dim, r)).astype(np.float32)
    if "embed_tokens" in full:
        w = base["model.embed_tokens.weight"]
        out["base_model.model.model.embed_tokens.weight"] = (
            w + rng.normal(0, 0.01, w.shape)
        ).astype(np.float32)
    if "lm_head" in full:
        w = base["lm_head.weight"]
        out["base_model.model.lm_head.weight"] = (w + rng.normal(0, 0.01, w.shape)).astype(
            np.float32
        )
    return out


def build_lora(
    dest: Path,
    base_dir: Path,
    *,
    r: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = TARGETS,
    full: tuple[str, ...] = ("embed_tokens", "lm_head"),
    dtype: str = "float16",
    tokenizer: bool = True,
    extra_config: dict[str, Any] | None = None,
    seed: int = 1,
) -> Path:
    """Write a LoRA folder for the checkpoint in ``base_dir``; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_dir.name,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "target_modules": list(targets),
        "modules_to_save": list(full) or None,
        "use_rslora": False,
        "use_dora": False,
        **(extra_config or {}),
    }
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tensors = lora_tensors(base_dir, r=r, targets=targets, full=full, seed=seed)
    models.save_safetensors(dest / "adapter_model.safetensors", tensors, dtype=dtype)
    if tokenizer:  # the -lora releases ship the tokenizer (and its chat template) too
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, dest / name)
    return dest


def read_lora(lora_dir: Path) -> dict[str, np.ndarray]:
    """The LoRA's tensors as float32, by PEFT key."""
    return models.read_safetensors(lora_dir / "adapter_model.safetensors")


def merge_by_hand(base_dir: Path, lora_dir: Path) -> dict[str, np.ndarray]:
    """W + (alpha / r) * B @ A for each target, the full modules replaced; float32, HF names."""
    cfg = json.loads((lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    scale = cfg["lora_alpha"] / cfg["r"]
    weights = models.read_hf_weights(base_dir)
    lora = read_lora(lora_dir)
    for key, a in lora.items():
        if ".lora_A." in key:
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            weights[name] = weights[name] + scale * (b @ a)
        elif ".lora_B." not in key:
            weights[key.removeprefix("base_model.model.")] = a
    return weights
