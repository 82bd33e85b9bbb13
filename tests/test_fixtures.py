"""The real-model fixtures are what they claim: shapes, tokenizers, Q/K order, llama.cpp parity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer

from . import models

TEXTS = [
    "Hello, world!",
    "你好，世界！今天天气怎么样？请用中文回答。",
    "  leading spaces, digits 1234567 and 3.14\n\n\ttabs  ",
    "混合 mixed 文本 with émojis 🦙🚀 and I'm sure they'll've",
    models.CHKTXT,
]
LLAMA3_TURN = "<|start_header_id|>user<|end_header_id|>\n\n你好 world<|eot_id|>"
CHATML_TURN = "<|im_start|>user\n你好 world<|im_end|>\n<|im_start|>assistant\n"

TINY_TENSORS = 1 + 9 * 2 + 2  # embeddings, 9 per layer, final norm, lm_head


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _mis_permuted(weights: dict[str, np.ndarray], n_head: int, n_kv: int) -> dict:
    """Weights with Q/K left in GGUF order: what a converter that forgets to permute produces."""
    out = dict(weights)
    for name, w in weights.items():
        if name.endswith("q_proj.weight"):
            out[name] = models.permute_qk(w, n_head)
        elif name.endswith("k_proj.weight"):
            out[name] = models.permute_qk(w, n_kv)
    return out


# -- pure pieces ----------------------------------------------------------------------------------


def test_permute_qk_interleaves_each_heads_halves() -> None:
    rows = np.arange(2 * 8, dtype=np.float32)[:, None]  # 2 heads of head_dim 8
    got = models.permute_qk(rows, 2)[:, 0].astype(int).tolist()
    assert got == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
    w = np.random.default_rng(1).normal(size=(9 * 64, 576)).astype(np.float32)
    for n_head in (9, 3, 1):
        assert np.array_equal(models.unpermute_qk(models.permute_qk(w, n_head), n_head), w)
        assert np.array_equal(models.permute_qk(models.unpermute_qk(w, n_head), n_head), w)


def test_hf_names_agree_with_gguf_tensor_map() -> None:
    # our GGUF -> HF table is the inverse of gguf-py's own HF -> GGUF mapping
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    table = models.gguf_to_hf_names(2)
    assert len(table) == TINY_TENSORS
    for gguf_name, hf_name in table.items():
        assert name_map.get_name(hf_name, try_suffixes=(".weight",)) == gguf_name


def test_cached_builds_once_per_key(tmp_path: Path) -> None:
    calls: list[dict] = []

    def build(dest: Path, **params: object) -> Path:
        calls.append(params)
        (dest / "out.txt").write_text(repr(params))
        return dest

    a = models.cached("thing", build, root=tmp_path, x=1)
    assert models.cached("thing", build, root=tmp_path, x=1) == a
    b = models.cached("thing", build, root=tmp_path, x=2)
    assert b != a and len(calls) == 2
    assert (a / "out.txt").read_text() == "{'x': 1}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])  # no temp left
    os.utime(a, (0, 0))  # unused for decades: the next new build of "thing" prunes it
    c = models.cached("thing", build, root=tmp_path, x=3)
    assert not a.exists() and b.exists() and c.exists()


def test_fixture_cache_is_outside_the_isolated_env(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    assert not tiny_llama3_hf.is_relative_to(tmp_path)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    for var in ("LLAMA3ZH_HOME", "LLAMA3ZH_CONFIG_DIR", "XDG_CACHE_HOME", "HF_HOME"):
        assert Path(os.environ[var]).is_relative_to(tmp_path), var


# -- Llama-3 tokenizer and the tiny HF checkpoint -------------------------------------------------


def test_llama3_tokenizer_json_is_metas(llama3_tokenizer_json: Path) -> None:
    tj = _json(llama3_tokenizer_json)
    assert len(tj["model"]["vocab"]) == 128000 and len(tj["model"]["merges"]) == 280147
    specials = {t["content"]: t["id"] for t in tj["added_tokens"]}
    assert len(specials) == 256 and all(t["special"] for t in tj["added_tokens"])
    assert specials[models.LLAMA3_BOS] == 128000 and specials[models.LLAMA3_EOS] == 128001
    assert specials["<|start_header_id|>"] == 128006
    assert specials["<|end_header_id|>"] == 128007 and specials[models.LLAMA3_EOT] == 128009
    split = tj["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == models.LLAMA3_SPLIT_REGEX


def test_llama3_pre_tokenizer_hash(llama3_tokenizer_json: Path) -> None:
    """convert_hf_to_gguf.py names this file 'smaug-bpe'; with a BOS-adding post-processor (as on
    meta-llama/Meta-Llama-3-8B today) the same vocab is 'llama-bpe'. Both split text alike."""
    ids = Tokenizer.from_file(str(llama3_tokenizer_json)).encode(models.CHKTXT).ids
    assert models.CHKHSH[models.chkhsh(ids)] == "smaug-bpe"
    assert models.CHKHSH[models.chkhsh([models.LLAMA3_BOS_ID, *ids])] == "llama-bpe"


def test_tiny_llama3_hf_config(tiny_llama3_hf: Path) -> None:
    cfg = _json(tiny_llama3_hf / "config.json")
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }
    assert {k: cfg[k] for k in expected} == expected
    gen = _json(tiny_llama3_hf / "generation_config.json")
    assert gen["bos_token_id"] == 128000 and gen["eos_token_id"] == [128001, 128009]
    tc = _json(tiny_llama3_hf / "tokenizer_config.json")
    assert tc["chat_template"] == models.LLAMA3_CHAT_TEMPLATE
    assert (tc["bos_token"], tc["eos_token"]) == ("<|begin_of_text|>", "<|eot_id|>")
    assert tc["added_tokens_decoder"]["128009"]["content"] == "<|eot_id|>"
    assert _json(tiny_llama3_hf / "special_tokens_map.json")["eos_token"] == "<|eot_id|>"
    assert (
        tiny_llama3_hf / "tokenizer.json"
    ).read_bytes() == models.llama3_tokenizer_json().read_bytes()


def test_tiny_llama3_hf_tensors(tiny_llama3_hf: Path) -> None:
    from safetensors.numpy import load_file

    tensors = load_file(str(tiny_llama3_hf / "model.safetensors"))
    d, ff, kv, vocab = 64, 128, 2 * 16, 128256
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    shapes["lm_head.weight"] = (vocab, d)
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (ff, d),
            p + "mlp.up_proj.weight": (ff, d),
            p + "mlp.down_proj.weight": (d, ff),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
    assert {k: v.shape for k, v in tensors.items()} == shapes
    assert all(v.dtype == np.float16 for v in tensors.values())
    emb = tensors["model.embed_tokens.weight"].astype(np.float32)
    assert 0.015 < emb.std() < 0.025 and np.isfinite(emb).all()
    # same seed, same weights: the fixture is reproducible
    assert np.array_equal(
        models.tiny_llama3_weights()["model.norm.weight"].astype(np.float16),
        tensors["model.norm.weight"],
    )


def test_tiny_llama3_hf_bf16_sharded(tiny_llama3_hf_bf16: Path, tiny_llama3_hf: Path) -> None:
    from safetensors import safe_open

    index = _json(tiny_llama3_hf_bf16 / "model.safetensors.index.json")
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert len(index["weight_map"]) == TINY_TENSORS
    for shard in shards:  # the official parser accepts our hand-written BF16 files
        with safe_open(str(tiny_llama3_hf_bf16 / shard), framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}
            assert {index["weight_map"][k] for k in f.keys()} == {shard}
    assert _json(tiny_llama3_hf_bf16 / "config.json")["torch_dtype"] == "bfloat16"
    bf16 = models.read_hf_weights(tiny_llama3_hf_bf16)
    f16 = models.read_hf_weights(tiny_llama3_hf)
    assert bf16.keys() == f16.keys()
    for name, a in bf16.items():
        # bf16 keeps 8 bits of mantissa: within 2^-8 relative of the f16 values
        assert np.allclose(a, f16[name], rtol=2**-8, atol=1e-6), name
        assert not np.array_equal(a, f16[name]), name


# -- tiny Llama-3 GGUF ----------------------------------------------------------------------------


def test_tiny_llama3_gguf_header(tiny_llama3_gguf: Path) -> None:
    from llama3zh_local.gguf.reader import read_header

    header = read_header(tiny_llama3_gguf)
    assert header is not None
    kv, tensors = header.kv, header.tensors
    expected = {
        gguf.Keys.General.ARCHITECTURE: "llama",
        gguf.Keys.General.FILE_TYPE: int(gguf.LlamaFileType.MOSTLY_F16),
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.context_length": 8192,
        "llama.rope.freq_base": 500000.0,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": 128256,
        gguf.Keys.Tokenizer.MODEL: "gpt2",
        gguf.Keys.Tokenizer.PRE: "llama-bpe",
        gguf.Keys.Tokenizer.BOS_ID: 128000,
        gguf.Keys.Tokenizer.EOS_ID: 128009,
        gguf.Keys.Tokenizer.ADD_BOS: True,
        gguf.Keys.Tokenizer.CHAT_TEMPLATE: models.LLAMA3_CHAT_TEMPLATE,
    }
    assert {k: kv.get(k) for k in expected} == expected
    assert len(kv[gguf.Keys.Tokenizer.LIST]) == 128256
    assert len(kv[gguf.Keys.Tokenizer.TOKEN_TYPE]) == 128256
    assert len(kv[gguf.Keys.Tokenizer.MERGES]) == 280147
    assert len(tensors) == TINY_TENSORS


def test_tiny_llama3_gguf_matches_special_vocab(tiny_llama3_hf: Path) -> None:
    """The tokenizer keys are what gguf.SpecialVocab (used by convert_hf_to_gguf) reads."""
    sv = gguf.SpecialVocab(tiny_llama3_hf, load_merges=True)
    assert sv.special_token_ids["bos"] == models.LLAMA3_BOS_ID
    assert sv.special_token_ids["eos"] == models.LLAMA3_EOT_ID
    assert sv.chat_template == models.LLAMA3_CHAT_TEMPLATE
    tokens, types, merges = models.llama3_gguf_vocab()
    assert list(sv.merges) == merges
    assert types.count(gguf.TokenType.CONTROL) == 256 and types[128009] == gguf.TokenType.CONTROL
    assert tokens[128009] == "<|eot_id|>" and tokens[220] == "Ġ"


def test_tiny_llama3_gguf_is_the_hf_checkpoint_converted(
    tiny_llama3_gguf: Path, tiny_llama3_hf: Path
) -> None:
    """Tensor by tensor, byte for byte: Q/K permuted, 2-D in F16, norms in F32, shapes reversed."""
    from llama3zh_local.gguf.reader import read_header

    header = read_header(tiny_llama3_gguf)  # gguf.GGUFReader takes 10 s on this vocab
    assert header is not None
    hf = models.read_hf_weights(tiny_llama3_hf)
    names = models.gguf_to_hf_names(2)
    with open(tiny_llama3_gguf, "rb") as fh:
        for name, offset, size in ((t.name, t.offset, t.size) for t in header.tensors):
            want = hf[names[name]]
            if names[name].endswith("q_proj.weight"):
                want = models.permute_qk(want, 4)
            elif names[name].endswith("k_proj.weight"):
                want = models.permute_qk(want, 2)
            want = want.astype(np.float16 if want.ndim == 2 else np.float32)
            fh.seek(offset)
            assert size == want.nbytes and fh.read(size) == want.tobytes(), name


@pytest.mark.slow
def test_tiny_llama3_gguf_tokenizes_like_hf(
    tiny_llama3_gguf: Path, llama3_tokenizer_json: Path
) -> None:
    from llama3zh_local.llamacpp.engine import Model

    hf = Tokenizer.from_file(str(llama3_tokenizer_json))
    with Model(tiny_llama3_gguf) as model:
        assert model.n_vocab == 128256 and model.n_layer == 2 and model.add_bos
        for text in [*TEXTS, LLAMA3_TURN]:
            ids = hf.encode(text, add_special_tokens=False).ids
            assert model.tokenize(text, add_special=False) == ids, text
            assert model.tokenize(text, add_special=True) == [128000, *ids], text
        turn = model.tokenize(LLAMA3_TURN, add_special=False)
        assert turn[:2] == [128006, 882] and turn[-1] == 128009  # 882 = "user"
        assert model.is_eog(128009) and model.is_eog(128001) and not model.is_eog(128006)
        assert model.token_id("<|eot_id|>") == 128009
        assert model.detokenize(turn, special=True) == LLAMA3_TURN
        assert model.meta("tokenizer.chat_template") == models.LLAMA3_CHAT_TEMPLATE


@pytest.mark.isolated  # decodes in-process: a native crash fails only this test
@pytest.mark.slow
def test_tiny_llama3_gguf_generates(tiny_llama3_gguf: Path) -> None:
    from llama3zh_local.llamacpp.engine import ContextSettings, Model, SamplingParams, Session

    with Model(tiny_llama3_gguf) as model, Session(model, ContextSettings(n_ctx=256)) as session:
        prompt = model.tokenize(
            LLAMA3_TURN + "<|start_header_id|>assistant<|end_header_id|>\n\n", add_special=True
        )
        greedy = SamplingParams(temperature=0.0, repeat_penalty=1.0)
        records = list(session.generate(prompt, greedy, max_tokens=8))
        first = "".join(r.text for r in records)
        assert records[-1].generation_tokens == 8 and records[-1].finish_reason == "length"
        again = "".join(r.text for r in session.generate(prompt, greedy, max_tokens=8))
        assert again == first  # greedy on the cached prompt is deterministic


@pytest.mark.slow
def test_tiny_llama3_gguf_logits_match_hf_reference(
    tiny_llama3_gguf: Path, tiny_llama3_hf: Path, llama3_tokenizer_json: Path
) -> None:
    """llama.cpp on the GGUF computes what transformers computes on the HF checkpoint."""

    ids = (
        Tokenizer.from_file(str(llama3_tokenizer_json))
        .encode("<|begin_of_text|>" + LLAMA3_TURN + "Hello world, how are you today? 今天怎么样？")
        .ids
    )
    got = models.llamacpp_logits(tiny_llama3_gguf, ids, n_ctx=128)
    ref = models.llama_reference_logits(tiny_llama3_hf, ids)
    assert np.abs(ref).max() > 0.5  # the logits are not all ~0 (random weights, but not tiny)
    assert np.abs(got - ref).max() < 0.02  # measured 2.4e-3
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    # and the check has teeth: Q/K left in GGUF order is far off (measured 0.76)
    wrong = models.llama_reference_logits(
        tiny_llama3_hf, ids, weights=_mis_permuted(models.read_hf_weights(tiny_llama3_hf), 4, 2)
    )
    assert np.abs(got - wrong).max() > 0.2


# -- SmolLM2, GGUF -> HF --------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_hf_config_and_tensors(smollm2_hf: Path) -> None:
    from safetensors import safe_open

    cfg = _json(smollm2_hf / "config.json")
    expected = {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
    }
    assert {k: cfg[k] for k in expected} == expected
    with safe_open(str(smollm2_hf / "model.safetensors"), framework="numpy") as f:
        keys = set(f.keys())
        assert len(keys) == 1 + 9 * 30 + 1 and "lm_head.weight" not in keys  # tied
        emb = f.get_tensor("model.embed_tokens.weight")
        assert emb.shape == (49152, 576) and emb.dtype == np.float16
        assert f.get_slice("model.layers.29.self_attn.k_proj.weight").get_shape() == [192, 576]
        assert f.get_slice("model.layers.0.mlp.down_proj.weight").get_shape() == [576, 1536]
    assert np.isfinite(emb).all() and emb.astype(np.float32).std() > 0.01
    tc = _json(smollm2_hf / "tokenizer_config.json")
    assert (tc["bos_token"], tc["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert tc["chat_template"].startswith("{% for message in messages %}")
    assert "<|im_start|>" in tc["chat_template"] and tc["add_bos_token"] is False


@pytest.mark.slow
def test_smollm2_hf_unpermutes_q_and_k_exactly(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    """Re-permuting the HF Q/K gives the GGUF's dequantized tensors bit for bit; V/O untouched."""
    from safetensors import safe_open

    reader = gguf.GGUFReader(smollm2_gguf)
    by_name = {t.name: t for t in reader.tensors}
    with safe_open(str(smollm2_hf / "model.safetensors"), framework="numpy") as f:
        for bid in (0, 17, 29):
            for part, n_head in (("q", 9), ("k", 3), ("v", None), ("output", None)):
                t = by_name[f"blk.{bid}.attn_{part}.weight"]
                source = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float16)
                hf_part = "o" if part == "output" else part
                hf = f.get_tensor(f"model.layers.{bid}.self_attn.{hf_part}_proj.weight")
                back = hf if n_head is None else models.permute_qk(hf, n_head)
                assert back.view(np.uint16).tobytes() == source.view(np.uint16).tobytes()
                if n_head is not None:
                    assert not np.array_equal(hf, source)


