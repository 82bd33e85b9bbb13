"""hub/store.py: model ids and hub file names, quant labels, and the store's manifest and links."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama3zh_local import paths
from llama3zh_local.catalog import Source, Variant
from llama3zh_local.errors import (
    ModelNotFoundError,
    UnsafePathError,
    UsageError,
)
from llama3zh_local.hub import store

# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "variant", "source", "hf_repo", "ms_repo"),
    [
        (
            "instruct-v3",
            None,
            None,
            "hfl/llama-3-chinese-8b-instruct-v3-gguf",
            "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-v3-gguf",
        ),
        (
            "instruct",
            Variant.LORA,
            None,
            "hfl/llama-3-chinese-8b-instruct-lora",
            "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-lora",
        ),
        (
            "llama-3-chinese-8b-lora",
            None,
            None,
            "hfl/llama-3-chinese-8b-lora",
            "ChineseAlpacaGroup/llama-3-chinese-8b-lora",
        ),
        (
            "base",
            Variant.FULL,
            None,
            "hfl/llama-3-chinese-8b",
            "ChineseAlpacaGroup/llama-3-chinese-8b",
        ),
        ("hf:org/Some.Model-1", None, Source.HF, "org/Some.Model-1", "org/Some.Model-1"),
        ("ms:org/name", None, Source.MODELSCOPE, "org/name", "org/name"),
        ("modelscope:org/name", None, Source.MODELSCOPE, "org/name", "org/name"),
        ("org/name", None, None, "org/name", "org/name"),
    ],
)
def test_parse_ref(
    text: str, variant: Variant | None, source: Source | None, hf_repo: str, ms_repo: str
) -> None:
    ref = store.parse_ref(text, variant=variant)
    assert ref.source is source
    assert ref.repo_id(Source.HF) == hf_repo
    assert ref.repo_id(Source.MODELSCOPE) == ms_repo


@pytest.mark.parametrize("text", ["hf:org", "hf:../x", "ms:a/b/c", "hf:org/..", "x/ y", "hf:/abs"])
def test_bad_repo_ids(text: str) -> None:
    with pytest.raises(UsageError, match="not a hub repo id"):
        store.parse_ref(text)


def test_unknown_alias_and_missing_variant() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        store.parse_ref("instruct-v9")
    with pytest.raises(ModelNotFoundError, match="no lora release"):
        store.parse_ref("instruct-v3", variant=Variant.LORA)


@pytest.mark.parametrize(
    "name", ["ggml-model-q4_k.gguf", "sub/dir/model.safetensors", "a..b.json", ".gitattributes"]
)
def test_safe_names(name: str) -> None:
    assert store.safe_relpath(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x.gguf",
        "a/../../x",
        "/etc/passwd",
        "~/x",
        "C:/x.gguf",
        "a\\..\\x",
        "a//b",
        "./x",
        "a/.",
        "x\0y",
    ],
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError, match="refusing hub file name"):
        store.safe_relpath(name)


@pytest.mark.parametrize(
    ("filename", "label"),
    [
        ("ggml-model-q4_k.gguf", "q4_k"),
        ("ggml-model-q4_k-im.gguf", "q4_k-im"),
        ("ggml-model-f16.gguf", "f16"),
        ("Llama3-8B.Q4_K_M.gguf", "q4_k"),
        ("model-Q8_0-00001-of-00002.gguf", "q8_0"),
        ("x-IQ4_XS.gguf", "iq4_xs"),
        ("x-bf16.gguf", "bf16"),
        ("tokenizer-only.gguf", "tokenizer-only"),
    ],
)
def test_file_quant(filename: str, label: str) -> None:
    assert store.file_quant(filename) == label


@pytest.mark.parametrize(
    ("value", "key"),
    [("q4_k", "q4_k"), ("Q4_K_M", "q4_k"), ("q4_k-im", "q4_k-im"), ("IQ4_XS", "iq4_xs")],
)
def test_quant_key(value: str, key: str) -> None:
    assert store.quant_key(value) == key


# -- the store -----------------------------------------------------------------------------------


def test_manifest_round_trip_and_dangling_links(tmp_path: Path) -> None:
    folder = store.repo_folder("org/repo-gguf")
    cache = tmp_path / "cache" / "blob"
    cache.parent.mkdir()
    cache.write_bytes(b"gguf!")
    entry = store.StoreEntry(
        "m-q4_k.gguf",
        "org/repo-gguf",
        "hf",
        "main",
        "c",
        5,
        "s" * 64,
        None,
        str(cache),
        1.0,
        cache.stat().st_mtime_ns,
    )
    store.link(folder / entry.name, cache)
    store.update_manifest(folder, add=[entry])
    assert store.read_manifest(folder) == {entry.name: entry}
    assert entry.is_verified(cache)
    (f,) = store.local_files()
    assert (f.alias, f.variant, f.quant, f.source, f.size, f.missing) == (
        None,
        Variant.GGUF,
        "q4_k",
        "hf",
        5,
        False,
    )
    cache.unlink()
    (f,) = store.local_files()
    assert f.missing and not entry.is_verified(cache)
    store.update_manifest(folder, remove=[entry.name])
    assert not (folder / store.MANIFEST).exists()
    assert paths.models_dir() in folder.parents
