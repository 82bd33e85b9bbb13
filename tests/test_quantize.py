"""Quant types and naming, imatrix files, llama-perplexity parsing, recommend, the corpora, and
the checks quantize makes before any heavy work. Fast: synthetic GGUFs, no llama.cpp tools."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llama3zh_local import catalog
from llama3zh_local.cli import app
from llama3zh_local.errors import (
    DiskSpaceError,
    InputError,
    InvalidModelError,
    UsageError,
)
from llama3zh_local.files import space, state
from llama3zh_local.hardware import GIB, Device, Hardware
from llama3zh_local.llamacpp import quant
from llama3zh_local.quant import evaluate, imatrix, quantize, recommend
from llama3zh_local.quant.options import ChunkOptions
from llama3zh_local.quant.tracker import ChunkTracker

ROOT = Path(__file__).resolve().parent.parent


# -- a synthetic Llama GGUF whose rows suit every quant type (multiples of 256) -------------------


def write_llama_gguf(path: Path, *, n_embd: int = 256, n_ff: int = 512, n_layer: int = 2,
                     n_vocab: int = 256, dtype: str = "f16", seed: int = 0) -> Path:  # fmt: skip
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // 4)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([1] * n_vocab)
    np_t = np.float16 if dtype == "f16" else np.float32

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np_t)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(p + "attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(p + "attn_k.weight", mat(n_embd // 2, n_embd))
        w.add_tensor(p + "attn_v.weight", mat(n_embd // 2, n_embd))
        w.add_tensor(p + "attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", mat(n_vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_imatrix(path: Path, entries: dict[str, np.ndarray], counts: dict[str, float], *,
                  datasets: tuple[str, ...] = ("calib.txt",), chunks: int = 3,
                  chunk_size: int = 512) -> Path:  # fmt: skip
    """An imatrix GGUF as llama-imatrix writes it: raw sums and counts per tensor."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="")
    w.add_string("general.type", "imatrix")
    w.add_array(imatrix.KV_DATASETS, list(datasets))
    w.add_uint32(imatrix.KV_CHUNK_COUNT, chunks)
    w.add_uint32(imatrix.KV_CHUNK_SIZE, chunk_size)
    for name, sums in sorted(entries.items()):
        w.add_tensor(name + ".in_sum2", sums.astype(np.float32).reshape(1, -1))
        w.add_tensor(name + ".counts", np.array([[counts[name]]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("synth") / "ggml-model-f16.gguf")


# -- quant types and names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name", "short"),
    [
        ("Q4_K_M", "Q4_K_M", "q4_k"),
        ("q4_k_m", "Q4_K_M", "q4_k"),
        ("Q4_K", "Q4_K_M", "q4_k"),  # llama-quantize's alias
        ("q4_k", "Q4_K_M", "q4_k"),  # upstream short name
        ("q4_k-im", "Q4_K_M", "q4_k"),
        ("q5_k", "Q5_K_M", "q5_k"),
        ("Q3_K", "Q3_K_M", "q3_k"),
        ("q8_0", "Q8_0", "q8_0"),
        ("iq3_xxs", "IQ3_XXS", "iq3_xxs"),
        ("IQ2-M", "IQ2_M", "iq2_m"),
        ("Q4_K_S", "Q4_K_S", "q4_k_s"),
        ("f16", "F16", "f16"),
        ("bf16", "BF16", "bf16"),
    ],
)
def test_parse_type(value: str, name: str, short: str) -> None:
    t = quantize.parse_type(value)
    assert (t.name, t.short) == (name, short)


def test_unknown_type_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="unknown quant type 'Q9_K'") as err:
        quantize.parse_type("Q9_K")
    assert err.value.hint and "Q4_K_M" in err.value.hint and "IQ3_XXS" in err.value.hint
    assert "q4_k" in err.value.hint  # the upstream short names too


def test_parse_types_repeated_and_comma_separated() -> None:
    got = quantize.parse_types(["q4_k,Q5_K_M", "Q4_K", "q8_0"])
    assert [t.name for t in got] == ["Q4_K_M", "Q5_K_M", "Q8_0"]
    with pytest.raises(UsageError, match="no quant type"):
        quantize.parse_types([" , "])