@pytest.mark.slow
def test_smollm2_hf_tokenizer_matches_llama_cpp(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    import llama_cpp

    hf = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json"))
    assert hf.get_vocab_size() == 49152
    assert models.CHKHSH[models.chkhsh(hf.encode(models.CHKTXT).ids)] == "smollm"
    llm = llama_cpp.Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    try:
        for text in [*TEXTS, CHATML_TURN]:
            want = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert hf.encode(text, add_special_tokens=False).ids == want, text
            assert hf.decode(want, skip_special_tokens=False) == text
    finally:
        llm.close()
    assert hf.encode(CHATML_TURN).ids[0] == 1  # <|im_start|> is one special token


@pytest.mark.slow
def test_smollm2_hf_logits_match_gguf(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    """transformers' math on the HF checkpoint ~ llama.cpp on the Q4_1 GGUF (which also rounds
    activations to 8 bits, so the logits agree closely but not exactly)."""
    import llama_cpp

    hf = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json"))
    ids = hf.encode(
        "<|im_start|>user\nWhat is the capital of France? 法国的首都是哪里？<|im_end|>\n"
        "<|im_start|>assistant\n"
    ).ids
    llm = llama_cpp.Llama(
        model_path=str(smollm2_gguf), n_ctx=128, logits_all=True, verbose=False, n_threads=2
    )
    try:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    weights = models.read_hf_weights(smollm2_hf)
    ref = models.llama_reference_logits(smollm2_hf, ids, weights=weights)
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    agree = (got.argmax(-1) == ref.argmax(-1)).mean()
    assert corr > 0.99 and agree > 0.75, (corr, agree)  # measured 0.999, 0.89
    assert hf.decode([int(ref[-1].argmax())]) == "France"
    wrong = models.llama_reference_logits(smollm2_hf, ids, weights=_mis_permuted(weights, 9, 3))
    assert (got.argmax(-1) == wrong.argmax(-1)).mean() < 0.6  # measured 0.46


@pytest.mark.slow
def test_tokenizer_from_gguf_vocab_rebuilds_llama3(llama3_tokenizer_json: Path) -> None:
    meta = Tokenizer.from_file(str(llama3_tokenizer_json))
    rebuilt = models.tokenizer_from_gguf_vocab(*models.llama3_gguf_vocab(), "llama-bpe")
    for text in [*TEXTS, LLAMA3_TURN]:
        assert rebuilt.encode(text).ids == meta.encode(text).ids, text
