"""Synthetic GGUFs for the quant tests: a Llama model whose rows suit every quant type, and an
imatrix file as llama-imatrix writes it (the ``synth`` fixture in conftest.py builds the model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llama3zh_local.quant import imatrix

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
