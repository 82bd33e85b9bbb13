"""Training data read from disk: SFT conversations (alpaca, ShareGPT, OpenAI messages) and PT text.

Formats are detected per file; anything that cannot be used is a ``DataError`` naming the file
and line (``file:line`` for JSONL, ``file:item N`` for a JSON array). Pure Python: no tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = [
    "PT_SUFFIXES",
    "SFT_FORMATS",
    "SFT_SUFFIXES",
    "Conversation",
    "Message",
    "PtData",
    "SftData",
    "Text",
    "data_files",
    "read_pt",
    "read_sft",
]

SFT_SUFFIXES = (".json", ".jsonl")
PT_SUFFIXES = (".txt", ".jsonl")
SFT_FORMATS = ("alpaca", "sharegpt", "messages")

# ShareGPT's speaker names (as LLaMA-Factory reads them) -> the chat roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
ROLES = ("system", "user", "assistant")

_SFT_HINT = (
    "each record is alpaca {instruction, input, output, system, history}, ShareGPT "
    "{conversations: [{from, value}]} or OpenAI {messages: [{role, content}]}; "
    "check it with: llama3zh train check-data DATA --base MODEL"
)


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class Conversation:
    """An optional system message, then user and assistant turns in turn, ending with the
    assistant's."""

    messages: tuple[Message, ...]
    source: str  # file:line, or file:item N in a JSON array


@dataclass(frozen=True)
class SftData:
    format: str  # alpaca | sharegpt | messages, or several joined with "+" (one per file)
    conversations: tuple[Conversation, ...]
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Text:
    text: str
    source: str  # the file (.txt) or file:line (.jsonl)


@dataclass(frozen=True)
class PtData:
    texts: tuple[Text, ...]
    files: tuple[Path, ...]


def data_files(path: Path, suffixes: tuple[str, ...]) -> tuple[Path, ...]:
    """``path`` itself, or the files with these suffixes under the folder (sorted, hidden ones
    skipped).

    Raises:
        DataError: nothing there, or no such files.
    """
    wanted = " or ".join(suffixes)
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise DataError(
                f"{path}: not a {wanted} file",
                hint=f"give a {wanted} file, or a folder of them",
            )
        return (path,)
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder", hint="check the path of the data")
    found = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise DataError(
            f"{path}: no {wanted} files in this folder",
            hint=f"put the data in {wanted} files, or give the file itself",
        )
    return tuple(found)


# -- SFT ------------------------------------------------------------------------------------------


def read_sft(path: Path) -> SftData:
    """The conversations in a ``.json`` / ``.jsonl`` file or a folder of them.

    Raises:
        DataError: no files, malformed JSON, an unknown format or role, a missing field, an empty
            conversation, or one that does not alternate user/assistant and end with the
            assistant (the message names the file and line).
    """
    files = data_files(path, SFT_SUFFIXES)
    formats: list[str] = []
    conversations: list[Conversation] = []
    for file in files:
        fmt = None
        first = ""
        for where, record in _records(file):
            this = _detect(record, where)
            if fmt is None:
                fmt, first = this, where
            elif this != fmt:
                raise DataError(
                    f"{where}: a {this} record in a file of {fmt} records (from {first})",
                    hint="keep one format per file: split the file",
                )
            conversations.append(Conversation(_PARSERS[this](record, where), where))
        if fmt is None:
            raise DataError(f"{file}: no records in this file", hint=_SFT_HINT)
        if fmt not in formats:
            formats.append(fmt)
    return SftData(format="+".join(formats), conversations=tuple(conversations), files=files)