@pytest.mark.parametrize(
    ("name", "im", "filename"),
    [
        ("Q4_K_M", True, "ggml-model-q4_k-im.gguf"),
        ("Q4_K_M", False, "ggml-model-q4_k.gguf"),
        ("Q2_K", True, "ggml-model-q2_k-im.gguf"),
        ("IQ3_XXS", True, "ggml-model-iq3_xxs-im.gguf"),
        ("Q6_K", False, "ggml-model-q6_k.gguf"),
    ],
)
def test_upstream_file_names(name: str, im: bool, filename: str) -> None:
    assert quantize.parse_type(name).filename(imatrix=im) == filename


def test_quant_types_mirror_gguf_file_types() -> None:
    """Every gguf.LlamaFileType is offered under the same value (parity with gguf-py)."""
    import gguf

    types = quantize.quant_types()
    for ft in gguf.LlamaFileType:
        name = ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        if name in quantize._SKIP:
            continue
        assert types[name].ftype == ft.value, name
    for q in catalog.GGUF_QUANTS:  # the upstream names all resolve, to their own short name
        assert quantize.parse_type(q.short).short == q.short
        assert quantize.parse_type(q.ftype).name == q.ftype


def test_requires_imatrix_matches_llama_cpp(synth: Path, tmp_path: Path) -> None:
    """llama.cpp's own dry run says which types need an imatrix (on rows of 256)."""
    needs = set()
    for t in quantize.quant_types().values():
        if t.is_float:
            continue
        run = quant.quantize_file(source=synth, output=tmp_path / "x.gguf", ftype=t.ftype,
                                  dry_run=True)  # fmt: skip
        if any("will require an imatrix" in ln for ln in run.log):
            needs.add(t.name)
    assert needs == quantize.REQUIRES_IMATRIX
    assert not (tmp_path / "x.gguf").exists()


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


def test_eval_text_too_short(smollm2_gguf: Path, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("short text " * 10, encoding="utf-8")
    with pytest.raises(InputError, match="evaluation text is too short"):
        evaluate.evaluate(
            models=[smollm2_gguf], options=ChunkOptions(text=tmp_path / "t.txt"), record=False
        )


def test_count_tokens_matches_the_engine(smollm2_gguf: Path) -> None:
    from llama3zh_local.llamacpp.engine import Model

    text = "量化是把模型权重从高精度数值转换成低精度数值的过程。Quantization, 4-bit."
    with Model(smollm2_gguf) as m:
        want = len(m.tokenize(text, add_special=True, parse_special=False))
    assert quant.count_tokens(smollm2_gguf, text) == want


# -- quantize: checks before the heavy work, and the in-process call ------------------------------


def test_types_that_need_an_imatrix_are_refused_without(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="IQ2_XS, IQ3_XXS need an importance matrix") as err:
        quantize.quantize(
            quantize.plan_quantize(
                model=synth, types=["Q4_K_M", "IQ2_XS", "iq3_xxs"], output=tmp_path
            )
        )
    assert "--imatrix" in (err.value.hint or "")
    assert not list(tmp_path.iterdir())


def test_quantize_writes_reads_back_and_names(synth: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    res = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["q4_k", "Q8_0"], output=tmp_path),
        progress=lambda e: (
            seen.append((e.task.split()[0], e.done, e.total)) if e.kind == "advance" else None
        ),
    )
    assert [o.path.name for o in res.outputs] == ["ggml-model-q4_k.gguf", "ggml-model-q8_0.gguf"]
    q4, q8 = res.outputs
    assert q4.file_type == "MOSTLY_Q4_K_M" and q8.file_type == "MOSTLY_Q8_0"
    assert 4.5 < q4.bpw < 5.5 and 8.4 < q8.bpw < 8.6  # all rows are multiples of 256: no fallback
    assert q4.fallback_tensors == 0 and q4.tensor_count == 21
    assert seen[0] == ("Q4_K_M", 1, 21) and seen[-1] == ("Q8_0", 21, 21)
    # _env: conftest's LLAMA3ZH_HOME (which holds the journal of temporary names); the state
    # file records the two, so that a later --force may replace them
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "_env") == [
        ".llama3zh-state.json",
        ".llama3zh-state.json.lock",
        q4.path.name,
        q8.path.name,
    ]
    assert set(state.read_state(tmp_path)) == {q4.path.name, q8.path.name}
    # output exists
    with pytest.raises(UsageError, match="already exists") as err:
        quantize.quantize(quantize.plan_quantize(model=synth, types=["Q8_0"], output=tmp_path))
    assert "--force" in (err.value.hint or "")
    again = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["Q8_0"], output=tmp_path, force=True)
    )
    assert again.outputs[0].path == q8.path


