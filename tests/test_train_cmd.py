"""Issue 15: the `llama3zh train sft|pt` commands as a user runs them (real processes, the tiny
random Llama-3 with the real vocabulary): the dry-run plan, a run, its reuse, Ctrl-C and resume,
and the one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import models
from .conftest import CACHE_ROOT
from .oneline import assert_error

ROOT = Path(__file__).resolve().parent.parent
FACTS = [
    {"instruction": "小明的猫叫什么名字？", "output": "小明的猫叫豆豆。"},
    {"instruction": "长城有多长？", "input": "", "output": "大约两万一千公里。"},
    {"instruction": "翻译：你好", "output": "Hello", "history": [["在吗", "在的。"]]},
    {"instruction": "天空是什么颜色？", "output": "晴天时是蓝色的。"},
]


@pytest.fixture(scope="module")
def base() -> Path:
    return models.cached(
        "tiny-llama3-hf-f32", models.build_tiny_llama3_hf, root=CACHE_ROOT, dtype="float32"
    )


def sft_data(path: Path, copies: int = 4) -> Path:
    rows = [json.dumps(r, ensure_ascii=False) for r in FACTS] * copies
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def llama3zh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llama3zh_local", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_dry_run_plans_and_writes_nothing(base: Path, tmp_path: Path) -> None:
    data = sft_data(tmp_path / "facts.jsonl")
    out = tmp_path / "run"
    p = llama3zh("train", "sft", str(data), "--base", str(base), "-o", str(out), "--dry-run",
                 "--json", "--rank", "8", "--holdout", "0.25")  # fmt: skip
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    # 16 conversations, every 4th held out; sft's upstream defaults: 3 epochs, accumulation 8
    assert plan["samples"] == 12 and plan["held_out"] == 4
    assert plan["steps"] == 3 * 2 and plan["fits"] is True
    assert 0 < plan["trained_tokens"] < plan["tokens"]
    # rank 8 on the seven projections of 2 layers (hidden 64, kv 32, ff 128), nothing in full
    per_layer = 8 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert plan["trainable_params"] == 2 * per_layer
    assert not out.exists()
    text = llama3zh("train", "pt", str(data), "--base", str(base), "--dry-run")
    assert text.returncode == 1  # pt reads .txt / {"text"} lines: an alpaca file is refused
    assert_error(text, str(data))


def test_train_reuse_interrupt_resume(base: Path, tmp_path: Path) -> None:
    data = sft_data(tmp_path / "facts.jsonl")
    out = tmp_path / "run"
    args = ["train", "sft", str(data), "--base", str(base), "-o", str(out), "--rank", "8",
            "--grad-accum", "1", "--max-steps", "4", "--save-steps", "2",
            "--lr", "1e-3"]  # fmt: skip
    p = llama3zh(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    adapter = out / "adapter"
    assert p.stdout.strip() == str(adapter)
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (out / "loss.png").is_file() and (out / "loss.csv").is_file()
    assert "LoRA: " in p.stderr and "4 steps" in p.stderr
    again = llama3zh(*args)
    assert again.returncode == 0 and again.stdout == p.stdout
    assert "already trained" in again.stderr
    # the same command with another option: refused, with what to do
    other = llama3zh(*args[:-2], "--lr", "2e-3")
    assert_error(other, "")

    # Ctrl-C once the first checkpoint is complete: saved, exit 130; the rerun resumes
    out2 = tmp_path / "run2"
    long = [*args[:6], str(out2), *args[7:11], "--max-steps", "400", "--save-steps", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama3zh_local", *long], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out2 / "checkpoints").glob("checkpoint-*/.complete")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Run the same command again to resume" in stderr and stdout == ""
    assert "Traceback" not in stderr
    assert not (out2 / "adapter").exists()
    resumed = llama3zh(*long[:-4], "--max-steps", "400", "--save-steps", "1", "--dry-run")
    assert resumed.returncode == 0  # the plan of the same run still reads
    done = llama3zh(*long)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed at step" in done.stderr
    assert (out2 / "adapter" / "adapter_model.safetensors").is_file()


def test_one_line_errors(base: Path, tmp_path: Path) -> None:
    data = sft_data(tmp_path / "facts.jsonl")
    p = llama3zh("train", "sft", str(data), "--base", str(base), "--ollama", "x", "--dry-run")
    assert_error(p, "--ollama needs --then")
    p = llama3zh("train", "sft", str(tmp_path / "missing.jsonl"), "--base", str(base))
    assert_error(p, "missing.jsonl")
    p = llama3zh("train", "sft", str(data), "--base", str(tmp_path / "nobase"), "--dry-run")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    p = llama3zh("train", "sft", str(data), "--base", str(base), "--dry-run", "--bits", "3")
    assert_error(p, "")
