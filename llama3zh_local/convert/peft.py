"""PEFT LoRA folders: the adapter read and checked against its base, and the merged weights
(``W + scale * B @ A``, row range by row range) that ``merge-lora`` writes.

PEFT's safetensors keys (``base_model.model.<module>.lora_A.weight``, ``lora_embedding_A``,
``modules_to_save``) are parsed here without PEFT or torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import catalog
from ..errors import InvalidModelError, ModelNotFoundError, UsageError
from ..files import guard
from ..hub import store
from .checkpoint import REDOWNLOAD, Checkpoint, SafetensorsFile, TensorRef, load_json
from .writer import RowSource

if TYPE_CHECKING:
    import numpy as np

PEFT_PREFIX = "base_model.model."
UNSUPPORTED_HINT = (
    "only plain LoRA adapters are supported: merge this one with PEFT's merge_and_unload, "
    "then `llama3zh convert` the merged folder"
)

_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$"
)


@dataclass(frozen=True)
class LoraPair:
    """The two factors of one target module (HF base name ``module + '.weight'``)."""

    a: TensorRef  # (r, in); for embeddings lora_embedding_A: (r, vocab)
    b: TensorRef  # (out, r); for embeddings lora_embedding_B: (dim, r)
    embedding: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the base weight this pair adds to."""
        if self.embedding:
            return (self.a.shape[1], self.b.shape[0])
        return (self.b.shape[0], self.a.shape[1])


@dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA folder, checked: its config, factor pairs and fully trained modules."""

    path: Path
    config: dict[str, Any] = field(repr=False)
    r: int
    alpha: float
    scale: float
    pairs: dict[str, LoraPair]  # HF base tensor name -> factors
    full: dict[str, TensorRef]  # HF base tensor name -> full weights (modules_to_save)
    file: SafetensorsFile = field(repr=False)
    base_model: str | None

    def close(self) -> None:
        self.file.close()


# -- reading the LoRA -----------------------------------------------------------------------------


def open_lora(lora_dir: Path) -> LoraAdapter:
    """Read and check a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).

    Raises:
        ModelNotFoundError: not a LoRA folder, or no safetensors weights.
        InvalidModelError: an unsupported LoRA variant, or inconsistent factors.
    """
    guard.require_regular(lora_dir)  # a FIFO for a file would block the first read forever
    if not (lora_dir / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"{lora_dir} is not a PEFT LoRA folder (no adapter_config.json)",
            hint="give the folder of a -lora release (adapter_config.json, "
            "adapter_model.safetensors)",
        )
    cfg = load_json(lora_dir / "adapter_config.json", what="the LoRA's config")
    where = lora_dir / "adapter_config.json"
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidModelError(
            f"{where}: peft_type {cfg.get('peft_type')} is not LORA", hint=UNSUPPORTED_HINT
        )
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out weights")):
        if cfg.get(flag):
            raise InvalidModelError(
                f"{where}: {what} adapters are not supported", hint=UNSUPPORTED_HINT
            )
    for pattern in ("rank_pattern", "alpha_pattern"):
        if cfg.get(pattern):
            raise InvalidModelError(
                f"{where}: per-module {pattern} is not supported",
                hint="merge this LoRA with PEFT's merge_and_unload, then `llama3zh convert`",
            )
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if (
        not isinstance(r, int)
        or isinstance(r, bool)
        or r <= 0
        or not isinstance(alpha, (int, float))
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
    ):
        # JSON's NaN and Infinity parse as floats: a NaN alpha made an all-NaN model
        raise InvalidModelError(
            f"{where}: r must be a positive integer and lora_alpha a finite number "
            f"(found r={r!r}, lora_alpha={alpha!r})",
            hint="compare adapter_config.json with the one the adapter was trained with",
        )
    if not isinstance(cfg.get("use_rslora", False), bool):
        raise InvalidModelError(
            f"{where}: use_rslora is {cfg.get('use_rslora')!r}, not true or false",
            hint="compare adapter_config.json with the one the adapter was trained with",
        )
    scale = float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else r)
    weights = lora_dir / "adapter_model.safetensors"
    if not weights.is_file():
        hint = (
            "adapter_model.bin is PyTorch's pickle format, which needs torch: convert it to "
            "safetensors first"
            if (lora_dir / "adapter_model.bin").is_file()
            else REDOWNLOAD
        )
        raise ModelNotFoundError(f"no adapter_model.safetensors in {lora_dir}", hint=hint)
    st = SafetensorsFile(weights)
    try:
        pairs, full = _parse_keys(st, r)
    except BaseException:
        st.close()
        raise
    base = cfg.get("base_model_name_or_path")
    return LoraAdapter(
        path=lora_dir,
        config=cfg,
        r=r,
        alpha=float(alpha),
        scale=scale,
        pairs=pairs,
        full=full,
        file=st,
        base_model=base if isinstance(base, str) and base else None,
    )


def _parse_keys(st: SafetensorsFile, r: int) -> tuple[dict[str, LoraPair], dict[str, TensorRef]]:
    halves: dict[str, dict[str, TensorRef]] = {}
    full: dict[str, TensorRef] = {}
    for key, ref in st.tensors.items():
        name = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        if m := _LORA_KEY.match(name):
            halves.setdefault(m["module"] + ".weight", {})[m["which"]] = ref
            continue
        name = name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
        if ".base_layer." in name:
            continue  # a copy of the base weight some tools save: the base folder has it
        if not name.endswith((".weight", ".bias")):
            raise InvalidModelError(
                f"{st.path}: tensor {key!r} is not part of a LoRA", hint=UNSUPPORTED_HINT
            )
        full[name] = ref
    pairs: dict[str, LoraPair] = {}
    for target, h in halves.items():
        emb = "lora_embedding_A" in h or "lora_embedding_B" in h
        a = h.get("lora_embedding_A" if emb else "lora_A")
        b = h.get("lora_embedding_B" if emb else "lora_B")
        if a is None or b is None:
            raise InvalidModelError(
                f"{st.path}: {target} has only one of its LoRA factors", hint=REDOWNLOAD
            )
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise InvalidModelError(
                f"{st.path}: {target}: lora_A {list(a.shape)} and lora_B {list(b.shape)} "
                "do not multiply",
                hint=REDOWNLOAD,
            )
        if a.shape[0] != r:
            raise InvalidModelError(
                f"{st.path}: {target} has rank {a.shape[0]}, adapter_config.json says r={r}",
                hint=REDOWNLOAD,
            )
        pairs[target] = LoraPair(a, b, embedding=emb)
    if not pairs and not full:
        raise InvalidModelError(f"{st.path} holds no LoRA tensors", hint=REDOWNLOAD)
    return pairs, full


def check_base(lora: LoraAdapter, base: Checkpoint) -> list[str]:
    """Check that ``lora`` was trained on ``base``: every module exists with the right shape.

    Returns warnings (a base_model_name_or_path that names another model).

    Raises:
        InvalidModelError: a target module the base lacks, or a shape that differs.
    """
    hint = "this LoRA was trained on another base model" + (
        f" ({lora.base_model})" if lora.base_model else ""
    )
    for name, pair in lora.pairs.items():
        ref = base.tensors.get(name)
        if ref is None:
            raise InvalidModelError(
                f"the LoRA targets {name}, which the base model {base.path} does not have",
                hint=hint,
            )
        if tuple(ref.shape) != pair.shape:
            raise InvalidModelError(
                f"LoRA and base do not match: {name} is {list(ref.shape)} in the base, the LoRA "
                f"makes {list(pair.shape)}",
                hint=hint,
            )
    for name, ref in lora.full.items():
        if name not in base.tensors:
            raise InvalidModelError(
                f"the LoRA has a full {name}, which the base model {base.path} does not have",
                hint=hint
                + ("; a base with tied embeddings has no lm_head" if "lm_head" in name else ""),
            )
        b = base.tensors[name].shape
        vocab_dim = name.endswith(("embed_tokens.weight", "lm_head.weight"))
        if tuple(ref.shape[1:]) != tuple(b[1:]) or (not vocab_dim and ref.shape != b):
            raise InvalidModelError(
                f"LoRA and base do not match: {name} is {list(b)} in the base, "
                f"{list(ref.shape)} in the LoRA",
                hint=hint,
            )
    warnings = []
    if lora.base_model:
        want = lora.base_model.rstrip("/").split("/")[-1].lower()
        have = {base.path.name.lower(), str(base.config.get("_name_or_path", "")).lower()}
        if not any(want and want in h for h in have):
            warnings.append(
                f"the LoRA says it was trained on {lora.base_model}; the base is {base.path} "
                "(shapes match, so merging goes on)"
            )
    return warnings


def find_base(lora_dir: Path, base: str | None, *, alias: str | None = None) -> Path:
    """The base model folder for a LoRA: ``base`` (a folder, a pulled alias or a hub repo id in
    the store), else the catalog's base for ``alias``, else adapter_config.json's
    ``base_model_name_or_path`` when that is a folder here or a repo in the store.

    Raises:
        ModelNotFoundError: the base is not on this machine.
        UsageError: no way to tell which base the LoRA needs.
    """

    def in_store(repo: str) -> Path | None:
        folder = store.repo_folder(repo)
        return folder if (folder / "config.json").is_file() else None

    if base:
        p = Path(base).expanduser()
        if p.is_dir():
            return p
        if "/" in base and (found := in_store(base)):
            return found
        return store.resolve_hf_dir(base)
    wanted: str | None = None
    if alias is not None:
        wanted = catalog.get_model(alias).lora_base
    else:
        cfg = load_json(lora_dir / "adapter_config.json", what="the LoRA's config")
        named = cfg.get("base_model_name_or_path")
        if isinstance(named, str) and named:
            if Path(named).expanduser().is_dir():
                return Path(named).expanduser()
            wanted = named
    if wanted is None:
        raise UsageError(
            f"which base model does {lora_dir} need? It does not say",
            hint="give it with --base DIR (the HF checkpoint the LoRA was trained on)",
        )
    if found := in_store(wanted):
        return found
    raise ModelNotFoundError(
        f"the LoRA's base model {wanted} is not on this machine "
        f"(looked in {store.repo_folder(wanted)})",
        hint=f"download {wanted} (on Hugging Face; Meta's repos need their license accepted) "
        "and pass its folder with --base DIR",
    )


# -- merged tensors -------------------------------------------------------------------------------


def _as_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    import numpy as np

    if dtype == "BF16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Merged:
    """``W + scale * B @ A``, row range by row range, in float32."""

    base: TensorRef
    pair: LoraPair
    scale: float

    @property
    def dtype(self) -> str:
        return "F32"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        a = _as_f32(self.pair.a.array(), self.pair.a.dtype)
        b = _as_f32(self.pair.b.array(), self.pair.b.dtype)
        w = _as_f32(self.base.rows(start, stop), self.base.dtype)
        if self.pair.embedding:  # PEFT Embedding: delta = (B @ A).T
            delta = (b @ a[:, start:stop]).T
        else:
            delta = b[start:stop] @ a
        return w + self.scale * delta

    def done(self, start: int, stop: int) -> None:
        self.base.done(start, stop)

    def release(self) -> None:
        self.base.release()


def merged_sources(lora: LoraAdapter, base: Checkpoint) -> dict[str, RowSource]:
    """HF name -> what to write instead of the base tensor."""
    out: dict[str, RowSource] = {}
    for name, pair in lora.pairs.items():
        out[name] = Merged(base.tensors[name], pair, lora.scale)
    for name, ref in lora.full.items():
        out[name] = ref
    return out
