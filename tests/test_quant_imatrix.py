"""quant/imatrix.py: imatrix files (GGUF and legacy), their cache key, and the calibration text
checks (token counts from the real vocabulary)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from llama3zh_local.errors import (
    InputError,
    InvalidModelError,
    UsageError,
)
from llama3zh_local.llamacpp import quant
from llama3zh_local.quant import imatrix
from llama3zh_local.quant.options import ChunkOptions

from .quantfix import write_imatrix, write_llama_gguf

# -- imatrix files --------------------------------------------------------------------------------


def test_read_gguf_imatrix_divides_by_counts(tmp_path: Path) -> None:
    sums = {"blk.0.attn_q.weight": np.arange(1, 257, dtype=np.float32) * 3,
            "blk.0.ffn_down.weight": np.full(512, 5.0, np.float32)}  # fmt: skip
    counts = {"blk.0.attn_q.weight": 3.0, "blk.0.ffn_down.weight": 0.0}
    path = write_imatrix(tmp_path / "im.gguf", sums, counts)
    im = imatrix.read_imatrix(path)
    np.testing.assert_array_equal(im.entries["blk.0.attn_q.weight"], np.arange(1, 257))
    np.testing.assert_array_equal(im.entries["blk.0.ffn_down.weight"], np.ones(512))  # count 0
    assert (im.datasets, im.chunk_count, im.chunk_size, im.legacy) == (("calib.txt",), 3, 512,
                                                                       False)  # fmt: skip


def test_read_legacy_imatrix(tmp_path: Path) -> None:
    name = b"blk.0.attn_q.weight"
    vals = np.arange(4, dtype=np.float32) * 2
    data = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 2, 4)
    data += vals.tobytes() + struct.pack("<i", 7) + struct.pack("<i", 5) + b"x.txt"
    (tmp_path / "im.dat").write_bytes(data)
    im = imatrix.read_imatrix(tmp_path / "im.dat")
    np.testing.assert_array_equal(im.entries["blk.0.attn_q.weight"], vals / 2)
    assert im.legacy and im.chunk_count == 7 and im.datasets == ("x.txt",)


def test_a_model_or_garbage_is_not_an_imatrix(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="is a model, not an imatrix"):
        imatrix.read_imatrix(synth)
    (tmp_path / "junk.dat").write_bytes(b"\x00\x00\x00\x00junk")
    with pytest.raises(InvalidModelError, match="not an imatrix file"):
        imatrix.read_imatrix(tmp_path / "junk.dat")
    with pytest.raises(InputError, match="no imatrix file"):
        imatrix.read_imatrix(tmp_path / "missing.gguf")


def test_check_matches_names_and_sizes(synth: Path, tmp_path: Path) -> None:
    good = {"blk.0.attn_q.weight": np.ones(256, np.float32),
            "blk.1.ffn_down.weight": np.ones(512, np.float32)}  # fmt: skip
    ok = write_imatrix(tmp_path / "ok.gguf", good, dict.fromkeys(good, 1.0))
    imatrix.check_matches(imatrix.read_imatrix(ok), synth)
    wrong = {"blk.0.attn_q.weight": np.ones(576, np.float32),
             "blk.9.attn_q.weight": np.ones(256, np.float32)}  # fmt: skip
    bad = write_imatrix(tmp_path / "bad.gguf", wrong, dict.fromkeys(wrong, 1.0))
    with pytest.raises(InvalidModelError, match="different model") as err:
        imatrix.check_matches(imatrix.read_imatrix(bad), synth)
    assert "blk.9.attn_q.weight" in str(err.value) and "576 values" in str(err.value)


def test_cache_key_follows_model_text_and_settings(synth: Path, tmp_path: Path) -> None:
    base = dict(model=synth, calibration_sha256="a" * 64, ctx=512, n_chunks=10, version="0.3.36")
    key = imatrix.cache_key(**base)  # type: ignore[arg-type]
    assert key == imatrix.cache_key(**base)  # type: ignore[arg-type]
    for change in ({"ctx": 256}, {"n_chunks": 9}, {"calibration_sha256": "b" * 64},
                   {"version": "0.3.37"}):  # fmt: skip
        assert imatrix.cache_key(**{**base, **change}) != key  # type: ignore[arg-type]
    other = write_llama_gguf(tmp_path / "other.gguf", seed=1)  # same shapes, other weights
    assert imatrix.cache_key(**{**base, "model": other}) != key  # type: ignore[arg-type]
    assert imatrix.cache_path(synth, key) == synth.parent / ".imatrix" / f"{synth.stem}-{key}.gguf"


# -- calibration / evaluation text checks (token counts from the real vocabulary) -----------------


def test_short_or_empty_calibration_says_what_is_needed(smollm2_gguf: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(InputError, match="is empty"):
        imatrix.plan_imatrix(model=smollm2_gguf, options=ChunkOptions(text=tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("你好，世界。Hello world. " * 20, encoding="utf-8")
    with pytest.raises(InputError, match=r"needs at least 2 chunks of 512 tokens \(1,024"):
        imatrix.plan_imatrix(model=smollm2_gguf, options=ChunkOptions(text=tmp_path / "short.txt"))
    with pytest.raises(InputError, match=r"too short for 50 chunks: they need 6,400 tokens"):
        imatrix.plan_imatrix(model=smollm2_gguf, options=ChunkOptions(
            text=tmp_path / "short.txt", ctx=128, chunks=50))  # fmt: skip
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        imatrix.plan_imatrix(model=smollm2_gguf, options=ChunkOptions(text=tmp_path / "latin1.txt"))


def test_plan_counts_tokens_and_chunks(smollm2_gguf: Path) -> None:
    plan = imatrix.plan_imatrix(model=smollm2_gguf, options=ChunkOptions(ctx=512, chunks=12))
    assert plan.n_chunks == 12 and plan.n_tokens > 100_000 and plan.n_gpu_layers == 0
    assert plan.command[:2] == ("llama-imatrix", "-m")
    full = imatrix.plan_imatrix(model=smollm2_gguf, options=ChunkOptions(ctx=512))
    assert full.n_chunks == full.n_tokens // 512
    with pytest.raises(UsageError, match="at least 1"):
        imatrix.plan_imatrix(model=smollm2_gguf, options=ChunkOptions(chunks=0))


def test_count_tokens_matches_the_engine(smollm2_gguf: Path) -> None:
    from llama3zh_local.llamacpp.engine import Model

    text = "量化是把模型权重从高精度数值转换成低精度数值的过程。Quantization, 4-bit."
    with Model(smollm2_gguf) as m:
        want = len(m.tokenize(text, add_special=True, parse_special=False))
    assert quant.count_tokens(smollm2_gguf, text) == want