def test_quantize_with_imatrix_records_it_like_llama_quantize(synth: Path, tmp_path: Path) -> None:
    from llama3zh_local.gguf.reader import read_header, read_tensors

    sums = {t.name: np.ones(t.shape[0], np.float32) * 4 for t in read_tensors(synth)
            if t.name.startswith("blk.") and len(t.shape) == 2}  # fmt: skip
    im = write_imatrix(tmp_path / "my.imatrix.gguf", sums, dict.fromkeys(sums, 2.0),
                       datasets=("x" * 200,), chunks=9)  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    res = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["IQ3_XXS"], imatrix=im, output=out)
    )
    (o,) = res.outputs
    assert o.path.name == "ggml-model-iq3_xxs-im.gguf" and o.imatrix == im
    kv = read_header(o.path).kv  # type: ignore[union-attr]
    assert kv["quantize.imatrix.file"] == "my.imatrix.gguf"  # the name, not this machine's path
    assert kv["quantize.imatrix.dataset"] == "x" * 127  # cut at 127 bytes, as llama-quantize
    assert kv["quantize.imatrix.entries_count"] == len(sums)
    assert kv["quantize.imatrix.chunks_count"] == 9


def test_requantize_needs_consent(smollm2_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match=r"already quantized \(Q4_1\)") as err:
        quantize.quantize(
            quantize.plan_quantize(model=smollm2_gguf, types=["Q4_0"], output=tmp_path)
        )
    assert "--allow-requantize" in (err.value.hint or "")
    res = quantize.quantize(
        quantize.plan_quantize(
            model=smollm2_gguf, types=["Q4_0"], output=tmp_path, allow_requantize=True
        )
    )
    assert res.outputs[0].file_type == "MOSTLY_Q4_0"
    assert res.warnings and "requantizing" in res.warnings[0]


def test_disk_too_small_is_refused_before_writing(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda p: 10 << 20)  # 10 MiB
    with pytest.raises(DiskSpaceError, match="not enough free space") as err:
        quantize.quantize(
            quantize.plan_quantize(model=synth, types=["Q8_0", "Q4_K_M"], output=tmp_path)
        )
    assert "-o" in (err.value.hint or "")
    assert not list(tmp_path.iterdir())


def test_output_paths(synth: Path, tmp_path: Path) -> None:
    t = quantize.parse_type("Q4_K_M")
    assert quantize.output_path(synth, t, imatrix=True, output=None, n_types=2) == (
        synth.parent / "ggml-model-q4_k-im.gguf"
    )
    assert quantize.output_path(synth, t, imatrix=False, output=tmp_path, n_types=2) == (
        tmp_path / "ggml-model-q4_k.gguf"
    )
    assert quantize.output_path(synth, t, imatrix=False, output=tmp_path / "x.gguf",
                                n_types=1) == tmp_path / "x.gguf"  # fmt: skip
    with pytest.raises(UsageError, match="names one file"):
        quantize.output_path(synth, t, imatrix=False, output=tmp_path / "x.gguf", n_types=2)


def test_not_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InvalidModelError, match="not a GGUF"):
        quantize.quantize(quantize.plan_quantize(model=tmp_path / "model.gguf", types=["Q8_0"]))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidModelError, match="neither a GGUF file nor an HF checkpoint"):
        quantize.quantize(quantize.plan_quantize(model=tmp_path / "folder", types=["Q8_0"]))


def test_dry_run_writes_nothing(synth: Path, tmp_path: Path) -> None:
    res = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["Q4_K_M", "Q6_K"], output=tmp_path, dry_run=True)
    )
    assert [o.dry_run for o in res.outputs] == [True, True]
    assert res.outputs[0].size < res.outputs[1].size < synth.stat().st_size
    assert not list(tmp_path.iterdir())


