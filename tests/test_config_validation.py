"""Issue 12, item 8: configs are validated fully (NaN, strings, missing factors), and the
read-back check loads the written metadata the way llama.cpp does."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from llama3zh_local.errors import BackendError, InvalidModelError
from llama3zh_local.gguf.info import read_gguf_info
from llama3zh_local.llamacpp import engine

from . import ggufraw, lorafix
from .ggufgen import write_model
from .oneline import assert_error, snapshot
from .test_oneline_errors import cli
from .test_oneline_hints import hf_copy

pytestmark = pytest.mark.slow

# -- merge-lora: lora_alpha and r ----------------------------------------------------------------

BAD_LORA_NUMBERS = [
    {"lora_alpha": float("nan")},  # the example: an all-NaN model, exit 0
    {"lora_alpha": float("inf")},
    {"lora_alpha": float("-inf")},
    {"lora_alpha": "16"},
    {"lora_alpha": True},
    {"r": float("nan")},
    {"r": 8.0},
    {"r": True},
    {"r": -8},
    {"use_rslora": "yes"},
]


@pytest.mark.parametrize("extra", BAD_LORA_NUMBERS, ids=lambda c: json.dumps(c))
def test_lora_numbers(extra: dict, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    lora = lorafix.build_lora(
        tmp_path / "lora", tiny_llama3_hf, targets=lorafix.ATTN, full=(), tokenizer=False
    )
    cfg_path = lora / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.update(extra)
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")  # NaN/Infinity as JSON allows them
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    for fmt in ("gguf", "hf"):
        dest = out / ("m.gguf" if fmt == "gguf" else "m-hf")
        args = ["merge-lora", str(lora), "--base", str(tiny_llama3_hf), "-o", str(dest)]
        assert_error(cli(*args, "--format", fmt), "adapter_config.json")
    assert snapshot(tmp_path) == before


# -- convert: every hyperparameter llama.cpp reads ------------------------------------------------

BAD_CONFIGS = [
    {"rms_norm_eps": "1e-5"},  # the example: silently dropped before
    {"rms_norm_eps": float("nan")},
    {"rms_norm_eps": -1e-5},
    {"rms_norm_eps": 0},
    {"rms_norm_eps": True},
    {"rms_norm_eps": [1e-5]},
    {"rope_theta": "500000"},
    {"rope_theta": float("inf")},
    {"rope_theta": 0},
    {"max_position_embeddings": "8192"},
    {"max_position_embeddings": 0},
    {"max_position_embeddings": 8192.5},
    {"max_position_embeddings": None},
    {"max_position_embeddings": 2**40},
    {"rope_scaling": {"rope_type": "llama3"}},  # the example: no factors at all
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
    {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 4.0,
            "high_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        }
    },
    {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": float("nan"),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    },
    {"rope_scaling": {"type": "yarn", "factor": 4.0}},
    {"rope_scaling": {"type": "linear"}},
    {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
    {"rope_scaling": {"type": 5}},
    {"rope_scaling": {"factor": 2.0}},
    {"hidden_act": "gelu"},
    {"tie_word_embeddings": "yes"},
    {"hidden_size": 66},  # not a multiple of the 4 heads
    {"num_hidden_layers": True},
    {"vocab_size": -5},
]


@pytest.mark.parametrize("config", BAD_CONFIGS, ids=lambda c: json.dumps(c))
def test_convert_refuses_bad_configs(config: dict, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    src = hf_copy(tiny_llama3_hf, tmp_path / "src", config=config)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    assert_error(cli("convert", str(src), "-o", str(out / "m.gguf")), "config.json")
    assert snapshot(tmp_path) == before


def test_missing_rms_norm_eps_gets_transformers_default(
    tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    """The key llama.cpp requires is always written (before: left out, and the file refused)."""
    src = hf_copy(tiny_llama3_hf, tmp_path / "src", config={"rms_norm_eps": None})
    out = tmp_path / "m.gguf"
    proc = cli("convert", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    kv = ggufraw.read(out).kv
    assert kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    with engine.Model(out) as model:  # and llama.cpp loads it
        assert model.n_layer == 2


def test_good_llama3_rope_scaling_converts(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    src = hf_copy(tiny_llama3_hf, tmp_path / "src", config={"rope_scaling": rope})
    out = tmp_path / "m.gguf"
    proc = cli("convert", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "rope_freqs.weight" in ggufraw.read(out).tensors


# -- the read-back check: the keys llama.cpp requires, with their types ----------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("llama.attention.layer_norm_rms_epsilon", None),
        ("llama.context_length", None),
        ("llama.attention.head_count", (gguf.GGUFValueType.INT32, 4)),
        ("llama.attention.layer_norm_rms_epsilon", "1e-5"),
        ("llama.context_length", (gguf.GGUFValueType.UINT64, 2048)),
        ("llama.rope.freq_base", (gguf.GGUFValueType.FLOAT64, 10000.0)),
    ],
)
def test_read_back_refuses_what_llama_cpp_refuses(key: str, value: object, tmp_path: Path):
    """read_gguf_info (which convert's read-back runs) and llama.cpp agree on each file."""
    good = write_model(tmp_path / "good.gguf")
    read_gguf_info(good)
    with engine.Model(good):
        pass
    bad = write_model(tmp_path / "bad.gguf", meta={key: value})
    with pytest.raises(InvalidModelError, match=key.replace(".", r"\.")):
        read_gguf_info(bad).check_loadable()
    with pytest.raises(BackendError, match=key.replace(".", r"\.")):
        engine.Model(bad)
