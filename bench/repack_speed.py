"""What llama.cpp's weight repacking is worth on this CPU: llama-bench with ``--repack 1`` vs ``0``.

    python bench/repack_speed.py [--model GGUF ...] [--reps 3] [--threads N] [--no-docs]

``llama3zh`` turns repacking off where it crashes (AMX in some llama.cpp builds, see
``llama3zh_local/llamacpp/repack.py``) and keeps it on elsewhere; this measures the price of
turning it off. Each model runs in one llama-bench process with ``--repack 1,0`` (pp512 and tg128,
``-r`` repetitions each, llama-bench's own mean and standard deviation), so both settings share
the process, the build and the threads, and the table gives repack-on / repack-off.

Default models: a random-weight Llama of Llama-3's shape at 1/4 width (hidden 1024, FFN 3584,
8 layers, every matrix a multiple of 256 so that every quant type repacks), quantized here to
Q4_0 and Q4_K_M by ``llama_model_quantize``. Speed depends on the shapes and the type, not on the
values. ``--model`` measures given GGUFs instead. The table goes to stdout and into
docs/benchmarks.md (between its ``repack_speed`` markers; ``--no-docs`` leaves it alone).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_speed import OtherCPU, cpu_model, log, update_doc  # noqa: E402
from llama3zh_local.errors import Llama3zhError  # noqa: E402
from llama3zh_local.llamacpp import (  # noqa: E402
    installed,
    native,  # noqa: E402
    quant,
    repack,
    tools,
)
from llama3zh_local.llamacpp.engine import default_threads  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- repack_speed:begin -->", "<!-- repack_speed:end -->"
N_PROMPT, N_GEN = 512, 128
SHAPE = {"embd": 1024, "ff": 3584, "layers": 8, "heads": 8, "kv_heads": 2, "vocab": 32768}


def write_random_llama(path: Path) -> Path:
    """A Llama of ``SHAPE`` with random float16 weights and no vocabulary (token ids only)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    c = SHAPE
    e, ff, head_dim = c["embd"], c["ff"], c["embd"] // c["heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(e)
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(ff)
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(c["vocab"])
    w.add_tokenizer_model("none")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(e, dtype=np.float32)
    w.add_tensor("token_embd.weight", mat(c["vocab"], e))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", mat(c["vocab"], e))
    kv = c["kv_heads"] * head_dim
    for i in range(c["layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(e, e))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(kv, e))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(kv, e))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(e, e))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(ff, e))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(ff, e))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(e, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def default_models(folder: Path) -> list[Path]:
    f16 = write_random_llama(folder / "random-llama-f16.gguf")
    out = []
    for label in ("Q4_0", "Q4_K_M"):
        dest = folder / f"random-llama-{label}.gguf"
        log(f"quantizing the random Llama to {label}")
        ftype = getattr(native.lib(), f"LLAMA_FTYPE_MOSTLY_{label}")
        quant.quantize_file(source=f16, output=dest, ftype=ftype)
        out.append(dest)
    f16.unlink()
    return out


def bench(model: Path, threads: int, reps: int) -> list[dict[str, Any]]:
    """llama-bench's records for pp512 and tg128, repack on and off, in one process."""
    args = ["llama-bench", "-m", str(model), "-p", str(N_PROMPT), "-n", str(N_GEN),
            "-r", str(reps), "-t", str(threads), "-ngl", "0", "--repack", "1,0",
            "-o", "json"]  # fmt: skip
    done = tools.run_tool(args, timeout=3600)
    return list(json.loads(done.stdout))


def report(rows: list[tuple[str, str, dict[str, Any], dict[str, Any], float]],
           threads: int, reps: int, decision: str, build: dict[str, Any]) -> str:  # fmt: skip
    lines = [
        f"Measured {datetime.date.today().isoformat()} by `bench/repack_speed.py` "
        f"(llama-bench, `-r {reps}`, mean ± standard deviation in tokens/s).",
        "",
        "| model | test | repack on | repack off | on / off | other CPU |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, test, on, off, other in rows:
        lines.append(
            f"| {name} | {test} | {on['avg_ts']:.1f} ± {on['stddev_ts']:.1f} | "
            f"{off['avg_ts']:.1f} ± {off['stddev_ts']:.1f} | "
            f"{on['avg_ts'] / off['avg_ts']:.2f} | {other:.2f} |"
        )
    lines += [
        "",
        f"- Machine: {cpu_model()}, {threads} threads, {platform.system()} {platform.release()}, "
        "CPU only (-ngl 0)",
        f"- This machine's verdict (`llama3zh doctor`): {decision}",
        f"- llama-cpp-python {installed.llama_cpp_version()} (llama.cpp "
        f"{build.get('llama_cpp_commit') or '?'})",
        "- *other CPU*: CPUs that other processes kept busy while that model ran (0.1 and up: "
        "disturbed)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, action="append", default=None, help="GGUF (repeatable)")
    ap.add_argument("--reps", type=int, default=3, help="llama-bench -r (default 3)")
    ap.add_argument("--threads", type=int, default=default_threads(), help="CPU threads")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    try:
        exe = tools.ensure_tool("llama-bench", progress=log)
        build = json.loads(exe.with_name(exe.name + ".json").read_text(encoding="utf-8"))
        verdict = repack.current()
        decision = f"repacking {'on' if verdict.enabled else 'off'}: {verdict.reason}"
        log(decision)
        rows = []
        with tempfile.TemporaryDirectory(prefix="repack-bench-") as tmp:
            models = args.model or default_models(Path(tmp))
            for model in models:
                log(f"llama-bench --repack 1,0 on {model.name}")
                with OtherCPU() as other:
                    records = bench(model, args.threads, args.reps)
                for test, (n_p, n_g) in (("pp512", (N_PROMPT, 0)), ("tg128", (0, N_GEN))):
                    pick = [r for r in records if (r["n_prompt"], r["n_gen"]) == (n_p, n_g)]
                    on = next(r for r in pick if r.get("repack", True))
                    off = next(r for r in pick if not r.get("repack", True))
                    rows.append((model.name, test, on, off, other.value))
    except Llama3zhError as e:
        log(f"Error: {e}" + (f"\nHint: {e.hint}" if e.hint else ""))
        return 1
    body = report(rows, args.threads, args.reps, decision, build)
    print(body, end="")
    if not args.no_docs:
        update_doc(DOC, body, BEGIN, END)
        log(f"updated {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
