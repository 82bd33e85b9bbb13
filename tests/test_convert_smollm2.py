"""SmolLM2 (a real small Llama) converted from HF: it chats, and its logits match the original
Q4_1 GGUF's within quantization noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from llama3zh_local.convert import llama as cv

from . import ggufraw

# A fixed prompt of 114 tokens: a ChatML system + user turn and a scripted answer.
PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Explain in two sentences why "
    "Paris became the capital, and mention one famous landmark.<|im_end|>\n<|im_start|>assistant\n"
    "The capital of France is Paris. Paris became the capital because it was the seat of the "
    "Capetian kings, who unified the kingdom from the Île-de-France region. One famous landmark "
    "is the Eiffel Tower, built for the 1889 World's Fair.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-f16.gguf"
    cv.convert(source=smollm2_hf, output=out, outtype="f16")
    return out


def _logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def test_metadata(smollm2_f16: Path, smollm2_gguf: Path) -> None:
    ours, orig = ggufraw.read(smollm2_f16), ggufraw.read(smollm2_gguf)
    assert set(ours.tensors) == set(orig.tensors)  # tied embeddings: no output.weight
    assert "output.weight" not in ours.tensors
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template", "llama.block_count", "llama.attention.head_count_kv",
                "llama.rope.freq_base", "llama.context_length"):  # fmt: skip
        assert ours.kv[key] == orig.kv[key], key
    assert ours.kv["tokenizer.ggml.pre"] == "smollm"


@pytest.mark.slow
def test_logits_match_the_original_q4_1(
    smollm2_f16: Path, smollm2_gguf: Path, smollm2_hf: Path
) -> None:
    ids = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json")).encode(PROMPT).ids
    assert len(ids) >= 100
    ours, orig = _logits(smollm2_f16, ids), _logits(smollm2_gguf, ids)
    agree = (ours.argmax(-1) == orig.argmax(-1)).mean()
    corr = np.corrcoef(ours.ravel(), orig.ravel())[0, 1]
    # Q4_1 rounds activations to 8 bits in its matmuls, f16 does not: measured 0.974, 0.9995
    assert agree >= 0.95 and corr > 0.995, (agree, corr)


@pytest.mark.slow
def test_chats_in_llama_cpp_python(smollm2_f16: Path) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(smollm2_f16), n_ctx=512, verbose=False, n_threads=2)
    try:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0.0,
            max_tokens=40,
        )
    finally:
        llm.close()
    answer = out["choices"][0]["message"]["content"]  # type: ignore[index]
    assert "Paris" in answer, answer
