"""quant/source.py: which file an alias or path quantizes from."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cli_source_model_for_an_alias(synth: Path) -> None:
    from llama3zh_local import paths
    from llama3zh_local.errors import ModelNotFoundError
    from llama3zh_local.quant.source import resolve_source as source_model

    with pytest.raises(ModelNotFoundError, match="no f16 GGUF or HF weights") as err:
        source_model("instruct-v3")
    assert "llama3zh pull instruct-v3 --quant f16" in (err.value.hint or "")
    folder = paths.models_dir() / "llama-3-chinese-8b-instruct-v3-gguf"
    folder.mkdir(parents=True)
    (folder / "ggml-model-q4_k.gguf").symlink_to(synth)  # a quant is not a source
    (folder / "ggml-model-f16.gguf").symlink_to(synth)
    assert source_model("instruct-v3") == folder / "ggml-model-f16.gguf"
    assert source_model(str(synth)) == synth
