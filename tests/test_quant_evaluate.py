"""quant/evaluate.py: llama-perplexity's output (and its progress in pieces), the evaluation text
checks, and the shipped corpora (calibration and evaluation text)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llama3zh_local.errors import (
    InputError,
)
from llama3zh_local.quant import evaluate, imatrix
from llama3zh_local.quant.options import ChunkOptions
from llama3zh_local.quant.tracker import ChunkTracker

ROOT = Path(__file__).resolve().parent.parent


# -- llama-perplexity output --------------------------------------------------------------------

PLAIN_OUT = "0.20 minutes\n[1]26.4759,[2]24.6314,[3]20.0546,\n"
PLAIN_ERR = (
    "perplexity: calculating perplexity over 3 chunks, n_ctx=256, batch_size=2048, n_seq=8\n"
    "0.17.85 I perplexity: 12.87 seconds per pass - ETA 0.18.08 I Final estimate: PPL = 22.4334 "
    "+/- 2.21320\n"
)
KLD_ROWS = [
    "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
    "              Δp RMS            Same top p",
    "   1      12.9087 ±    2.5013      -0.00012 ±    0.01060       0.08612 ±    0.01120"
    "     7.818 ±  0.833 %    82.540 ±  4.802 %",
    "   2      11.4354 ±    1.1871       0.07164 ±    0.01800       0.08472 ±    0.00487"
    "     8.123 ±  0.512 %    81.111 ±  3.001 %",
]
KLD_OUT = (
    "\n"
    + "\n".join(KLD_ROWS)
    + """

====== Perplexity statistics ======
Mean PPL(Q)                   :  11.435376 ±   1.187096
Mean PPL(base)                :  10.655475 ±   1.100112
Cor(ln(PPL(Q)), ln(PPL(base))):  98.80%

====== KL divergence statistics ======
Mean    KLD:   0.084716 ±   0.004871
Maximum KLD:   2.712345
99.9%   KLD:   2.100000
Median  KLD:   0.031000

====== Token probability statistics ======
Same top p: 81.111 ± 3.001 %
"""
)


def test_parse_plain_perplexity() -> None:
    out = evaluate.parse_perplexity(PLAIN_OUT, PLAIN_ERR)
    assert (out.ppl, out.ppl_err, out.chunks) == (22.4334, 2.2132, (26.4759, 24.6314, 20.0546))
    assert out.kld is None
    # the ± of another build, or a mangled byte, parse the same
    assert evaluate.parse_perplexity("Final estimate: PPL = 5.5 ± 0.25").ppl_err == 0.25
    assert evaluate.parse_perplexity("Final estimate: PPL = 5.5 \ufffd\ufffd 0.25").ppl == 5.5


def test_parse_kld() -> None:
    out = evaluate.parse_perplexity(KLD_OUT, "")
    assert (out.ppl, out.ppl_err, out.base_ppl) == (11.435376, 1.187096, 10.655475)
    assert (out.kld, out.kld_err, out.kld_max, out.kld_99_9) == (0.084716, 0.004871, 2.712345, 2.1)
    assert out.same_top_p == 81.111 and out.chunks == (12.9087, 11.4354)


def test_parse_failures_say_why() -> None:
    err = "perplexity: you need at least 1024 tokens to evaluate perplexity with a context of 512"
    with pytest.raises(InputError, match="needs at least 1024 tokens"):
        evaluate.parse_perplexity("", err)
    from llama3zh_local.errors import BackendError

    with pytest.raises(BackendError, match="printed no perplexity: .*failed to load model"):
        evaluate.parse_perplexity("", "llama_model_load: error\nfailed to load model\n")


def test_progress_trackers_handle_split_output() -> None:
    events: list[tuple[int, float | None]] = []
    t = ChunkTracker(
        lambda e: events.append((e.done, e.figures["ppl"])),
        stage="imatrix",
        task="imatrix",
        total=4,
    )
    for piece in ["0.2 min", "utes\n[1]5.9", "006,[2]8.8001,[3", "]10.3462,", "[4]10.5196,\n"]:
        t.feed("stdout", piece)
    t.feed("stderr", "[9]1.0,")  # logs are not results
    assert events == [(1, 5.9006), (2, 8.8001), (3, 10.3462), (4, 10.5196)]
    seen: list[int] = []
    e = ChunkTracker(
        lambda ev: seen.append(ev.done), stage="eval", task="m", total=2, rows=evaluate.KLD_ROW
    )
    lines = KLD_OUT.splitlines(keepends=True)
    for ln in lines:
        for i in range(0, len(ln), 7):  # in pieces that cut numbers
            e.feed("stdout", ln[i : i + 7])
    assert seen == [1, 2]


# -- the evaluation text ---------------------------------------------------------------------------


def test_eval_text_too_short(smollm2_gguf: Path, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("short text " * 10, encoding="utf-8")
    with pytest.raises(InputError, match="evaluation text is too short"):
        evaluate.evaluate(
            models=[smollm2_gguf], options=ChunkOptions(text=tmp_path / "t.txt"), record=False
        )


# -- the corpora ----------------------------------------------------------------------------------


def test_shipped_corpora_are_what_the_script_builds() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_corpus.py"), "--check"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_corpora_sizes_languages_and_separation() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import corpus_text
    finally:
        sys.path.pop(0)
    calib = imatrix.default_calibration().read_text(encoding="utf-8")
    held = evaluate.default_eval_text().read_text(encoding="utf-8")
    assert 250_000 < len(calib.encode()) < 500_000 and 60_000 < len(held.encode()) < 150_000
    for text in (calib, held):
        han = sum("\u4e00" <= c <= "\u9fff" for c in text)
        latin = sum(c.isascii() and c.isalpha() for c in text)
        assert han > 0.15 * len(text) and latin > 0.15 * len(text)  # both languages
        assert "```python" in text and "```sql" in text and "|---|" in text  # code, tables
        assert "客服" in text and "Customer:" in text and "### 指令" in text  # dialogue, tasks
    # the hand-written paragraphs and answers are in one text or the other, never both
    written = [*corpus_text.ZH_PARAGRAPHS, *corpus_text.EN_PARAGRAPHS]
    written += [a for _, a in (*corpus_text.ZH_QA, *corpus_text.EN_QA)]
    where = [(w in calib, w in held) for w in written]
    assert all(a != b for a, b in where)
    assert sum(b for _, b in where) >= 15  # the evaluation text has its own share
