"""The catalog: aliases, hub ids, variants, GGUF names (pure data, table-driven)."""

from __future__ import annotations

import gguf
import pytest

from llama3zh_local import catalog
from llama3zh_local.catalog import Source, Variant
from llama3zh_local.errors import ModelNotFoundError


@pytest.mark.parametrize(
    ("alias", "variant", "source", "repo"),
    [
        ("base", Variant.FULL, Source.HF, "hfl/llama-3-chinese-8b"),
        ("base", Variant.LORA, Source.HF, "hfl/llama-3-chinese-8b-lora"),
        ("base", Variant.GGUF, Source.MODELSCOPE, "ChineseAlpacaGroup/llama-3-chinese-8b-gguf"),
        ("instruct", Variant.FULL, Source.HF, "hfl/llama-3-chinese-8b-instruct"),
        (
            "instruct",
            Variant.LORA,
            Source.MODELSCOPE,
            "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-lora",
        ),
        ("instruct-v2", Variant.GGUF, Source.HF, "hfl/llama-3-chinese-8b-instruct-v2-gguf"),
        ("instruct-v2", Variant.LORA, Source.HF, "hfl/llama-3-chinese-8b-instruct-v2-lora"),
        (
            "instruct-v3",
            Variant.FULL,
            Source.MODELSCOPE,
            "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-v3",
        ),
        ("instruct-v3", Variant.GGUF, Source.HF, "hfl/llama-3-chinese-8b-instruct-v3-gguf"),
    ],
)
def test_repo_ids(alias: str, variant: Variant, source: Source, repo: str) -> None:
    assert catalog.get_model(alias).repo_id(variant, source) == repo


def test_v3_has_no_lora() -> None:
    with pytest.raises(ModelNotFoundError, match="no lora release"):
        catalog.get_model("instruct-v3").repo_id(Variant.LORA)


@pytest.mark.parametrize(
    ("alias", "base", "chat"),
    [
        ("base", "meta-llama/Meta-Llama-3-8B", False),
        ("instruct", "meta-llama/Meta-Llama-3-8B", True),
        ("instruct-v2", "meta-llama/Meta-Llama-3-8B-Instruct", True),
        ("instruct-v3", None, True),
    ],
)
def test_lora_base_and_chat(alias: str, base: str | None, chat: bool) -> None:
    spec = catalog.get_model(alias)
    assert spec.lora_base == base
    assert spec.chat is chat


def test_default_is_v3() -> None:
    assert catalog.DEFAULT_ALIAS == "instruct-v3"
    assert catalog.get_model(catalog.DEFAULT_ALIAS).chat


@pytest.mark.parametrize(
    "name",
    [
        "instruct-v3",
        "INSTRUCT-V3",
        "llama-3-chinese-8b-instruct-v3",
        "hfl/llama-3-chinese-8b-instruct-v3-gguf",
    ],
)
def test_lookup_by_alias_or_repo(name: str) -> None:
    assert catalog.get_model(name).alias == "instruct-v3"


def test_unknown_alias_lists_known() -> None:
    with pytest.raises(ModelNotFoundError) as err:
        catalog.get_model("instruct-v9")
    assert "instruct-v3" in (err.value.hint or "")


def test_gguf_file_names() -> None:
    names = sorted(q.filename for q in catalog.GGUF_QUANTS)
    expected = sorted(
        f"ggml-model-{q}.gguf"
        for q in ("f16", "q2_k", "q3_k", "q4_0", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0")
    )
    assert names == expected


@pytest.mark.parametrize(
    ("short", "ftype"), [("q3_k", "Q3_K_M"), ("q4_k", "Q4_K_M"), ("q5_k", "Q5_K_M")]
)
def test_k_quants_are_the_m_mixes(short: str, ftype: str) -> None:
    assert catalog.get_quant(short).ftype == ftype
    assert catalog.get_quant(ftype).short == short


def test_quant_types_exist_in_gguf() -> None:
    # Parity with gguf-py's own list of llama.cpp file types.
    for q in catalog.GGUF_QUANTS:
        assert f"MOSTLY_{q.ftype}" in gguf.LlamaFileType.__members__ or q.ftype in ("F16",)
        if q.ftype == "F16":
            assert "MOSTLY_F16" in gguf.LlamaFileType.__members__


def test_quants_sorted_largest_first() -> None:
    sizes = [q.size_gib for q in catalog.GGUF_QUANTS]
    assert sizes == sorted(sizes, reverse=True)