def test_imatrix_overrides_order() -> None:
    kv = quant.imatrix_overrides(file="a.gguf", datasets=("d.txt", "e.txt"), n_entries=3,
                                 n_chunks=0)  # fmt: skip
    assert kv == [("quantize.imatrix.file", "a.gguf"), ("quantize.imatrix.dataset", "d.txt"),
                  ("quantize.imatrix.entries_count", 3)]  # fmt: skip


# -- llama-perplexity output --------------------------------------------------------------------

PLAIN_OUT = "0.20 minutes\n[1]26.4759,[2]24.6314,[3]20.0546,\n"
PLAIN_ERR = (
    "perplexity: calculating perplexity over 3 chunks, n_ctx=256, batch_size=2048, n_seq=8\n"
    "0.17.85 I perplexity: 12.87 seconds per pass - ETA 0.18.08 I Final estimate: PPL = 22.4334 "
    "+/- 2.21320\n"
)
KLD_ROWS = [
    "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
    "              Δp RMS            Same top p",
    "   1      12.9087 ±    2.5013      -0.00012 ±    0.01060       0.08612 ±    0.01120"
    "     7.818 ±  0.833 %    82.540 ±  4.802 %",
    "   2      11.4354 ±    1.1871       0.07164 ±    0.01800       0.08472 ±    0.00487"
    "     8.123 ±  0.512 %    81.111 ±  3.001 %",
]
KLD_OUT = (
    "\n"
    + "\n".join(KLD_ROWS)
    + """

====== Perplexity statistics ======
Mean PPL(Q)                   :  11.435376 ±   1.187096
Mean PPL(base)                :  10.655475 ±   1.100112
Cor(ln(PPL(Q)), ln(PPL(base))):  98.80%

====== KL divergence statistics ======
Mean    KLD:   0.084716 ±   0.004871
Maximum KLD:   2.712345
99.9%   KLD:   2.100000
Median  KLD:   0.031000

====== Token probability statistics ======
Same top p: 81.111 ± 3.001 %
"""
)


def test_parse_plain_perplexity() -> None:
    out = evaluate.parse_perplexity(PLAIN_OUT, PLAIN_ERR)
    assert (out.ppl, out.ppl_err, out.chunks) == (22.4334, 2.2132, (26.4759, 24.6314, 20.0546))
    assert out.kld is None
    # the ± of another build, or a mangled byte, parse the same
    assert evaluate.parse_perplexity("Final estimate: PPL = 5.5 ± 0.25").ppl_err == 0.25
    assert evaluate.parse_perplexity("Final estimate: PPL = 5.5 \ufffd\ufffd 0.25").ppl == 5.5


def test_parse_kld() -> None:
    out = evaluate.parse_perplexity(KLD_OUT, "")
    assert (out.ppl, out.ppl_err, out.base_ppl) == (11.435376, 1.187096, 10.655475)
    assert (out.kld, out.kld_err, out.kld_max, out.kld_99_9) == (0.084716, 0.004871, 2.712345, 2.1)
    assert out.same_top_p == 81.111 and out.chunks == (12.9087, 11.4354)


def test_parse_failures_say_why() -> None:
    err = "perplexity: you need at least 1024 tokens to evaluate perplexity with a context of 512"
    with pytest.raises(InputError, match="needs at least 1024 tokens"):
        evaluate.parse_perplexity("", err)
    from llama3zh_local.errors import BackendError

    with pytest.raises(BackendError, match="printed no perplexity: .*failed to load model"):
        evaluate.parse_perplexity("", "llama_model_load: error\nfailed to load model\n")


def test_progress_trackers_handle_split_output() -> None:
    events: list[tuple[int, float | None]] = []
    t = ChunkTracker(
        lambda e: events.append((e.done, e.figures["ppl"])),
        stage="imatrix",
        task="imatrix",
        total=4,
    )
    for piece in ["0.2 min", "utes\n[1]5.9", "006,[2]8.8001,[3", "]10.3462,", "[4]10.5196,\n"]:
        t.feed("stdout", piece)
    t.feed("stderr", "[9]1.0,")  # logs are not results
    assert events == [(1, 5.9006), (2, 8.8001), (3, 10.3462), (4, 10.5196)]
    seen: list[int] = []
    e = ChunkTracker(
        lambda ev: seen.append(ev.done), stage="eval", task="m", total=2, rows=evaluate.KLD_ROW
    )
    lines = KLD_OUT.splitlines(keepends=True)
    for ln in lines:
        for i in range(0, len(ln), 7):  # in pieces that cut numbers
            e.feed("stdout", ln[i : i + 7])
    assert seen == [1, 2]


