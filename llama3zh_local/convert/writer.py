"""The GGUF writer: tensor plans streamed row chunk by row chunk, their types, the general and
provenance metadata, and where an output goes.

Shared by ``convert`` (an HF checkpoint), ``merge-lora`` (a checkpoint plus a LoRA, or an
adapter) and anything else that writes a GGUF from row sources: a tensor is read, converted and
written in chunks, so the resident set stays near one chunk whatever the model's size.
"""

from __future__ import annotations

import errno
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..errors import DiskSpaceError
from ..files import guard, space
from ..hub import store
from ..progress import ADVANCE, DONE, FAILED, START, Callback, emitter
from .checkpoint import iter_row_chunks

if TYPE_CHECKING:
    import gguf
    import numpy as np

PREFETCH = 2  # chunks being converted while one is written
CHUNK_ELEMENTS = 1 << 22  # rows per chunk: about 16 MB as float32, a few times that in flight


class RowSource(Protocol):
    """What a tensor is read from: rows of a (n_rows x row_size) matrix."""

    @property
    def dtype(self) -> str: ...  # F32, F16 or BF16 (raw uint16 bits)

    @property
    def shape(self) -> tuple[int, ...]: ...

    def rows(self, start: int, stop: int) -> np.ndarray: ...

    def done(self, start: int, stop: int) -> None: ...  # those rows are written

    def release(self) -> None: ...  # the whole tensor is written


@dataclass(frozen=True)
class Permuted:
    """Rows of ``source`` in a new order (Q/K: HF's rotate-half -> llama.cpp's RoPE layout)."""

    source: RowSource
    order: np.ndarray  # order[i] = source row of output row i

    @property
    def dtype(self) -> str:
        return self.source.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.source.rows(0, self.shape[0])[self.order[start:stop]]

    def done(self, start: int, stop: int) -> None:
        pass  # the rows came from all over the tensor: released as a whole at the end

    def release(self) -> None:
        self.source.release()


@dataclass(frozen=True)
class InMemory:
    """A small tensor computed here (rope_freqs)."""

    data: np.ndarray

    @property
    def dtype(self) -> str:
        return "F32"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.data.reshape(self.data.shape[0], -1)[start:stop]

    def done(self, start: int, stop: int) -> None:
        pass

    def release(self) -> None:
        pass


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its GGUF name, shape (numpy order), type and where its data comes from."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    source: RowSource
    nbytes: int


# -- tensor types ---------------------------------------------------------------------------------


def file_type_for(outtype: str, ckpt_dtype: str | None) -> gguf.LlamaFileType:
    """``--outtype`` -> gguf.LlamaFileType; ``auto`` as the reference guesses it."""
    import gguf

    if outtype == "auto":
        outtype = {"BF16": "bf16"}.get(ckpt_dtype or "", "f16")
    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]


