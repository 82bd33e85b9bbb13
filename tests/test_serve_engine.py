"""The batch engine in-process (a child pytest: llama.cpp decodes here): stops, limits, cancel,
the queue bound and prefix reuse, without HTTP in between."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.isolated]


def test_batch_engine(smollm2_gguf: Path) -> None:
    from llama3zh_local.llamacpp.batch import COPY_MIN, BatchEngine, Busy, Request
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
        # the same prompt again (a regenerated answer): the slot holding it keeps its answer
        # cached; the prompt goes to the other slot, evaluated whole there, since a prefix this
        # short is cheaper to evaluate than a copy of a KV stream (long ones are copied: below)
        assert len(prompt) < COPY_MIN
        again = list(e.generate(Request(prompt, greedy, max_tokens=12)))
        assert again[-1].prompt_evaluated == len(prompt) and again[-1].slot != last.slot
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


def test_unstreamed_answer_and_next_turn_prefill(smollm2_gguf: Path) -> None:
    """A non-streamed request gets its answer in one record; after an answer ends, the idle slot
    evaluates the template's next-turn tokens, and the next turn evaluates only what is new and
    answers exactly as it does without them cached."""
    from llama3zh_local.chat.prompt_tokens import chat_prompt_tokens, next_turn_tokens
    from llama3zh_local.chat.template import choose_template
    from llama3zh_local.llamacpp.batch import BatchEngine, Request
    from llama3zh_local.llamacpp.engine import Model
    from llama3zh_local.llamacpp.engine import SamplingParams as Sampling

    greedy = Sampling(temperature=0, repeat_penalty=1.0)
    with Model(smollm2_gguf) as m:
        template = choose_template(m, "auto")
        nxt = next_turn_tokens(m, template)
        # ChatML: <|im_end|> \n <|im_start|> user \n
        assert [m.token_id(t) for t in ("<|im_end|>", "<|im_start|>")] == [nxt[0], nxt[2]]
        assert len(nxt) == 5
        first = [{"role": "user", "content": "What is 2+2?"}]
        p1 = chat_prompt_tokens(m, template, first).ids

        def turns(engine: BatchEngine, then: tuple[int, ...], limit: int) -> tuple[str, object]:
            recs = list(engine.generate(Request(p1, greedy, max_tokens=limit, next_turn=then)))
            answer = "".join(r.text for r in recs)
            deadline = time.monotonic() + 10  # the idle slot evaluates the next-turn tokens
            while any(s.prefill for s in engine.slots) and time.monotonic() < deadline:
                time.sleep(0.01)
            second = [*first, {"role": "assistant", "content": answer},
                      {"role": "user", "content": "And of Germany?"}]  # fmt: skip
            p2 = chat_prompt_tokens(m, template, second).ids
            recs2 = list(engine.generate(Request(p2, greedy, max_tokens=8)))
            return "".join(r.text for r in recs2), recs2[-1]

        for limit, reason in ((64, "stop"), (5, "length")):  # ends with <|im_end|>; cut
            with BatchEngine(m, parallel=1, n_ctx=512) as e:
                streamed = list(e.generate(Request(p1, greedy, max_tokens=limit)))
                held = list(e.generate(Request(p1, greedy, max_tokens=limit, stream=False)))
                assert len(held) == 1 and held[0].finish_reason == reason
                assert streamed[-1].finish_reason == reason
                assert held[0].text == "".join(r.text for r in streamed)
                assert held[0].tokens == tuple(t for r in streamed for t in r.tokens)
                assert held[0].completion_tokens == streamed[-1].completion_tokens
            with BatchEngine(m, parallel=1, n_ctx=512) as e:
                plain, plain_last = turns(e, (), limit)
            with BatchEngine(m, parallel=1, n_ctx=512) as e:
                cached, cached_last = turns(e, nxt, limit)
            assert cached == plain
            # at the length limit the last sampled token was not evaluated yet: it is now too
            saved = len(nxt) + (1 if reason == "length" else 0)
            assert cached_last.prompt_evaluated == plain_last.prompt_evaluated - saved  # type: ignore[attr-defined]


def test_next_turn_prefill_waits_for_an_idle_cpu(
    smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step for the next-turn tokens alone waits ``PREFILL_DELAY``: a request sent the moment
    an answer ends gets them evaluated with its own new tokens in one step; a step that runs
    anyway for another slot takes them along at once."""
    from llama3zh_local.chat.prompt_tokens import chat_prompt_tokens, next_turn_tokens
    from llama3zh_local.chat.template import choose_template
    from llama3zh_local.llamacpp import batch
    from llama3zh_local.llamacpp.batch import BatchEngine, Request
    from llama3zh_local.llamacpp.engine import Model
    from llama3zh_local.llamacpp.engine import SamplingParams as Sampling

    monkeypatch.setattr(batch, "PREFILL_DELAY", 3600.0)
    greedy = Sampling(temperature=0, repeat_penalty=1.0)
    with Model(smollm2_gguf) as m, BatchEngine(m, parallel=2, n_ctx=512) as e:
        template = choose_template(m, "auto")
        nxt = next_turn_tokens(m, template)
        first = [{"role": "user", "content": "What is 2+2?"}]
        p1 = chat_prompt_tokens(m, template, first).ids
        recs = list(e.generate(Request(p1, greedy, max_tokens=64, next_turn=nxt)))
        assert recs[-1].finish_reason == "stop"
        slot = e.slots[recs[-1].slot]
        steps = e.steps
        time.sleep(0.3)
        assert slot.prefill == list(nxt) and e.steps == steps  # no step of their own yet
        second = [*first, {"role": "assistant", "content": "".join(r.text for r in recs)},
                  {"role": "user", "content": "And of Germany?"}]  # fmt: skip
        p2 = chat_prompt_tokens(m, template, second).ids
        it = e.generate(Request(p2, greedy, max_tokens=4))
        head = next(it)
        # the answer's end, the next user header and the new text: one step, first token out
        assert e.steps == steps + 1 and slot.prefill == []
        assert head.slot == slot.seq and head.prompt_evaluated > len(nxt)
        kept = len(p2) - head.prompt_evaluated
        assert p2[:kept] == slot.tokens[:kept] and p2[kept : kept + len(nxt)] == list(nxt)
        it.close()
        # another slot generating: the idle slot's next-turn tokens ride along in its steps
        long = m.tokenize("Count from 1 to 100: 1, 2, 3,", add_special=True)
        busy = e.generate(Request(long, greedy, max_tokens=300))
        running = next(busy).slot
        short = list(e.generate(Request(p1, greedy, max_tokens=64, next_turn=nxt)))
        assert short[-1].slot != running
        done = e.slots[short[-1].slot]
        deadline = time.monotonic() + 30
        while done.prefill and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done.prefill == [] and done.tokens[-len(nxt) :] == list(nxt)
        assert e.busy == 1  # the long answer is still running
        busy.close()


