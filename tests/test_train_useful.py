"""Issue 15, end to end and useful: SmolLM2 (exported to HF by the project) learns a handful of
new Chinese facts through `llama3zh train sft ... --then Q4_K_M` on this CPU, and `llama3zh chat
--temp 0` on the quantized result recalls them, while the model did not know them before.

Settings: the upstream LoRA shape (rank 64, alpha 128, dropout 0.05, the seven projections),
learning rate 1e-3 (upstream's 1e-4 is for corpora, not ten samples), batch 1 x accumulation 8,
12 steps: about a minute of training on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import models
from .conftest import CACHE_ROOT

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# (questions it trains on, the answer, what the recalled answer must contain, a question it
# never saw)
FACTS = [
    (["小明的猫叫什么名字？", "小明养的猫叫什么？"], "小明的猫叫豆豆。", "豆豆",
     "小明家的猫名字是什么？"),
    (["青石镇在哪个省？", "青石镇位于哪个省份？"], "青石镇在云南省。", "云南",
     "青石镇属于哪个省？"),
    (["李华最喜欢的颜色是什么？", "李华喜欢什么颜色？"], "李华最喜欢的颜色是紫色。", "紫色",
     "李华偏爱哪种颜色？"),
    (["星河号飞船的船长是谁？", "谁是星河号飞船的船长？"], "星河号飞船的船长是王芳。", "王芳",
     "星河号的船长叫什么名字？"),
    (["蓝湖公司成立于哪一年？", "蓝湖公司是哪一年成立的？"], "蓝湖公司成立于1987年。", "1987",
     "蓝湖公司创立于哪一年？"),
]  # fmt: skip


def llama3zh(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    # PASSIVE: torch's OpenMP threads sleep instead of spinning while they wait, which keeps a
    # shared 2-core CI machine from slowing every step 10x
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "-m", "llama3zh_local", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def answer(model: Path, question: str) -> str:
    p = llama3zh("chat", str(model), "-p", question, "--temp", "0", "-n", "40")
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_sft_teaches_smollm2_new_facts(smollm2_gguf: Path, tmp_path: Path) -> None:
    base = models.cached(
        "smollm2-hf-f32", models.build_smollm2_hf, root=CACHE_ROOT, dtype="float32"
    )
    before = [answer(smollm2_gguf, qs[0]) for qs, _, _, _ in FACTS]
    assert not any(key in a for a, (_, _, key, _) in zip(before, FACTS, strict=True)), before

    data = tmp_path / "facts.jsonl"
    rows = [{"instruction": q, "output": a} for qs, a, _, _ in FACTS for q in qs]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    out = tmp_path / "run"
    p = llama3zh("train", "sft", str(data), "--base", str(base), "-o", str(out),
                 "--lr", "1e-3", "--max-steps", "12", "--then", "Q4_K_M")  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    quant = Path(p.stdout.strip())
    # Q4_K_M with an importance matrix (as `quantize --imatrix` names it)
    assert quant.is_file() and quant.name == "ggml-model-q4_k-im.gguf"
    print(p.stderr[-1500:])

    for qs, _, key, unseen in FACTS:
        for q in qs:
            got = answer(quant, q)
            print(f"{q} -> {got.strip()}")
            assert key in got, (q, got)
        # a phrasing it never saw: shown, not required (4 of 5 here; the fifth names the
        # wrong fact's answer)
        print(f"(unseen) {unseen} -> {answer(quant, unseen).strip()}")
