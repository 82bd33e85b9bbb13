"""Shared fixtures: real small models (built once into a persistent cache) and an isolated env.

The model fixtures are session-scoped and return paths inside the shared cache
(``$LLAMA3ZH_TEST_CACHE``, default ``~/.cache/llama3zh-test``): treat them as read-only and copy
a model to ``tmp_path`` before changing it. See ``tests/models.py`` for what each one holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import models, quantfix

# tests marked ``isolated`` (llama.cpp compute in-process) run in a child pytest: tests/isolate.py
pytest_plugins = ["tests.isolate"]

# Read once at import, before _isolate_env redirects HOME-like variables for each test.
CACHE_ROOT = models.cache_root()


@pytest.fixture(scope="session")
def llama3_tokenizer_json() -> Path:
    """Meta's Llama-3 tokenizer.json (128,000 BPE tokens + 256 special tokens)."""
    return models.llama3_tokenizer_json()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF: real weights, ChatML template, pre-tokenizer smollm."""
    return models.smollm2_gguf()


@pytest.fixture(scope="session")
def tiny_llama3_hf() -> Path:
    """Dir of a random-weight HF Llama-3 checkpoint (2 layers, 64 wide, float16, one file)."""
    return models.cached("tiny-llama3-hf", models.build_tiny_llama3_hf, root=CACHE_ROOT)


@pytest.fixture(scope="session")
def tiny_llama3_hf_bf16() -> Path:
    """``tiny_llama3_hf`` as 8B repos ship it: bfloat16, two shards and their index."""
    return models.cached(
        "tiny-llama3-hf-bf16",
        models.build_tiny_llama3_hf,
        root=CACHE_ROOT,
        dtype="bfloat16",
        shards=2,
    )


@pytest.fixture(scope="session")
def tiny_llama3_gguf() -> Path:
    """The .gguf of ``tiny_llama3_hf``'s weights as llama.cpp's converter writes it (F16)."""
    return (
        models.cached("tiny-llama3-gguf", models.build_tiny_llama3_gguf, root=CACHE_ROOT)
        / models.TINY_LLAMA3_GGUF_NAME
    )


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """Dir of SmolLM2-135M-Instruct dequantized from its GGUF to an HF checkpoint (float16)."""
    return models.cached("smollm2-hf", models.build_smollm2_hf, root=CACHE_ROOT)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Llama GGUF (F16) whose rows suit every quant type: ``tests/quantfix.py``."""
    return quantfix.write_llama_gguf(tmp_path_factory.mktemp("synth") / "ggml-model-f16.gguf")


@pytest.fixture
def fresh_consoles() -> Iterator[None]:
    """The CLI's shared rich consoles made anew, so they read the COLUMNS a test invokes with."""
    from llama3zh_local.cli import _output

    _output.out.cache_clear()
    _output.err.cache_clear()
    yield
    _output.out.cache_clear()
    _output.err.cache_clear()


@pytest.fixture(autouse=True)
def _isolate_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every cache and config dir at ``tmp_path`` and keep the hubs offline."""
    env = tmp_path / "_env"
    for var, sub in models.ISOLATED_DIRS.items():
        monkeypatch.setenv(var, str(env / sub))
    # these override HF_HOME's cache when set
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # hosts found unreachable are not asked again for a minute: not across tests (ports get reused)
    from llama3zh_local.hub import sources

    monkeypatch.setattr(sources, "_unreachable", {})
    # compiled llama.cpp tools are shared by all tests (tests of the cache itself override it)
    monkeypatch.setenv("LLAMA3ZH_TOOLS_DIR", str(CACHE_ROOT / "tools"))
