"""llama3zh convert vs llama.cpp's convert_hf_to_gguf.py on the same checkpoint: time and memory.

    python bench/convert_speed.py                   # ~1.6 GB bf16 Llama-shaped checkpoint, f16
    python bench/convert_speed.py --outtype q8_0 --outtype bf16
    python bench/convert_speed.py --record          # and append the table to docs/benchmarks.md

The checkpoint is generated once (random bf16 weights of Llama-3's shape with its real 128k
vocabulary and tokenizer; 2 shards + index, as the 8B repos ship) into the test cache. Both
converters run as their own processes, one after the other, on a warm page cache (the
checkpoint is read once before timing); peak RSS is each process's VmHWM. The reference runs
from the llama-cpp-python sdist in the bench-only venv of tests/refconv.py (torch, transformers).
Both outputs are then compared tensor by tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import ggufraw, models, refconv  # noqa: E402

SHAPE = {"hidden": 2048, "layers": 6, "ff": 5632, "heads": 16, "kv_heads": 4}


def build_checkpoint(dest: Path, *, hidden: int, layers: int, ff: int, heads: int, kv_heads: int):
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab, hd = models.LLAMA3_VOCAB_SIZE, hidden // heads
    w: dict[str, np.ndarray] = {}

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    w["model.embed_tokens.weight"] = normal(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        w[p + "self_attn.q_proj.weight"] = normal(heads * hd, hidden)
        w[p + "self_attn.k_proj.weight"] = normal(kv_heads * hd, hidden)
        w[p + "self_attn.v_proj.weight"] = normal(kv_heads * hd, hidden)
        w[p + "self_attn.o_proj.weight"] = normal(hidden, heads * hd)
        w[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
        w[p + "mlp.gate_proj.weight"] = normal(ff, hidden)
        w[p + "mlp.up_proj.weight"] = normal(ff, hidden)
        w[p + "mlp.down_proj.weight"] = normal(hidden, ff)
    w["model.norm.weight"] = np.ones(hidden, np.float32)
    w["lm_head.weight"] = normal(vocab, hidden)
    models.save_hf_weights(dest, w, dtype="bfloat16", shards=2)
    cfg = {**models.TINY_LLAMA3_CONFIG, "hidden_size": hidden, "intermediate_size": ff,
           "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "torch_dtype": "bfloat16"}  # fmt: skip
    (dest / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    shutil.copyfile(models.llama3_tokenizer_json(), dest / "tokenizer.json")
    (dest / "tokenizer_config.json").write_text(
        json.dumps(models.llama3_tokenizer_config(), indent=2), encoding="utf-8"
    )
    return dest


def checkpoint() -> Path:
    return models.cached("bench-llama-bf16", build_checkpoint, **SHAPE)


def warm(path: Path) -> None:
    for f in sorted(path.iterdir()):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def same_tensors(a: Path, b: Path) -> bool:
    ga, gb = ggufraw.read(a), ggufraw.read(b)
    if set(ga.tensors) != set(gb.tensors):
        return False
    return all(
        ga.tensors[n][:2] == gb.tensors[n][:2] and ga.tensor_bytes(n) == gb.tensor_bytes(n)
        for n in ga.tensors
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outtype", action="append", help="f16 (default), bf16, q8_0, f32")
    ap.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    ap.add_argument("--out-dir", type=Path, default=None, help="where to write the GGUFs")
    args = ap.parse_args()
    outtypes = args.outtype or ["f16"]

    t0 = time.perf_counter()
    rc = refconv.ensure_refconv(log=True)
    if rc.build_seconds:
        print(f"reference env built in {rc.build_seconds:.0f} s")
    src = checkpoint()
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    print(f"checkpoint {src} ({size / 1e9:.2f} GB bf16, {SHAPE}), ready in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    out_dir = args.out_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "llama3zh-convert-bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rows = []
    for outtype in outtypes:
        ours_out, ref_out = out_dir / f"ours-{outtype}.gguf", out_dir / f"ref-{outtype}.gguf"
        for p in (ours_out, ref_out):
            p.unlink(missing_ok=True)
        warm(src)
        ref_cmd = [str(rc.python), str(rc.llama_cpp / "convert_hf_to_gguf.py"), str(src),
                   "--outfile", str(ref_out), "--outtype", outtype]  # fmt: skip
        ref_s, ref_rss = refconv.run_measured(ref_cmd, env=env)
        warm(src)
        ours_cmd = [sys.executable, "-m", "llama3zh_local", "convert", str(src), "-o",
                    str(ours_out), "--outtype", outtype]  # fmt: skip
        ours_s, ours_rss = refconv.run_measured(ours_cmd, env=env)
        identical = same_tensors(ours_out, ref_out)
        rows.append((outtype, ours_s, ours_rss, ref_s, ref_rss, identical))
        print(f"{outtype:5} ours {ours_s:6.1f} s {ours_rss / 1e9:5.2f} GB | reference "
              f"{ref_s:6.1f} s {ref_rss / 1e9:5.2f} GB | time {ours_s / ref_s:.2f}x, "
              f"RSS {ours_rss / ref_rss:.2f}x | tensors identical: {identical}")  # fmt: skip
        for p in (ours_out, ref_out):
            p.unlink(missing_ok=True)
    if args.record:
        record(rows, size)


def record(rows: list[tuple[str, float, int, float, int, bool]], size: int) -> None:
    import importlib.metadata

    doc = ROOT / "docs" / "benchmarks.md"
    doc.parent.mkdir(exist_ok=True)
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "",
        "## convert: llama3zh vs llama.cpp's convert_hf_to_gguf.py",
        "",
        f"`python bench/convert_speed.py --record` on {time.strftime('%Y-%m-%d')}: "
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')} (the reference "
        f"converter is its sdist's, with {', '.join(refconv.REQUIREMENTS[:2])}). "
        f"Checkpoint: random bf16 weights of Llama-3's shape ({SHAPE['layers']} layers, "
        f"{SHAPE['hidden']} wide, the real 128,256-token vocab), {size / 1e9:.2f} GB in 2 "
        "shards, page cache warm. Peak RSS is the process's VmHWM.",
        "",
        "| outtype | llama3zh | peak RSS | convert_hf_to_gguf.py | peak RSS | time | RSS | "
        "tensors identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for outtype, ours_s, ours_rss, ref_s, ref_rss, same in rows:
        lines.append(
            f"| {outtype} | {ours_s:.1f} s | {ours_rss / 1e9:.2f} GB | {ref_s:.1f} s | "
            f"{ref_rss / 1e9:.2f} GB | {ours_s / ref_s:.2f}x | {ours_rss / ref_rss:.2f}x | "
            f"{'yes' if same else 'NO'} |"
        )
    lines.append("")
    with open(doc, "a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"appended to {doc}")


if __name__ == "__main__":
    main()