def test_shared_prefix_is_copied_between_kv_streams(smollm2_gguf: Path) -> None:
    """Each slot has its own KV stream. A request sharing a long prefix (a system prompt) with
    another slot's tokens gets that prefix copied into its stream and evaluates only the rest,
    answers exactly as with everything evaluated, and leaves the other slot's cache whole; a
    prefix shorter than COPY_MIN is evaluated again rather than copied."""
    from llama3zh_local.chat.prompt_tokens import chat_prompt_tokens
    from llama3zh_local.chat.template import choose_template
    from llama3zh_local.llamacpp.batch import COPY_MIN, BatchEngine, Record, Request
    from llama3zh_local.llamacpp.engine import Model
    from llama3zh_local.llamacpp.engine import SamplingParams as Sampling

    greedy = Sampling(temperature=0, repeat_penalty=1.0)
    system = {"role": "system", "content": "You are a geography teacher. " * 8}
    with Model(smollm2_gguf) as m:
        template = choose_template(m, "auto")

        def prompt(question: str, *, with_system: bool = True) -> list[int]:
            msgs = [system] if with_system else []
            msgs.append({"role": "user", "content": question})
            return chat_prompt_tokens(m, template, msgs).ids

        def ask(e: BatchEngine, ids: list[int]) -> tuple[str, Record]:
            recs = list(e.generate(Request(ids, greedy, max_tokens=12)))
            return "".join(r.text for r in recs), recs[-1]

        def common(a: list[int], b: list[int]) -> int:
            return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)

        first, second = prompt("What is the capital of France?"), prompt("Name a river in Spain.")
        shared = common(first, second)
        assert shared >= COPY_MIN
        # the reference: the same prefix evaluated in the same pieces, in one slot (a prompt
        # evaluated whole can round differently and flip a near tie of this small model)
        with BatchEngine(m, parallel=1, n_ctx=512) as one:
            ask(one, first)
            want, trimmed = ask(one, second)
            assert trimmed.prompt_evaluated == len(second) - shared
        with BatchEngine(m, parallel=2, n_ctx=512) as e:
            _, head1 = ask(e, first)
            got, head2 = ask(e, second)
            assert head2.slot != head1.slot
            assert head2.prompt_evaluated == len(second) - shared
            assert got == want
            # the first conversation's slot kept its cache: its prompt again evaluates one token
            _, again = ask(e, first)
            assert again.slot == head1.slot and again.prompt_evaluated == 1
            # a short shared prefix (the template's opening) is not copied: the slot it goes to
            # keeps what it shares itself and evaluates the rest
            bare = prompt("Hi", with_system=False)
            k = common(bare, first)
            assert 0 < k < COPY_MIN
            _, short = ask(e, bare)
            assert short.prompt_evaluated == len(bare) - k
