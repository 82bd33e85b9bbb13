"""Issue 12, item 6 and the property-style test over the CLI's numeric options.

Thread counts, --ctx and the other numbers are checked against the machine and the model before
anything loads: no std::bad_alloc abort, no uint32 wrap-around, no context beyond what the model
was trained on. The property test feeds every numeric option of chat, imatrix, quantize, eval and
recommend its boundaries, zero, negatives, huge values and non-numbers: the exit code is 0, 1 or
2, never an abort, and nothing a debugger prints shows up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama3zh_local.hardware import MAX_THREADS, cpu_count

from .oneline import assert_error, assert_no_crash_output, snapshot
from .test_oneline_errors import cli

pytestmark = pytest.mark.slow


# -- item 6: the examples and their kin --------------------------------------------------


@pytest.mark.parametrize("threads", ["1000000", str(2**31), str(2**40), str(MAX_THREADS + 1)])
def test_absurd_thread_counts(threads: str, tiny_llama3_gguf: Path, tmp_path: Path) -> None:
    before = snapshot(tiny_llama3_gguf.parent)
    assert_error(cli("chat", str(tiny_llama3_gguf), "-p", "hi", "-t", threads), "--threads")
    proc = cli("imatrix", str(tiny_llama3_gguf), "-t", threads, "--dry-run")
    assert_error(proc, "--threads")
    proc = cli("quantize", str(tiny_llama3_gguf), "-q", "q8_0", "-t", threads, "--dry-run")
    assert_error(proc, "--threads")
    proc = cli("eval", str(tiny_llama3_gguf), "-t", threads)
    assert_error(proc, "--threads")
    assert snapshot(tiny_llama3_gguf.parent) == before


def test_more_threads_than_cpus(tiny_llama3_gguf: Path) -> None:
    n = cpu_count() + 1
    err = assert_error(cli("chat", str(tiny_llama3_gguf), "-p", "hi", "-t", str(n)), "--threads")
    assert f"from 1 to {min(cpu_count(), MAX_THREADS)}" in err


@pytest.mark.parametrize(
    "ctx",
    [
        str(2**32),  # wraps to 0
        str(2**32 + 512),  # wraps to 512
        str(2**32 - 1),
        str(2**31),
        str(2**64 + 256),
        "16384",  # twice what the model was trained on
        "8193",
    ],
)
def test_ctx_beyond_training_or_uint32(ctx: str, tiny_llama3_gguf: Path) -> None:
    before = snapshot(tiny_llama3_gguf.parent)
    proc = cli("chat", str(tiny_llama3_gguf), "-p", "hi", "--ctx", ctx)
    assert_error(proc, f"--ctx {ctx} exceeds the 8192 tokens")
    assert "--ctx 8192 or less" in proc.stderr
    proc = cli("imatrix", str(tiny_llama3_gguf), "--ctx", ctx, "--dry-run")
    assert_error(proc, "exceeds the 8192 tokens")
    proc = cli("eval", str(tiny_llama3_gguf), "--ctx", ctx)
    assert_error(proc, "exceeds the 8192 tokens")
    assert snapshot(tiny_llama3_gguf.parent) == before


def test_ctx_at_the_training_context_is_fine(tiny_llama3_gguf: Path) -> None:
    proc = cli("chat", str(tiny_llama3_gguf), "-p", "hi", "--ctx", "8192", "-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert "ctx 8192" in proc.stderr


def test_kv_cache_larger_than_memory(tmp_path: Path) -> None:
    from llama3zh_local.gguf.info import read_gguf_info
    from llama3zh_local.hardware import check_ctx, system_memory

    from .ggufgen import write_model

    # trained on 2^24 tokens: its KV cache at that context is 2 KiB x 2^24 = 32 GiB
    path = write_model(tmp_path / "long.gguf", ctx_train=1 << 24, n_head_kv=4)
    info = read_gguf_info(path)
    need = info.kv_bytes_per_token * (1 << 24)
    if need <= system_memory()[0]:
        pytest.skip("this machine has more memory than the KV cache needs")
    proc = cli("chat", str(path), "-p", "hi", "--ctx", str(1 << 24))
    err = assert_error(proc, "KV cache alone needs")
    assert "GiB" in err
    check_ctx(4096, info)  # a context that fits is fine


# -- the property test ----------------------------------------------------------------------------

INTS = ["0", "-1", "1", "2", "16", "512", "513", str(2**31), str(2**32), str(2**64 + 1),
        "-" + str(2**63 + 1), "1e3", "abc", "", "nan"]  # fmt: skip
FLOATS = ["0", "-1", "1", "0.5", "1e-45", "1e309", "nan", "-inf", "abc", ""]  # fmt: skip


def cases(tiny: Path, short_text: Path) -> list[list[str]]:
    chat = ["chat", str(tiny), "-p", "hi", "-s", "", "-n", "2", "--ctx", "64", "--temp", "0"]
    imatrix = ["imatrix", str(tiny), "--dry-run", "--calibration", str(short_text)]
    quant = ["quantize", str(tiny), "-q", "q8_0", "--dry-run"]
    evaluate = ["eval", str(tiny), "--text", str(short_text)]
    out: list[list[str]] = []
    for opt in ("--ctx", "-t", "--top-k", "--seed", "-n", "-ngl"):
        out += [[*chat, opt, v] for v in INTS]
    for opt in ("--temp", "--top-p", "--min-p", "--repeat-penalty"):
        out += [[*chat, opt, v] for v in FLOATS]
    for base in (imatrix, quant, evaluate):
        for opt in ("--ctx", "--chunks", "-t", "-ngl"):
            out += [[*base, opt, v] for v in INTS]
    out += [["recommend", "--ctx", v] for v in INTS]
    return out


def test_numeric_options_never_abort(tmp_path: Path) -> None:
    from .ggufgen import write_model

    # a small vocabulary loads in milliseconds: hundreds of runs stay cheap
    model = write_model(tmp_path / "small.gguf")
    short = tmp_path / "short.txt"
    short.write_text("太短了。Too short.", encoding="utf-8")
    all_cases = cases(model, short)
    results = run_batch(all_cases, tmp_path)
    assert len(results) == len(all_cases)
    zero = 0
    for r in results:
        proc = subprocess.CompletedProcess(r["args"], r["code"], r["out"], r["err"])
        try:
            assert_no_crash_output(proc)
            if proc.returncode == 1:  # an error is the one-line kind
                assert_error(proc)
        except AssertionError as e:
            raise AssertionError(f"{r['args'][:1] + r['args'][-2:]}: {e}") from None
        zero += r["code"] == 0
    assert zero > 20  # the valid values really ran (and answered)


def _named_folders(cases: list[list[str]]) -> set[Path]:
    """The folders the cases name: those of existing files, and existing folders."""
    out = set()
    for case in cases:
        for arg in case:
            if len(arg) < 1024 and "\0" not in arg and Path(arg).is_absolute():
                p = Path(arg)
                if p.exists():
                    out.add(p if p.is_dir() else p.parent)
    return out


def _files(folders: set[Path]) -> dict[Path, dict[str, tuple[int, int]]]:
    # conftest's home (the tool's own journal, speed.json) and run_batch's own files aside
    ours = ("_env", "cases", "results")
    return {f: {k: v for k, v in snapshot(f).items() if not k.startswith(ours)} for f in folders}


def run_batch(all_cases: list[list[str]], tmp_path: Path) -> list[dict]:
    """Run the cases in two processes (two cores): one result per case, in the cases' order.

    Every folder a case names holds the same files (sizes, mtimes) afterwards: no case, failing
    or not, changed anything but the tool's own files.
    """
    folders = _named_folders(all_cases)
    before = _files(folders)
    halves = [all_cases[0::2], all_cases[1::2]]
    procs = []
    for i, part in enumerate(halves):
        cases_file = tmp_path / f"cases{i}.json"
        cases_file.write_text(json.dumps(part), encoding="utf-8")
        res = tmp_path / f"results{i}.jsonl"
        procs.append(
            (
                res,
                subprocess.Popen(
                    [sys.executable, "-m", "tests.cli_batch", str(cases_file), str(res)],
                    cwd=Path(__file__).parent.parent,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "NO_COLOR": "1"},
                ),
            )
        )
    parts: list[list[dict]] = []
    for res, p in procs:
        output = p.communicate(timeout=600)[0].decode("utf-8", "replace")
        lines = [json.loads(ln) for ln in res.read_text(encoding="utf-8").splitlines()]
        if p.returncode != 0:
            last = next((ln["start"] for ln in reversed(lines) if "start" in ln), None)
            died = f"the batch died (exit {p.returncode}) in {last}"
            raise AssertionError(f"{died}: {output[-3000:]}")
        parts.append([ln for ln in lines if "code" in ln])
    # back in the order of the cases: the halves took every other one
    results = [r for pair in zip(parts[0], parts[1], strict=False) for r in pair]
    results += parts[0][len(parts[1]) :]
    after = _files(folders)
    for folder in folders:
        assert after[folder] == before[folder], f"files changed in {folder}"
    return results
