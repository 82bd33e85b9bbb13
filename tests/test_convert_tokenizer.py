"""The converted tokenizer: llama.cpp on our GGUF tokenizes exactly as HF ``tokenizers`` does.

More than 200 strings (Chinese, English, code, digits, emoji, whitespace runs, special tokens)
through llama-cpp-python and through the ``tokenizers`` library on the same tokenizer.json.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from llama3zh_local.convert import llama as cv
from llama3zh_local.convert import vocab as hfvocab

from . import models

CHINESE = [
    "你好，世界！",
    "今天天气怎么样？请用中文回答。",
    "中文大语言模型的量化与部署",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "北京是中华人民共和国的首都，位于华北平原北部。",
    "「引号」、《书名号》——破折号……省略号",
    "繁體中文與简体中文混合",
    "一二三四五六七八九十百千万亿",
    "我想在apple工作1314151天～",
    "全角ＡＢＣ１２３和半角ABC123",
]
ENGLISH = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like tea?",
    "We'Ve a'lL DON'T can't won't shouldn't've",
    "UPPERCASE lowercase MiXeD CaSe",
    "e-mail: someone@example.com, url: https://huggingface.co/hfl/llama-3-chinese-8b",
    "naïve café résumé über façade",
    "нещо на Български и русский текст",
    "Ελληνικά, עברית, العربية, हिन्दी, ไทย, 한국어, 日本語のテキスト",
    "a" * 300,
]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    'print(f"{name!r:>10}")',
    "SELECT * FROM users WHERE id = 42;",
    '<div class="a">&nbsp;</div>',
    "x = [1, 2, 3]\nprint(x[::-1])",
    "fn main() -> Result<(), Box<dyn Error>> {\n\tOk(())\n}",
    "#!/usr/bin/env bash\nset -euo pipefail\n",
    '{\'key\': "value", "n": null, "t": true}',
    "λx.λy.x  ∀x∃y(x≠y)  ∑_{i=1}^{n} i²",
]
DIGITS = [
    "3 33 333 3333 33333 333333 3333333 33333333",
    "3.3 3..3 3...3",
    "1234567890",
    "π ≈ 3.14159265358979323846",
    "2024年5月1日 12:30:45",
    "-1 +2 -3.5e-10 0x1F 0b1010 1_000_000",
    "１２３４５６",
    "٠١٢٣٤٥٦٧٨٩",
    "10,000,000.00 元",
    "v1.2.3-rc.4+build.5",
]
EMOJI = [
    "🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙",
    "👍🏽👨‍👩‍👧‍👦🏳️‍🌈",
    "表情😁测试🎉",
    "⭐️⭐⭐️",
    "🇨🇳🇺🇸🇯🇵",
    "😀" * 20,
    "emoji at end 🙂",
    "🙂 emoji at start",
    "a🦙b🦙c",
    "\U0001f9d1\u200d\U0001f4bb coding",
]
WHITESPACE = [
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    " \t \n \r\n",
    "    indented",
    "trailing    ",
    "a  b   c    d",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n",
    "line1\r\nline2\rline3",
    "\u3000全角空格\u3000",
    "\u00a0non-breaking\u00a0space",
    "x\u2028y\u2029z",
    "",
]
SPECIAL = [
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is GGUF?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "text<|end_of_text|>more",
    "<|reserved_special_token_0|><|reserved_special_token_250|>",
    "<|eot_id|><|eot_id|>",
    " <|eot_id|> ",
    "<|eot_id",  # not a special token: plain text
    "<|python_tag|>print(1)<|eom_id|>",
]
BASES = [*CHINESE, *ENGLISH, *CODE, *DIGITS, *EMOJI, *WHITESPACE, *SPECIAL, models.CHKTXT]


def _build_strings() -> list[str]:
    """The test set: every base string, and each paired with another and with space runs."""
    out = list(BASES)
    rng = random.Random(0)
    for a, b in itertools.islice(itertools.permutations(BASES, 2), 0, None, 37):
        out.append(a + b)
    for s in BASES[::3]:
        out.append("  " + s + "\n\n")
        out.append(rng.choice(["\t", " ", "\n"]) * rng.randint(1, 6) + s)
    return list(dict.fromkeys(out))


STRINGS = _build_strings()


def test_there_are_enough_strings() -> None:
    assert len(STRINGS) >= 200


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tiny.gguf"
    cv.convert(source=tiny_llama3_hf, output=out, outtype="f16")
    return out


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_hf(tiny_gguf: Path, tiny_llama3_hf: Path) -> None:
    from llama3zh_local.llamacpp.engine import Model

    hf = Tokenizer.from_file(str(tiny_llama3_hf / "tokenizer.json"))
    mismatches = []
    with Model(tiny_gguf) as model:
        assert model.add_bos
        for text in STRINGS:
            want = hf.encode(text, add_special_tokens=False).ids
            got = model.tokenize(text, add_special=False, parse_special=True)
            if got != want:
                mismatches.append((text, got[:12], want[:12]))
                continue
            # the BOS llama.cpp adds is the one Meta's tokenizer.json post-processor adds
            assert model.tokenize(text, add_special=True) == [models.LLAMA3_BOS_ID, *want]
            if text:
                assert model.detokenize(got, special=True) == hf.decode(
                    want, skip_special_tokens=False
                )
    assert not mismatches, f"{len(mismatches)} of {len(STRINGS)} differ: {mismatches[:3]}"


@pytest.mark.slow
def test_special_tokens_in_the_converted_vocab(tiny_gguf: Path) -> None:
    from llama3zh_local.llamacpp.engine import Model

    with Model(tiny_gguf) as model:
        for text, tid in [("<|begin_of_text|>", 128000), ("<|end_of_text|>", 128001),
                          ("<|eot_id|>", 128009), ("<|start_header_id|>", 128006)]:  # fmt: skip
            assert model.token_id(text) == tid
            assert model.token_bytes(tid, special=True) == text.encode()
            assert model.token_bytes(tid, special=False) == b""  # control tokens do not print
        assert model.is_eog(128009) and model.is_eog(128001) and not model.is_eog(128006)


def test_detection_agrees_with_llama_cpps_hash_table(
    tiny_llama3_hf: Path, smollm2_hf: Path, llama3_tokenizer_json: Path
) -> None:
    """Our structural detection gives what llama.cpp's chkhsh table gives, once the hash is
    taken the way Meta's tokenizer encodes (with <|begin_of_text|> first)."""
    for model_dir, want in ((tiny_llama3_hf, "llama-bpe"), (smollm2_hf, "smollm")):
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        ids = tok.encode(models.CHKTXT).ids
        table = {models.CHKHSH.get(models.chkhsh(ids))}
        if want == "llama-bpe":  # the packaged file lacks the BOS post-processor
            table.add(models.CHKHSH.get(models.chkhsh([models.LLAMA3_BOS_ID, *ids])))
        assert want in table
        vocab = hfvocab.load_vocab(model_dir)
        assert vocab.pre == want
