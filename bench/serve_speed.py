"""llama3zh serve's speed against llama.cpp's llama-server: same GGUF, threads and --parallel.

    python bench/serve_speed.py [--model GGUF] [--llama-server PATH] [--threads N] [--parallel 4]
                                [--tokens 128] [--runs 3] [--repack auto|on|off]

Both servers run at once as processes on 127.0.0.1 and are measured through the same OpenAI
``/v1/chat/completions`` requests (temperature 0), one after the other within each run (the
order flips each run), so that a machine whose speed drifts weighs on both sides alike:

* single: one request; decode tokens/s from each server's own ``timings.predicted_per_second``
  (llama-server's field, which serve reports too), median over the runs: answered whole, and
  streamed (SSE, the ``timings`` of the last chunk).
* parallel: ``--parallel`` streams at once, each of ``--tokens``; aggregate tokens/s = all
  completion tokens / wall time from the first request to the last answer.
* second turn: time to the first streamed token of a conversation's second turn (its prefix is in
  the slot's cache on both servers), median over the runs; sent ``--pause`` seconds (default 1)
  after the first answer came, as a user reads it and types, and also at once (a client that
  sends its next request the moment an answer ends, e.g. a title request).

llama-server is built like llama-bench (llama3zh_local/llamacpp/tools.py): from the llama.cpp
source of the installed llama-cpp-python's sdist, linked to the libllama/libggml/libmtmd that
llama_cpp loads, so both servers run the same llama.cpp on the same backend. The first run
compiles it (about a minute where the other tools already compiled llama.cpp's common, longer
from nothing); ``--llama-server PATH`` uses another binary instead (of the same llama.cpp commit).
It has no web UI (the sdist ships none of tools/ui's built assets): the API is all a bench needs.

Both sides run with the same weight repacking (llama.cpp's CPU_REPACK / AMX buffer types): what
``llama3zh_local.llamacpp.repack`` decided for this machine (``--repack auto``, as ``llama3zh
serve`` runs), or ``--repack on|off``; serve gets it as ``LLAMA3ZH_CPU_REPACK``, llama-server as
``--repack`` / ``--no-repack``.

The numbers are printed, nothing is written: docs/benchmarks.md is updated by hand from a run on
an idle machine. The issue's targets: single >= 0.95x, parallel >= 0.9x, second turn's first
token no slower than llama-server's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_speed import default_model, log, repack_setting  # noqa: E402
from llama3zh_local.errors import Llama3zhError  # noqa: E402
from llama3zh_local.llamacpp import installed, repack, tools  # noqa: E402
from llama3zh_local.llamacpp.engine import default_threads  # noqa: E402

STORY = "Write a long story about a lighthouse keeper and a storm."
QUESTIONS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain how a bicycle works, in detail.",
    "Write a long letter to a friend about a trip to the mountains.",
    "Describe the history of tea in detail.",
    "Write a long poem about the sea.",
    "Explain photosynthesis step by step.",
    "Write a story about a robot who paints.",
    "Describe a day in a busy train station.",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(cmd: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            end = time.monotonic() + 300
            while time.monotonic() < end:
                if proc.poll() is not None:
                    out.seek(0)
                    sys.exit(f"{cmd[0]} exited: {out.read().decode(errors='replace')[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


# One client for all requests (building one costs ~15 ms of TLS set-up, noise in a first-token
# time); a new connection per request, as llama-server closes a kept-alive one after a stream.
CLIENT = httpx.Client(timeout=900, headers={"Connection": "close"})


def chat(url: str, messages: list[dict[str, str]], tokens: int) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0}
    r = CLIENT.post(url + "/v1/chat/completions", json=body)
    r.raise_for_status()
    return dict(r.json())


def first_token_seconds(url: str, messages: list[dict[str, str]]) -> float:
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    with CLIENT.stream("POST", url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                delta = json.loads(line[6:])["choices"][0].get("delta", {})
                if delta.get("content"):
                    return time.perf_counter() - t0
    return float("nan")


def streamed_tps(url: str, messages: list[dict[str, str]], tokens: int) -> float:
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    tps = float("nan")
    with CLIENT.stream("POST", url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                timings = json.loads(line[6:]).get("timings")
                if timings:
                    tps = float(timings["predicted_per_second"])
    return tps


def measure(
    urls: dict[str, str], *, tokens: int, parallel: int, runs: int, pause: float
) -> dict[str, dict[str, list[float]]]:
    """Each run's figures of every measure, taken on each server in turn (the order flips each
    run), so a machine that speeds up or slows down meanwhile (a shared VM does) weighs on both."""
    for url in urls.values():
        chat(url, [{"role": "user", "content": "Hi"}], 4)  # warm up (and load the model)
    got: dict[str, dict[str, list[float]]] = {name: {} for name in urls}

    def add(name: str, key: str, value: float) -> None:
        got[name].setdefault(key, []).append(value)

    for r in range(runs):
        order = list(urls.items()) if r % 2 == 0 else list(reversed(urls.items()))
        for name, url in order:
            done = chat(url, [{"role": "user", "content": STORY}], tokens)
            add(name, "single_tps", float(done["timings"]["predicted_per_second"]))
        for name, url in order:
            add(
                name,
                "streamed_tps",
                streamed_tps(url, [{"role": "user", "content": STORY}], tokens),
            )
        for name, url in order:
            qs = [QUESTIONS[(r + i) % len(QUESTIONS)] for i in range(parallel)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(parallel) as pool:
                answers = list(
                    pool.map(lambda q, u=url: chat(u, [{"role": "user", "content": q}], tokens), qs)
                )
            wall = time.perf_counter() - t0
            add(name, "parallel_tps", sum(a["usage"]["completion_tokens"] for a in answers) / wall)
        for wait, key in ((pause, "second_turn_ttft_ms"), (0.0, "at_once_ttft_ms")):
            for name, url in order:
                first = [{"role": "user", "content": f"{STORY} (version {r}, {wait})"}]
                answer = chat(url, first, 64)["choices"][0]["message"]["content"]
                second = [*first, {"role": "assistant", "content": answer},
                          {"role": "user", "content": "Now give it a title."}]  # fmt: skip
                time.sleep(wait)
                add(name, key, first_token_seconds(url, second) * 1000)
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument(
        "--llama-server",
        type=Path,
        default=None,
        help="llama-server binary (default: built from the installed llama-cpp-python's source)",
    )
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=2048, help="tokens per sequence")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--pause", type=float, default=1.0, help="seconds between an answer and the next turn"
    )
    ap.add_argument("--ngl", default="0")
    ap.add_argument(
        "--repack",
        choices=("auto", "on", "off"),
        default="auto",
        help="weight repacking on both sides (auto: what llama3zh decided for this machine)",
    )
    args = ap.parse_args(argv)
    model = args.model or default_model()

    server_env: dict[str, str] | None = None
    if args.llama_server:
        llama_server = args.llama_server
        log(f"llama-server: {llama_server} (--llama-server)")
    else:
        try:
            llama_server = tools.ensure_tool("llama-server", progress=log)
        except Llama3zhError as e:
            log(f"Error: {e}" + (f"\nHint: {e.hint}" if e.hint else ""))
            return 1
        server_env = installed.tool_env()
        build = json.loads(llama_server.with_name(llama_server.name + ".json").read_text())
        log(
            f"llama-server: {llama_server} (llama.cpp {build.get('llama_cpp_commit')}, "
            f"llama-cpp-python {build.get('llama_cpp_python')})"
        )
    use_repack, repacking = repack_setting(args.repack)
    log(f"weight repacking: {repacking}")

    port = free_port()
    ours = [sys.executable, "-m", "llama3zh_local", "serve", str(model), "--port", str(port),
            "--parallel", str(args.parallel), "--ctx", str(args.ctx), "-t", str(args.threads),
            "-ngl", args.ngl]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        repack.OVERRIDE_ENV: "on" if use_repack else "off",
    }
    port2 = free_port()
    ngl = "99" if args.ngl == "all" else ("0" if args.ngl == "auto" else args.ngl)
    theirs = [str(llama_server), "-m", str(model), "--port", str(port2),
              "--parallel", str(args.parallel), "-c", str(args.ctx * args.parallel),
              "-t", str(args.threads), "-ngl", ngl, "--jinja",
              "--repack" if use_repack else "--no-repack"]  # fmt: skip
    log(f"serve: {' '.join(ours)}")
    log(f"llama-server: {' '.join(theirs)}")
    # both run at once, idle but for the one being measured
    with running(ours, port, env) as url, running(theirs, port2, server_env) as url2:
        raw = measure(
            {"llama3zh serve": url, "llama-server": url2},
            tokens=args.tokens, parallel=args.parallel, runs=args.runs, pause=args.pause,
        )  # fmt: skip
    results = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in raw.items()}
    keys = ["single_tps", "streamed_tps", "parallel_tps", "second_turn_ttft_ms", "at_once_ttft_ms"]
    print(f"model {model.name}, threads {args.threads}, parallel {args.parallel}, "
          f"{args.tokens} tokens, median of {args.runs}, weight repacking {repacking}")  # fmt: skip
    print(
        "| server | single-stream tok/s | single, streamed tok/s | aggregate tok/s | second turn "
        f"after {args.pause:g} s: first token (ms) | second turn at once: first token (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |")
    if len(results) == 2:
        a, b = results["llama3zh serve"], results["llama-server"]
        print(
            f"| ratio | {a['single_tps'] / b['single_tps']:.3f} | "
            f"{a['streamed_tps'] / b['streamed_tps']:.3f} | "
            f"{a['parallel_tps'] / b['parallel_tps']:.3f} | "
            f"{a['second_turn_ttft_ms'] / b['second_turn_ttft_ms']:.3f} | "
            f"{a['at_once_ttft_ms'] / b['at_once_ttft_ms']:.3f} |"
        )
        # the run-by-run ratios' middle half: how far one run's ratio strays on this machine
        spread = []
        for k in keys:
            pairs = zip(raw["llama3zh serve"][k], raw["llama-server"][k], strict=True)
            ratios = [x / y for x, y in pairs]
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            spread.append(f"{q[0]:.2f}-{q[2]:.2f}")
        print("| per-run ratios, middle half | " + " | ".join(spread) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
