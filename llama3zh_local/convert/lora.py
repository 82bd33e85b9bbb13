"""PEFT LoRA releases: merge into the base model (GGUF or HF), or write a llama.cpp LoRA adapter.

Every Chinese Llama-3 ``-lora`` release trains ``embed_tokens`` and ``lm_head`` in full
(``modules_to_save``), which llama.cpp's ``convert_lora_to_gguf.py`` refuses. Merging here is
``W + scale * B @ A`` for each target module (``scale = lora_alpha / r``, or ``/ sqrt(r)`` with
rsLoRA) and the LoRA's own full modules in place of the base's, computed in float32 one chunk of
rows at a time while the GGUF (or HF checkpoint) is streamed out.

A LoRA without full modules can instead become a GGUF LoRA adapter that llama.cpp loads at run
time (``llama_adapter_lora_init``, Ollama's ``ADAPTER``), tensor for tensor what
``convert_lora_to_gguf.py`` writes.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DiskSpaceError, InvalidModelError, ModelNotFoundError, UsageError
from ..files import atomic, guard, state
from ..gguf.reader import read_header
from ..progress import ADVANCE, DONE, FAILED, START, Callback, emitter
from . import llama as cv
from .checkpoint import (
    REDOWNLOAD,
    Checkpoint,
    SafetensorsFile,
    TensorRef,
    iter_row_chunks,
    load_json,
    open_checkpoint,
)

if TYPE_CHECKING:
    import gguf
    import numpy as np

FORMATS = ("gguf", "hf", "adapter")
PEFT_PREFIX = "base_model.model."
UNSUPPORTED_HINT = (
    "only plain LoRA adapters are supported: merge this one with PEFT's merge_and_unload, "
    "then `llama3zh convert` the merged folder"
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
SHARD_BYTES = 5 * 1000**3  # the shard size transformers writes by default (5 GB)

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


@dataclass(frozen=True)
class MergeResult:
    """A merged model or an adapter, written (or planned with ``dry_run``)."""

    path: Path
    format: str  # gguf, hf or adapter
    lora: Path
    base: Path
    outtype: str
    merged_modules: int  # target modules with a LoRA delta
    replaced_modules: tuple[str, ...]  # HF names of modules taken whole from the LoRA
    scale: float
    tensor_count: int
    size: int
    seconds: float
    dry_run: bool = False
    warnings: tuple[str, ...] = ()


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
    from .. import catalog
    from ..hub import store

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


def merged_sources(lora: LoraAdapter, base: Checkpoint) -> dict[str, cv.RowSource]:
    """HF name -> what to write instead of the base tensor."""
    out: dict[str, cv.RowSource] = {}
    for name, pair in lora.pairs.items():
        out[name] = Merged(base.tensors[name], pair, lora.scale)
    for name, ref in lora.full.items():
        out[name] = ref
    return out


# -- the stage ------------------------------------------------------------------------------------


def merge_lora(
    *,
    lora: str | Path,
    base: str | Path,
    output: str | Path | None = None,
    format: str = "gguf",
    outtype: str = "auto",
    force: bool = False,
    dry_run: bool = False,
    name: str | None = None,
    lora_repo: str | None = None,
    base_repo: str | None = None,
    progress: Callback | None = None,
) -> MergeResult:
    """Merge a PEFT LoRA into its base model, or write it as a GGUF LoRA adapter.

    Args:
        lora: the LoRA folder (adapter_config.json, adapter_model.safetensors).
        base: the base model's HF checkpoint folder.
        output: the file to write (gguf, adapter: a folder gets ``ggml-model-<type>.gguf`` /
            ``ggml-adapter-<type>.gguf``) or the folder (hf); default: in / beside the LoRA.
        format: ``gguf`` (merged GGUF), ``hf`` (merged HF safetensors checkpoint) or ``adapter``
            (GGUF LoRA adapter: only for LoRAs without fully trained modules).
        outtype: auto (the base's dtype; f32 for adapters, as llama.cpp's converter), f16, bf16,
            f32, q8_0 (GGUF only).
        progress: called as bytes are written.

    Raises:
        UsageError: bad options, an existing output, or an adapter for a LoRA with full modules.
        ModelNotFoundError / InvalidModelError: broken folders, or a LoRA for another base.
        DiskSpaceError: not enough space.
    """
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise UsageError(f"--format {format}: expected one of {', '.join(FORMATS)}")
    if outtype not in cv.OUTTYPES:
        raise UsageError(f"--outtype {outtype}: expected one of {', '.join(cv.OUTTYPES)}")
    if format == "hf" and outtype == "q8_0":
        raise UsageError("--outtype q8_0 is for GGUF output", hint="use f16, bf16 or f32 with hf")
    lora_dir, base_dir = Path(lora).expanduser(), Path(base).expanduser()
    from .checkpoint import load_config

    cfg = load_config(base_dir)
    params = cv.llama_params(cfg, where=base_dir / "config.json")
    adapter = open_lora(lora_dir)
    try:
        if format == "adapter" and adapter.full:
            raise UsageError(
                f"{lora_dir} trains {', '.join(sorted(adapter.full))} in full, which a llama.cpp "
                "LoRA adapter cannot hold",
                hint="merge it instead: --format gguf (or hf)",
            )
        with open_checkpoint(base_dir) as ckpt:
            warnings = check_base(adapter, ckpt)
            if format == "adapter":
                return _write_adapter(
                    adapter, ckpt, params, output, outtype, force, dry_run, name, t0, warnings,
                    lora_repo=lora_repo, progress=progress,
                )  # fmt: skip
            if format == "hf":
                return _write_hf(
                    adapter, ckpt, output, outtype, force, dry_run, t0, warnings,
                    progress=progress,
                )  # fmt: skip
            return _write_merged_gguf(
                adapter, ckpt, params, output, outtype, force, dry_run, name, t0, warnings,
                lora_repo=lora_repo, base_repo=base_repo, progress=progress,
            )  # fmt: skip
    finally:
        adapter.close()


def _vocab_dir(lora: LoraAdapter, base: Checkpoint) -> Path:
    """The tokenizer to use: the LoRA's own when it ships one (instruct templates), else base's."""
    return lora.path if (lora.path / "tokenizer.json").is_file() else base.path


def _params_with_vocab(params: cv.LlamaParams, lora: LoraAdapter) -> cv.LlamaParams:
    emb = lora.full.get("model.embed_tokens.weight")
    if emb is not None and emb.shape[0] != params.n_vocab:
        return replace(params, n_vocab=emb.shape[0])
    return params


def _write_merged_gguf(
    lora: LoraAdapter,
    ckpt: Checkpoint,
    params: cv.LlamaParams,
    output: str | Path | None,
    outtype: str,
    force: bool,
    dry_run: bool,
    name: str | None,
    t0: float,
    warnings: list[str],
    *,
    lora_repo: str | None,
    base_repo: str | None,
    progress: Callback | None,
) -> MergeResult:
    from .vocab import load_vocab

    params = _params_with_vocab(params, lora)
    ftype = cv.file_type_for(outtype, ckpt.first_matrix_dtype())
    resolved = ftype.name.partition("_")[2].lower()
    out, named = cv.output_path(output, lora.path, f"ggml-model-{resolved}.gguf")
    cv.check_output(out, force=force, named=named, inputs=[lora.path, ckpt.path])
    vocab = load_vocab(_vocab_dir(lora, ckpt), vocab_size=params.n_vocab)
    plans = cv.plan_tensors(ckpt, params, ftype, sources=merged_sources(lora, ckpt))
    provenance = cv.source_provenance(ckpt.path, repo=base_repo)
    lora_prov = cv.source_provenance(lora.path, repo=lora_repo)
    provenance |= {k.replace("source.", "lora."): v for k, v in lora_prov.items()}
    provenance["lora.scale"] = f"{lora.scale:g} (lora_alpha {lora.alpha:g} / r {lora.r})"
    res = cv._write_checked(
        out=out,
        plans=plans,
        params=params,
        ftype=ftype,
        vocab=vocab,
        meta_dir=lora.path,
        name=name or lora.path.name.removesuffix("-lora"),
        provenance=provenance,
        source=lora.path,
        outtype=resolved,
        dry_run=dry_run,
        progress=progress,
        t0=t0,
        stage="merge",
        record=None if named else cv.fingerprint(lora.path, ckpt.path),
    )
    return MergeResult(
        path=res.path,
        format="gguf",
        lora=lora.path,
        base=ckpt.path,
        outtype=resolved,
        merged_modules=len(lora.pairs),
        replaced_modules=tuple(sorted(lora.full)),
        scale=lora.scale,
        tensor_count=res.tensor_count,
        size=res.size,
        seconds=time.perf_counter() - t0,
        dry_run=dry_run,
        warnings=tuple(warnings) + res.warnings,
    )


# -- HF output ------------------------------------------------------------------------------------


def _hf_dtype(outtype: str, ckpt: Checkpoint) -> str:
    if outtype == "auto":
        return ckpt.first_matrix_dtype() or "F16"
    return {"f32": "F32", "f16": "F16", "bf16": "BF16"}[outtype]


def _encode_hf(x: np.ndarray, src_dtype: str, dtype: str) -> np.ndarray:
    import gguf

    q = {"F32": gguf.GGMLQuantizationType.F32, "F16": gguf.GGMLQuantizationType.F16}.get(
        dtype, gguf.GGMLQuantizationType.BF16
    )
    return cv.encode(x, src_dtype, q)


_HFItem = tuple[str, tuple[int, ...], "cv.RowSource"]  # HF name, shape, rows


def _write_hf(
    lora: LoraAdapter,
    ckpt: Checkpoint,
    output: str | Path | None,
    outtype: str,
    force: bool,
    dry_run: bool,
    t0: float,
    warnings: list[str],
    *,
    progress: Callback | None,
) -> MergeResult:
    """A merged HF checkpoint: shards of safetensors + index, config and tokenizer files."""
    dtype = _hf_dtype(outtype, ckpt)
    # abspath: `-o .` or `-o ..` must name the folder itself (and have a name for the temp copy)
    out = Path(os.path.abspath(Path(output).expanduser() if output else
                               lora.path.with_name(lora.path.name + "-merged")))  # fmt: skip
    inputs = [lora.path, ckpt.path]
    guard.check_folder_output(out, force=force, inputs=inputs)
    sources = merged_sources(lora, ckpt)
    items: list[_HFItem] = []
    for hf_name, ref in ckpt.tensors.items():
        src: cv.RowSource = sources.get(hf_name, ref)
        items.append((hf_name, tuple(src.shape), src))
    itemsize = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    total = sum(math.prod(s) * itemsize for _, s, _ in items)
    if dry_run:
        return _hf_result(out, lora, ckpt, dtype, len(items), total, t0, warnings, dry_run=True)
    cv.check_space(out / "model.safetensors", total)
    emit = emitter(progress, "merge")
    emit(START, out.name, total=total, unit="bytes")
    tmp = guard.temp_folder(out)
    try:
        tmp.mkdir(parents=True)
        _write_shards(tmp, items, dtype, itemsize, emit=emit, task=out.name)
        _copy_side_files(lora, ckpt, tmp, dtype)
        _verify_hf(tmp, items, dtype)
        # only the files an earlier merge wrote there are replaced; they are recorded in the
        # folder's state file, so that the next --force knows them
        guard.install_folder(tmp, out, force=force, inputs=inputs, step="merge-lora")
    except BaseException as e:
        emit(FAILED, out.name)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskSpaceError(
                f"the disk holding {out.parent} is full", hint="free some space, or use -o"
            ) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(DONE, out.name, done=total, total=total, unit="bytes")
    return _hf_result(out, lora, ckpt, dtype, len(items), total, t0, warnings, dry_run=False)


def _write_shards(
    folder: Path, items: list[_HFItem], dtype: str, itemsize: int, *, emit: Any, task: str
) -> None:
    """The weights as safetensors shards in checkpoint order (a new shard when the next tensor
    would pass SHARD_BYTES), with an index when there is more than one."""
    shards: list[list[_HFItem]] = [[]]
    size = 0
    for item in items:
        n = math.prod(item[1]) * itemsize
        if shards[-1] and size + n > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += n
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    total = sum(math.prod(s) * itemsize for _, s, _ in items)
    done = 0

    def tick(n: int, index: int, hf_name: str) -> None:
        nonlocal done
        done += n
        emit(ADVANCE, task, done=done, total=total, unit="bytes",
             message=f"[{index}/{len(items)}] {hf_name}")  # fmt: skip

    weight_map: dict[str, str] = {}
    first = 1
    for fname, shard in zip(names, shards, strict=True):
        _write_shard(folder / fname, shard, dtype, itemsize, first=first, tick=tick)
        weight_map |= dict.fromkeys((name for name, _, _ in shard), fname)
        first += len(shard)
    if len(shards) > 1:
        idx = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(idx, indent=2) + "\n", encoding="utf-8"
        )


def _write_shard(
    path: Path,
    shard: list[_HFItem],
    dtype: str,
    itemsize: int,
    *,
    first: int,
    tick: Callable[[int, int, str], None],
) -> None:
    """One safetensors file, streamed row chunk by row chunk; ``first``: the 1-based index of
    its first tensor among all, for progress."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for hf_name, shape, _ in shard:
        n = math.prod(shape) * itemsize
        header[hf_name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for index, (hf_name, shape, src) in enumerate(shard, first):
            rows, row_size = (shape[0] if shape else 1), math.prod(shape[1:])
            try:
                for start, stop in iter_row_chunks(rows, row_size):
                    x = np.ascontiguousarray(_encode_hf(src.rows(start, stop), src.dtype, dtype))
                    f.write(x.data.cast("B"))
                    src.done(start, stop)
                    tick(x.nbytes, index, hf_name)
            finally:
                src.release()
        f.flush()
        os.fsync(f.fileno())


def _copy_side_files(lora: LoraAdapter, ckpt: Checkpoint, dest: Path, dtype: str) -> None:
    cfg = json.loads((ckpt.path / "config.json").read_text(encoding="utf-8"))
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    emb = lora.full.get("model.embed_tokens.weight")
    if emb is not None:
        cfg["vocab_size"] = emb.shape[0]
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    if (ckpt.path / "generation_config.json").is_file():
        shutil.copyfile(ckpt.path / "generation_config.json", dest / "generation_config.json")
    vocab_dir = _vocab_dir(lora, ckpt)
    for fname in TOKENIZER_FILES:
        if (vocab_dir / fname).is_file():
            shutil.copyfile(vocab_dir / fname, dest / fname)


def _verify_hf(folder: Path, items: list[tuple[str, tuple[int, ...], Any]], dtype: str) -> None:
    with open_checkpoint(folder) as back:
        got = {n: (t.dtype, tuple(t.shape)) for n, t in back.tensors.items()}
    want = {n: (dtype, s) for n, s, _ in items}
    if got != want:
        raise InvalidModelError(
            "the written HF checkpoint does not read back as planned",
            hint="this is a bug in llama3zh merge-lora; please report it",
        )


def _hf_result(
    out: Path,
    lora: LoraAdapter,
    ckpt: Checkpoint,
    dtype: str,
    n: int,
    size: int,
    t0: float,
    warnings: list[str],
    *,
    dry_run: bool,
) -> MergeResult:
    return MergeResult(
        path=out,
        format="hf",
        lora=lora.path,
        base=ckpt.path,
        outtype=dtype.lower(),
        merged_modules=len(lora.pairs),
        replaced_modules=tuple(sorted(lora.full)),
        scale=lora.scale,
        tensor_count=n,
        size=size,
        seconds=time.perf_counter() - t0,
        dry_run=dry_run,
        warnings=tuple(warnings),
    )


# -- GGUF LoRA adapter ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Factor:
    """One LoRA factor as an output tensor source (optionally rows permuted or transposed)."""

    ref: TensorRef
    transpose: bool = False

    @property
    def dtype(self) -> str:
        return self.ref.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        s = tuple(self.ref.shape)
        return s[::-1] if self.transpose else s

    def rows(self, start: int, stop: int) -> np.ndarray:
        a = self.ref.array()
        return (a.T if self.transpose else a)[start:stop]

    def done(self, start: int, stop: int) -> None:
        pass

    def release(self) -> None:
        self.ref.release()


def _write_adapter(
    lora: LoraAdapter,
    ckpt: Checkpoint,
    params: cv.LlamaParams,
    output: str | Path | None,
    outtype: str,
    force: bool,
    dry_run: bool,
    name: str | None,
    t0: float,
    warnings: list[str],
    *,
    lora_repo: str | None,
    progress: Callback | None,
) -> MergeResult:
    """A GGUF LoRA adapter, as llama.cpp's convert_lora_to_gguf.py writes it."""
    import gguf

    # "auto" is convert_lora_to_gguf.py's default, f32: the factors are small
    ftype = cv.file_type_for("f32" if outtype == "auto" else outtype, None)
    resolved = ftype.name.partition("_")[2].lower()
    out, named = cv.output_path(output, lora.path, f"ggml-adapter-{resolved}.gguf")
    cv.check_output(out, force=force, named=named, inputs=[lora.path, ckpt.path])
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, params.n_layer)
    plans: list[cv.TensorPlan] = []
    # the reference writes A then B per module, in the LoRA file's key order
    for hf_name, pair in sorted(lora.pairs.items(), key=lambda kv: _key_order(lora, kv[0])):
        mapped = tmap.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise InvalidModelError(f"the LoRA targets {hf_name}, not part of a Llama model")
        gname = mapped[1]
        # llama.cpp gathers token rows of token_embd's lora_a: it is stored transposed
        a: cv.RowSource = _Factor(pair.a, transpose="token_embd" in gname)
        b: cv.RowSource = _Factor(pair.b)
        if hf_name.endswith("q_proj.weight"):
            b = cv.Permuted(b, cv.qk_order(b.shape[0], params.n_head))
        elif hf_name.endswith("k_proj.weight"):
            b = cv.Permuted(b, cv.qk_order(b.shape[0], params.n_head_kv))
        for suffix, src in ((".lora_a", a), (".lora_b", b)):
            tname = gname + suffix
            qtype = cv.tensor_qtype(tname, src.shape, ftype)
            plans.append(
                cv.TensorPlan(tname, src.shape, qtype, src, cv.tensor_nbytes(src.shape, qtype))
            )
    size = sum(p.nbytes for p in plans) + (1 << 16)

    def result(path: Path, sz: int, warn: tuple[str, ...] = ()) -> MergeResult:
        return MergeResult(
            path=path,
            format="adapter",
            lora=lora.path,
            base=ckpt.path,
            outtype=resolved,
            merged_modules=len(lora.pairs),
            replaced_modules=(),
            scale=lora.scale,
            tensor_count=len(plans),
            size=sz,
            seconds=time.perf_counter() - t0,
            dry_run=dry_run,
            warnings=tuple(warnings) + warn,
        )

    if dry_run:
        return result(out, size)
    cv.check_space(out, size)
    # llama.cpp scales by alpha / rank: rsLoRA's alpha / sqrt(r) needs alpha * sqrt(r) here
    alpha = lora.alpha * math.sqrt(lora.r) if lora.config.get("use_rslora") else lora.alpha
    provenance = {k.replace("source.", "lora."): v for k, v in
                  cv.source_provenance(lora.path, repo=lora_repo).items()}  # fmt: skip
    if lora.base_model:
        provenance["lora.base"] = lora.base_model

    def metadata(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        total = w.get_total_parameter_count()[0]
        meta = gguf.Metadata.load(None, lora.path, name, total)
        if meta.name is None:
            meta.name = lora.path.name
        meta.set_gguf_meta_model(w)
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        cv.add_provenance(w, provenance)

    with atomic.replacing(out) as tmp:
        warn = cv.write_gguf(tmp, plans, metadata, progress=progress, stage="merge", task=out.name)
        _verify_adapter(tmp, plans)
    if not named:
        state.record(out, step="merge-lora", inputs=cv.fingerprint(lora.path, ckpt.path))
    return result(out, out.stat().st_size, tuple(warn))


def _key_order(lora: LoraAdapter, hf_name: str) -> int:
    keys = sorted(lora.file.tensors)  # safetensors' load_file order
    pair = lora.pairs[hf_name]
    return min(keys.index(pair.a.name), keys.index(pair.b.name))


def _verify_adapter(path: Path, plans: list[cv.TensorPlan]) -> None:
    header = read_header(path)
    ok = header is not None
    if header is not None:
        ok = (
            header.kv.get("general.type") == "adapter"
            and header.kv.get("adapter.type") == "lora"
            and {t.name: t.size for t in header.tensors} == {p.name: p.nbytes for p in plans}
        )
    if not ok:
        raise InvalidModelError(
            "the written LoRA adapter does not read back as planned",
            hint="this is a bug in llama3zh merge-lora; please report it",
        )
