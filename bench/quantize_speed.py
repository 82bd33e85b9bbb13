"""`llama3zh imatrix` + `llama3zh quantize` against llama-imatrix + llama-quantize, same inputs.

    python bench/quantize_speed.py [--model F16.gguf] [--chunks 64] [--ctx 512] [--runs 3]

Each run is two timed pairs of processes, in alternating order: our CLI (``python -m
llama3zh_local imatrix ... -o A`` then ``quantize ... --imatrix-file A -q Q4_K_M``) and the
native tools compiled from the same llama.cpp source (``llama-imatrix ... -o B`` then
``llama-quantize --imatrix B ...``). Wall times include our Python start-up (imports, llama.cpp
libraries, token count, reading back) — what a user waits for. Both sides' outputs must be
byte-identical, or the run fails. The model defaults to SmolLM2-135M's real weights converted
to F16 (tests/models.py); the text is the shipped calibration corpus.

The medians, the machine and the raw runs go to stdout and into docs/benchmarks.md (between its
``quantize_speed`` markers; ``--no-docs`` leaves it alone).
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_speed import OtherCPU, cpu_model  # noqa: E402
from llama3zh_local.llamacpp import installed, tools  # noqa: E402
from llama3zh_local.quant.imatrix import default_calibration  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- quantize_speed:begin -->", "<!-- quantize_speed:end -->"
QTYPE = "Q4_K_M"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_model(work: Path) -> Path:
    """SmolLM2-135M's real weights as an F16 GGUF (built once into the test model cache)."""
    from llama3zh_local.convert.llama import convert
    from tests import models

    hf = models.cached("smollm2-hf", models.build_smollm2_hf, root=models.cache_root())
    return convert(source=hf, output=work / "smollm2-f16.gguf", outtype="f16").path


def timed(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, errors="replace")
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    return seconds


def ours(model: Path, work: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Our CLI: (imatrix seconds, quantize seconds)."""
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    py = [sys.executable, "-m", "llama3zh_local"]
    im = timed([*py, "imatrix", str(model), "--chunks", str(args.chunks), "--ctx", str(args.ctx),
                "-o", str(out / "imatrix.gguf"), "-t", str(args.threads)], cwd=out)  # fmt: skip
    q = timed([*py, "quantize", str(model), "-q", QTYPE, "--imatrix-file",
               str(out / "imatrix.gguf"), "-o", str(out / "q.gguf"), "-t", str(args.threads)],
              cwd=out)  # fmt: skip
    return im, q


def native(model: Path, work: Path, args: argparse.Namespace) -> tuple[float, float]:
    """llama-imatrix and llama-quantize, as a llama.cpp user runs them."""
    out = work / "native"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    calib = default_calibration()
    env = installed.tool_env()
    imx, qz = tools.ensure_tool("llama-imatrix"), tools.ensure_tool("llama-quantize")
    # -f by name from the text's folder, as ours does (the name is recorded in the imatrix)
    im = timed([str(imx), "-m", str(model), "-f", calib.name, "-c", str(args.ctx), "--chunks",
                str(args.chunks), "-o", str(out / "imatrix.gguf"), "-t", str(args.threads),
                "-ngl", "0"], cwd=calib.parent, env=env)  # fmt: skip
    # the imatrix by its name, as ours records it
    q = timed([str(qz), "--imatrix", "imatrix.gguf", str(model), str(out / "q.gguf"), QTYPE,
               str(args.threads)], cwd=out, env=env)  # fmt: skip
    return im, q


def update_doc(path: Path, body: str) -> None:
    """Replace what is between this bench's markers (appending them when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{body}{END}{tail}", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="F16/F32 GGUF (default: SmolLM2)")
    ap.add_argument("--chunks", type=int, default=64, help="imatrix chunks (default 64)")
    ap.add_argument("--ctx", type=int, default=512, help="imatrix chunk size (default 512)")
    ap.add_argument("--runs", type=int, default=3, help="runs per side (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    for name in ("llama-imatrix", "llama-quantize"):
        tools.ensure_tool(name, progress=log)
    with tempfile.TemporaryDirectory(prefix="quantize-speed-") as tmp:
        work = Path(tmp)
        model = (args.model or default_model(work)).expanduser().resolve()
        runs = []
        for i in range(1, args.runs + 1):
            order = [("ours", ours), ("native", native)]
            if i % 2 == 0:
                order.reverse()
            got: dict[str, tuple[float, float, float]] = {}
            for name, fn in order:
                with OtherCPU() as other:
                    im, q = fn(model, work, args)
                got[name] = (im, q, other.value)
            same_im = filecmp.cmp(work / "ours/imatrix.gguf", work / "native/imatrix.gguf", False)
            same_q = filecmp.cmp(work / "ours/q.gguf", work / "native/q.gguf", False)
            if not (same_im and same_q):
                sys.exit(f"outputs differ (imatrix identical: {same_im}, {QTYPE}: {same_q})")
            runs.append(got)
            o, n = got["ours"], got["native"]
            log(f"run {i}/{args.runs}: imatrix {o[0]:.2f} vs {n[0]:.2f} s, quantize {o[1]:.2f} vs "
                f"{n[1]:.2f} s (ours vs native); other CPU {o[2]:.2f} / {n[2]:.2f}")  # fmt: skip
        size = model.stat().st_size
    med = {
        (side, k): statistics.median(r[side][k] for r in runs)
        for side in ("ours", "native")
        for k in (0, 1)
    }
    total_o = statistics.median(r["ours"][0] + r["ours"][1] for r in runs)
    total_n = statistics.median(r["native"][0] + r["native"][1] for r in runs)
    version = installed.llama_cpp_version()
    body = "\n".join([
        f"Measured {datetime.date.today()} by `bench/quantize_speed.py` ({args.runs} runs per "
        "side, alternating order, median wall time of the whole processes).",
        "",
        "| step | llama3zh (CLI) s | native tool s | llama3zh / native |",
        "|---|---:|---:|---:|",
        f"| imatrix ({args.chunks} chunks x {args.ctx}) | {med['ours', 0]:.2f} | "
        f"{med['native', 0]:.2f} | {med['ours', 0] / med['native', 0]:.3f} |",
        f"| quantize {QTYPE} --imatrix | {med['ours', 1]:.2f} | {med['native', 1]:.2f} | "
        f"{med['ours', 1] / med['native', 1]:.3f} |",
        f"| **imatrix + quantize** | **{total_o:.2f}** | **{total_n:.2f}** | "
        f"**{total_o / total_n:.3f}** |",
        "",
        f"**Overhead: {(total_o / total_n - 1) * 100:+.1f}%** (target <= 3%). Both sides' "
        "imatrix and quantized files were byte-identical in every run.",
        "",
        f"- Model: {model.name} ({size / 2**20:.0f} MiB, F16); text: the shipped calibration "
        f"corpus; {args.threads} threads, CPU",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; llama-cpp-python {version}",
        "",
        "Raw runs (s; other CPU: other processes' load during the step, from /proc/stat):",
        "",
        "| run | ours imatrix | ours quantize | native imatrix | native quantize | other CPU "
        "ours / native |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {i} | {r['ours'][0]:.2f} | {r['ours'][1]:.2f} | {r['native'][0]:.2f} | "
            f"{r['native'][1]:.2f} | {r['ours'][2]:.2f} / {r['native'][2]:.2f} |"
            for i, r in enumerate(runs, 1)
        ),
        "",
    ])  # fmt: skip
    print(body)
    if not args.no_docs:
        update_doc(DOC, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
