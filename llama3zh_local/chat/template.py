"""The chat template to chat with: the built-in Llama-3 one or a GGUF's own (the rendering
sandbox itself is ``llama3zh_local/templating.py``, shared with train/)."""

from __future__ import annotations

from ..catalog import LLAMA3_STOPS
from ..errors import ChatTemplateError
from ..hf.engine import HFModel
from ..llamacpp.engine import Model
from ..templating import MAX_RENDER_CHARS, MAX_RENDER_SECONDS, ChatTemplate, llama3_template

__all__ = [
    "LLAMA3_STOPS",
    "MAX_RENDER_CHARS",
    "MAX_RENDER_SECONDS",
    "ChatTemplate",
    "choose_template",
    "llama3_template",
]


def choose_template(model: Model | HFModel, which: str = "auto") -> ChatTemplate:
    """The template to chat with: ``auto`` (the GGUF's own, else Llama-3), ``llama3``, ``gguf``."""
    bos = model.bos_text() or "<|begin_of_text|>"
    eot = model.token_id("<|eot_id|>")
    eos = "<|eot_id|>" if eot is not None else ""
    embedded = model.meta("tokenizer.chat_template")
    if which == "llama3" or (which == "auto" and not embedded):
        return ChatTemplate(llama3_template(), bos_token=bos, eos_token=eos or "<|eot_id|>")
    if not embedded:
        raise ChatTemplateError(
            f"{model.path.name} has no chat template (tokenizer.chat_template)",
            hint="use the built-in Llama-3 template: --template llama3",
        )
    return ChatTemplate(embedded, bos_token=bos, eos_token=model.eos_text(), origin=model.path.name)
