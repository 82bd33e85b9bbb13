"""`llama3zh --help` start-up time: this tree against another commit, side by side.

    python bench/startup_time.py [--base REV] [--runs 21] [--no-docs]

Each run starts ``python -m llama3zh_local --help`` once from this tree and once from a
``git worktree`` of ``--base`` (default: the commit before the issue-13 layout), in alternating
order, with the same interpreter and environment; the medians and their ratio go to stdout and
into docs/benchmarks.md (between its ``startup_time`` markers). A ratio at or below 1.0 means this
tree starts no slower than the base.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- startup_time:begin -->", "<!-- startup_time:end -->"
BASE = "a91cd31"  # main before the issue-13 layout work


def time_help(tree: Path) -> float:
    """Seconds for one ``python -m llama3zh_local --help`` run from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1", "COLUMNS": "100"}
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "llama3zh_local", "--help"],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def measure(base: str, runs: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory(prefix="llama3zh-startup-") as tmp:
        other = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(other),
                        base], check=True)  # fmt: skip
        try:
            ours: list[float] = []
            theirs: list[float] = []
            time_help(ROOT), time_help(other)  # warm the page cache and .pyc files
            for i in range(runs):
                pair = [(ours, ROOT), (theirs, other)]
                for out, tree in pair if i % 2 == 0 else reversed(pair):
                    out.append(time_help(tree))
            return ours, theirs
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                           check=False)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=BASE, help="the commit to compare with")
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = ap.parse_args()
    ours, theirs = measure(args.base, args.runs)
    mine, base = statistics.median(ours), statistics.median(theirs)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    lines = [
        f"`llama3zh --help` start-up, median of {args.runs} alternating runs "
        f"({datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}):",
        "",
        "| tree | median s | ratio |",
        "|---|---:|---:|",
        f"| this tree ({head}) | {mine:.3f} | {mine / base:.2f} |",
        f"| base ({args.base}) | {base:.3f} | 1.00 |",
    ]
    print("\n".join(lines))
    if not args.no_docs:
        text = DOC.read_text("utf-8")
        block = f"{BEGIN}\n" + "\n".join(lines) + f"\n{END}"
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n## Start-up time\n\n" + block + "\n"
        DOC.write_text(text, "utf-8")


if __name__ == "__main__":
    main()
