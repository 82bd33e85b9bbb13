"""The child process of the repack probe (``repack.probe_amx``): a tiny model, quantized, then a
batch decoded with repacking on. Run as ``python -m llama3zh_local.llamacpp.repack_probe DIR``;
a crash here (AMX, llama.cpp#20824) kills only this process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import engine, native, quant
from .repack import (
    PROBE_BATCH,
    PROBE_EMBD,
    PROBE_FF,
    PROBE_HEADS,
    PROBE_OK,
    PROBE_VOCAB,
)


def probe_child() -> None:
    """In the child: write the probe model, quantize it, decode a batch with repacking on."""
    folder = Path(sys.argv[-1])
    f32 = write_probe_model(folder / "probe-f32.gguf")
    ll = native.lib()
    for label in ("Q4_0", "Q4_K_M"):  # the two kernel families: 32- and 256-wide blocks
        out = folder / f"probe-{label}.gguf"
        ftype = getattr(ll, f"LLAMA_FTYPE_MOSTLY_{label}")
        quant.quantize_file(source=f32, output=out, ftype=ftype)
        settings = engine.ContextSettings(n_ctx=2 * PROBE_BATCH, n_batch=PROBE_BATCH,
                                          n_ubatch=PROBE_BATCH)  # fmt: skip
        with engine.Model(out, repack=True) as model, engine.Session(model, settings) as session:
            session.evaluate(list(range(PROBE_BATCH)))
            session.evaluate(list(range(PROBE_BATCH)) + [1])  # and one token
    sys.stdout.write(PROBE_OK + "\n")


def write_probe_model(path: Path) -> Path:
    """A one-layer Llama of random float32 weights and no vocabulary (token ids only)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    e, ff = PROBE_EMBD, PROBE_FF
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2 * PROBE_BATCH)
    w.add_embedding_length(e)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(PROBE_HEADS)
    w.add_head_count_kv(PROBE_HEADS)
    w.add_rope_dimension_count(e // PROBE_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(PROBE_VOCAB)
    w.add_tokenizer_model("none")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(PROBE_VOCAB, e))
    w.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    w.add_tensor("output.weight", mat(PROBE_VOCAB, e))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(e, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", mat(e, e))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(e, dtype=np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", mat(ff, e))
    w.add_tensor("blk.0.ffn_up.weight", mat(ff, e))
    w.add_tensor("blk.0.ffn_down.weight", mat(e, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    probe_child()
