"""A small Llama GGUF that llama.cpp loads and chats with, with any metadata key overridden.

Unlike quantfix's synthetic model, this one has a complete SentencePiece vocabulary (the 256
byte tokens included), so llama.cpp can tokenize any text with it. ``meta`` replaces or adds
keys (``{key: value}`` with the value's GGUF type inferred, or ``(GGUFValueType, value)``);
``None`` as a value drops the key. ``shapes`` changes a tensor's shape (its data follows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ARCH = "llama"


def write_model(
    path: Path,
    *,
    n_embd: int = 256,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_layer: int = 2,
    n_ff: int = 128,
    ctx_train: int = 2048,
    meta: dict[str, Any] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> Path:
    import gguf

    T = gguf.GGUFValueType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["▁", "▁the", "▁a", "▁hi", "的", "是"]
    types = [2, 3, 3] + [6] * 256 + [1] * 6  # UNKNOWN, CONTROL, BYTE, NORMAL
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    keys: dict[str, tuple[Any, Any]] = {
        "general.architecture": (T.STRING, ARCH),
        "general.type": (T.STRING, "model"),
        "general.name": (T.STRING, "ggufgen"),
        "general.file_type": (T.UINT32, int(gguf.LlamaFileType.ALL_F32)),
        f"{ARCH}.block_count": (T.UINT32, n_layer),
        f"{ARCH}.context_length": (T.UINT32, ctx_train),
        f"{ARCH}.embedding_length": (T.UINT32, n_embd),
        f"{ARCH}.feed_forward_length": (T.UINT32, n_ff),
        f"{ARCH}.attention.head_count": (T.UINT32, n_head),
        f"{ARCH}.attention.head_count_kv": (T.UINT32, n_head_kv),
        f"{ARCH}.attention.layer_norm_rms_epsilon": (T.FLOAT32, 1e-5),
        f"{ARCH}.rope.dimension_count": (T.UINT32, head_dim),
        f"{ARCH}.rope.freq_base": (T.FLOAT32, 10000.0),
        f"{ARCH}.vocab_size": (T.UINT32, n_vocab),
        "tokenizer.ggml.model": (T.STRING, "llama"),
        "tokenizer.ggml.tokens": ((T.ARRAY, T.STRING), tokens),
        "tokenizer.ggml.scores": ((T.ARRAY, T.FLOAT32), [0.0] * n_vocab),
        "tokenizer.ggml.token_type": ((T.ARRAY, T.INT32), types),
        "tokenizer.ggml.unknown_token_id": (T.UINT32, 0),
        "tokenizer.ggml.bos_token_id": (T.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (T.UINT32, 2),
        "tokenizer.ggml.add_bos_token": (T.BOOL, True),
        "general.quantization_version": (T.UINT32, 2),
    }
    for key, value in (meta or {}).items():
        if value is None:
            keys.pop(key, None)
        elif isinstance(value, tuple):
            keys[key] = value
        else:
            keys[key] = (_infer(value), value)
    w = gguf.GGUFWriter(str(path), arch=ARCH, use_temp_file=False)
    w.kv_data[0].clear()  # the writer adds general.architecture itself: ours may differ
    for key, (vtype, value) in keys.items():
        if isinstance(vtype, tuple):
            w.add_key_value(key, value, vtype[0], sub_type=vtype[1])
        else:
            w.add_key_value(key, value, vtype)
    rng = np.random.default_rng(seed)
    kv = n_head_kv * head_dim
    want: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, n_embd)}
    for i in range(n_layer):
        p = f"blk.{i}."
        want |= {
            p + "attn_norm.weight": (n_embd,),
            p + "attn_q.weight": (n_embd, n_embd),
            p + "attn_k.weight": (kv, n_embd),
            p + "attn_v.weight": (kv, n_embd),
            p + "attn_output.weight": (n_embd, n_embd),
            p + "ffn_norm.weight": (n_embd,),
            p + "ffn_gate.weight": (n_ff, n_embd),
            p + "ffn_up.weight": (n_ff, n_embd),
            p + "ffn_down.weight": (n_embd, n_ff),
        }
    want |= {"output_norm.weight": (n_embd,), "output.weight": (n_vocab, n_embd)}
    want |= shapes or {}
    for name, shape in want.items():
        if len(shape) == 1:
            t = np.ones(shape, np.float32)
        else:
            t = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _infer(value: Any) -> Any:
    import gguf

    T = gguf.GGUFValueType
    if isinstance(value, bool):
        return T.BOOL
    if isinstance(value, int):
        return T.UINT32 if 0 <= value < 2**32 else (T.INT64 if value < 0 else T.UINT64)
    if isinstance(value, float):
        return T.FLOAT32
    if isinstance(value, str):
        return T.STRING
    raise TypeError(f"give ({'{GGUFValueType}'}, value) for {value!r}")
