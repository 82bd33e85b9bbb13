"""Training samples from data: conversations rendered with the model's chat template and masked,
text packed into blocks.

SFT renders each conversation once with exactly the template chat uses (Llama-3-Instruct when
the vocabulary has ``<|eot_id|>``, else the checkpoint's own), tokenizes it once, and trains on
each assistant turn's content and its end-of-turn token. PT concatenates the texts, each closed
by the end-of-text token, and cuts them into blocks as upstream's ``run_clm_pt.py`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog import DEFAULT_SYSTEM_PROMPT
from ..errors import ChatTemplateError, DataError, InvalidModelError, ModelNotFoundError
from ..templating import ChatTemplate, llama3_template
from .data import Conversation, Message, PtData, SftData
from .samples import IGNORE_INDEX, Sample

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "ChatFormat",
    "ModelTokenizer",
    "Samples",
    "encode_pt",
    "encode_sft",
    "load_tokenizer",
]

LLAMA3_EOT = "<|eot_id|>"
LLAMA3_BOS = "<|begin_of_text|>"
# What ends a document in pre-training, first found wins (Llama-3's, then GPT-2 style vocabs').
DOCUMENT_ENDS = ("<|end_of_text|>", "<|endoftext|>")


class Samples(list[Sample]):
    """The samples, and what was left out to make them."""

    def __init__(
        self, samples: Sequence[Sample] = (), *, dropped: int = 0, dropped_tokens: int = 0
    ):
        super().__init__(samples)
        # SFT: conversations with no trained token left after truncation; PT: 0 or 1 (the
        # remainder shorter than a block)
        self.dropped = dropped
        self.dropped_tokens = dropped_tokens  # the tokens those held


@dataclass(frozen=True)
class ModelTokenizer:
    """A checkpoint's ``tokenizer.json`` and the special tokens its ``tokenizer_config.json``
    names."""

    tokenizer: Tokenizer = field(repr=False)
    model_dir: Path
    config: dict[str, Any] = field(repr=False)
    bos_token: str | None  # None: the model has none, or does not want it added
    document_end: str  # closes each pre-training text

    def token_id(self, text: str) -> int:
        tid = self.tokenizer.token_to_id(text)
        if tid is None:
            raise InvalidModelError(
                f"{self.model_dir}: the vocabulary has no token {text!r}",
                hint="check that tokenizer.json and tokenizer_config.json belong together",
            )
        return int(tid)


def load_tokenizer(model_dir: Path) -> ModelTokenizer:
    """The tokenizer of an HF model folder (``tokenizer.json`` + ``tokenizer_config.json``).

    Raises:
        ModelNotFoundError: no such folder.
        InvalidModelError: no ``tokenizer.json``, or one ``tokenizers`` cannot load.
    """
    from tokenizers import Tokenizer

    if not model_dir.is_dir():
        raise ModelNotFoundError(
            f"{model_dir}: no such model folder",
            hint="give the folder of an HF checkpoint (config.json, tokenizer.json, *.safetensors)",
        )
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InvalidModelError(
            f"{model_dir}: no tokenizer.json (a fast tokenizer is needed to train)",
            hint="use a checkpoint that ships tokenizer.json (the hub's full-weight repos do)",
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - the Rust side raises plain Exceptions
        raise InvalidModelError(
            f"{path}: cannot be loaded ({err})", hint="download the model again"
        ) from None
    config: dict[str, Any] = {}
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidModelError(
                f"{cfg_path}: cannot be read ({err})", hint="download the model again"
            ) from None
    bos = _token_text(config.get("bos_token"))
    if tokenizer.token_to_id(LLAMA3_EOT) is not None and bos is None:
        bos = LLAMA3_BOS
    if config.get("add_bos_token") is False or (bos and tokenizer.token_to_id(bos) is None):
        bos = None
    end = next((t for t in DOCUMENT_ENDS if tokenizer.token_to_id(t) is not None), None)
    end = end or _token_text(config.get("eos_token"))
    if end is None or tokenizer.token_to_id(end) is None:
        raise InvalidModelError(
            f"{model_dir}: no end-of-text token (tokenizer_config.json has no eos_token)",
            hint="add eos_token to tokenizer_config.json",
        )
    return ModelTokenizer(
        tokenizer=tokenizer, model_dir=model_dir, config=config, bos_token=bos, document_end=end
    )


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class ChatFormat:
    """How a model's conversations become text: its chat template and end-of-turn token."""

    tok: ModelTokenizer
    template: ChatTemplate
    end_of_turn: str  # the token that closes an assistant turn (and is trained on)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.tok.tokenizer

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ChatFormat:
        """Llama-3-Instruct's template when the vocabulary has ``<|eot_id|>`` (exactly the one
        chat and serve use), else the folder's ``tokenizer_config.json`` ``chat_template``.

        Raises:
            ModelNotFoundError, InvalidModelError: see ``load_tokenizer``.
            ChatTemplateError: no Llama-3 vocabulary and no chat template of its own.
        """
        tok = load_tokenizer(model_dir)
        hint = "the template comes from the base model's tokenizer_config.json (chat_template)"
        if tok.tokenizer.token_to_id(LLAMA3_EOT) is not None:
            template = ChatTemplate(
                llama3_template(), bos_token=tok.bos_token or "", eos_token=LLAMA3_EOT, hint=hint
            )
            return cls(tok=tok, template=template, end_of_turn=LLAMA3_EOT)
        source = tok.config.get("chat_template")
        if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        eos = _token_text(tok.config.get("eos_token"))
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError(
                f"{model_dir}: not a Llama-3 vocabulary (no <|eot_id|>) and no chat_template "
                "in tokenizer_config.json: cannot tell how conversations are written",
                hint="fine-tune an Instruct model, or add its chat_template to "
                "tokenizer_config.json; for plain text use: llama3zh train pt",
            )
        if eos is None or tok.tokenizer.token_to_id(eos) is None:
            raise InvalidModelError(
                f"{model_dir}: tokenizer_config.json names no eos_token in the vocabulary, so the "
                "end of an assistant turn is unknown",
                hint="add eos_token (the template's end-of-turn token) to tokenizer_config.json",
            )
        template = ChatTemplate(
            source,
            bos_token=_token_text(tok.config.get("bos_token")) or "",
            eos_token=eos,
            origin=str(model_dir / "tokenizer_config.json"),
            hint=hint,
        )
        return cls(tok=tok, template=template, end_of_turn=eos)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        """The conversation as the template writes it (sandboxed)."""
        return self.template.render(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
        )

    def spans(self, messages: Sequence[Message], source: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans to train on: each assistant turn's
        content and the template text after it up to and including the end-of-turn token.

        Found by rendering prefixes (up to the generation prompt; up to the turn), which must be
        prefixes of the whole.

        Raises:
            DataError: the template does not render this conversation prefix by prefix.
        """
        full = self.render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m.role != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                raise DataError(
                    f"{source}: the chat template ({self.template.origin}) does not write this "
                    f"conversation turn by turn, so assistant turn {i} cannot be found in it",
                    hint="train with the Llama-3-Instruct template (a Llama-3 vocabulary), or "
                    "--train-on-prompt",
                )
            end = upto.rfind(self.end_of_turn, len(before))
            stop = end + len(self.end_of_turn) if end >= 0 else len(upto)
            spans.append((len(before), stop))
        return full, spans


def encode_sft(
    data: SftData,
    fmt: ChatFormat,
    *,
    max_len: int,
    train_on_prompt: bool = False,
    default_system: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Samples:
    """One sample per conversation: the ids of its rendering, labels on the assistant spans.

    The rendered text is tokenized once, special tokens as written by the template (Llama-3's
    writes ``<|begin_of_text|>`` itself: no second one is added). ``default_system`` is added to
    conversations without a system message (upstream's default; the one chat uses); None adds
    none. Samples are cut to ``max_len`` (``truncated``); those left with no trained token are
    dropped and counted in ``Samples.dropped``.

    Raises:
        UsageError: ``max_len`` < 2.
        DataError, ChatTemplateError: a conversation the template cannot render.
    """
    _check_size("max_len", max_len)
    out = Samples()
    for conv in data.conversations:
        sample = encode_conversation(
            conv, fmt, max_len=max_len, train_on_prompt=train_on_prompt,
            default_system=default_system,
        )  # fmt: skip
        if sample.trained_tokens == 0:
            out.dropped += 1
            out.dropped_tokens += len(sample.input_ids)
        else:
            out.append(sample)
    return out


def encode_conversation(
    conv: Conversation,
    fmt: ChatFormat,
    *,
    max_len: int,
    train_on_prompt: bool = False,
    default_system: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Sample:
    """One conversation as a sample (possibly with no trained token left: see ``encode_sft``)."""
    messages = list(conv.messages)
    if default_system is not None and (not messages or messages[0].role != "system"):
        messages.insert(0, Message("system", default_system))
    if train_on_prompt:  # no spans needed: any template will do
        ids = list(fmt.tokenizer.encode(fmt.render(messages), add_special_tokens=False).ids)
        labels = list(ids)
    else:
        text, spans = fmt.spans(messages, conv.source)
        enc = fmt.tokenizer.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        labels = [IGNORE_INDEX] * len(ids)
        k = 0
        for t, (start, _end) in enumerate(enc.offsets):
            while k < len(spans) and spans[k][1] <= start:
                k += 1
            if k < len(spans) and spans[k][0] <= start < spans[k][1]:
                labels[t] = ids[t]
    truncated = len(ids) > max_len
    return Sample(
        input_ids=tuple(ids[:max_len]),
        labels=tuple(labels[:max_len]),
        source=conv.source,
        truncated=truncated,
    )


def encode_pt(data: PtData, tokenizer: ModelTokenizer, *, block_size: int) -> Samples:
    """The texts tokenized (BOS first where the model wants one), each closed by the
    end-of-text token, concatenated and cut into ``block_size`` blocks; labels are the ids.

    As upstream's ``group_texts``, the remainder shorter than a block is dropped
    (``Samples.dropped_tokens``). A block's source is the file where it starts:
    ``file:block N``.

    Raises:
        UsageError: ``block_size`` < 2.
    """
    _check_size("block_size", block_size)
    tok = tokenizer.tokenizer
    bos = [tokenizer.token_id(tokenizer.bos_token)] if tokenizer.bos_token else []
    end = tokenizer.token_id(tokenizer.document_end)
    files = {str(f) for f in data.files}
    ids: list[int] = []
    starts: list[tuple[int, str]] = []  # (position, file) where each text begins
    for text in data.texts:
        starts.append((len(ids), _file_of(text.source, files)))
        ids += bos + list(tok.encode(text.text, add_special_tokens=False).ids) + [end]
    n_blocks = len(ids) // block_size
    out = Samples(dropped=int(len(ids) % block_size > 0), dropped_tokens=len(ids) % block_size)
    s = 0
    for b in range(n_blocks):
        pos = b * block_size
        while s + 1 < len(starts) and starts[s + 1][0] <= pos:
            s += 1
        block = tuple(ids[pos : pos + block_size])
        out.append(Sample(input_ids=block, labels=block, source=f"{starts[s][1]}:block {b + 1}"))
    return out


def _file_of(source: str, files: set[str]) -> str:
    """The file part of ``file`` or ``file:line``."""
    head, _, tail = source.rpartition(":")
    return head if tail.isdigit() and head in files else source


def _check_size(name: str, value: int) -> None:
    from ..errors import UsageError

    if value < 2:
        raise UsageError(f"{name} must be at least 2 tokens, got {value}")