def tensor_qtype(
    name: str, shape: Sequence[int], ftype: gguf.LlamaFileType
) -> gguf.GGMLQuantizationType:
    """The type of one tensor, by the rules of the reference's ``prepare_tensors``."""
    import gguf

    q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return q.F32
    if not name.endswith((".weight", ".lora_a", ".lora_b")):
        return q.F32
    qtype = {
        gguf.LlamaFileType.ALL_F32: q.F32,
        gguf.LlamaFileType.MOSTLY_F16: q.F16,
        gguf.LlamaFileType.MOSTLY_BF16: q.BF16,
        gguf.LlamaFileType.MOSTLY_Q8_0: q.Q8_0,
    }[ftype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:  # the reference catches gguf.QuantError and writes F16
        return q.F16
    return qtype


def tensor_nbytes(shape: Sequence[int], qtype: gguf.GGMLQuantizationType) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size if shape else size


def encode(x: np.ndarray, dtype: str, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Rows of a source tensor (``dtype``: F32, F16 or BF16 bits) in ``qtype``, as raw bytes.

    The values go the reference's way: bf16 -> float32, float16 kept, then numpy's cast or
    ``gguf.quants.quantize`` (Q8_0 and BF16 rounding, bit-exact with ggml).
    """
    import gguf
    import numpy as np

    q = gguf.GGMLQuantizationType
    if dtype == "BF16" and qtype == q.BF16:
        # bf16 -> f32 -> bf16 is the identity, except that NaNs come back quiet
        bits = np.ascontiguousarray(x, dtype=np.uint16)
        nan = (bits & 0x7FFF) > 0x7F80
        return np.where(nan, bits | 0x0040, bits).astype(np.uint16) if nan.any() else bits
    if dtype == "F16" and qtype == q.F16:
        return np.ascontiguousarray(x)
    if dtype == "BF16":
        wide = x.astype(np.uint32)
        x = np.left_shift(wide, 16, out=wide).view(np.float32)
    if qtype == q.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if qtype == q.F16:
        with np.errstate(over="ignore"):  # overflow to inf is counted and reported by the caller
            return np.ascontiguousarray(x, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype)


def qk_order(n_rows: int, n_head: int) -> np.ndarray:
    """The row order ``LlamaModel.permute`` of the reference gives a Q/K weight (or bias)."""
    import numpy as np

    return np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)


# -- writing --------------------------------------------------------------------------------------


class _Streamed:
    """Duck-types the ndarray that GGUFWriter.write_tensor_data writes: converts chunk by chunk.

    Chunks are converted on worker threads, ``PREFETCH`` ahead of the one being written: numpy
    and file writes release the GIL, so conversion and I/O overlap (on two cores, ~2x).
    """

    def __init__(
        self,
        plan: TensorPlan,
        on_chunk: Callable[[int], None],
        warn: list[str],
        pool: ThreadPoolExecutor,
    ):
        self.plan = plan
        self.nbytes = plan.nbytes
        self._on_chunk = on_chunk
        self._warn = warn
        self._pool = pool

    def _work(self, start: int, stop: int) -> tuple[np.ndarray, int]:
        import gguf

        src, qtype = self.plan.source, self.plan.qtype
        x = src.rows(start, stop)
        out = encode(x, src.dtype, qtype)
        overflow = 0
        if qtype == gguf.GGMLQuantizationType.F16 and src.dtype != "F16":
            overflow = _count_inf(out, "F16") - _count_inf(x, src.dtype)
        return out, overflow

    def tofile(self, fout: Any) -> None:
        p, src = self.plan, self.plan.source
        n_rows = p.shape[0] if p.shape else 1
        chunks = iter(iter_row_chunks(n_rows, math.prod(p.shape[1:]), budget=CHUNK_ELEMENTS))
        pending: deque[tuple[tuple[int, int], Future[tuple[np.ndarray, int]]]] = deque()

        def submit() -> None:
            if (rows := next(chunks, None)) is not None:
                pending.append((rows, self._pool.submit(self._work, *rows)))

        overflow = written = 0
        try:
            for _ in range(PREFETCH):
                submit()
            while pending:
                (start, stop), future = pending.popleft()
                out, inf = future.result()
                submit()
                fout.write(out.data.cast("B"))
                n = out.nbytes
                del out
                src.done(start, stop)
                overflow += inf
                written += n
                self._on_chunk(n)
        finally:
            for _, future in pending:
                future.cancel()
            wait([f for _, f in pending])
            src.release()
        if written != p.nbytes:
            raise RuntimeError(f"{p.name}: wrote {written} bytes, planned {p.nbytes}")
        if overflow > 0:
            self._warn.append(
                f"{p.name}: {overflow:,} values exceed float16's range and became inf "
                "(as in llama.cpp's converter); --outtype bf16 keeps them"
            )


def _count_inf(x: np.ndarray, dtype: str) -> int:
    """Infinities among raw values, by their bits (np.isinf is slow on float16)."""
    import numpy as np

    if dtype == "BF16":
        return int(np.count_nonzero((x & 0x7FFF) == 0x7F80))
    if dtype == "F16":
        return int(np.count_nonzero((x.view(np.uint16) & 0x7FFF) == 0x7C00))
    return int(np.count_nonzero(np.isinf(x)))


def write_gguf(
    path: Path,
    plans: Sequence[TensorPlan],
    add_metadata: Callable[[gguf.GGUFWriter], None],
    *,
    progress: Callback | None = None,
    stage: str = "convert",
    task: str = "",
    arch: str = "llama",
) -> list[str]:
    """Write a GGUF: tensor infos, metadata from ``add_metadata``, then each tensor streamed.

    ``add_metadata`` runs after the tensor infos are known (so parameter counts work). Returns
    warnings. Raises DiskSpaceError when the disk fills up. Progress: ``stage`` events in bytes
    for ``task`` (default: the file's name), the tensor being written as their message.
    """
    import gguf
    import numpy as np

    pool = ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="convert")
    w = gguf.GGUFWriter(path, arch)
    for p in plans:
        w.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
    add_metadata(w)
    total = sum(p.nbytes for p in plans)
    done = 0
    warnings: list[str] = []
    emit = emitter(progress, stage)
    task = task or path.name
    emit(START, task, total=total, unit="bytes")
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, p in enumerate(plans, 1):

            def on_chunk(n: int, name: str = p.name, i: int = i) -> None:
                nonlocal done
                done += n
                emit(ADVANCE, task, done=done, total=total, unit="bytes",
                     message=f"[{i}/{len(plans)}] {name}")  # fmt: skip

            on_chunk(0)
            w.write_tensor_data(_Streamed(p, on_chunk, warnings, pool))  # type: ignore[arg-type]
        w.flush()
        assert w.fout is not None
        for f in w.fout:
            os.fsync(f.fileno())
    except BaseException as e:
        emit(FAILED, task)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskSpaceError(
                f"the disk holding {path.parent} is full ({total / 1e9:.1f} GB to write)",
                hint="free some space, or write elsewhere with -o",
            ) from None
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        w.close()
    emit(DONE, task, done=total, total=total, unit="bytes")
    return warnings


def check_output(
    out: Path, *, force: bool, named: bool = True, inputs: Sequence[Path] = ()
) -> None:
    """Refuse an output that exists (unless ``force``; a derived name only when llama3zh wrote
    it) or that is one of ``inputs``, before any heavy work (``guard.check_file_output``)."""
    guard.check_file_output(out, force=force, named=named, inputs=inputs)


def check_space(out: Path, need: int) -> None:
    """``files.space.check_space`` for the file ``out`` (convert and merge-lora's outputs)."""
    space.check_space(out.parent, need, what=out.name, hint="or write elsewhere with -o")


# -- metadata --------------------------------------------------------------------------------------


def add_general_metadata(
    w: gguf.GGUFWriter,
    model_dir: Path,
    *,
    name: str | None,
    provenance: dict[str, str],
) -> None:
    """general.* as the reference writes it (gguf.Metadata), plus where the model came from."""
    import gguf

    w.add_type(gguf.GGUFType.MODEL)
    total, shared, expert, n_expert = w.get_total_parameter_count()
    meta = gguf.Metadata.load(None, model_dir, name, total)
    if meta.name is None:
        meta.name = model_dir.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    if repo := provenance.get("source.repo"):
        meta.source_repo_url = meta.source_repo_url or f"https://huggingface.co/{repo}"
    meta.set_gguf_meta_model(w)
    add_provenance(w, provenance)


def add_provenance(w: gguf.GGUFWriter, provenance: dict[str, str]) -> None:
    """``llama3zh.*`` keys: the converter and the source repo/revision (when known)."""
    w.add_string("llama3zh.converter", f"llama3zh-local {__version__} (gguf-py {_gguf_version()})")
    for key, value in provenance.items():
        if value:
            w.add_string(f"llama3zh.{key}", value)


def _gguf_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def source_provenance(model_dir: Path, *, repo: str | None = None) -> dict[str, str]:
    """Source repo and revision of a checkpoint folder: the store's manifest, an HF cache path."""
    out: dict[str, str] = {}
    if repo:
        out["source.repo"] = repo
    resolved = model_dir.resolve()
    parts = resolved.parts
    # huggingface_hub's cache: .../models--ORG--NAME/snapshots/REVISION/
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            out.setdefault("source.repo", part[len("models--") :].replace("--", "/"))
            out["source.revision"] = parts[i + 2]
    try:
        entry = store.read_manifest(model_dir).get("config.json")
    except Exception:  # noqa: BLE001 - provenance is best effort
        entry = None
    if entry is not None:
        out["source.repo"] = entry.repo_id
        out["source.hub"] = entry.source
        out["source.revision"] = entry.commit or entry.revision
    return out


# -- where an output goes --------------------------------------------------------------------------


def fingerprint(*folders: Path) -> dict[str, str]:
    """Size and mtime of each file a conversion reads from ``folders`` (not the GGUFs beside
    them): what a GGUF written under a derived name is recorded as made from. Cheap, unlike the
    sha256 of gigabytes; a copied or changed checkpoint no longer matches."""
    out = {}
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or p.suffix == ".gguf" or not p.is_file():
                continue
            st = p.stat()
            key = p.name if len(folders) == 1 else f"{folder.name}/{p.name}"
            out[key] = f"size {st.st_size} mtime_ns {st.st_mtime_ns}"
    return out


def output_path(output: str | Path | None, default_dir: Path, filename: str) -> tuple[Path, bool]:
    """``output`` itself, ``output/filename`` for an existing folder, else ``default_dir/filename``;
    and whether the user named that file (``-o FILE``) rather than a folder.

    The default folder is the source's own, as in llama.cpp's converter and the upstream docs.
    """
    if output is None:
        return default_dir / filename, False
    out = Path(output).expanduser()
    return (out / filename, False) if out.is_dir() else (out, True)