def _records(file: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for each JSONL line or JSON array item; blank lines skipped."""
    text = _read_text(file)
    if file.suffix.lower() == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            # a .json file that is JSON Lines inside ("Extra data" after the first record)
            if not err.msg.startswith("Extra data"):
                raise DataError(
                    f"{file}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})",
                    hint="fix the JSON at that line",
                ) from None
        else:
            if isinstance(data, dict):
                yield f"{file}:1", data
                return
            if not isinstance(data, list):
                raise DataError(
                    f"{file}:1: expected a JSON array of records, got {type(data).__name__}",
                    hint=_SFT_HINT,
                )
            for i, item in enumerate(data, 1):
                yield f"{file}:item {i}", item
            return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{file}:{n}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{file}:{n}: malformed JSON line ({err.msg}, column {err.colno})",
                hint="each line of a .jsonl file is one JSON object: fix that line",
            ) from None


def _read_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise DataError(
            f"{file}: cannot be read ({err.strerror or err})", hint="check the file"
        ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{file}:{line}: not UTF-8 text (byte {err.start})",
            hint="save the file as UTF-8 (e.g. iconv -f GBK -t UTF-8)",
        ) from None


def _detect(record: Any, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected a JSON object, got {type(record).__name__}", hint=_SFT_HINT
        )
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "instruction" in record or "output" in record:
        return "alpaca"
    keys = ", ".join(sorted(record)) or "none"
    raise DataError(f"{where}: unknown record format (keys: {keys})", hint=_SFT_HINT)


def _text(record: dict[str, Any], key: str, where: str, *, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field {key!r}", hint=_SFT_HINT)
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {key!r} must be a string, got {type(value).__name__}",
            hint=_SFT_HINT,
        )
    return value


def _alpaca(record: dict[str, Any], where: str) -> tuple[Message, ...]:
    instruction = _text(record, "instruction", where, required=True)
    extra = _text(record, "input", where, required=False)
    output = _text(record, "output", where, required=True)
    system = _text(record, "system", where, required=False)
    # as upstream's build_dataset.py (and LLaMA-Factory) join them
    prompt = f"{instruction}\n{extra}" if extra else instruction
    messages = [Message("system", system)] if system else []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(
            f"{where}: 'history' must be a list of [user, assistant] pairs", hint=_SFT_HINT
        )
    for i, pair in enumerate(history, 1):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(x, str) for x in pair)
        ):
            raise DataError(
                f"{where}: history item {i} is not a [user, assistant] pair of strings",
                hint=_SFT_HINT,
            )
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    messages += [Message("user", prompt), Message("assistant", output)]
    return _checked(messages, where)


def _turns(
    record: dict[str, Any], where: str, *, key: str, role_key: str, text_key: str
) -> tuple[Message, ...]:
    turns = record[key]
    if not isinstance(turns, list):
        raise DataError(f"{where}: {key!r} must be a list", hint=_SFT_HINT)
    messages = []
    # LLaMA-Factory's ShareGPT has a system column (used unless the turns start with one)
    system = record.get("system")
    first = turns[0] if turns and isinstance(turns[0], dict) else {}
    if isinstance(system, str) and system and first.get(role_key) != "system":
        messages.append(Message("system", system))
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {key} item {i} is not an object", hint=_SFT_HINT)
        if role_key not in turn or text_key not in turn:
            missing = role_key if role_key not in turn else text_key
            raise DataError(f"{where}: {key} item {i} has no {missing!r}", hint=_SFT_HINT)
        speaker, content = turn[role_key], turn[text_key]
        role = SHAREGPT_ROLES.get(speaker) if key == "conversations" else speaker
        if role not in ROLES:
            known = ", ".join(SHAREGPT_ROLES if key == "conversations" else ROLES)
            raise DataError(
                f"{where}: {key} item {i}: unknown role {speaker!r} (known: {known})",
                hint=_SFT_HINT,
            )
        if isinstance(content, list):  # OpenAI's content parts: the text ones
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise DataError(
                    f"{where}: {key} item {i}: only text content parts can be trained on",
                    hint=_SFT_HINT,
                )
            content = "".join(parts)  # type: ignore[arg-type]
        if not isinstance(content, str):
            raise DataError(
                f"{where}: {key} item {i}: {text_key!r} must be a string, "
                f"got {type(content).__name__}",
                hint=_SFT_HINT,
            )
        messages.append(Message(role, content))
    return _checked(messages, where)


def _sharegpt(record: dict[str, Any], where: str) -> tuple[Message, ...]:
    return _turns(record, where, key="conversations", role_key="from", text_key="value")


def _openai(record: dict[str, Any], where: str) -> tuple[Message, ...]:
    return _turns(record, where, key="messages", role_key="role", text_key="content")


_PARSERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _openai}


def _checked(messages: list[Message], where: str) -> tuple[Message, ...]:
    """An optional system message first, then user, assistant, user, ... ending with assistant."""
    turns = messages[1:] if messages and messages[0].role == "system" else messages
    if not turns:
        raise DataError(f"{where}: empty conversation (no user or assistant turn)", hint=_SFT_HINT)
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            article = "an" if m.role == "assistant" else "a"
            what = "a second system message" if m.role == "system" else f"{article} {m.role} turn"
            raise DataError(
                f"{where}: turn {i + 1} is {what} where the {expected}'s turn belongs "
                "(turns must alternate user, assistant, after one optional system message)",
                hint=_SFT_HINT,
            )
        if not m.content.strip():
            raise DataError(f"{where}: turn {i + 1} ({m.role}) is empty", hint=_SFT_HINT)
    if turns[-1].role != "assistant":
        raise DataError(
            f"{where}: the conversation ends with a user turn, not the assistant's answer",
            hint=_SFT_HINT,
        )
    return tuple(messages)


# -- PT -------------------------------------------------------------------------------------------


def read_pt(path: Path) -> PtData:
    """The texts in a ``.txt`` / ``.jsonl`` (``{"text": ...}``) file or a folder of them.

    A ``.txt`` file is one text (its blank-line-separated documents stay together); empty texts
    are skipped.

    Raises:
        DataError: no files, no text at all, a malformed JSON line or one without ``text``.
    """
    files = data_files(path, PT_SUFFIXES)
    texts: list[Text] = []
    for file in files:
        content = _read_text(file)
        if file.suffix.lower() == ".txt":
            if content.strip():
                texts.append(Text(content, str(file)))
            continue
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{file}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{where}: malformed JSON line ({err.msg}, column {err.colno})",
                    hint="each line of a .jsonl file is one JSON object: fix that line",
                ) from None
            hint = 'each line of a pre-training .jsonl file is {"text": "..."}'
            if not isinstance(record, dict) or "text" not in record:
                raise DataError(f"{where}: missing field 'text'", hint=hint)
            if not isinstance(record["text"], str):
                raise DataError(
                    f"{where}: field 'text' must be a string, got {type(record['text']).__name__}",
                    hint=hint,
                )
            if record["text"].strip():
                texts.append(Text(record["text"], where))
    if not texts:
        raise DataError(
            f"{path}: no text to train on (every file is empty)", hint="check the data files"
        )
    return PtData(texts=tuple(texts), files=files)