# -- recommend ------------------------------------------------------------------------------------


def fake_hw(*, vram: int | None, ram: int, offload: bool = True) -> Hardware:
    devices = [Device("CPU", "cpu", "cpu", 0, 0)]
    if vram is not None:
        devices.append(Device("CUDA0", "NVIDIA RTX 4060", "gpu", vram, vram))
    return Hardware(("CUDA", "CPU") if offload else ("CPU",), offload, tuple(devices), ram * 2,
                    ram, "", "0.3.36")  # fmt: skip


KV_8K = recommend.kv_cache_bytes(n_layer=32, n_head_kv=8, head_dim=128, n_ctx=8192)


# a simulated machine's memory: CPU bytes/s (estimated), GPU bytes/s (assumed)
def fake_bw(cpu_gbs: float, gpu_gbs: float = 200) -> recommend.Bandwidth:
    return recommend.Bandwidth(cpu_gbs * 1e9, f"{cpu_gbs:g} GB/s, simulated", gpu_gbs * 1e9,
                               f"{gpu_gbs:g} GB/s, simulated")  # fmt: skip


def test_kv_cache_of_llama3_8b() -> None:
    assert KV_8K == GIB  # 8192 tokens x 32 layers x 8 heads x 128 x (K+V) x 2 bytes


@pytest.mark.parametrize(
    ("vram_gib", "ram_gib", "gpu", "ram"),
    [
        (24, 64, "q8_0", "q8_0"),  # f16 is never the pick
        (7.5, 32, "q5_k", "q8_0"),  # 5.34 + 1 (KV) + 0.75 fits 7.5 GiB; 6.14 + 1.75 not
        (6, 6, "q3_k", "q4_0"),  # GPU: 4.34 + 1.75 > 6; RAM: 4.34 + 1.5 <= 6
        (4, 4.5, None, "q2_k"),  # GPU: 2.96 + 1.75 > 4
        (2, 3, None, None),
        (None, 16, None, "q8_0"),
    ],
)
def test_recommend_gpu_and_ram_prefer_quality(
    vram_gib: float | None, ram_gib: float, gpu: str | None, ram: str | None
) -> None:
    hw = fake_hw(vram=None if vram_gib is None else int(vram_gib * GIB), ram=int(ram_gib * GIB))
    rec = recommend.recommend(recommend.catalog_candidates(), model="instruct-v3",
                              kv_bytes=KV_8K, n_ctx=8192, hw=hw, bandwidth=fake_bw(20),
                              prefer=recommend.Prefer.quality)  # fmt: skip
    assert (rec.gpu.candidate.label if rec.gpu else None) == gpu
    assert (rec.ram.candidate.label if rec.ram else None) == ram
    if gpu is None and ram is None:
        assert rec.choice.label == "q2_k" and any("smaller --ctx" in n for n in rec.notes)


def test_recommend_prefers_imatrix_files_and_knows_quality(tmp_path: Path) -> None:
    plain, im = tmp_path / "ggml-model-q4_k.gguf", tmp_path / "ggml-model-q4_k-im.gguf"
    for p in (plain, im):
        p.write_bytes(b"x" * 1000)
    cands = [recommend.candidate("q4_k", 1000, plain), recommend.candidate("q4_k-im", 1000, im),
             recommend.candidate("q8_0", 10**12)]  # fmt: skip
    rec = recommend.recommend(cands, model="m", kv_bytes=0, n_ctx=512,
                              hw=fake_hw(vram=None, ram=GIB), bandwidth=fake_bw(20))  # fmt: skip
    assert rec.ram is not None and rec.ram.candidate.label == "q4_k-im"
    assert "+0.1754" in rec.ram.candidate.quality  # llama.cpp's Llama-3-8B figure
    assert any("CPU only" in n or "no GPU" in n for n in rec.notes)


