"""Hugging Face checkpoint folders: config.json and safetensors shards, read through mmap.

Every safetensors header is checked before any tensor is touched (header length, JSON, dtypes,
offsets inside the file, sizes matching shapes), so a truncated or corrupt download fails in one
line instead of a numpy error halfway through a conversion. Tensors are read as row ranges of
an mmap; ``release()`` drops a tensor's pages again, which keeps the resident set of a streaming
conversion near one chunk instead of growing to the size of the model.
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModelError, ModelNotFoundError
from ..files import guard

if TYPE_CHECKING:
    import numpy as np

# safetensors dtype -> bytes per element; BF16 is read as raw uint16 bits (numpy has no bfloat16)
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
REDOWNLOAD = "download the checkpoint again (`llama3zh pull` resumes and verifies)"


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a safetensors file: where its bytes are, and its dtype and shape."""

    name: str
    dtype: str  # F32, F16 or BF16
    shape: tuple[int, ...]
    file: SafetensorsFile
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_size(self) -> int:
        return math.prod(self.shape[1:])  # 1 for a vector: one element per row

    def array(self) -> np.ndarray:
        """The tensor as a read-only view of the mmap (float16/float32; uint16 bits for BF16)."""
        import numpy as np

        dt = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[self.dtype]
        count = self.nbytes // DTYPE_SIZES[self.dtype]
        flat = np.frombuffer(self.file.mm, dtype=dt, count=count, offset=self.offset)
        return flat.reshape(self.shape) if self.shape else flat

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (first axis) as 2-D (rows x row_size), a view of the mmap."""
        return self.array().reshape(self.n_rows, self.row_size)[start:stop]

    def release(self) -> None:
        """Drop this tensor's pages from the process (they stay in the page cache)."""
        self.file.release(self.offset, self.nbytes)

    def done(self, start: int, stop: int) -> None:
        """Rows ``start:stop`` are written: drop their pages (file pages count in the RSS)."""
        row_bytes = self.row_size * DTYPE_SIZES[self.dtype]
        self.file.release(self.offset + start * row_bytes, (stop - start) * row_bytes)


