"""The one GGUF reader: metadata, value types and the tensor table, parsed by llama.cpp itself.

It uses llama.cpp's C GGUF parser (through ``llamacpp.native.libgguf``), so a file this accepts is
one llama.cpp's loader accepts, and it takes milliseconds on Llama-3's header: ``gguf.GGUFReader``
builds a numpy view per array element (3 s for SmolLM2's 49k-token vocab, far more for Llama-3's
128k tokens + 280k merges), and a hand-written ``struct`` walk is a second parser to keep in step.
Tensor data is never mapped: :func:`tensor_data` maps one tensor when a caller needs its values.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModelError
from ..llamacpp import native

if TYPE_CHECKING:
    import numpy as np

# GGUF value types (gguf.GGUFValueType); the C API returns the same numbers.
_SCALARS: dict[int, Any] = {
    0: ctypes.c_uint8,
    1: ctypes.c_int8,
    2: ctypes.c_uint16,
    3: ctypes.c_int16,
    4: ctypes.c_uint32,
    5: ctypes.c_int32,
    6: ctypes.c_float,
    7: ctypes.c_bool,
    10: ctypes.c_uint64,
    11: ctypes.c_int64,
    12: ctypes.c_double,
}
STRING, ARRAY = 8, 9
_ARRAY_ITEMS_READ = 4096  # numeric arrays up to this length are read (per-layer values)


class GGUFArray:
    """A GGUF array value, by its length; ``items`` when read (short numeric arrays, and the
    string arrays asked for by name): the vocabulary is otherwise only counted."""

    def __init__(self, n: int, items: list[Any] | None = None) -> None:
        self.n = n
        self.items = items

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"GGUFArray(n={self.n})"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length (ne0)
    type: int  # gguf.GGMLQuantizationType value
    offset: int  # absolute, in bytes from the start of the file
    size: int  # bytes of data

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """A GGUF file's header: ``kv`` (scalars, strings, :class:`GGUFArray`), ``types`` (each
    key's GGUF value type, and an array's item type) and the tensor table in file order."""

    kv: dict[str, Any]
    types: dict[str, tuple[int, int | None]]
    tensors: list[TensorInfo]

    @property
    def tensor_bytes(self) -> int:
        return sum(t.size for t in self.tensors)


class _TensorHead(ctypes.Structure):
    """The first fields of ``struct ggml_tensor`` (ggml.h, unchanged since 2023): type, buffer,
    ne[GGML_MAX_DIMS]. Only ``ne`` is read."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4)]


def read_header(path: str | Path, *, whole: Sequence[str] = ()) -> Header | None:
    """``path``'s header, or None when llama.cpp rejects the file (``native.last_log_lines()``
    says why). Lenient: callers that need a message use :func:`read_tensors` or
    ``gguf.info.read_gguf_info``.

    Args:
        whole: keys of arrays to read whole (``tokenizer.ggml.tokens``); other string arrays
            and long numeric ones are only counted.
    """
    g = native.libgguf()
    meta = ctypes.c_void_p()  # the ggml context of tensor descriptions, for the shapes
    params = native.GGUFInitParams(True, ctypes.addressof(meta))
    ctx = g.gguf_init_from_file(str(path).encode(), params)
    if not ctx:
        return None
    try:
        types: dict[str, tuple[int, int | None]] = {}
        kv = dict(_values(g, ctx, types, whole))
        return Header(kv, types, _tensors(g, ctx, meta))
    finally:
        g.gguf_free(ctx)
        if meta:
            g.ggml_free(meta)


def read_tensors(path: str | Path) -> list[TensorInfo]:
    """The tensors of a GGUF file, in file order.

    Raises:
        InvalidModelError: not a GGUF file, or llama.cpp cannot read its header.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise InvalidModelError(f"{path} is empty, not a GGUF file")
    if magic != b"GGUF":
        raise InvalidModelError(f"{path} is not a GGUF file (it starts with {magic!r})")
    header = read_header(path)
    if header is None:
        raise InvalidModelError(
            f"{path} has a damaged or truncated GGUF header",
            hint="create or download the file again",
        )
    return header.tensors


def tensor_data(path: str | Path, tensor: TensorInfo) -> np.ndarray:
    """One tensor's values, mapped read-only from the file, in numpy order (reversed ggml
    shape); quantized types come back as their raw bytes (``gguf.quants.dequantize`` them)."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType(tensor.type)
    dtypes = {
        gguf.GGMLQuantizationType.F32: np.float32,
        gguf.GGMLQuantizationType.F16: np.float16,
        gguf.GGMLQuantizationType.F64: np.float64,
        gguf.GGMLQuantizationType.I8: np.int8,
        gguf.GGMLQuantizationType.I16: np.int16,
        gguf.GGMLQuantizationType.I32: np.int32,
        gguf.GGMLQuantizationType.I64: np.int64,
    }
    shape = tuple(reversed(tensor.shape))
    if qtype in dtypes:
        dtype: Any = dtypes[qtype]
    else:  # quantized and bf16: rows of raw bytes
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        dtype = np.uint8
        shape = (*shape[:-1], shape[-1] // block * size)
    return np.memmap(path, dtype=dtype, mode="r", offset=tensor.offset, shape=shape)


def _values(
    g: Any, ctx: Any, types: dict[str, tuple[int, int | None]], whole: Sequence[str]
) -> Iterator[tuple[str, Any]]:
    """(key, value) of each metadata entry; fills ``types``."""
    for i in range(g.gguf_get_n_kv(ctx)):
        key = g.gguf_get_key(ctx, i).decode("utf-8", errors="replace")
        typ = g.gguf_get_kv_type(ctx, i)
        atype = g.gguf_get_arr_type(ctx, i) if typ == ARRAY else None
        types[key] = (typ, atype)
        if typ == STRING:
            yield key, g.gguf_get_val_str(ctx, i).decode("utf-8", errors="replace")
        elif typ == ARRAY:
            n = g.gguf_get_arr_n(ctx, i)
            items = None
            if atype == STRING and key in whole:
                get = g.gguf_get_arr_str
                items = [
                    (get(ctx, i, j) or b"").decode("utf-8", errors="replace") for j in range(n)
                ]
            elif atype in _SCALARS and (n <= _ARRAY_ITEMS_READ or key in whole):
                items = list((_SCALARS[atype] * n).from_address(g.gguf_get_arr_data(ctx, i)))
            yield key, GGUFArray(n, items)
        elif typ in _SCALARS:
            yield key, _SCALARS[typ].from_address(g.gguf_get_val_data(ctx, i)).value


def _tensors(g: Any, ctx: Any, meta: ctypes.c_void_p) -> list[TensorInfo]:
    """The tensor table: names, offsets and sizes from the GGUF context, shapes from the ggml
    context of tensor descriptions (no data) that llama.cpp builds beside it."""
    base = g.gguf_get_data_offset(ctx)
    out = []
    for t in range(g.gguf_get_n_tensors(ctx)):
        name = g.gguf_get_tensor_name(ctx, t)
        tensor = g.ggml_get_tensor(meta, name)
        head = _TensorHead.from_address(tensor)
        shape = tuple(int(head.ne[d]) for d in range(g.ggml_n_dims(tensor)))
        out.append(
            TensorInfo(
                name=name.decode("utf-8", errors="replace"),
                shape=shape,
                type=g.gguf_get_tensor_type(ctx, t),
                offset=base + g.gguf_get_tensor_offset(ctx, t),
                size=g.gguf_get_tensor_size(ctx, t),
            )
        )
    return out
