"""The tensor table of a GGUF file (names, shapes, types), read without loading any data.

llama.cpp's C GGUF API (``engine.read_gguf_header``) gives offsets and sizes but no shapes, and
``gguf.GGUFReader`` builds a numpy view per vocabulary entry (seconds for Llama-3's 128k tokens
and 280k merges). This walks the header with ``struct`` over an mmap: the key/value section is
skipped, not decoded, so a Llama-3 header takes a fraction of a second.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidModelError

# GGUF value types (gguf.GGUFValueType): fixed sizes of the scalar ones.
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length (ne0)
    type: int  # gguf.GGMLQuantizationType value
    offset: int  # relative to the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_tensor_infos(path: str | Path) -> list[TensorInfo]:
    """The tensors of a GGUF file, in file order.

    Raises:
        InvalidModelError: not a GGUF file, or its header is cut short.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise InvalidModelError(f"{path} is empty, not a GGUF file") from None
    try:
        return _parse(buf, path)
    except (struct.error, IndexError, UnicodeDecodeError):
        raise InvalidModelError(
            f"{path} has a damaged or truncated GGUF header",
            hint="create or download the file again",
        ) from None
    finally:
        buf.close()


def _parse(buf: mmap.mmap, path: Path) -> list[TensorInfo]:
    if buf[:4] != b"GGUF":
        raise InvalidModelError(f"{path} is not a GGUF file (it starts with {bytes(buf[:4])!r})")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
        raise InvalidModelError(f"{path} is GGUF version {version}; version 2 or later is needed")
    pos = 24
    u64 = struct.Struct("<Q")
    u32 = struct.Struct("<I")

    def skip_value(pos: int, vtype: int) -> int:
        if vtype in _SCALAR_SIZE:
            return pos + _SCALAR_SIZE[vtype]
        if vtype == _STRING:
            return pos + 8 + u64.unpack_from(buf, pos)[0]
        if vtype == _ARRAY:
            itype = u32.unpack_from(buf, pos)[0]
            n = u64.unpack_from(buf, pos + 4)[0]
            pos += 12
            if itype in _SCALAR_SIZE:
                return pos + n * _SCALAR_SIZE[itype]
            if itype == _STRING:  # the vocabulary and merges: the hot loop
                length = u64.unpack_from
                for _ in range(n):
                    pos += 8 + length(buf, pos)[0]
                return pos
            for _ in range(n):  # nested arrays
                pos = skip_value(pos, itype)
            return pos
        raise InvalidModelError(f"{path}: unknown GGUF value type {vtype}")

    for _ in range(n_kv):
        klen = u64.unpack_from(buf, pos)[0]
        pos += 8 + klen
        vtype = u32.unpack_from(buf, pos)[0]
        pos = skip_value(pos + 4, vtype)
        if pos > len(buf):
            raise IndexError
    out: list[TensorInfo] = []
    for _ in range(n_tensors):
        nlen = u64.unpack_from(buf, pos)[0]
        name = bytes(buf[pos + 8 : pos + 8 + nlen]).decode("utf-8")
        pos += 8 + nlen
        n_dims = u32.unpack_from(buf, pos)[0]
        shape = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        out.append(TensorInfo(name, tuple(shape), ttype, offset))
    return out
