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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DiskSpaceError, InvalidModelError, UsageError
from ..files import atomic, guard, state
from ..gguf.reader import read_header
from ..progress import ADVANCE, DONE, FAILED, START, Callback, emitter
from . import llama as cv
from . import writer
from .checkpoint import Checkpoint, TensorRef, iter_row_chunks, load_config, open_checkpoint
from .peft import LoraAdapter, check_base, merged_sources, open_lora
from .vocab import load_vocab

if TYPE_CHECKING:
    import gguf
    import numpy as np

FORMATS = ("gguf", "hf", "adapter")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
SHARD_BYTES = 5 * 1000**3  # the shard size transformers writes by default (5 GB)


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
        progress: ``merge`` events (bytes) as the output is written.

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
            job = _Job(
                lora=adapter, ckpt=ckpt, params=params, output=output, outtype=outtype,
                force=force, dry_run=dry_run, name=name, t0=t0,
                warnings=check_base(adapter, ckpt), lora_repo=lora_repo, base_repo=base_repo,
                progress=progress,
            )  # fmt: skip
            write = {"adapter": _write_adapter, "hf": _write_hf}.get(format, _write_merged_gguf)
            return write(job)
    finally:
        adapter.close()


@dataclass(frozen=True)
class _Job:
    """One merge-lora run, as the three writers (gguf, hf, adapter) need it."""

    lora: LoraAdapter
    ckpt: Checkpoint
    params: cv.LlamaParams
    output: str | Path | None
    outtype: str
    force: bool
    dry_run: bool
    name: str | None
    t0: float
    warnings: list[str]
    lora_repo: str | None
    base_repo: str | None
    progress: Callback | None


def _vocab_dir(lora: LoraAdapter, base: Checkpoint) -> Path:
    """The tokenizer to use: the LoRA's own when it ships one (instruct templates), else base's."""
    return lora.path if (lora.path / "tokenizer.json").is_file() else base.path


def _params_with_vocab(params: cv.LlamaParams, lora: LoraAdapter) -> cv.LlamaParams:
    emb = lora.full.get("model.embed_tokens.weight")
    if emb is not None and emb.shape[0] != params.n_vocab:
        return replace(params, n_vocab=emb.shape[0])
    return params


