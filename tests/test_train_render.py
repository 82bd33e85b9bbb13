"""Issue 15, acceptance "template and masking": golden tests with the real Llama-3 tokenizer.

The ids of an SFT sample equal ``Tokenizer.encode`` of Meta's official chat template rendered by
plain Jinja (as transformers renders it), and the labels are -100 exactly on the tokens outside
the assistant turns (each turn's content and its ``<|eot_id|>``). Also SmolLM2's ChatML template,
truncation, --train-on-prompt and PT packing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from llama3zh_local.catalog import DEFAULT_SYSTEM_PROMPT
from llama3zh_local.errors import ChatTemplateError, InvalidModelError, ModelNotFoundError
from llama3zh_local.train.data import read_pt, read_sft
from llama3zh_local.train.render import (
    ChatFormat,
    encode_conversation,
    encode_pt,
    encode_sft,
    load_tokenizer,
)
from llama3zh_local.train.samples import IGNORE_INDEX, Sample

from . import models


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What training reads of a Llama-3 checkpoint: Meta's tokenizer.json and
    tokenizer_config.json (with the official chat template)."""
    d = tmp_path_factory.mktemp("llama3")
    shutil.copyfile(models.llama3_tokenizer_json(), d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text(json.dumps(models.llama3_tokenizer_config()))
    return d


@pytest.fixture(scope="module")
def llama3(llama3_dir: Path) -> ChatFormat:
    return ChatFormat.from_model_dir(llama3_dir)


def reference_render(template: str, messages: list[dict[str, str]], **kw: Any) -> str:
    """The template rendered the way transformers' apply_chat_template does (plain Jinja)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=False, **kw)


def llama3_reference(messages: list[dict[str, str]]) -> list[int]:
    text = reference_render(models.LLAMA3_CHAT_TEMPLATE, messages, bos_token=models.LLAMA3_BOS)
    tok = Tokenizer.from_file(str(models.llama3_tokenizer_json()))
    return list(tok.encode(text, add_special_tokens=False).ids)


def trained_runs(sample: Sample) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = False
    for tid, label in zip(sample.input_ids, sample.labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == tid
            if not prev:
                runs.append([])
            runs[-1].append(tid)
        prev = trained
    return runs


def expected_labels(messages: list[dict[str, str]]) -> list[int]:
    """Labels from token counts alone: the tokens between the rendering up to each assistant
    turn's header and the rendering up to its end are trained (Llama-3's turns end in special
    tokens, so these renderings tokenize as prefixes of the whole)."""
    ids = llama3_reference(messages)
    labels = [IGNORE_INDEX] * len(ids)
    tok = Tokenizer.from_file(str(models.llama3_tokenizer_json()))
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = (
            reference_render(models.LLAMA3_CHAT_TEMPLATE, messages[:i], bos_token=models.LLAMA3_BOS)
            + "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        upto = reference_render(
            models.LLAMA3_CHAT_TEMPLATE, messages[: i + 1], bos_token=models.LLAMA3_BOS
        )
        a = len(tok.encode(before, add_special_tokens=False).ids)
        b = len(tok.encode(upto, add_special_tokens=False).ids)
        assert ids[:b] == tok.encode(upto, add_special_tokens=False).ids
        labels[a:b] = ids[a:b]
    return labels


SYSTEM = {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}

# (file name, data, the conversation as Meta's template gets it)
GOLDEN = {
    "alpaca": (
        "a.jsonl",
        {"instruction": "用一句话介绍长城。", "input": "",
         "output": "长城是中国古代的军事防御工程。"},
        [SYSTEM, {"role": "user", "content": "用一句话介绍长城。"},
         {"role": "assistant", "content": "长城是中国古代的军事防御工程。"}],
    ),
    "alpaca with input and history": (
        "a.jsonl",
        {
            "instruction": "把下面的句子翻译成英文。",
            "input": "今天天气很好。",
            "output": " The weather is nice today. ",  # Meta's template trims it
            "history": [["你好", "你好！有什么可以帮你？"], ["你会翻译吗？", "会的，请给我句子。"]],
        },
        [SYSTEM, {"role": "user", "content": "你好"},
         {"role": "assistant", "content": "你好！有什么可以帮你？"},
         {"role": "user", "content": "你会翻译吗？"},
         {"role": "assistant", "content": "会的，请给我句子。"},
         {"role": "user", "content": "把下面的句子翻译成英文。\n今天天气很好。"},
         {"role": "assistant", "content": " The weather is nice today. "}],
    ),
    "sharegpt": (
        "s.jsonl",
        {"conversations": [
            {"from": "system", "value": "你是一位诗人。"},
            {"from": "human", "value": "写一句关于春天的诗。"},
            {"from": "gpt", "value": "春风又绿江南岸。\n明月何时照我还？"},
            {"from": "human", "value": "作者是谁？"},
            {"from": "gpt", "value": "王安石。"},
        ]},
        [{"role": "system", "content": "你是一位诗人。"},
         {"role": "user", "content": "写一句关于春天的诗。"},
         {"role": "assistant", "content": "春风又绿江南岸。\n明月何时照我还？"},
         {"role": "user", "content": "作者是谁？"},
         {"role": "assistant", "content": "王安石。"}],
    ),
    "messages": (
        "m.jsonl",
        {"messages": [
            {"role": "user", "content": "1+1=?"},
            {"role": "assistant", "content": "等于 2。"},
            {"role": "user", "content": "再加 3 呢？ "},
            {"role": "assistant", "content": "等于 5。\n\n"},
        ]},
        [SYSTEM, {"role": "user", "content": "1+1=?"},
         {"role": "assistant", "content": "等于 2。"},
         {"role": "user", "content": "再加 3 呢？ "},
         {"role": "assistant", "content": "等于 5。\n\n"}],
    ),
}  # fmt: skip


def read_one(tmp_path: Path, file: str, record: dict[str, Any]):  # type: ignore[no-untyped-def]
    path = tmp_path / file
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    return read_sft(path)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_llama3(name: str, llama3: ChatFormat, tmp_path: Path) -> None:
    file, record, conversation = GOLDEN[name]
    samples = encode_sft(read_one(tmp_path, file, record), llama3, max_len=4096)
    assert len(samples) == 1 and samples.dropped == 0
    s = samples[0]
    assert s.source == f"{tmp_path / file}:1" and not s.truncated
    # ids: exactly Meta's template rendered by Jinja and tokenized once, one BOS
    assert list(s.input_ids) == llama3_reference(conversation)
    assert s.input_ids[0] == models.LLAMA3_BOS_ID and s.input_ids.count(models.LLAMA3_BOS_ID) == 1
    # labels, per token: trained exactly on the assistant turns
    assert list(s.labels) == expected_labels(conversation)
    tok = llama3.tokenizer
    assistant = [m["content"].strip() for m in conversation if m["role"] == "assistant"]
    decoded = [tok.decode(run, skip_special_tokens=False) for run in trained_runs(s)]
    assert decoded == [a + "<|eot_id|>" for a in assistant]
    assert s.trained_tokens == sum(len(r) for r in trained_runs(s))


def test_ids_equal_transformers_apply_chat_template(llama3_dir: Path, llama3: ChatFormat,
                                                     tmp_path: Path) -> None:  # fmt: skip
    """A second oracle: transformers' own rendering of the checkpoint's template."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(llama3_dir)
    for name, (file, record, conversation) in GOLDEN.items():
        sample = encode_sft(read_one(tmp_path, file, record), llama3, max_len=4096)[0]
        ids = hf.apply_chat_template(conversation, tokenize=True)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids
        assert list(sample.input_ids) == list(ids), name


