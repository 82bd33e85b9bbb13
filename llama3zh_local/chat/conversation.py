"""The conversation: system prompt and turns, saved and loaded as JSON; checks of user text."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import DEFAULT_SYSTEM_PROMPT
from ..errors import InputError
from ..files import atomic


@dataclass
class Conversation:
    """System prompt plus alternating user/assistant turns."""

    system: str | None = DEFAULT_SYSTEM_PROMPT
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def clear(self) -> None:
        self.turns.clear()

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON (``{"system": ..., "messages": [...]}``), atomically.

        Raises:
            InputError: the file cannot be written there (a folder, no such folder, no
                permission, disk full); the message names ``path``, not the temporary file.
        """
        path = Path(path).expanduser()
        data = {"system": self.system, "messages": self.turns}
        text = json.dumps(data, ensure_ascii=False, indent=1)
        hint = "give a file path in a folder that exists and you can write to"
        if path.is_dir():
            raise InputError(f"cannot save to {quoted(path)}: it is a folder", hint=hint)
        if not path.parent.is_dir():
            raise InputError(
                f"cannot save to {quoted(path)}: there is no folder {quoted(path.parent)}",
                hint=hint,
            )
        if path.exists() and not path.is_file():  # a device or FIFO must not be replaced
            raise InputError(f"cannot save to {quoted(path)}: it is not a regular file", hint=hint)
        if path.exists() and not os.access(path, os.W_OK):
            raise InputError(f"cannot save to {quoted(path)}: the file is read-only", hint=hint)
        try:
            return atomic.write_text(path, text)
        except (OSError, UnicodeError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise InputError(f"cannot save to {quoted(path)}: {why}", hint=hint) from None

    @classmethod
    def load(cls, path: str | Path) -> Conversation:
        """A conversation written by ``save``; every field is checked for its type.

        Raises:
            InputError: no such file, not JSON, or not a saved conversation.
        """
        path = Path(path).expanduser()
        hint = (
            'files written by /save hold {"system": TEXT or null, "messages": [{"role": '
            '"user" or "assistant", "content": TEXT}, ...]}'
        )
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InputError(
                f"no conversation file at {quoted(path)}",
                hint="give the path of a file written by /save",
            ) from None
        except OSError as err:
            raise InputError(
                f"cannot read {quoted(path)}: {err.strerror or err}",
                hint="give the path of a file written by /save",
            ) from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise InputError(
                f"{quoted(path)} is not a saved conversation (not UTF-8 JSON: {err})", hint=hint
            ) from None

        def bad(why: str) -> InputError:
            return InputError(f"{quoted(path)} is not a saved conversation: {why}", hint=hint)

        if not isinstance(data, dict):
            raise bad(f"it holds a JSON {type(data).__name__}, not an object")
        system = data.get("system")
        messages = data.get("messages")
        if system is not None and not isinstance(system, str):
            raise bad(f'"system" is a {type(system).__name__}, not text or null')
        if not isinstance(messages, list):
            raise bad('"messages" is missing or not a list')
        if system is not None:
            try:
                check_text(system, '"system"')
            except InputError as err:
                raise bad(str(err)) from None
        turns: list[dict[str, str]] = []
        for i, m in enumerate(messages, 1):
            if not isinstance(m, dict):
                raise bad(f"message {i} is a {type(m).__name__}, not an object")
            role, content = m.get("role"), m.get("content")
            if role not in ("user", "assistant"):
                raise bad(f"message {i} has role {role!r} (expected user or assistant)")
            if not isinstance(content, str):
                raise bad(f"message {i}'s content is a {type(content).__name__}, not text")
            try:
                check_text(content, f"message {i}'s content")
            except InputError as err:
                raise bad(str(err)) from None
            turns.append({"role": role, "content": content})
        return cls(system=system, turns=turns)


def quoted(path: str | Path) -> str:
    """A path for a message: as typed, or repr-quoted when it holds anything unprintable."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def check_text(text: str, what: str) -> str:
    """``text`` when it is valid Unicode text (no undecodable bytes smuggled in as surrogates).

    Python hands bytes that are not UTF-8 in arguments and terminal input over as lone
    surrogates (``\\udcff`` for byte 0xff); llama.cpp's tokenizer takes UTF-8 only.

    Raises:
        InputError: the text holds such a byte; the message says which and where.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        ch = ord(text[err.start])
        byte = f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"U+{ch:04X}"
        raise InputError(
            f"{what} is not valid UTF-8 text ({byte} at character {err.start + 1})",
            hint="give it as UTF-8: convert with `iconv -f GBK -t UTF-8`, or set the terminal "
            "to UTF-8 (LANG=C.UTF-8)",
        ) from None
    return text


def decode_input(data: bytes, what: str) -> str:
    """Bytes read from stdin or a file as UTF-8 text.

    Raises:
        InputError: they are not UTF-8; the message gives the first bad byte and its offset.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{what} is not valid UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
            hint="convert it first, e.g. iconv -f GBK -t UTF-8 FILE | llama3zh chat",
        ) from None