class SafetensorsFile:
    """A safetensors file with a checked header, mapped read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ModelNotFoundError(f"{path} does not exist", hint=REDOWNLOAD) from None
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise InvalidModelError(
                    f"{path} is truncated: {size} bytes, not even a safetensors header",
                    hint=REDOWNLOAD,
                )
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise InvalidModelError(
                    f"{path} is truncated or not a safetensors file: its header length {n:,} "
                    f"is out of range for a file of {size:,} bytes",
                    hint=REDOWNLOAD,
                )
            raw = fh.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidModelError(
                f"{path} is corrupt: its safetensors header is not valid JSON ({e})",
                hint=REDOWNLOAD,
            ) from None
        if not isinstance(header, dict):
            raise InvalidModelError(f"{path} is corrupt: its header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        data_size = size - data_start
        self.tensors: dict[str, TensorRef] = {}
        for name, meta in header.items():
            self.tensors[name] = self._check(name, meta, data_start, data_size)
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.mm = (
            mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else mmap.mmap(-1, 1)
        )
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            self.mm.madvise(mmap.MADV_SEQUENTIAL)

    def _check(self, name: str, meta: Any, data_start: int, data_size: int) -> TensorRef:
        bad = f"{self.path} is corrupt: tensor {name!r}"
        if not isinstance(meta, dict):
            raise InvalidModelError(f"{bad} has no dtype/shape/offsets", hint=REDOWNLOAD)
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise InvalidModelError(
                f"{self.path}: tensor {name!r} has dtype {dtype}; only F32, F16 and BF16 "
                "checkpoints can be converted",
                hint="quantized (GPTQ/AWQ/FP8) checkpoints are not supported: use the "
                "float16/bfloat16 release of the model",
            )
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise InvalidModelError(f"{bad} has a malformed shape or data_offsets", hint=REDOWNLOAD)
        begin, end = offsets
        if not 0 <= begin <= end:
            raise InvalidModelError(
                f"{bad} has data_offsets {offsets} out of order", hint=REDOWNLOAD
            )
        if end > data_size:
            raise InvalidModelError(
                f"{self.path} is truncated: tensor {name!r} needs bytes {begin:,}..{end:,} of the "
                f"data, the file has {data_size:,}",
                hint=REDOWNLOAD,
            )
        want = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != want:
            raise InvalidModelError(
                f"{bad} has {end - begin:,} bytes, but shape {shape} in {dtype} needs {want:,}",
                hint=REDOWNLOAD,
            )
        return TensorRef(name, dtype, tuple(shape), self, data_start + begin, end - begin)

    def release(self, offset: int, nbytes: int) -> None:
        if not hasattr(mmap, "MADV_DONTNEED") or nbytes <= 0:
            return
        page = mmap.PAGESIZE
        start = offset - offset % page
        end = min(offset + nbytes, len(self.mm))
        if end > start:
            self.mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a numpy view is still alive: the GC unmaps it with the view
            pass
        self._fh.close()


@dataclass(frozen=True)
class Checkpoint:
    """An HF checkpoint folder: its config and every tensor of its safetensors files."""

    path: Path
    config: dict[str, Any]
    files: tuple[SafetensorsFile, ...]
    tensors: dict[str, TensorRef]  # in the order the reference converter reads them

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def first_matrix_dtype(self) -> str | None:
        """The dtype of the first 2-D tensor (how the reference guesses ``--outtype auto``)."""
        return next((t.dtype for t in self.tensors.values() if len(t.shape) >= 2), None)


def load_json(path: Path, *, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line error saying which file is broken."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{path} is missing ({what})", hint=REDOWNLOAD) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelError(f"{path} is not valid JSON ({e})", hint=REDOWNLOAD) from None
    if not isinstance(data, dict):
        raise InvalidModelError(f"{path} is not a JSON object ({what})", hint=REDOWNLOAD)
    return data


def load_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of an HF model folder (``text_config`` merged in, as the reference does)."""
    if not model_dir.is_dir():
        raise ModelNotFoundError(
            f"{model_dir} is not a folder",
            hint="give the folder of an HF checkpoint (config.json, *.safetensors, tokenizer.json)"
            " or a pulled model alias",
        )
    guard.require_regular(model_dir)  # a FIFO for a file would block the first read forever
    cfg = load_json(model_dir / "config.json", what="the model's config.json")
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    return cfg


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files, as ``convert_hf_to_gguf.py`` finds them (sorted)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = load_json(index, what="the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidModelError(f"{index} has no weight_map", hint=REDOWNLOAD)
        return [model_dir / name for name in sorted(dict.fromkeys(weight_map.values()))]
    found = sorted(
        p for p in model_dir.iterdir() if p.name.startswith("model") and p.suffix == ".safetensors"
    )
    if not found:
        bins = sorted(model_dir.glob("pytorch_model*.bin"))
        hint = (
            "this checkpoint is in PyTorch's pickle format (.bin), which needs torch to read; "
            "convert it to safetensors first, or download the safetensors release"
            if bins
            else "the folder must hold model.safetensors or model-0000i-of-0000n.safetensors"
        )
        raise ModelNotFoundError(f"no *.safetensors weights in {model_dir}", hint=hint)
    return found


def open_checkpoint(model_dir: Path) -> Checkpoint:
    """Open every shard of ``model_dir`` and check them against the shard index.

    Raises:
        ModelNotFoundError: no config.json or no safetensors files.
        InvalidModelError: a corrupt/truncated file, or shards that disagree with the index.
    """
    config = load_config(model_dir)
    paths = safetensors_files(model_dir)
    files: list[SafetensorsFile] = []
    tensors: dict[str, TensorRef] = {}
    try:
        for path in paths:
            st = SafetensorsFile(path)
            files.append(st)
            # sorted by name within a file, as gguf's SafetensorsLocal (and the reference) reads
            for name in sorted(st.tensors):
                if name in tensors:
                    raise InvalidModelError(
                        f"tensor {name!r} is in two shards: {tensors[name].file.path.name} "
                        f"and {path.name}",
                        hint=REDOWNLOAD,
                    )
                tensors[name] = st.tensors[name]
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            wanted = set(load_json(index, what="the shard index")["weight_map"])
            missing = sorted(wanted - set(tensors))
            extra = sorted(set(tensors) - wanted)
            if missing or extra:
                raise InvalidModelError(
                    f"the shards of {model_dir} do not match model.safetensors.index.json "
                    f"(missing: {', '.join(missing[:3]) or 'none'}; "
                    f"not in the index: {', '.join(extra[:3]) or 'none'})",
                    hint=REDOWNLOAD,
                )
    except BaseException:
        for f in files:
            f.close()
        raise
    return Checkpoint(model_dir, config, tuple(files), tensors)


def iter_row_chunks(
    n_rows: int, row_size: int, *, budget: int = 1 << 24
) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``budget`` elements each (at least one row)."""
    step = max(1, budget // max(row_size, 1))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)