def test_train_on_prompt(llama3: ChatFormat, tmp_path: Path) -> None:
    file, record, conversation = GOLDEN["sharegpt"]
    s = encode_sft(read_one(tmp_path, file, record), llama3, max_len=4096, train_on_prompt=True)[0]
    assert list(s.input_ids) == llama3_reference(conversation)
    assert s.labels == s.input_ids


def test_no_default_system(llama3: ChatFormat, tmp_path: Path) -> None:
    file, record, conversation = GOLDEN["alpaca"]
    data = read_one(tmp_path, file, record)
    s = encode_sft(data, llama3, max_len=4096, default_system=None)[0]
    assert list(s.input_ids) == llama3_reference(conversation[1:])
    s = encode_sft(data, llama3, max_len=4096, default_system="你是助手。")[0]
    assert list(s.input_ids) == llama3_reference(
        [{"role": "system", "content": "你是助手。"}, *conversation[1:]]
    )


def test_truncation_and_dropping(llama3: ChatFormat, tmp_path: Path) -> None:
    file, record, conversation = GOLDEN["alpaca with input and history"]
    data = read_one(tmp_path, file, record)
    full = encode_sft(data, llama3, max_len=4096)[0]
    labels = list(full.labels)
    first_trained = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    # cut inside the first assistant turn: kept, truncated, labels cut alike
    cut = first_trained + 3
    samples = encode_sft(data, llama3, max_len=cut)
    s = samples[0]
    assert s.truncated and len(s.input_ids) == cut
    assert s.input_ids == full.input_ids[:cut] and s.labels == full.labels[:cut]
    assert s.trained_tokens == 3
    # cut before any assistant token: dropped and counted
    samples = encode_sft(data, llama3, max_len=first_trained)
    assert len(samples) == 0 and samples.dropped == 1 and samples.dropped_tokens == first_trained
    # exactly the whole length: not truncated
    s = encode_sft(data, llama3, max_len=len(full.input_ids))[0]
    assert not s.truncated and s == full


