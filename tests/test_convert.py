"""`llama3zh convert`: tensors, metadata, streaming, atomic output, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from llama3zh_local.cli import app
from llama3zh_local.convert import llama as cv
from llama3zh_local.convert import vocab as hfvocab
from llama3zh_local.convert import writer
from llama3zh_local.errors import (
    DiskSpaceError,
    InvalidModelError,
    ModelNotFoundError,
    UsageError,
)
from llama3zh_local.files import space

from . import ggufraw, models

runner = CliRunner()
Q = gguf.GGMLQuantizationType


def copy_checkpoint(src: Path, dest: Path) -> Path:
    """A writable copy: small files copied, weights linked (tests that break weights copy them)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            os.symlink(f, dest / f.name)
        else:
            shutil.copyfile(f, dest / f.name)
    return dest


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_f16(tiny_llama3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-f16") / "tiny-f16.gguf"
    cv.convert(source=tiny_llama3_hf, output=out, outtype="f16")
    return out


# -- pure pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "outtype", "want"),
    [
        ("token_embd.weight", (128, 64), "f16", Q.F16),
        ("output.weight", (128, 64), "q8_0", Q.Q8_0),
        ("blk.0.attn_norm.weight", (64,), "q8_0", Q.F32),
        ("blk.0.ffn_norm.weight", (64,), "f16", Q.F32),
        ("output_norm.weight", (64,), "bf16", Q.F32),
        ("blk.0.attn_q.bias", (64,), "f16", Q.F32),
        ("blk.0.attn_q.weight", (64, 64), "bf16", Q.BF16),
        ("blk.0.attn_q.weight", (64, 64), "f32", Q.F32),
        ("blk.0.ffn_down.weight", (64, 48), "q8_0", Q.F16),  # 48 % 32: the reference falls back
        ("blk.0.attn_q.weight.lora_b", (64, 8), "q8_0", Q.F16),
        ("blk.0.attn_q.weight.lora_a", (8, 64), "q8_0", Q.Q8_0),
    ],
)
def test_tensor_types_follow_the_reference(
    name: str, shape: tuple[int, ...], outtype: str, want: Q
) -> None:
    assert writer.tensor_qtype(name, shape, writer.file_type_for(outtype, None)) == want


def test_auto_outtype_follows_the_first_matrix() -> None:
    assert writer.file_type_for("auto", "BF16") == gguf.LlamaFileType.MOSTLY_BF16
    assert writer.file_type_for("auto", "F16") == gguf.LlamaFileType.MOSTLY_F16
    assert writer.file_type_for("auto", "F32") == gguf.LlamaFileType.MOSTLY_F16  # as the reference


def test_qk_order_is_the_fixture_permutation() -> None:
    w = np.random.default_rng(0).normal(size=(8 * 16, 24)).astype(np.float32)
    for n_head in (8, 4, 2):
        assert np.array_equal(w[writer.qk_order(len(w), n_head)], models.permute_qk(w, n_head))


