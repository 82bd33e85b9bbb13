"""Issue 15: training data read from disk, formats detected per file, bad data named by file and
line (train/data.py). Pure Python: no tokenizer, no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama3zh_local.errors import DataError, UsageError
from llama3zh_local.train.data import Message, read_pt, read_sft

S, U, A = "system", "user", "assistant"


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def msgs(*pairs: tuple[str, str]) -> tuple[Message, ...]:
    return tuple(Message(role, content) for role, content in pairs)


# (file name, content, format, the messages of each conversation)
FORMATS = {
    "alpaca jsonl": (
        "a.jsonl",
        jsonl({"instruction": "介绍一下北京", "input": "", "output": "北京是中国的首都。"}),
        "alpaca",
        [msgs((U, "介绍一下北京"), (A, "北京是中国的首都。"))],
    ),
    "alpaca with input, system and history": (
        "a.jsonl",
        jsonl(
            {
                "instruction": "翻译成英文",
                "input": "我爱北京。",
                "output": "I love Beijing.",
                "system": "你是翻译。",
                "history": [["你好", "你好！"], ["在吗", "在的。"]],
            }
        ),
        "alpaca",
        [
            msgs(
                (S, "你是翻译。"),
                (U, "你好"),
                (A, "你好！"),
                (U, "在吗"),
                (A, "在的。"),
                (U, "翻译成英文\n我爱北京。"),
                (A, "I love Beijing."),
            )  # fmt: skip
        ],
    ),
    "alpaca json array": (
        "a.json",
        json.dumps(
            [{"instruction": "一", "output": "1"}, {"instruction": "二", "output": "2"}],
            ensure_ascii=False,
            indent=2,
        ),
        "alpaca",
        [msgs((U, "一"), (A, "1")), msgs((U, "二"), (A, "2"))],
    ),
    "a .json file holding JSON lines": (
        "a.json",
        jsonl({"instruction": "一", "output": "1"}, {"instruction": "二", "output": "2"}),
        "alpaca",
        [msgs((U, "一"), (A, "1")), msgs((U, "二"), (A, "2"))],
    ),
    "sharegpt": (
        "s.jsonl",
        jsonl(
            {
                "conversations": [
                    {"from": "system", "value": "sys"},
                    {"from": "human", "value": "你好"},
                    {"from": "gpt", "value": "你好！"},
                    {"from": "user", "value": "再见"},
                    {"from": "assistant", "value": "再见！"},
                ]
            }
        ),
        "sharegpt",
        [msgs((S, "sys"), (U, "你好"), (A, "你好！"), (U, "再见"), (A, "再见！"))],
    ),
    "sharegpt with a system column": (
        "s.jsonl",
        jsonl(
            {
                "system": "列的系统",
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            }
        ),
        "sharegpt",
        [msgs((S, "列的系统"), (U, "q"), (A, "a"))],
    ),
    "openai messages with content parts": (
        "m.jsonl",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "你"}, {"text": "好"}]},
                    {"role": "assistant", "content": "嗯"},
                ]
            }
        ),
        "messages",
        [msgs((U, "你好"), (A, "嗯"))],
    ),
    "blank lines and a BOM": (
        "m.jsonl",
        "\ufeff"
        + jsonl(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        )
        + "\n   \n"
        + jsonl(
            {"messages": [{"role": "user", "content": "r"}, {"role": "assistant", "content": "b"}]}
        ),
        "messages",
        [msgs((U, "q"), (A, "a")), msgs((U, "r"), (A, "b"))],
    ),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_formats(name: str, tmp_path: Path) -> None:
    file, content, fmt, conversations = FORMATS[name]
    path = tmp_path / file
    path.write_text(content, encoding="utf-8")
    data = read_sft(path)
    assert data.format == fmt
    assert data.files == (path,)
    assert [c.messages for c in data.conversations] == conversations


def test_sources_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        "\n"
        + jsonl({"instruction": "q", "output": "a"})
        + "\n"
        + jsonl({"instruction": "r", "output": "b"})
    )
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "q", "output": "a"}] * 2))
    data = read_sft(tmp_path)
    assert [c.source for c in data.conversations] == [
        f"{tmp_path / 'a.jsonl'}:2",
        f"{tmp_path / 'a.jsonl'}:4",
        f"{tmp_path / 'b.json'}:item 1",
        f"{tmp_path / 'b.json'}:item 2",
    ]


def test_folder_of_several_formats(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jsonl").write_text(jsonl({"instruction": "q", "output": "a"}))
    (tmp_path / "sub" / "b.json").write_text(
        json.dumps(
            [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]
        )
    )
    (tmp_path / ".hidden.jsonl").write_text("not json")
    (tmp_path / "notes.md").write_text("not data")
    data = read_sft(tmp_path)
    assert data.format == "alpaca+sharegpt"
    assert data.files == (tmp_path / "a.jsonl", tmp_path / "sub" / "b.json")
    assert len(data.conversations) == 2


def ok(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# (file name, content, what the message says after "<file>:<where>: ")
BAD_SFT = {
    "malformed JSON line": (
        "d.jsonl",
        jsonl({"instruction": "q", "output": "a"}) + '{"instruction": "q", "output": \n',
        "2: malformed JSON line",
    ),
    "malformed JSON array": (
        "d.json",
        '[\n {"instruction": "q",\n  "output": }\n]',
        "3: malformed JSON",
    ),
    "not UTF-8": ("d.jsonl", None, "2: not UTF-8 text"),
    "not an object": ("d.json", "[1]", "item 1: expected a JSON object, got int"),
    "unknown format": (
        "d.jsonl",
        jsonl({"prompt": "q", "completion": "a"}),
        "1: unknown record format (keys: completion, prompt)",
    ),
    "mixed formats in one file": (
        "d.jsonl",
        jsonl({"instruction": "q", "output": "a"}, {"messages": [ok(U, "q"), ok(A, "a")]}),
        "2: a messages record in a file of alpaca records",
    ),
    "alpaca without output": ("d.jsonl", jsonl({"instruction": "q"}), "1: missing field 'output'"),
    "alpaca without instruction": (
        "d.jsonl",
        jsonl({"output": "a"}),
        "1: missing field 'instruction'",
    ),
    "alpaca output not a string": (
        "d.jsonl",
        jsonl({"instruction": "q", "output": 3}),
        "1: field 'output' must be a string, got int",
    ),
    "alpaca empty output": (
        "d.jsonl",
        jsonl({"instruction": "q", "output": "  "}),
        "1: turn 2 (assistant) is empty",
    ),
    "alpaca bad history": (
        "d.jsonl",
        jsonl({"instruction": "q", "output": "a", "history": [["only one"]]}),
        "1: history item 1 is not a [user, assistant] pair",
    ),
    "empty conversation": ("d.jsonl", jsonl({"conversations": []}), "1: empty conversation"),
    "only a system message": (
        "d.jsonl",
        jsonl({"messages": [ok(S, "s")]}),
        "1: empty conversation",
    ),
    "conversations not a list": (
        "d.json",
        json.dumps([{"conversations": "hi"}]),
        "item 1: 'conversations' must be a list",
    ),
    "unknown ShareGPT speaker": (
        "d.jsonl",
        jsonl({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}),
        "1: conversations item 2: unknown role 'bot'",
    ),
    "unknown role": (
        "d.jsonl",
        jsonl({"messages": [ok(U, "q"), ok("tool", "a")]}),
        "1: messages item 2: unknown role 'tool'",
    ),
    "message without content": (
        "d.jsonl",
        jsonl({"messages": [ok(U, "q"), {"role": "assistant"}]}),
        "1: messages item 2 has no 'content'",
    ),
    "turn not an object": (
        "d.jsonl",
        jsonl({"messages": [ok(U, "q"), "a"]}),
        "1: messages item 2 is not an object",
    ),
    "image content": (
        "d.jsonl",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                    ok(A, "a"),
                ]
            }
        ),
        "1: messages item 1: only text content parts",
    ),
    "ends with the user": (
        "d.jsonl",
        jsonl({"messages": [ok(U, "q"), ok(A, "a"), ok(U, "q2")]}),
        "1: the conversation ends with a user turn",
    ),
    "two user turns": (
        "d.jsonl",
        jsonl({"messages": [ok(U, "q"), ok(U, "q2"), ok(A, "a")]}),
        "1: turn 2 is a user turn where the assistant's turn belongs",
    ),
    "starts with the assistant": (
        "d.jsonl",
        jsonl({"messages": [ok(A, "a")]}),
        "1: turn 1 is an assistant turn where the user's turn belongs",
    ),
    "a second system message": (
        "d.jsonl",
        jsonl({"messages": [ok(S, "s"), ok(U, "q"), ok(S, "s2"), ok(A, "a")]}),
        "1: turn 2 is a second system message",
    ),
    "empty user turn": (
        "d.jsonl",
        jsonl({"messages": [ok(U, ""), ok(A, "a")]}),
        "1: turn 1 (user) is empty",
    ),
    "a file with no records": ("d.jsonl", "\n\n", " no records in this file"),
    "an empty JSON array": ("d.json", "[]", " no records in this file"),
}


@pytest.mark.parametrize("name", list(BAD_SFT))
def test_bad_sft_data_names_file_and_line(name: str, tmp_path: Path) -> None:
    file, content, says = BAD_SFT[name]
    path = tmp_path / file
    if content is None:  # GBK on line 2
        path.write_bytes(jsonl({"instruction": "q", "output": "a"}).encode() + "你好".encode("gbk"))
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_sft(path)
    assert str(e.value).startswith(f"{path}:"), str(e.value)
    assert f"{path}:{says}" in str(e.value)
    assert "\n" not in str(e.value) and e.value.hint
    assert isinstance(e.value, UsageError)


def test_no_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no \.json or \.jsonl files in this folder"):
        read_sft(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        read_sft(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"readme\.txt: not a \.json or \.jsonl file"):
        read_sft(tmp_path / "readme.txt")


# -- PT -------------------------------------------------------------------------------------------


def test_pt_texts(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("第一段。\n\n第二段。\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        jsonl({"text": "一"}) + "\n" + jsonl({"text": "  "}, {"text": "二", "meta": 1}),
        encoding="utf-8",
    )
    (tmp_path / "empty.txt").write_text("\n")
    data = read_pt(tmp_path)
    assert data.files == (tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "empty.txt")
    assert [(t.text, t.source) for t in data.texts] == [
        ("第一段。\n\n第二段。\n", str(tmp_path / "a.txt")),
        ("一", f"{tmp_path / 'b.jsonl'}:1"),
        ("二", f"{tmp_path / 'b.jsonl'}:4"),
    ]


BAD_PT = {
    "malformed JSON line": (
        "p.jsonl",
        jsonl({"text": "a"}) + "{text: b}\n",
        "2: malformed JSON line",
    ),
    "no text field": ("p.jsonl", jsonl({"text": "a"}, {"content": "b"}), "2: missing field 'text'"),
    "text not a string": ("p.jsonl", jsonl({"text": ["a"]}), "1: field 'text' must be a string"),
    "not an object": ("p.jsonl", "[1, 2]\n", "1: missing field 'text'"),
    "nothing but empty text": ("p.jsonl", jsonl({"text": ""}), ": no text to train on"),
}


@pytest.mark.parametrize("name", list(BAD_PT))
def test_bad_pt_data_names_file_and_line(name: str, tmp_path: Path) -> None:
    file, content, says = BAD_PT[name]
    path = tmp_path / file
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_pt(path)
    assert f"{path}{says}" in str(e.value) or f"{path}:{says}" in str(e.value), str(e.value)
    assert e.value.hint


def test_pt_no_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[]")
    with pytest.raises(DataError, match=r"no \.txt or \.jsonl files"):
        read_pt(tmp_path)