# Expected tok/s = bandwidth / size. CPU 20 GB/s: q8_0 2.3 ... q4_k 4.1 ... q2_k 6.3 (none
# reaches 8); 60 GB/s: q8_0 7.0, q6_k 9.1; a GPU at 200 GB/s: q8_0 23 (all reach 8).
@pytest.mark.parametrize(
    ("vram_gib", "ram_gib", "cpu_gbs", "prefer", "gpu", "ram", "why"),
    [
        (None, 16, 20, "balanced", None, "q4_k", "none as good as q4_k (Q4_K_M) decodes at 8"),
        (None, 32, 60, "balanced", None, "q6_k", "the best quality that decodes at 8 tok/s"),
        (None, 16, 20, "quality", None, "q8_0", "the best quality that fits"),
        (None, 32, 60, "speed", None, "q2_k", "the fastest that fits"),
        (8, 16, 20, "balanced", "q6_k", "q4_k", "the best quality that decodes at 8 tok/s"),
        (12, 16, 20, "balanced", "q8_0", "q4_k", "the best quality that decodes at 8 tok/s"),
        (24, 32, 60, "balanced", "q8_0", "q6_k", "the best quality that decodes at 8 tok/s"),
        (None, 5.5, 60, "balanced", None, "q3_k", "nothing as good as q4_k (Q4_K_M) fits"),
    ],
)
def test_recommend_weighs_speed(
    vram_gib: int | None, ram_gib: float, cpu_gbs: float, prefer: str, gpu: str | None,
    ram: str, why: str,
) -> None:  # fmt: skip
    hw = fake_hw(vram=None if vram_gib is None else vram_gib * GIB, ram=int(ram_gib * GIB))
    rec = recommend.recommend(recommend.catalog_candidates(), model="instruct-v3",
                              kv_bytes=KV_8K, n_ctx=8192, hw=hw, bandwidth=fake_bw(cpu_gbs),
                              prefer=recommend.Prefer(prefer))  # fmt: skip
    assert (rec.gpu.candidate.label if rec.gpu else None) == gpu
    assert rec.ram is not None and rec.ram.candidate.label == ram
    assert (rec.gpu or rec.ram).reason.startswith(why)
    assert rec.choice.label == (gpu or ram)
    q4_k = next(c for c in rec.candidates if c.label == "q4_k")
    assert rec.cpu_speed["q4_k"] == recommend.Speed(cpu_gbs * 1e9 / q4_k.size, False)
    assert bool(rec.gpu_speed) == (vram_gib is not None)


def test_measured_rates_beat_estimates(tmp_path: Path) -> None:
    q4, q8 = tmp_path / "ggml-model-q4_k.gguf", tmp_path / "ggml-model-q8_0.gguf"
    q4.write_bytes(b"x" * 4000)
    q8.write_bytes(b"x" * 8000)
    recommend.record_speed(q8, tps=9.0, device="cpu", tokens=64)  # as llama3zh chat does
    bw = recommend.machine_bandwidth()
    assert (
        bw.cpu == 9.0 * 8000
        and "ggml-model-q8_0.gguf at 9.0 tok/s in llama3zh chat" in bw.cpu_basis
    )
    assert bw.gpu == recommend.GPU_BANDWIDTH_ASSUMED and "assumed" in bw.gpu_basis
    cands = [recommend.candidate("q4_k", 4000, q4), recommend.candidate("q8_0", 8000, q8)]
    rec = recommend.recommend(cands, model="m", kv_bytes=0, n_ctx=512,
                              hw=fake_hw(vram=None, ram=GIB))  # fmt: skip
    assert rec.cpu_speed["q8_0"] == recommend.Speed(9.0, True)  # measured, this file
    assert rec.cpu_speed["q4_k"] == recommend.Speed(18.0, False)  # 72 kB/s over 4 kB
    assert rec.ram is not None and rec.ram.candidate.label == "q8_0"
    q8.write_bytes(b"x" * 8001)  # changed since: no longer measured
    assert recommend.measured_speeds() == {}


