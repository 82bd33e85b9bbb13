"""The batch engine in-process (a child pytest: llama.cpp decodes here): stops, limits, cancel,
the queue bound and prefix reuse, without HTTP in between."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.isolated]


def test_batch_engine(smollm2_gguf: Path) -> None:
    from llama3zh_local.llamacpp.batch import BatchEngine, Busy, Request
    from llama3zh_local.llamacpp.engine import Model
    from llama3zh_local.llamacpp.engine import SamplingParams as Sampling

    greedy = Sampling(temperature=0, repeat_penalty=1.0)
    with Model(smollm2_gguf) as m, BatchEngine(m, parallel=2, n_ctx=256, max_queue=1) as e:
        prompt = m.tokenize("1, 2, 3, 4,", add_special=True)
        recs = list(e.generate(Request(prompt, greedy, max_tokens=12)))
        text = "".join(r.text for r in recs)
        last = recs[-1]
        assert last.finish_reason == "length" and last.completion_tokens == 12
        assert last.prompt_tokens == len(prompt) == last.prompt_evaluated
        assert [r.finish_reason for r in recs[:-1]] == [None] * (len(recs) - 1)
        assert sum(len(r.tokens) for r in recs) == 12
        assert " 5" in text
        # the same prompt again: only its last token is evaluated
        again = list(e.generate(Request(prompt, greedy, max_tokens=12)))
        assert again[-1].prompt_evaluated == 1
        assert "".join(r.text for r in again) == text
        # a stop string cuts the answer before it, even across tokens
        cut = text.index(" 5")
        stopped = list(e.generate(Request(prompt, greedy, max_tokens=12, stop=(" 5",))))
        assert "".join(r.text for r in stopped) == text[:cut]
        assert stopped[-1].finish_reason == "stop"
        # closing the iterator cancels the job and frees its slot
        it = e.generate(Request(prompt, greedy, max_tokens=200))
        next(it)
        it.close()
        deadline = time.monotonic() + 10
        while e.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert e.busy == 0
        # two slots and one waiting place: the fourth request at once is refused
        held = [
            e.submit(Request(prompt, greedy, max_tokens=200), lambda _r: None) for _ in range(3)
        ]
        with pytest.raises(Busy):
            e.submit(Request(prompt, greedy, max_tokens=2), lambda _r: None)
        for job in held:
            job.cancel()
        for job in held:
            assert job.done.wait(30)
        assert e.busy == 0
        # prompts that do not fit are refused before they queue
        from llama3zh_local.errors import UsageError

        with pytest.raises(UsageError):
            e.submit(Request([1] * 256, greedy), lambda _r: None)
