"""Prompt token ids in which only the chat template's own scaffolding becomes control tokens.

Tokenizing the whole rendered prompt with ``parse_special=True`` lets a message that contains
``<|eot_id|><|start_header_id|>system<|end_header_id|>`` forge a turn. Here the template is
rendered with a unique sentinel in place of each message's text; the rendered text is split on
the sentinels, the template's pieces are tokenized with special tokens parsed and each message's
text with special tokens read as plain text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ChatTemplateError


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of a rendered chat prompt and, for each, whether it came from a message."""

    ids: list[int]
    from_message: list[bool]
    text: str  # the rendered prompt


def chat_prompt_tokens(
    model: Any,
    template: Any,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> PromptTokens:
    """Render ``messages`` with ``template`` (a ``ChatTemplate``) and tokenize them safely.

    Args:
        model: a ``llamacpp.engine.Model`` (tokenize, add_bos).

    Raises:
        ChatTemplateError: the template fails, or it changes message text in a way other than
            trimming it (the sentinels do not come back), so the split cannot be trusted.
    """
    pieces = _pieces(template, messages, add_generation_prompt=add_generation_prompt)
    text = "".join(p for p, _ in pieces)
    expected = template.render(list(messages), add_generation_prompt=add_generation_prompt)
    if text != expected:
        raise ChatTemplateError(
            "the chat template changes message text (not only trimming it), so message text "
            "cannot be kept apart from its control tokens",
            hint="use the built-in template: --template llama3",
        )
    bos = getattr(template, "bos_token", "")
    add_bos = bool(model.add_bos) and not (bos and text.startswith(bos))
    ids: list[int] = []
    flags: list[bool] = []
    first = True
    for piece, is_message in pieces:
        if not piece and not first:
            continue
        toks = model.tokenize(piece, add_special=first and add_bos, parse_special=not is_message)
        ids.extend(toks)
        flags.extend([is_message] * len(toks))
        first = False
    return PromptTokens(ids=ids, from_message=flags, text=text)


def _pieces(
    template: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
) -> list[tuple[str, bool]]:
    """The rendered prompt as (text, came from a message) pieces, in order."""
    tag = uuid.uuid4().hex
    sentinels = [f"\ue000{tag}{i}\ue001" for i in range(len(messages))]
    # Padded with spaces: a template that trims message text (Llama-3's does) drops them.
    marked = [{**m, "content": f" {s} "} for m, s in zip(messages, sentinels, strict=True)]
    rendered = template.render(marked, add_generation_prompt=add_generation_prompt)
    pattern = re.compile("( ?)\ue000" + tag + r"(\d+)\ue001( ?)")
    pieces: list[tuple[str, bool]] = []  # (text, from a message)
    pos = 0
    for m in pattern.finditer(rendered):
        i = int(m.group(2))
        if i >= len(messages):
            continue
        content = str(messages[i].get("content", ""))
        if not (m.group(1) and m.group(3)):
            content = content.strip()
        pieces.append((rendered[pos : m.start()], False))
        pieces.append((content, True))
        pos = m.end()
    pieces.append((rendered[pos:], False))
    return pieces


def next_turn_tokens(model: Any, template: Any) -> tuple[int, ...]:
    """The template's tokens between an assistant message's text and the next user message's
    (Llama-3: ``<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n``), tokenized as
    ``chat_prompt_tokens`` tokenizes them; ``()`` when the template does not show them plainly.

    A server evaluates them after an answer ends, so that the next turn finds them cached.
    """
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}]  # fmt: skip
    try:
        pieces = _pieces(template, msgs, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this: no prefill, no harm
        return ()
    flags = [is_message for _, is_message in pieces]
    if flags != [False, True, False, True, False, True, False] or not pieces[4][0]:
        return ()
    return tuple(model.tokenize(pieces[4][0], add_special=False, parse_special=True))