def test_encode_matches_gguf_quants_and_keeps_raw_bits() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    x[0, :3] = [70000.0, -1e6, np.nan]
    bf16 = gguf.quants.quantize(x, Q.BF16).view(np.uint16).reshape(x.shape)
    # bf16 in, bf16 out: the bits, with NaNs made quiet as gguf's f32 -> bf16 does
    signalling = bf16.copy()
    signalling[1, 0] = 0x7F81
    out = writer.encode(signalling, "BF16", Q.BF16).view(np.uint16)
    f32 = (signalling.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(out, gguf.quants.quantize(f32, Q.BF16).view(np.uint16).reshape(x.shape))
    assert out[1, 0] == 0x7FC1
    # f16 overflows to inf, as numpy's cast in the reference
    f16 = writer.encode(bf16, "BF16", Q.F16)
    assert np.isinf(f16[0, 0]) and np.isinf(f16[0, 1])
    q8 = writer.encode(x[1:], "F32", Q.Q8_0)
    assert np.array_equal(q8, gguf.quants.quantize(x[1:], Q.Q8_0))
    h = x[1:].astype(np.float16)
    assert writer.encode(h, "F16", Q.F16).tobytes() == h.tobytes()
    assert np.array_equal(writer.encode(h, "F16", Q.Q8_0), gguf.quants.quantize(h, Q.Q8_0))


def test_llama3_rope_factors() -> None:
    p = cv.LlamaParams(
        n_layer=1, n_embd=4096, n_ff=1, n_head=32, n_head_kv=8, head_dim=128, n_vocab=1,
        n_ctx=131072, rope_theta=500000.0, rms_eps=1e-5,
        rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )  # fmt: skip
    f = cv.llama3_rope_factors(p)
    assert f is not None and f.dtype == np.float32 and f.shape == (64,)
    assert f[0] == 1.0 and f[-1] == 8.0 and ((f >= 1) & (f <= 8)).all()
    assert np.all(np.diff(f) >= 0)  # low frequencies are stretched most
    assert cv.llama3_rope_factors(cv.LlamaParams(**{**p.__dict__, "rope": {}})) is None


def test_pre_tokenizer_table(llama3_tokenizer_json: Path, smollm2_hf: Path) -> None:
    meta = json.loads(llama3_tokenizer_json.read_text(encoding="utf-8"))
    where = Path("tokenizer.json")
    assert hfvocab.detect_pre(meta, where=where) == "llama-bpe"
    # the regex we mirror from llama.cpp is the one Meta's file carries
    assert meta["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == hfvocab.LLAMA3_REGEX
    assert hfvocab.LLAMA3_REGEX == models.LLAMA3_SPLIT_REGEX
    smol = json.loads((smollm2_hf / "tokenizer.json").read_text(encoding="utf-8"))
    assert hfvocab.detect_pre(smol, where=where) == "smollm"
    no_ignore = json.loads(json.dumps(meta))
    no_ignore["model"]["ignore_merges"] = False
    assert hfvocab.detect_pre(no_ignore, where=where) == "smaug-bpe"
    other = json.loads(json.dumps(meta))
    other["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\w+"
    with pytest.raises(InvalidModelError, match="unknown BPE pre-tokenizer") as e:
        hfvocab.detect_pre(other, where=where)
    assert "llama-bpe" in (e.value.hint or "")


@pytest.mark.parametrize(
    ("token", "special"),
    [("<|eot_id|>", True), ("<pad>", True), ("<unused12>", True), ("hello", False),
     ("<s>", False), ("<｜end▁of▁sentence｜>", True)],
)  # fmt: skip
def test_looks_special(token: str, special: bool) -> None:
    assert hfvocab.looks_special(token) is special


# -- the tiny Llama-3 fixture ---------------------------------------------------------------------


def test_f16_tensors_equal_the_fixture_gguf(tiny_f16: Path, tiny_llama3_gguf: Path) -> None:
    """The fixture GGUF is written the way convert_hf_to_gguf.py writes these weights."""
    ours, ref = ggufraw.read(tiny_f16), ggufraw.read(tiny_llama3_gguf)
    assert set(ours.tensors) == set(ref.tensors) and len(ours.tensors) == 21
    for name in ref.tensors:
        assert ours.tensors[name][:2] == ref.tensors[name][:2], name
        assert ours.tensor_bytes(name) == ref.tensor_bytes(name), name
    for key in ("llama.block_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
                "llama.context_length", "llama.rope.dimension_count", "general.file_type",
                "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):  # fmt: skip
        assert ours.kv[key] == ref.kv[key], key


def test_metadata_and_provenance(tiny_f16: Path) -> None:
    kv = ggufraw.read(tiny_f16).kv
    assert kv["general.architecture"] == "llama" and kv["general.type"] == "model"
    assert kv["tokenizer.ggml.pre"] == "llama-bpe"
    assert kv["tokenizer.ggml.eot_token_id"] == models.LLAMA3_EOT_ID
    assert kv["tokenizer.ggml.eos_token_id"] == models.LLAMA3_EOT_ID  # tokenizer_config's eos
    assert kv["tokenizer.ggml.add_bos_token"] is True
    assert kv["tokenizer.chat_template"] == models.LLAMA3_CHAT_TEMPLATE
    assert kv["llama.attention.key_length"] == 16 and kv["llama.vocab_size"] == 128256
    assert kv["llama3zh.converter"].startswith("llama3zh-local ")
    assert kv["general.sampling.temp"] == pytest.approx(0.6)  # from generation_config.json


def test_bf16_shards_stay_bf16(tiny_llama3_hf_bf16: Path, tmp_path: Path) -> None:
    res = cv.convert(source=tiny_llama3_hf_bf16, output=tmp_path / "m.gguf")  # auto
    assert res.outtype == "bf16" and res.file_type == "MOSTLY_BF16"
    g = ggufraw.read(res.path)
    assert g.tensor_type("token_embd.weight") == "BF16"
    assert g.tensor_type("blk.0.attn_norm.weight") == "F32"
    raw = {}
    for f in sorted(tiny_llama3_hf_bf16.glob("*.safetensors")):
        from gguf.utility import SafetensorsLocal

        with SafetensorsLocal(f) as ts:
            raw |= {n: t.mmap_bytes().view(np.uint16).reshape(t.shape) for n, t in ts.items()}
    assert g.tensor_bytes("token_embd.weight") == raw["model.embed_tokens.weight"].tobytes()
    q = raw["model.layers.1.self_attn.q_proj.weight"]
    assert g.tensor_bytes("blk.1.attn_q.weight") == models.permute_qk(q, 4).tobytes()


def test_q8_0_dequantizes_close_to_the_weights(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    res = cv.convert(source=tiny_llama3_hf, output=tmp_path / "q.gguf", outtype="q8_0")
    g = ggufraw.read(res.path)
    w = models.read_hf_weights(tiny_llama3_hf)
    assert g.tensor_type("blk.0.ffn_up.weight") == "Q8_0"
    got = g.array("blk.0.ffn_up.weight")
    want = w["model.layers.0.mlp.up_proj.weight"]
    assert np.abs(got - want).max() <= np.abs(want).max() / 127  # within one step of 8 bits


@pytest.mark.isolated  # decodes in-process: a native crash fails only this test
def test_loads_and_generates_in_llama_cpp(tiny_f16: Path) -> None:
    from llama3zh_local.llamacpp.engine import ContextSettings, Model, SamplingParams, Session

    with Model(tiny_f16) as model, Session(model, ContextSettings(n_ctx=128)) as session:
        assert model.add_bos and model.n_vocab == 128256
        assert model.is_eog(models.LLAMA3_EOT_ID) and model.is_eog(models.LLAMA3_EOS_ID)
        prompt = model.tokenize("你好", add_special=True)
        assert prompt[0] == models.LLAMA3_BOS_ID
        greedy = SamplingParams(temperature=0.0, repeat_penalty=1.0)
        *_, last = session.generate(prompt, greedy, max_tokens=4)
        assert last.generation_tokens >= 1


@pytest.mark.slow
def test_logits_match_the_hf_reference(tiny_f16: Path, tiny_llama3_hf: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_llama3_hf / "tokenizer.json"))
    ids = tok.encode("<|begin_of_text|>Hello world, 今天天气怎么样？ 1234").ids
    got = models.llamacpp_logits(tiny_f16, ids, n_ctx=64)
    ref = models.llama_reference_logits(tiny_llama3_hf, ids)
    assert np.abs(got - ref).max() < 0.02
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_dry_run_writes_nothing(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    res = cv.convert(source=tiny_llama3_hf, output=tmp_path / "x.gguf", dry_run=True)
    assert res.dry_run and res.tensor_count == 21 and res.size > 30_000_000
    assert list(tmp_path.iterdir()) == []


def test_output_folder_and_default_name(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    res = cv.convert(source=tiny_llama3_hf, output=tmp_path, outtype="bf16")
    assert res.path == tmp_path / "ggml-model-bf16.gguf" and res.path.is_file()
    src = copy_checkpoint(tiny_llama3_hf, tmp_path / "src")
    res = cv.convert(source=src)
    assert res.path == src / "ggml-model-f16.gguf"


# -- streaming ------------------------------------------------------------------------------------

_RSS_SCRIPT = textwrap.dedent(
    """
    import re, sys, time
    from llama3zh_local.convert import llama as cv
    from llama3zh_local.llamacpp import native

    def hwm():  # this process's peak RSS (ru_maxrss would include the parent's, before exec)
        status = open("/proc/self/status").read()
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024

    native.lib()  # load llama.cpp first: the baseline includes what the read-back needs
    base = hwm()
    t = time.perf_counter()
    cv.convert(source=sys.argv[1], output=sys.argv[2], outtype=sys.argv[3], force=True)
    print(base, hwm(), time.perf_counter() - t)
    """
)


def build_wide_llama(dest: Path, *, hidden: int = 1024, layers: int = 4, dtype: str = "bfloat16"):
    """A Llama-shaped checkpoint with the real vocab, big enough that streaming shows."""
    dest.mkdir(parents=True)
    rng = np.random.default_rng(0)
    vocab, ff, kv = models.LLAMA3_VOCAB_SIZE, hidden * 2, hidden // 4
    w: dict[str, np.ndarray] = {}

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    w["model.embed_tokens.weight"] = normal(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
        w[p + "self_attn.q_proj.weight"] = normal(hidden, hidden)
        w[p + "self_attn.k_proj.weight"] = normal(kv, hidden)
        w[p + "self_attn.v_proj.weight"] = normal(kv, hidden)
        w[p + "self_attn.o_proj.weight"] = normal(hidden, hidden)
        w[p + "mlp.gate_proj.weight"] = normal(ff, hidden)
        w[p + "mlp.up_proj.weight"] = normal(ff, hidden)
        w[p + "mlp.down_proj.weight"] = normal(hidden, ff)
    w["model.norm.weight"] = np.ones(hidden, np.float32)
    w["lm_head.weight"] = normal(vocab, hidden)
    models.save_hf_weights(dest, w, dtype=dtype, shards=2)
    cfg = {**models.TINY_LLAMA3_CONFIG, "hidden_size": hidden, "intermediate_size": ff,
           "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
           "num_key_value_heads": hidden // 256, "torch_dtype": dtype}  # fmt: skip
    (dest / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    shutil.copyfile(models.llama3_tokenizer_json(), dest / "tokenizer.json")
    (dest / "tokenizer_config.json").write_text(
        json.dumps(models.llama3_tokenizer_config()), encoding="utf-8"
    )
    return dest


@pytest.mark.slow
def test_peak_memory_stays_far_below_the_model(tmp_path: Path) -> None:
    src = build_wide_llama(tmp_path / "wide")  # ~600 MB of bf16 weights
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert size > 500e6
    for outtype in ("f16", "q8_0"):
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(src), str(tmp_path / "o.gguf"), outtype],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        base, peak, seconds = map(float, proc.stdout.split())
        grew = peak - base
        # a few chunks of rows in flight and the vocabulary's Python strings (~150 MB), not the
        # model, nor even its largest tensor (the 262 MB embedding)
        embedding = models.LLAMA3_VOCAB_SIZE * 1024 * 2
        assert grew < min(embedding, size / 3), (outtype, grew / 1e6, size / 1e6)
        print(f"{outtype}: {size / 1e6:.0f} MB in {seconds:.1f} s, RSS +{grew / 1e6:.0f} MB")


# -- errors ---------------------------------------------------------------------------------------


def test_refuses_existing_output_unless_forced(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists") as e:
        cv.convert(source=tiny_llama3_hf, output=out)
    assert "--force" in (e.value.hint or "") and out.read_bytes() == b"precious"
    cv.convert(source=tiny_llama3_hf, output=out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def _broken(tiny: Path, tmp: Path, how: str) -> Path:
    src = copy_checkpoint(tiny, tmp / how)
    st = src / "model.safetensors"
    if how in ("truncated", "header", "offsets"):
        data = st.resolve().read_bytes()
        st.unlink()
        if how == "truncated":
            data = data[: len(data) // 2]
        elif how == "header":
            data = (10**12).to_bytes(8, "little") + data[8:]
        else:
            n = int.from_bytes(data[:8], "little")
            head = json.loads(data[8 : 8 + n])
            name = "model.norm.weight"
            head[name]["data_offsets"][1] += 10**9
            raw = json.dumps(head, separators=(",", ":")).encode()
            raw += b" " * (n - len(raw)) if len(raw) <= n else b""
            assert len(raw) == n
            data = data[:8] + raw + data[8 + n :]
        st.write_bytes(data)
    elif how == "no-config":
        (src / "config.json").unlink()
    elif how == "bad-config":
        (src / "config.json").write_text("{not json", encoding="utf-8")
    elif how == "arch":
        edit_json(src / "config.json", architectures=["MistralForCausalLM"])
    elif how == "no-layers":
        edit_json(src / "config.json", num_hidden_layers=0)
    elif how == "shape":
        edit_json(src / "config.json", intermediate_size=256)
    elif how == "no-tokenizer":
        (src / "tokenizer.json").unlink()
    elif how == "spm":
        (src / "tokenizer.json").unlink()
        (src / "tokenizer.model").write_bytes(b"\x00")
    elif how == "pre":
        tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
        tj["pre_tokenizer"] = {"type": "Whitespace"}
        (src / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    elif how == "no-weights":
        st.unlink()
    elif how == "bin":
        st.unlink()
        (src / "pytorch_model.bin").write_bytes(b"\x00")
    return src


@pytest.mark.parametrize(
    ("how", "error", "needle"),
    [
        ("truncated", InvalidModelError, "truncated"),
        ("header", InvalidModelError, "header length"),
        ("offsets", InvalidModelError, "truncated"),
        ("no-config", ModelNotFoundError, "config.json is missing"),
        ("bad-config", InvalidModelError, "not valid JSON"),
        ("arch", InvalidModelError, "MistralForCausalLM is not supported"),
        ("no-layers", InvalidModelError, "num_hidden_layers"),
        ("shape", InvalidModelError, "config.json says"),
        ("no-tokenizer", ModelNotFoundError, "no tokenizer.json"),
        ("spm", ModelNotFoundError, "no tokenizer.json"),
        ("pre", InvalidModelError, "unknown BPE pre-tokenizer"),
        ("no-weights", ModelNotFoundError, r"no \*\.safetensors"),
        ("bin", ModelNotFoundError, r"no \*\.safetensors"),
    ],
)
def test_bad_input_is_one_error_and_no_output(
    tiny_llama3_hf: Path, tmp_path: Path, how: str, error: type, needle: str
) -> None:
    src = _broken(tiny_llama3_hf, tmp_path, how)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    with pytest.raises(error, match=needle) as e:
        cv.convert(source=src, output=out)
    assert e.value.hint
    assert "\n" not in str(e.value)
    assert list(out.parent.iterdir()) == []


def test_shards_that_disagree_with_the_index(tiny_llama3_hf_bf16: Path, tmp_path: Path) -> None:
    src = copy_checkpoint(tiny_llama3_hf_bf16, tmp_path / "src")
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        cv.convert(source=src, output=tmp_path / "m.gguf")
    src2 = copy_checkpoint(tiny_llama3_hf_bf16, tmp_path / "src2")
    index = json.loads((src2 / "model.safetensors.index.json").read_text(encoding="utf-8"))
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (src2 / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(InvalidModelError, match="do not match model.safetensors.index.json"):
        cv.convert(source=src2, output=tmp_path / "m.gguf")


def test_not_enough_space_is_checked_first(
    tiny_llama3_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda _p: 1000)
    with pytest.raises(DiskSpaceError, match="not enough free space"):
        cv.convert(source=tiny_llama3_hf, output=tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_leaves_nothing(
    tiny_llama3_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real = writer.encode
    calls = {"n": 0}

    def fill_up(*args: object, **kw: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "encode", fill_up)
    with pytest.raises(DiskSpaceError, match="is full"):
        cv.convert(source=tiny_llama3_hf, output=tmp_path / "m.gguf")
    # _env: conftest's LLAMA3ZH_HOME (which holds the journal of temporary names)
    assert [p for p in tmp_path.iterdir() if p.name != "_env"] == []


def test_bad_outtype() -> None:
    with pytest.raises(UsageError, match="q4_0"):
        cv.convert(source="/nonexistent", outtype="q4_0")


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_prints_only_the_path(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["convert", str(tiny_llama3_hf), "-o", str(out), "--outtype", "q8_0"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    assert ggufraw.read(out).kv["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)


def test_cli_errors_are_one_line(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"x")
    r = runner.invoke(app, ["convert", str(tiny_llama3_hf), "-o", str(out)])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "already exists" in r.stderr
    assert "Hint: add --force" in r.stderr and r.stdout == ""
    r = runner.invoke(app, ["convert", "instruct-v3"])
    assert r.exit_code == 1 and "llama3zh pull instruct-v3" in r.stderr


def test_cli_alias_converts_into_the_store(tiny_llama3_hf: Path) -> None:
    from llama3zh_local import paths
    from llama3zh_local.hub import store

    pulled = paths.models_dir() / "llama-3-chinese-8b-instruct-v3"
    copy_checkpoint(tiny_llama3_hf, pulled)
    r = runner.invoke(app, ["convert", "instruct-v3", "--outtype", "f16"])
    assert r.exit_code == 0, r.output
    want = paths.models_dir() / "llama-3-chinese-8b-instruct-v3-gguf" / "ggml-model-f16.gguf"
    assert r.stdout.strip() == str(want)
    assert store.resolve_gguf("instruct-v3", quant="f16") == want
    kv = ggufraw.read(want).kv
    assert kv["llama3zh.source.repo"] == "hfl/llama-3-chinese-8b-instruct-v3"
    assert kv["general.source.repo_url"].endswith("hfl/llama-3-chinese-8b-instruct-v3")


def test_cli_dry_run(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["convert", str(tiny_llama3_hf), "-o", str(out), "--dry-run"])
    assert r.exit_code == 0 and r.stdout.strip() == str(out) and not out.exists()
    assert "would write 21 tensors" in r.stderr
