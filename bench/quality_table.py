"""The quality table of docs/quality.md: SmolLM2-135M in f16 and seven quants, -im or not.

    python bench/quality_table.py [--model F16.gguf] [--chunks 128] [--eval-chunks N] [--ctx 512]

Steps, all through the library (what `llama3zh imatrix / quantize / eval` run):

1. an imatrix on the shipped calibration text (``--chunks`` chunks of ``--ctx`` tokens);
2. Q4_K_M, Q3_K_M and Q2_K without it; the same three and IQ3_XXS with it;
3. `evaluate` on the shipped held-out evaluation text, with KL-divergence against the f16;
4. for each file, llama-perplexity run directly (plain perplexity, same text, ctx and chunks),
   to show that our numbers are llama.cpp's.

docs/quality.md is rewritten with the table, the check of each -im file against its plain twin,
and how it was measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_speed import cpu_model  # noqa: E402
from llama3zh_local.llamacpp import installed, tools  # noqa: E402
from llama3zh_local.progress import ADVANCE, Event  # noqa: E402
from llama3zh_local.quant import evaluate, imatrix, quantize  # noqa: E402
from llama3zh_local.quant.options import ChunkOptions  # noqa: E402

DOC = ROOT / "docs" / "quality.md"
FIDELITY = "## Fidelity: the GGUFs against transformers"
PAIRS = ("q4_k", "q3_k", "q2_k")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="F16 GGUF (default: SmolLM2)")
    ap.add_argument("--chunks", type=int, default=128, help="imatrix chunks (default 128)")
    ap.add_argument("--eval-chunks", type=int, default=None, help="eval chunks (default: all)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        work = Path(tmp)
        if args.model is None:
            from bench.quantize_speed import default_model

            model = default_model(work)
        else:
            model = args.model.expanduser().resolve()
        log(f"imatrix: {args.chunks} chunks of {args.ctx} tokens")
        im = imatrix.compute_imatrix(imatrix.plan_imatrix(
            model=model, options=ChunkOptions(chunks=args.chunks, ctx=args.ctx),
            output=work / "imatrix.gguf"))  # fmt: skip
        t_im = im.seconds
        out = work / "quants"
        out.mkdir()
        log("quantizing")
        t1 = time.perf_counter()
        plain = quantize.quantize(quantize.plan_quantize(
            model=model, types=["Q4_K_M", "Q3_K_M", "Q2_K"], output=out))  # fmt: skip
        with_im = quantize.quantize(quantize.plan_quantize(
            model=model, types=["Q4_K_M", "Q3_K_M", "Q2_K", "IQ3_XXS"], imatrix=im.path,
            output=out))  # fmt: skip
        t_q = time.perf_counter() - t1
        files = [model, *(o.path for o in plain.outputs), *(o.path for o in with_im.outputs)]
        log("evaluating")

        def show(e: Event) -> None:
            if e.kind == ADVANCE and e.done == e.total:
                log(f"  {e.task.split('] ', 1)[-1]}: PPL {e.figures['ppl']}")

        res = evaluate.evaluate(models=files, options=ChunkOptions(ctx=args.ctx,
                                chunks=args.eval_chunks), kld_base=model, record=False,
                                progress=show)  # fmt: skip
        text = evaluate.default_eval_text()
        direct: dict[str, float] = {}
        for r in res.rows:
            done = tools.run_tool(["llama-perplexity", "-m", str(r.path), "-f", text.name, "-c",
                                   str(args.ctx), "--chunks", str(res.n_chunks)],
                                  cwd=text.parent)  # fmt: skip
            direct[r.label] = evaluate.parse_perplexity(done.stdout, done.stderr).ppl
            log(f"  llama-perplexity {r.label}: {direct[r.label]}")
    rows = {r.label: r for r in res.rows}
    check = []
    for p in PAIRS:
        a, b = rows[p], rows[f"{p}-im"]
        verdict = "yes" if b.ppl <= a.ppl else "**no**"
        check.append(f"| {p} | {a.ppl:.4f} | {b.ppl:.4f} | {(b.ppl / a.ppl - 1) * 100:+.2f}% | "
                     f"{a.kld:.4f} | {b.kld:.4f} | {verdict} |")  # fmt: skip
    worst = max(abs(r.ppl / direct[r.label] - 1) for r in res.rows) * 100
    body = f"""# Quantization quality

Perplexity (PPL, lower is better) and KL-divergence from the f16 model (KLD, lower is better) of
SmolLM2-135M-Instruct's real weights in f16 and seven quantizations, on the held-out evaluation
text that ships with llama3zh (`llama3zh_local/data/{evaluate.EVAL_NAME}`, not used for the
imatrix). Regenerate with `python bench/quality_table.py`.

{evaluate.markdown_table(res)}

PPL is llama-perplexity's estimate over the second half of each of {res.n_chunks} chunks of
{res.ctx} tokens (± its standard error); KLD is the mean over the same tokens. The `-im` files
use an importance matrix computed by `llama3zh imatrix` on {im.n_chunks} chunks of {im.ctx}
tokens of the calibration text (which has {im.n_tokens:,} tokens).

## Does the imatrix help?

| quant | PPL plain | PPL -im | change | KLD plain | KLD -im | -im <= plain |
|---|---:|---:|---:|---:|---:|---|
{chr(10).join(check)}

## Our numbers are llama.cpp's

Each file was also measured by running `llama-perplexity -m FILE -f {evaluate.EVAL_NAME} -c
{res.ctx} --chunks {res.n_chunks}` directly. Largest difference from the table above:
**{worst:.3f}%** (acceptance: within 0.5%).

| | {" | ".join(rows)} |
|---|{"---:|" * len(rows)}
| `llama3zh eval` | {" | ".join(f"{r.ppl:.4f}" for r in res.rows)} |
| `llama-perplexity` | {" | ".join(f"{direct[k]:.4f}" for k in rows)} |

## Why SmolLM2 looks different from an 8B table

SmolLM2-135M's rows are 576 wide, not a multiple of the 256-weight blocks of the K-quants and
IQ-quants: llama.cpp quantizes those tensors with a fallback type (Q5_0, Q5_1, IQ4_NL, Q8_0),
so the bits per weight are higher than the type's name suggests and close types end up close in
size. The Llama-3 8B models (4096 / 14336 wide) get the types as named; for them llama.cpp's own
figures are in `llama3zh_local/quant/recommend.py` (`LLAMA3_8B_PPL_DELTA`).

## How this was measured

- {datetime.date.today()}, `bench/quality_table.py`; imatrix {t_im:.0f} s, quantizing the seven
  files {t_q:.0f} s, total {time.perf_counter() - t0:.0f} s (wall times on a machine shared with
  other work).
- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()}
  {platform.release()}, CPU backend; llama-cpp-python {installed.llama_cpp_version()} (its llama.cpp
  tools built by `llama3zh_local.llamacpp.tools`).
"""
    # the fidelity section comes from `llama3zh eval fidelity` (see its own notes): kept as it is
    old = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    start = old.find(FIDELITY)
    if start >= 0:
        end = old.find("\n## ", start + len(FIDELITY))
        kept = old[start : end + 1 if end >= 0 else len(old)]
        head = "## Why SmolLM2 looks different"
        body = body.replace(head, kept.rstrip("\n") + "\n\n" + head, 1)
    print(body)
    if not args.no_docs:
        DOC.write_text(body, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