def test_pull_default_uses_recommend(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama3zh_local import hardware
    from llama3zh_local.hub import pull as hub
    from llama3zh_local.hub import sources

    monkeypatch.setattr(hardware, "detect", lambda: fake_hw(vram=7 * GIB, ram=32 * GIB))
    names = [q.filename for q in catalog.GGUF_QUANTS]
    files = tuple(
        sources.RemoteFile(q.filename, int(q.size_gib * GIB)) for q in catalog.GGUF_QUANTS
    )
    listing = sources.Listing(sources.Source.HF, "hfl/x-gguf", "main", "c" * 40, files, True)
    choose = recommend.default_quant
    _, chosen, notes = hub.select_files(listing, variant=None, default_quant=choose)
    # 7 GiB of VRAM: q5_0 (5.21 + 1 GiB KV + 0.75) fits, q5_k (5.34 + 1.75) does not
    assert [f.name for f in chosen] == ["ggml-model-q5_0.gguf"] and "q5_0" in names[4]
    assert "fits fully on NVIDIA RTX 4060" in notes[0] and "KV cache" in notes[0]
    assert "decodes at 8 tok/s or more" in notes[0] and "tok/s estimated" in notes[0]
    # CPU only, 22 GiB of RAM at 20 GB/s (the machine): q4_k, not q8_0
    monkeypatch.setattr(hardware, "detect", lambda: fake_hw(vram=None, ram=22 * GIB))
    monkeypatch.setattr(recommend, "copy_bandwidth", lambda: 20e9)
    _, chosen, notes = hub.select_files(listing, variant=None, default_quant=choose)
    assert [f.name for f in chosen] == ["ggml-model-q4_k.gguf"]
    assert "none as good as q4_k (Q4_K_M) decodes at 8 tok/s here" in notes[0]


# -- the corpora ----------------------------------------------------------------------------------


def test_shipped_corpora_are_what_the_script_builds() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_corpus.py"), "--check"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_corpora_sizes_languages_and_separation() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import corpus_text
    finally:
        sys.path.pop(0)
    calib = imatrix.default_calibration().read_text(encoding="utf-8")
    held = evaluate.default_eval_text().read_text(encoding="utf-8")
    assert 250_000 < len(calib.encode()) < 500_000 and 60_000 < len(held.encode()) < 150_000
    for text in (calib, held):
        han = sum("\u4e00" <= c <= "\u9fff" for c in text)
        latin = sum(c.isascii() and c.isalpha() for c in text)
        assert han > 0.15 * len(text) and latin > 0.15 * len(text)  # both languages
        assert "```python" in text and "```sql" in text and "|---|" in text  # code, tables
        assert "客服" in text and "Customer:" in text and "### 指令" in text  # dialogue, tasks
    # the hand-written paragraphs and answers are in one text or the other, never both
    written = [*corpus_text.ZH_PARAGRAPHS, *corpus_text.EN_PARAGRAPHS]
    written += [a for _, a in (*corpus_text.ZH_QA, *corpus_text.EN_QA)]
    where = [(w in calib, w in held) for w in written]
    assert all(a != b for a, b in where)
    assert sum(b for _, b in where) >= 15  # the evaluation text has its own share


# -- the CLI: one-line errors ---------------------------------------------------------------------


def test_cli_errors_are_one_line_with_a_hint(synth: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["quantize", str(synth), "-q", "Q9_K"])
    assert r.exit_code == 1 and "Error: unknown quant type 'Q9_K'" in r.stderr
    assert "Hint: valid types:" in r.stderr and r.stdout == ""
    r = runner.invoke(app, ["quantize", str(synth), "-q", "IQ2_XXS", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "needs an importance matrix" in r.stderr
    r = runner.invoke(app, ["quantize", str(synth), "-q", "Q8_0", "-o", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"][0]["file_type"] == "MOSTLY_Q8_0"
    r = runner.invoke(app, ["quantize", str(synth), "-q", "Q8_0", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "already exists" in r.stderr and "--force" in r.stderr
    r = runner.invoke(app, ["imatrix", str(tmp_path / "nope.gguf")])
    assert r.exit_code == 1 and "Error:" in r.stderr


@pytest.mark.parametrize(
    ("vram_gib", "ram_gib", "cpu_gbs", "pick"),
    [(None, 16, 20, "RAM (16.00 GiB available): q4_k"),
     (None, 32, 60, "RAM (32.00 GiB available): q6_k"),
     (8, 16, 20, "GPU (NVIDIA RTX 4060, 8.00 GiB free): q6_k"),
     (12, 16, 20, "GPU (NVIDIA RTX 4060, 12.00 GiB free): q8_0"),
     (24, 32, 60, "GPU (NVIDIA RTX 4060, 24.00 GiB free): q8_0")],
)  # fmt: skip
@pytest.mark.usefixtures("fresh_consoles")
def test_cli_recommend_on_simulated_machines(
    monkeypatch: pytest.MonkeyPatch, vram_gib: int | None, ram_gib: int, cpu_gbs: float, pick: str
) -> None:
    from llama3zh_local import hardware

    hw = fake_hw(vram=None if vram_gib is None else vram_gib * GIB, ram=ram_gib * GIB)
    monkeypatch.setattr(hardware, "detect", lambda: hw)
    monkeypatch.setattr(recommend, "copy_bandwidth", lambda: cpu_gbs * 1e9)
    r = CliRunner().invoke(app, ["recommend"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"Rule (--prefer balanced): {recommend.RULE[recommend.Prefer.balanced]}." in out
    assert pick in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    q4_k = rows["q4_k"].split("│")
    cpu_tps = f"~{cpu_gbs * 1e9 / int(4.58 * GIB):.1f}"
    assert cpu_tps in [cell.strip() for cell in q4_k]  # CPU tok/s, marked as an estimate
    if vram_gib is not None:
        assert "GPU tok/s" in out and f"~{200e9 / int(4.58 * GIB):.1f}" in rows["q4_k"]
    text = " ".join(out.split())
    assert (
        "~ marks an estimate" in text
        and f"CPU {cpu_gbs:g}.0 GB/s, measured by a memory copy" in text
    )
    assert ("GPU 200 GB/s, assumed" in text) == (vram_gib is not None)
    data = json.loads(CliRunner().invoke(app, ["recommend", "--json", "--prefer", "speed"]).stdout)
    assert data["choice"] == "q2_k" and data["prefer"] == "speed"
    assert data["candidates"][0]["cpu_tps_measured"] is False


def test_cli_recommend_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama3zh_local import hardware

    monkeypatch.setattr(hardware, "detect", lambda: fake_hw(vram=12 * GIB, ram=16 * GIB))
    r = CliRunner().invoke(app, ["recommend", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["model"] == "instruct-v3" and data["ctx"] == 8192
    assert data["gpu"]["label"] == "q8_0" and data["choice"] == "q8_0"
    r = CliRunner().invoke(app, ["recommend", "--ctx", "2048"])
    assert r.exit_code == 0, r.output
    assert "GPU (NVIDIA RTX 4060, 12.00 GiB free): q8_0 (7.95 GiB" in r.stdout


def test_cli_source_model_for_an_alias(synth: Path) -> None:
    from llama3zh_local import paths
    from llama3zh_local.errors import ModelNotFoundError
    from llama3zh_local.quant.source import resolve_source as source_model

    with pytest.raises(ModelNotFoundError, match="no f16 GGUF or HF weights") as err:
        source_model("instruct-v3")
    assert "llama3zh pull instruct-v3 --quant f16" in (err.value.hint or "")
    folder = paths.models_dir() / "llama-3-chinese-8b-instruct-v3-gguf"
    folder.mkdir(parents=True)
    (folder / "ggml-model-q4_k.gguf").symlink_to(synth)  # a quant is not a source
    (folder / "ggml-model-f16.gguf").symlink_to(synth)
    assert source_model("instruct-v3") == folder / "ggml-model-f16.gguf"
    assert source_model(str(synth)) == synth


def test_the_rule_is_in_the_readme() -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert recommend.READING_TPS == 8 and recommend.FLOOR_TYPE == "Q4_K_M"
    for words in (
        "at least as good as q4_k (Q4_K_M; below it quality drops steeply)",
        "the best quality among them that decodes at 8 tokens/s or more",
        "`--prefer quality` takes the best that fits however slow; `--prefer speed` the fastest",
        "`llama3zh pull` without `-q` downloads `recommend`'s pick by that rule",
        "质量不低于 q4_k（Q4_K_M，再小质量就急剧下降）",
        "解码速度能达到每秒 8 个词元",
        "`--prefer quality` 改为放得下的质量最好的",
        "下载的就是 `recommend` 按上述规则的选择",
    ):
        assert words in readme, words
