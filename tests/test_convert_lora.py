"""`llama3zh merge-lora`: W + (alpha/r)·B·A with full modules replaced; GGUF LoRA adapters."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llama3zh_local.cli import app
from llama3zh_local.convert import llama as cv
from llama3zh_local.convert import lora as lr
from llama3zh_local.convert import peft
from llama3zh_local.errors import InvalidModelError, ModelNotFoundError, UsageError
from llama3zh_local.llamacpp import native

from . import ggufraw, lorafix, models

runner = CliRunner()


@pytest.fixture(scope="module")
def lora_full(tiny_llama3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rank 8, alpha 16, all linear layers, embed_tokens and lm_head in full (fp16)."""
    return lorafix.build_lora(tmp_path_factory.mktemp("lora") / "full-lora", tiny_llama3_hf)


@pytest.fixture(scope="module")
def lora_attn(tiny_llama3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Attention only, no full modules, no tokenizer (fp32): the kind an adapter can hold."""
    return lorafix.build_lora(
        tmp_path_factory.mktemp("lora") / "attn-lora",
        tiny_llama3_hf,
        targets=lorafix.ATTN,
        full=(),
        dtype="float32",
        tokenizer=False,
        alpha=32.0,
    )


def test_open_lora_reads_peft_layout(lora_full: Path) -> None:
    a = peft.open_lora(lora_full)
    try:
        assert (a.r, a.alpha, a.scale) == (8, 16.0, 2.0)
        assert len(a.pairs) == 2 * 7 and set(a.full) == {
            "model.embed_tokens.weight",
            "lm_head.weight",
        }
        pair = a.pairs["model.layers.0.self_attn.k_proj.weight"]
        assert pair.shape == (32, 64) and pair.rank == 8
    finally:
        a.close()


def test_merge_hf_equals_merge_by_hand(
    lora_full: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    res = lr.merge_lora(
        lora=lora_full, base=tiny_llama3_hf, output=tmp_path / "m", format="hf", outtype="f32"
    )
    assert res.merged_modules == 14 and res.scale == 2.0
    assert res.replaced_modules == ("lm_head.weight", "model.embed_tokens.weight")
    got = models.read_hf_weights(res.path)
    want = lorafix.merge_by_hand(tiny_llama3_hf, lora_full)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    # the full modules are the LoRA's, not the base's
    lora = lorafix.read_lora(lora_full)
    base = models.read_hf_weights(tiny_llama3_hf)
    emb = lora["base_model.model.model.embed_tokens.weight"]
    assert np.array_equal(got["model.embed_tokens.weight"], emb)
    assert not np.array_equal(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    # and the deltas are really there
    q = "model.layers.1.self_attn.q_proj.weight"
    assert np.abs(got[q] - base[q]).max() > 0.05
    cfg = json.loads((res.path / "config.json").read_text(encoding="utf-8"))
    assert cfg["torch_dtype"] == "float32"
    assert (res.path / "tokenizer.json").is_file() and (
        res.path / "tokenizer_config.json"
    ).is_file()


def test_merge_hf_keeps_the_base_dtype(
    lora_full: Path, tiny_llama3_hf_bf16: Path, tmp_path: Path
) -> None:
    res = lr.merge_lora(
        lora=lora_full, base=tiny_llama3_hf_bf16, output=tmp_path / "m", format="hf"
    )
    assert res.outtype == "bf16"
    with cv.open_checkpoint(res.path) as back:
        assert {t.dtype for t in back.tensors.values()} == {"BF16"}
    got = models.read_hf_weights(res.path)
    want = lorafix.merge_by_hand(tiny_llama3_hf_bf16, lora_full)
    for name in want:  # rounded to bf16 once
        np.testing.assert_allclose(got[name], want[name], rtol=2**-8, atol=1e-6, err_msg=name)


def test_merge_gguf_is_the_merged_weights_converted(
    lora_full: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    res = lr.merge_lora(
        lora=lora_full, base=tiny_llama3_hf, output=tmp_path / "m.gguf", outtype="f32"
    )
    g = ggufraw.read(res.path)
    want = lorafix.merge_by_hand(tiny_llama3_hf, lora_full)
    for gguf_name, hf_name in models.gguf_to_hf_names(2).items():
        w = want[hf_name]
        if hf_name.endswith("q_proj.weight"):
            w = models.permute_qk(w, 4)
        elif hf_name.endswith("k_proj.weight"):
            w = models.permute_qk(w, 2)
        np.testing.assert_allclose(g.array(gguf_name), w, rtol=1e-6, atol=1e-6, err_msg=gguf_name)
    assert g.kv["llama3zh.lora.scale"].startswith("2 ")
    assert g.kv["tokenizer.chat_template"] == models.LLAMA3_CHAT_TEMPLATE  # the LoRA's tokenizer


def test_merged_gguf_matches_the_merged_hf_converted(
    lora_full: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    """merge-lora to GGUF == merge-lora to HF, then convert: same bytes (f16)."""
    direct = lr.merge_lora(lora=lora_full, base=tiny_llama3_hf, output=tmp_path / "a.gguf")
    hf = lr.merge_lora(
        lora=lora_full, base=tiny_llama3_hf, output=tmp_path / "hf", format="hf", outtype="f32"
    )
    two_step = cv.convert(source=hf.path, output=tmp_path / "b.gguf", outtype="f16")
    a, b = ggufraw.read(direct.path), ggufraw.read(two_step.path)
    assert direct.outtype == "f16" and set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        assert a.tensor_bytes(name) == b.tensor_bytes(name), name


def test_rslora_scale(tiny_llama3_hf: Path, tmp_path: Path) -> None:
    d = lorafix.build_lora(
        tmp_path / "rs",
        tiny_llama3_hf,
        targets=("v_proj",),
        full=(),
        tokenizer=False,
        extra_config={"use_rslora": True},
    )
    res = lr.merge_lora(
        lora=d, base=tiny_llama3_hf, output=tmp_path / "m", format="hf", outtype="f32"
    )
    assert res.scale == pytest.approx(16 / math.sqrt(8))
    lora = lorafix.read_lora(d)
    base = models.read_hf_weights(tiny_llama3_hf)
    got = models.read_hf_weights(res.path)
    k = "base_model.model.model.layers.0.self_attn.v_proj"
    want = base["model.layers.0.self_attn.v_proj.weight"] + res.scale * (
        lora[k + ".lora_B.weight"] @ lora[k + ".lora_A.weight"]
    )
    np.testing.assert_allclose(got["model.layers.0.self_attn.v_proj.weight"], want, atol=1e-6)


# -- GGUF LoRA adapter ----------------------------------------------------------------------------


def test_adapter_metadata_and_tensors(
    lora_attn: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    res = lr.merge_lora(
        lora=lora_attn, base=tiny_llama3_hf, output=tmp_path / "a.gguf", format="adapter"
    )
    assert res.outtype == "f32" and res.tensor_count == 2 * 2 * 4
    g = ggufraw.read(res.path)
    assert g.kv["general.type"] == "adapter" and g.kv["adapter.type"] == "lora"
    assert g.kv["general.architecture"] == "llama"
    assert g.kv["adapter.lora.alpha"] == 32.0
    lora = lorafix.read_lora(lora_attn)
    k = "base_model.model.model.layers.1.self_attn.q_proj"
    assert np.array_equal(g.array("blk.1.attn_q.weight.lora_a"), lora[k + ".lora_A.weight"])
    # B's rows are permuted like the Q weight they add to; A is not
    want_b = models.permute_qk(lora[k + ".lora_B.weight"], 4)
    assert np.array_equal(g.array("blk.1.attn_q.weight.lora_b"), want_b)


@pytest.mark.isolated  # decodes in-process: a native crash fails only this test
@pytest.mark.slow
def test_adapter_loads_in_llama_cpp_and_equals_the_merge(
    lora_attn: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    """base + adapter at run time gives the logits of the merged model."""
    import llama_cpp

    from llama3zh_local.llamacpp import engine

    base = cv.convert(source=tiny_llama3_hf, output=tmp_path / "base.gguf", outtype="f32").path
    adapter = lr.merge_lora(
        lora=lora_attn, base=tiny_llama3_hf, output=tmp_path / "a.gguf", format="adapter"
    ).path
    merged = lr.merge_lora(
        lora=lora_attn, base=tiny_llama3_hf, output=tmp_path / "m.gguf", outtype="f32"
    ).path
    # the C API directly: llama_adapter_lora_init accepts it
    ll = native.lib()
    with engine.Model(base) as model:
        ptr = ll.llama_adapter_lora_init(model.ptr, str(adapter).encode())
        assert ptr, native.last_log_lines()
        ll.llama_adapter_lora_free(ptr)
    ids = [128000, 9906, 1917, 11, 220, 57668, 53901, 1811, 220, 4513]

    def logits(**kw: object) -> np.ndarray:
        llm = llama_cpp.Llama(n_ctx=64, logits_all=True, verbose=False, n_threads=2, **kw)
        try:
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)])
        finally:
            llm.close()

    with_adapter = logits(model_path=str(base), lora_path=str(adapter))
    plain = logits(model_path=str(base))
    full = logits(model_path=str(merged))
    assert np.abs(with_adapter - plain).max() > 0.1  # the adapter does something
    assert np.abs(with_adapter - full).max() < 2e-3, np.abs(with_adapter - full).max()


def test_adapter_refused_for_full_modules(lora_full: Path, tiny_llama3_hf: Path, tmp_path: Path):
    with pytest.raises(UsageError, match="in full") as e:
        lr.merge_lora(lora=lora_full, base=tiny_llama3_hf, output=tmp_path / "a.gguf",
                      format="adapter")  # fmt: skip
    assert "--format gguf" in (e.value.hint or "")
    assert list(tmp_path.iterdir()) == []


# -- errors ---------------------------------------------------------------------------------------


def test_lora_for_another_base(tiny_llama3_hf: Path, smollm2_hf: Path, tmp_path: Path) -> None:
    other = lorafix.build_lora(tmp_path / "smol-lora", smollm2_hf, full=(), tokenizer=False)
    with pytest.raises(InvalidModelError, match="LoRA and base do not match") as e:
        lr.merge_lora(lora=other, base=tiny_llama3_hf, output=tmp_path / "m.gguf")
    assert "another base model" in (e.value.hint or "")
    assert not (tmp_path / "m.gguf").exists()


def test_lora_targets_a_module_the_base_lacks(
    lora_attn: Path, tiny_llama3_hf: Path, tmp_path: Path
) -> None:
    d = shutil.copytree(lora_attn, tmp_path / "l")
    t = lorafix.read_lora(d)
    k = "base_model.model.model.layers.0.self_attn.q_proj"
    for half in ("lora_A", "lora_B"):  # a third layer the 2-layer base does not have
        t[k.replace(".0.", ".2.") + f".{half}.weight"] = t[k + f".{half}.weight"]
    models.save_safetensors(d / "adapter_model.safetensors", t, dtype="float32")
    with pytest.raises(InvalidModelError, match="does not have"):
        lr.merge_lora(lora=d, base=tiny_llama3_hf, output=tmp_path / "m.gguf")


@pytest.mark.parametrize(
    ("how", "error", "needle"),
    [
        ("no-config", ModelNotFoundError, "not a PEFT LoRA folder"),
        ("dora", InvalidModelError, "DoRA"),
        ("pattern", InvalidModelError, "rank_pattern"),
        ("bin", ModelNotFoundError, "no adapter_model.safetensors"),
        ("half", InvalidModelError, "only one of its LoRA factors"),
        ("rank", InvalidModelError, "r=4"),
    ],
)
def test_bad_lora(
    lora_attn: Path, tiny_llama3_hf: Path, tmp_path: Path, how: str, error: type, needle: str
) -> None:
    d = tmp_path / "lora"
    shutil.copytree(lora_attn, d)
    cfg_path = d / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if how == "no-config":
        cfg_path.unlink()
    elif how == "dora":
        cfg["use_dora"] = True
    elif how == "pattern":
        cfg["rank_pattern"] = {"q_proj": 4}
    elif how == "rank":
        cfg["r"] = 4
    elif how == "bin":
        (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    elif how == "half":
        t = lorafix.read_lora(d)
        t.pop("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
        models.save_safetensors(d / "adapter_model.safetensors", t, dtype="float32")
    if cfg_path.exists():
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(error, match=needle) as e:
        lr.merge_lora(lora=d, base=tiny_llama3_hf, output=tmp_path / "m.gguf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.gguf").exists()


def test_existing_output(lora_attn: Path, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        lr.merge_lora(lora=lora_attn, base=tiny_llama3_hf, output=tmp_path / "m.gguf")
    (tmp_path / "hf").mkdir()  # empty: nothing to lose, written into
    lr.merge_lora(lora=lora_attn, base=tiny_llama3_hf, output=tmp_path / "hf", format="hf")
    with pytest.raises(UsageError, match="already exists"):
        lr.merge_lora(lora=lora_attn, base=tiny_llama3_hf, output=tmp_path / "hf", format="hf")


def test_bad_options(lora_attn: Path, tiny_llama3_hf: Path) -> None:
    with pytest.raises(UsageError, match="--format"):
        lr.merge_lora(lora=lora_attn, base=tiny_llama3_hf, format="onnx")
    with pytest.raises(UsageError, match="q8_0 is for GGUF"):
        lr.merge_lora(lora=lora_attn, base=tiny_llama3_hf, format="hf", outtype="q8_0")


# -- finding the base, and the CLI ----------------------------------------------------------------


def _install(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, symlinks=True)
    return dest


def test_find_base(lora_attn: Path, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    from llama3zh_local import catalog
    from llama3zh_local.hub import store

    assert peft.find_base(lora_attn, str(tiny_llama3_hf)) == tiny_llama3_hf
    # base_model_name_or_path names a repo that is in the store
    d = shutil.copytree(lora_attn, tmp_path / "l")
    cfg = json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = "someone/tiny-base"
    (d / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="someone/tiny-base") as e:
        peft.find_base(d, None)
    assert "--base" in (e.value.hint or "")
    _install(tiny_llama3_hf, store.repo_folder("someone/tiny-base"))
    assert peft.find_base(d, None) == store.repo_folder("someone/tiny-base")
    # an alias: the catalog says which base
    spec = catalog.get_model("instruct-v2")
    with pytest.raises(ModelNotFoundError, match="Meta-Llama-3-8B-Instruct"):
        peft.find_base(d, None, alias="instruct-v2")
    _install(tiny_llama3_hf, store.repo_folder(spec.lora_base or ""))
    assert peft.find_base(d, None, alias="instruct-v2") == store.repo_folder(spec.lora_base or "")


def test_cli_merge_lora_paths(lora_full: Path, tiny_llama3_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    r = runner.invoke(
        app, ["merge-lora", str(lora_full), "--base", str(tiny_llama3_hf), "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out) and out.is_file()
    assert "14 LoRA modules (scale 2)" in r.stderr
    r = runner.invoke(app, ["merge-lora", str(lora_full), "--base", str(tiny_llama3_hf),
                            "--format", "adapter", "-o", str(tmp_path / "a.gguf")])  # fmt: skip
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "Hint: " in r.stderr


def test_cli_merge_lora_alias(lora_full: Path, tiny_llama3_hf: Path) -> None:
    """pull instruct-v2 --variant lora, then merge-lora instruct-v2 with the catalog's base."""
    from llama3zh_local import catalog, paths
    from llama3zh_local.hub import store

    spec = catalog.get_model("instruct-v2")
    _install(lora_full, store.repo_folder(spec.repo_id(catalog.Variant.LORA)))
    r = runner.invoke(app, ["merge-lora", "instruct-v2"])
    assert r.exit_code == 1 and "Meta-Llama-3-8B-Instruct" in r.stderr and "Hint:" in r.stderr
    _install(tiny_llama3_hf, store.repo_folder(spec.lora_base or ""))
    r = runner.invoke(app, ["merge-lora", "instruct-v2", "--outtype", "q8_0"])
    assert r.exit_code == 0, r.output
    want = paths.models_dir() / "llama-3-chinese-8b-instruct-v2-gguf" / "ggml-model-q8_0.gguf"
    assert r.stdout.strip() == str(want)
    assert store.resolve_gguf("instruct-v2", quant="q8_0") == want
    kv = ggufraw.read(want).kv
    assert kv["llama3zh.lora.repo"] == "hfl/llama-3-chinese-8b-instruct-v2-lora"
    assert kv["llama3zh.source.repo"] == "meta-llama/Meta-Llama-3-8B-Instruct"
