"""The one GGUF reader (gguf/reader.py) against gguf-py's GGUFReader on a small file."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llama3zh_local.errors import InvalidModelError
from llama3zh_local.gguf.reader import GGUFArray, read_header, read_tensors, tensor_data


def _write(path: Path) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 3)
    w.add_array("llama.attention.head_count", [4, 4, 2])
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ç"])
    w.add_string("general.name", "tiny")
    rng = np.random.default_rng(0)
    w.add_tensor("a.weight", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("b.weight", rng.standard_normal((2, 3, 4)).astype(np.float16))
    q = gguf.quants.quantize(
        rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    w.add_tensor("c.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_reader_matches_gguf_py(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    _write(path)
    header = read_header(path, whole=("tokenizer.ggml.tokens",))
    assert header is not None
    assert header.kv["llama.block_count"] == 3 and header.kv["general.name"] == "tiny"
    heads = header.kv["llama.attention.head_count"]
    assert isinstance(heads, GGUFArray) and heads.items == [4, 4, 2]
    assert header.kv["tokenizer.ggml.tokens"].items == ["a", "b", "ç"]
    assert read_header(path).kv["tokenizer.ggml.tokens"].items is None  # only counted
    ref = gguf.GGUFReader(path)
    assert [(t.name, t.shape, t.type, t.offset, t.size) for t in header.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), t.data_offset, t.n_bytes)
        for t in ref.tensors
    ]
    assert read_tensors(path) == header.tensors
    for mine, theirs in zip(header.tensors, ref.tensors, strict=True):
        assert np.array_equal(np.asarray(tensor_data(path, mine)), theirs.data)


def test_reader_rejects_what_llama_cpp_rejects(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    _write(path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:40])
    assert read_header(cut) is None
    with pytest.raises(InvalidModelError, match="damaged or truncated GGUF header"):
        read_tensors(cut)
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(InvalidModelError, match="not a GGUF file"):
        read_tensors(other)
