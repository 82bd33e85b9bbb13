"""The Chinese Llama-3 model family: aliases, hub ids, variants, GGUF files and defaults.

This is the one place these facts live; every other module reads them from here. The data
follows the upstream project (ymcui/Chinese-LLaMA-Alpaca-3) and its hub repos
``hfl/llama-3-chinese-8b*`` (Hugging Face) and ``ChineseAlpacaGroup/llama-3-chinese-8b*``
(ModelScope).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import ModelNotFoundError

HF_ORG = "hfl"
MODELSCOPE_ORG = "ChineseAlpacaGroup"

DEFAULT_ALIAS = "instruct-v3"  # the upstream project recommends v3
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. 你是一个乐于助人的助手。"
# Special tokens that end an assistant turn in the Llama-3 format; llama.cpp marks them as
# end-of-generation in well-made GGUFs, chat also stops on them for older files (and Ollama).
LLAMA3_STOPS = ("<|eot_id|>", "<|end_of_text|>")

META_LLAMA3_8B = "meta-llama/Meta-Llama-3-8B"
META_LLAMA3_8B_INSTRUCT = "meta-llama/Meta-Llama-3-8B-Instruct"


class Variant(str, Enum):
    """What a hub repo holds: full HF weights, a LoRA, or GGUF files."""

    FULL = "full"
    LORA = "lora"
    GGUF = "gguf"

    @property
    def suffix(self) -> str:
        return "" if self is Variant.FULL else f"-{self.value}"


class Source(str, Enum):
    HF = "hf"
    MODELSCOPE = "modelscope"


@dataclass(frozen=True)
class GGUFQuant:
    """One quantization the upstream GGUF repos ship."""

    short: str  # the upstream file-name part, e.g. "q4_k"
    ftype: str  # the llama.cpp file type name (a gguf.LlamaFileType member without MOSTLY_)
    size_gib: float  # size of the 8B file, from the upstream project's table

    @property
    def filename(self) -> str:
        return f"ggml-model-{self.short}.gguf"


# Upstream file names; q3_k/q4_k/q5_k are the _M mixes. Sizes: upstream README table (GiB).
# Ordered from largest to smallest, so "the best that fits" is the first that fits.
GGUF_QUANTS: tuple[GGUFQuant, ...] = (
    GGUFQuant("f16", "F16", 14.97),
    GGUFQuant("q8_0", "Q8_0", 7.95),
    GGUFQuant("q6_k", "Q6_K", 6.14),
    GGUFQuant("q5_k", "Q5_K_M", 5.34),
    GGUFQuant("q5_0", "Q5_0", 5.21),
    GGUFQuant("q4_k", "Q4_K_M", 4.58),
    GGUFQuant("q4_0", "Q4_0", 4.34),
    GGUFQuant("q3_k", "Q3_K_M", 3.74),
    GGUFQuant("q2_k", "Q2_K", 2.96),
)
DEFAULT_QUANT = "q4_k"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the family."""

    alias: str
    name: str  # repo name without org and variant suffix
    title: str
    chat: bool
    variants: tuple[Variant, ...]
    lora_base: str | None  # the HF id a -lora release must be merged into
    n_layer: int = 32
    n_embd: int = 4096
    n_head_kv: int = 8
    head_dim: int = 128
    n_ctx: int = 8192

    def repo_id(self, variant: Variant = Variant.FULL, source: Source = Source.HF) -> str:
        if variant not in self.variants:
            have = ", ".join(v.value for v in self.variants)
            raise ModelNotFoundError(
                f"{self.alias} has no {variant.value} release", hint=f"available: {have}"
            )
        org = HF_ORG if source is Source.HF else MODELSCOPE_ORG
        return f"{org}/{self.name}{variant.suffix}"


_WITH_LORA = (Variant.FULL, Variant.LORA, Variant.GGUF)

# (alias, repo name, title, chat model, variants, the base a -lora release is merged into)
MODELS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(alias=a, name=n, title=t, chat=c, variants=v, lora_base=b)
    for a, n, t, c, v, b in (
        ("base", "llama-3-chinese-8b", "Llama-3-Chinese-8B (base, not a chat model)", False,
         _WITH_LORA, META_LLAMA3_8B),
        ("instruct", "llama-3-chinese-8b-instruct", "Llama-3-Chinese-8B-Instruct (v1)", True,
         _WITH_LORA, META_LLAMA3_8B),
        ("instruct-v2", "llama-3-chinese-8b-instruct-v2", "Llama-3-Chinese-8B-Instruct-v2", True,
         _WITH_LORA, META_LLAMA3_8B_INSTRUCT),
        ("instruct-v3", "llama-3-chinese-8b-instruct-v3",
         "Llama-3-Chinese-8B-Instruct-v3 (recommended)", True, (Variant.FULL, Variant.GGUF), None),
    )  # fmt: skip
)


def get_model(alias: str) -> ModelSpec:
    """The model for an alias (case-insensitive; the full repo name works too)."""
    key = alias.strip().lower()
    for spec in MODELS:
        names = {spec.alias, spec.name} | {spec.name + v.suffix for v in spec.variants}
        if key in names or key.split("/")[-1] in names:
            return spec
    raise ModelNotFoundError(
        f"unknown model {alias!r}",
        hint="known aliases: " + ", ".join(m.alias for m in MODELS) + " (see `llama3zh models`)",
    )


def get_quant(short: str) -> GGUFQuant:
    """The upstream GGUF quant for a short name (``q4_k``) or llama.cpp type name (``Q4_K_M``)."""
    key = short.strip().lower()
    for quant in GGUF_QUANTS:
        if key in (quant.short, quant.ftype.lower()):
            return quant
    raise ModelNotFoundError(
        f"unknown quant {short!r}",
        hint="upstream GGUF files: " + ", ".join(q.short for q in GGUF_QUANTS),
    )