def test_smollm2_chatml(smollm2_hf: Path, tmp_path: Path) -> None:
    """A checkpoint without <|eot_id|>: its own ChatML template, <|im_end|> trained."""
    fmt = ChatFormat.from_model_dir(smollm2_hf)
    assert fmt.end_of_turn == "<|im_end|>"
    config = json.loads((smollm2_hf / "tokenizer_config.json").read_text(encoding="utf-8"))
    file, record, conversation = GOLDEN["messages"]
    s = encode_sft(read_one(tmp_path, file, record), fmt, max_len=4096)[0]
    text = reference_render(config["chat_template"], conversation, bos_token=config["bos_token"])
    tok = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json"))
    assert list(s.input_ids) == tok.encode(text, add_special_tokens=False).ids
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
    decoded = [tok.decode(r, skip_special_tokens=False) for r in trained_runs(s)]
    # ChatML keeps the content as written (no trim)
    assert decoded == ["等于 2。<|im_end|>", "等于 5。\n\n<|im_end|>"]


def test_template_choice_errors(tmp_path: Path, llama3_dir: Path, smollm2_hf: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        ChatFormat.from_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelError, match="no tokenizer.json"):
        ChatFormat.from_model_dir(tmp_path / "empty")
    # no <|eot_id|> and no chat_template
    d = tmp_path / "base"
    d.mkdir()
    shutil.copyfile(smollm2_hf / "tokenizer.json", d / "tokenizer.json")
    config = json.loads((smollm2_hf / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ChatTemplateError, match="no chat_template") as e:
        ChatFormat.from_model_dir(d)
    assert "llama3zh train pt" in (e.value.hint or "")
    load_tokenizer(d)  # fine for PT
    # a Llama-3 vocabulary gets the official template whatever its config says
    d3 = tmp_path / "l3"
    d3.mkdir()
    shutil.copyfile(llama3_dir / "tokenizer.json", d3 / "tokenizer.json")
    cfg3 = {**models.llama3_tokenizer_config(), "chat_template": "{{ 'nonsense' }}"}
    (d3 / "tokenizer_config.json").write_text(json.dumps(cfg3))
    assert ChatFormat.from_model_dir(d3).template.source == models.LLAMA3_CHAT_TEMPLATE


def test_a_template_that_is_not_turn_by_turn(tmp_path: Path, smollm2_hf: Path) -> None:
    """A template that writes the last turn differently: the assistant spans cannot be found."""
    from llama3zh_local.errors import DataError

    d = tmp_path / "odd"
    d.mkdir()
    shutil.copyfile(smollm2_hf / "tokenizer.json", d / "tokenizer.json")
    config = json.loads((smollm2_hf / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = (
        "{% for m in messages %}{{ m.role }}{% if loop.last %}!{% endif %}: {{ m.content }}"
        "<|im_end|>{% endfor %}"
    )
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    file, record, _ = GOLDEN["messages"]
    data = read_one(tmp_path, file, record)
    with pytest.raises(DataError, match=r"m\.jsonl:1: the chat template .* turn by turn"):
        encode_sft(data, ChatFormat.from_model_dir(d), max_len=100)
    # with the prompt trained too, no spans are needed: the hint's way out works
    s = encode_conversation(
        data.conversations[0], ChatFormat.from_model_dir(d), max_len=100, train_on_prompt=True
    )
    assert s.labels == s.input_ids and s.trained_tokens > 0


# -- PT -------------------------------------------------------------------------------------------


def test_pt_packing(llama3_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(
        "北京是中国的首都。\n\n上海是中国的经济中心。\n", encoding="utf-8"
    )
    (tmp_path / "b.jsonl").write_text(
        "".join(
            json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ["你好，世界。", "Hello."]
        ),
        encoding="utf-8",
    )
    data = read_pt(tmp_path)
    tok = load_tokenizer(llama3_dir)
    assert tok.bos_token == models.LLAMA3_BOS and tok.document_end == models.LLAMA3_EOS
    t = Tokenizer.from_file(str(llama3_dir / "tokenizer.json"))
    stream: list[int] = []
    starts = []
    for text in data.texts:
        starts.append(len(stream))
        stream += [models.LLAMA3_BOS_ID, *t.encode(text.text, add_special_tokens=False).ids]
        stream.append(models.LLAMA3_EOS_ID)
    block = 5
    samples = encode_pt(data, tok, block_size=block)
    n = len(stream) // block
    assert len(samples) == n and samples.dropped_tokens == len(stream) % block
    assert samples.dropped == int(len(stream) % block > 0)
    assert [list(s.input_ids) for s in samples] == [
        stream[i * block : (i + 1) * block] for i in range(n)
    ]
    assert all(s.labels == s.input_ids and len(s.input_ids) == block for s in samples)
    # the source: the file where the block starts
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    for i, s in enumerate(samples):
        file = a if i * block < starts[1] else b
        assert s.source == f"{file}:block {i + 1}"
    # one big block: everything is the remainder
    big = encode_pt(data, tok, block_size=len(stream) + 1)
    assert len(big) == 0 and big.dropped == 1 and big.dropped_tokens == len(stream)
    exact = encode_pt(data, tok, block_size=len(stream))
    assert len(exact) == 1 and exact.dropped == 0 and list(exact[0].input_ids) == stream


def test_pt_without_bos(smollm2_hf: Path, tmp_path: Path) -> None:
    """SmolLM2 asks for no BOS (add_bos_token false); documents end with <|endoftext|>."""
    (tmp_path / "a.txt").write_text("一二三四五六七八九十" * 5, encoding="utf-8")
    tok = load_tokenizer(smollm2_hf)
    assert tok.bos_token is None and tok.document_end == "<|endoftext|>"
    samples = encode_pt(read_pt(tmp_path), tok, block_size=8)
    t = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json"))
    stream = [*t.encode("一二三四五六七八九十" * 5, add_special_tokens=False).ids]
    stream.append(t.token_to_id("<|endoftext|>"))
    assert [x for s in samples for x in s.input_ids] == stream[: len(samples) * 8]


def test_sizes_are_checked(llama3: ChatFormat, llama3_dir: Path, tmp_path: Path) -> None:
    from llama3zh_local.errors import UsageError

    file, record, _ = GOLDEN["alpaca"]
    with pytest.raises(UsageError, match="max_len"):
        encode_sft(read_one(tmp_path, file, record), llama3, max_len=1)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UsageError, match="block_size"):
        encode_pt(read_pt(tmp_path / "a.txt"), load_tokenizer(llama3_dir), block_size=0)