def _write_merged_gguf(job: _Job) -> MergeResult:
    lora, ckpt = job.lora, job.ckpt
    params = _params_with_vocab(job.params, lora)
    ftype = writer.file_type_for(job.outtype, ckpt.first_matrix_dtype())
    resolved = ftype.name.partition("_")[2].lower()
    out, named = writer.output_path(job.output, lora.path, f"ggml-model-{resolved}.gguf")
    writer.check_output(out, force=job.force, named=named, inputs=[lora.path, ckpt.path])
    vocab = load_vocab(_vocab_dir(lora, ckpt), vocab_size=params.n_vocab)
    plans = cv.plan_tensors(ckpt, params, ftype, sources=merged_sources(lora, ckpt))
    provenance = writer.source_provenance(ckpt.path, repo=job.base_repo)
    lora_prov = writer.source_provenance(lora.path, repo=job.lora_repo)
    provenance |= {k.replace("source.", "lora."): v for k, v in lora_prov.items()}
    provenance["lora.scale"] = f"{lora.scale:g} (lora_alpha {lora.alpha:g} / r {lora.r})"
    res = cv._write_checked(
        out=out,
        plans=plans,
        params=params,
        ftype=ftype,
        vocab=vocab,
        meta_dir=lora.path,
        name=job.name or lora.path.name.removesuffix("-lora"),
        provenance=provenance,
        source=lora.path,
        outtype=resolved,
        dry_run=job.dry_run,
        progress=job.progress,
        t0=job.t0,
        stage="merge",
        record=None if named else writer.fingerprint(lora.path, ckpt.path),
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
        seconds=time.perf_counter() - job.t0,
        dry_run=job.dry_run,
        warnings=tuple(job.warnings) + res.warnings,
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
    return writer.encode(x, src_dtype, q)


_HFItem = tuple[str, tuple[int, ...], "writer.RowSource"]  # HF name, shape, rows


def _write_hf(job: _Job) -> MergeResult:
    """A merged HF checkpoint: shards of safetensors + index, config and tokenizer files."""
    lora, ckpt = job.lora, job.ckpt
    dtype = _hf_dtype(job.outtype, ckpt)
    # abspath: `-o .` or `-o ..` must name the folder itself (and have a name for the temp copy)
    out = Path(os.path.abspath(Path(job.output).expanduser() if job.output else
                               lora.path.with_name(lora.path.name + "-merged")))  # fmt: skip
    inputs = [lora.path, ckpt.path]
    guard.check_folder_output(out, force=job.force, inputs=inputs)
    sources = merged_sources(lora, ckpt)
    items: list[_HFItem] = []
    for hf_name, ref in ckpt.tensors.items():
        src: writer.RowSource = sources.get(hf_name, ref)
        items.append((hf_name, tuple(src.shape), src))
    itemsize = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    total = sum(math.prod(s) * itemsize for _, s, _ in items)
    if job.dry_run:
        return _hf_result(
            out, lora, ckpt, dtype, len(items), total, job.t0, job.warnings, dry_run=True
        )
    writer.check_space(out / "model.safetensors", total)
    emit = emitter(job.progress, "merge")
    emit(START, out.name, total=total, unit="bytes")
    tmp = guard.temp_folder(out)
    try:
        tmp.mkdir(parents=True)
        _write_shards(tmp, items, dtype, itemsize, emit=emit, task=out.name)
        _copy_side_files(lora, ckpt, tmp, dtype)
        _verify_hf(tmp, items, dtype)
        # only the files an earlier merge wrote there are replaced; they are recorded in the
        # folder's state file, so that the next --force knows them
        guard.install_folder(tmp, out, force=job.force, inputs=inputs, step="merge-lora")
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
    return _hf_result(
        out, lora, ckpt, dtype, len(items), total, job.t0, job.warnings, dry_run=False
    )


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


def _write_adapter(job: _Job) -> MergeResult:
    """A GGUF LoRA adapter, as llama.cpp's convert_lora_to_gguf.py writes it."""
    import gguf

    lora, ckpt = job.lora, job.ckpt

    # "auto" is convert_lora_to_gguf.py's default, f32: the factors are small
    ftype = writer.file_type_for("f32" if job.outtype == "auto" else job.outtype, None)
    resolved = ftype.name.partition("_")[2].lower()
    out, named = writer.output_path(job.output, lora.path, f"ggml-adapter-{resolved}.gguf")
    writer.check_output(out, force=job.force, named=named, inputs=[lora.path, ckpt.path])
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, job.params.n_layer)
    plans: list[writer.TensorPlan] = []
    # the reference writes A then B per module, in the LoRA file's key order
    for hf_name, pair in sorted(lora.pairs.items(), key=lambda kv: _key_order(lora, kv[0])):
        mapped = tmap.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise InvalidModelError(f"the LoRA targets {hf_name}, not part of a Llama model")
        gname = mapped[1]
        # llama.cpp gathers token rows of token_embd's lora_a: it is stored transposed
        a: writer.RowSource = _Factor(pair.a, transpose="token_embd" in gname)
        b: writer.RowSource = _Factor(pair.b)
        if hf_name.endswith("q_proj.weight"):
            b = writer.Permuted(b, writer.qk_order(b.shape[0], job.params.n_head))
        elif hf_name.endswith("k_proj.weight"):
            b = writer.Permuted(b, writer.qk_order(b.shape[0], job.params.n_head_kv))
        for suffix, src in ((".lora_a", a), (".lora_b", b)):
            tname = gname + suffix
            qtype = writer.tensor_qtype(tname, src.shape, ftype)
            plans.append(
                writer.TensorPlan(
                    tname, src.shape, qtype, src, writer.tensor_nbytes(src.shape, qtype)
                )
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
            seconds=time.perf_counter() - job.t0,
            dry_run=job.dry_run,
            warnings=tuple(job.warnings) + warn,
        )

    if job.dry_run:
        return result(out, size)
    writer.check_space(out, size)
    # llama.cpp scales by alpha / rank: rsLoRA's alpha / sqrt(r) needs alpha * sqrt(r) here
    alpha = lora.alpha * math.sqrt(lora.r) if lora.config.get("use_rslora") else lora.alpha
    provenance = {k.replace("source.", "lora."): v for k, v in
                  writer.source_provenance(lora.path, repo=job.lora_repo).items()}  # fmt: skip
    if lora.base_model:
        provenance["lora.base"] = lora.base_model

    def metadata(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        total = w.get_total_parameter_count()[0]
        meta = gguf.Metadata.load(None, lora.path, job.name, total)
        if meta.name is None:
            meta.name = lora.path.name
        meta.set_gguf_meta_model(w)
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_provenance(w, provenance)

    with atomic.replacing(out) as tmp:
        warn = writer.write_gguf(
            tmp, plans, metadata, progress=job.progress, stage="merge", task=out.name
        )
        _verify_adapter(tmp, plans)
    if not named:
        state.record(out, step="merge-lora", inputs=writer.fingerprint(lora.path, ckpt.path))
    return result(out, out.stat().st_size, tuple(warn))


def _key_order(lora: LoraAdapter, hf_name: str) -> int:
    keys = sorted(lora.file.tensors)  # safetensors' load_file order
    pair = lora.pairs[hf_name]
    return min(keys.index(pair.a.name), keys.index(pair.b.name))


def _verify_adapter(path: Path, plans: list[writer.TensorPlan]) -> None:
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
