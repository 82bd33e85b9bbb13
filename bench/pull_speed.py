"""`llama3zh pull` against `hf download` on loopback: same server, same multi-file repo.

    python bench/pull_speed.py [--runs 3] [--shard-mib 256] [--shards 3] [--no-docs]

One process serves a repo shaped like a full model (config, tokenizer, N safetensors shards of
random bytes) over the Hugging Face protocol (``tests/hub_server.py``, files sent with sendfile).
Each run starts the CLI as a user would, with a fresh, empty cache: ``llama3zh pull hf:REPO`` and
``hf download REPO`` (huggingface_hub's CLI, Xet off, as with any mirror), alternating, and
times the whole process. Both fetch the same files; llama3zh also checks every file's sha256 (or
git blob id), which ``hf download`` does not. The ratio is llama3zh's median over hf's (<= 1.0
means no slower). The table goes to stdout and into docs/benchmarks.md between its
``pull_speed`` markers (``--no-docs`` leaves the file alone).
"""

from __future__ import annotations

import argparse
import datetime
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

from tests.hub_server import HubServer, client_env  # noqa: E402

BEGIN, END = "<!-- pull_speed:begin -->", "<!-- pull_speed:end -->"
REPO = "bench/multi-file"


def make_repo(folder: Path, shards: int, shard_mib: int) -> dict[str, Path]:
    files = {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}\n',
        "generation_config.json": b'{"do_sample": true, "temperature": 0.6}\n',
        "tokenizer_config.json": b'{"model_max_length": 8192}\n' + b" " * 50_000,
        "tokenizer.json": os.urandom(9 * 1024 * 1024),
    }
    out: dict[str, Path] = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        with (folder / name).open("wb") as fh:
            for _ in range(shard_mib):
                fh.write(os.urandom(1024 * 1024))
        out[name] = folder / name
    return out


def run_once(tool: str, url: str, work: Path) -> tuple[float, int]:
    """Seconds the whole CLI process took, with empty caches in ``work``."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {
        **os.environ,
        **client_env(url, work),
        "HF_HOME": str(work / "hf-home"),
        "LLAMA3ZH_HOME": str(work / "llama3zh-home"),
        "LLAMA3ZH_CONFIG_DIR": str(work / "llama3zh-config"),
        "MODELSCOPE_CACHE": str(work / "modelscope-cache"),
    }
    env.pop("HF_HUB_OFFLINE", None)
    bindir = Path(sys.executable).parent
    if tool == "llama3zh":
        cmd = [str(bindir / "llama3zh"), "pull", f"hf:{REPO}"]
    else:
        cmd = [str(bindir / "hf"), "download", REPO, "--cache-dir", str(work / "hf-home" / "hub")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    blobs = work / "hf-home" / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs"
    got = sum(p.stat().st_size for p in blobs.iterdir())
    shutil.rmtree(work, ignore_errors=True)
    return secs, got


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--shard-mib", type=int, default=256)
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()

    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="pull-speed-") as tmp:
        repo_dir = Path(tmp) / "repo"
        repo_dir.mkdir()
        files = make_repo(repo_dir, args.shards, args.shard_mib)
        total = sum(p.stat().st_size for p in files.values())
        times: dict[str, list[float]] = {"llama3zh": [], "hf": []}
        loads: list[float] = []
        with HubServer() as server:
            server.add_repo(REPO, files)
            for i in range(args.runs):
                order = ("llama3zh", "hf") if i % 2 == 0 else ("hf", "llama3zh")
                for tool in order:
                    server.reset()
                    loads.append(os.getloadavg()[0])
                    secs, got = run_once(tool, server.url, Path(tmp) / "work")
                    if got != total or server.bytes_served != total:
                        raise SystemExit(f"{tool}: {got} bytes stored, {server.bytes_served} sent")
                    times[tool].append(secs)
                    sys.stderr.write(f"run {i + 1} {tool:8} {secs:6.2f} s\n")

    med = {t: statistics.median(v) for t, v in times.items()}
    ratio = med["llama3zh"] / med["hf"]
    mib = total / 1024**2
    lines = [
        f"Measured {datetime.date.today()} by `bench/pull_speed.py` ({args.runs} alternating runs "
        "each, median wall time of the whole CLI process, fresh caches).",
        "",
        "| tool | median s | MiB/s | runs (s) |",
        "|---|---:|---:|---|",
    ]
    for tool, label in (
        ("llama3zh", "`llama3zh pull` (sha256-verified)"),
        ("hf", f"`hf download` (huggingface_hub {huggingface_hub.__version__})"),
    ):
        runs = ", ".join(f"{s:.2f}" for s in times[tool])
        lines.append(f"| {label} | {med[tool]:.2f} | {mib / med[tool]:.0f} | {runs} |")
    lines += [
        "",
        f"**Ratio llama3zh / hf: {ratio:.2f}** (target <= 1.0).",
        "",
        f"- Repo: {len(files)} files, {mib:.0f} MiB ({args.shards} safetensors shards of "
        f"{args.shard_mib} MiB, a 9 MiB tokenizer.json, 3 small JSON files), served on 127.0.0.1 "
        "by `tests/hub_server.py` (Hugging Face protocol, sendfile)",
        f"- Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; 1-minute load average "
        f"before the runs {min(loads):.1f}-{max(loads):.1f} (it includes the server and any "
        "other work on the machine)",
    ]
    table = "\n".join(lines)
    sys.stdout.write(table + "\n")
    if not args.no_docs:
        write_docs(table)


def write_docs(table: str) -> None:
    docs = ROOT / "docs" / "benchmarks.md"
    text = docs.read_text(encoding="utf-8") if docs.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + SECTION + block + "\n"
    docs.write_text(text, encoding="utf-8")


SECTION = """## Downloads: `llama3zh pull` against `hf download`

`bench/pull_speed.py` serves a multi-file repo (config, tokenizer, safetensors shards) on
127.0.0.1 over the Hugging Face protocol and times `llama3zh pull` and `hf download` on it, each as
a fresh process with an empty cache, alternating. Rerun it with:

```bash
python bench/pull_speed.py                      # 3 shards of 256 MiB, 3 runs each
python bench/pull_speed.py --shards 4 --shard-mib 1024 --runs 5
```

The section between the markers below is rewritten by each run.

"""


if __name__ == "__main__":
    main()
