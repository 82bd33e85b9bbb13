"""A small, fast GGUF reader for tests: every key (arrays included) and each tensor's bytes.

``gguf.GGUFReader`` takes ~10 s on a 128k-token vocabulary; this reads the same in well under a
second, which matters when tests compare several converted files key by key.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}  # fmt: skip
STRING, ARRAY = 8, 9


@dataclass
class GGUFFile:
    kv: dict[str, Any]
    kv_types: dict[str, int]  # GGUFValueType of each key (the array's item type for arrays)
    tensors: dict[str, tuple[tuple[int, ...], int, int]]  # name -> (ggml dims, type, offset)
    data: Any  # the file, mapped (bytes-like)

    def tensor_bytes(self, name: str) -> bytes:
        import gguf

        dims, typ, off = self.tensors[name]
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(typ)]
        n = math.prod(dims[1:]) * (dims[0] // block) * size
        return bytes(self.data[off : off + n])

    def tensor_type(self, name: str) -> str:
        import gguf

        return gguf.GGMLQuantizationType(self.tensors[name][1]).name

    def array(self, name: str) -> np.ndarray:
        """A tensor as float32 in numpy order (F32, F16, BF16, Q8_0 dequantized)."""
        import gguf

        dims, typ, _ = self.tensors[name]
        raw = np.frombuffer(self.tensor_bytes(name), dtype=np.uint8)
        qtype = gguf.GGMLQuantizationType(typ)
        out = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        return out.reshape(tuple(reversed(dims)))


def read(path: str | Path) -> GGUFFile:
    import mmap

    with open(path, "rb") as fh:
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        s = data[pos : pos + n].decode("utf-8")
        pos += n
        return s

    def value(t: int) -> tuple[Any, int]:
        nonlocal pos
        if t == STRING:
            return string(), t
        if t == ARRAY:
            at, n = take("<I"), take("<Q")
            if at == STRING:
                return [string() for _ in range(n)], at
            a = np.frombuffer(data, dtype=_NUMPY[at], count=n, offset=pos)
            pos += a.nbytes
            return a.tolist(), at
        return take(_SCALAR[t]), t

    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    pos = 4
    take("<I")
    n_tensors, n_kv = take("<Q"), take("<Q")
    kv: dict[str, Any] = {}
    kv_types: dict[str, int] = {}
    for _ in range(n_kv):
        key = string()
        kv[key], kv_types[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = tuple(take("<Q") for _ in range(take("<I")))
        infos.append((name, dims, take("<I"), take("<Q")))
    align = kv.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    tensors = {name: (dims, typ, start + off) for name, dims, typ, off in infos}
    return GGUFFile(kv, kv_types, tensors, data)
