"""`llama3zh eval fidelity`: GGUFs (llama.cpp) against their HF checkpoint run by transformers.

Real components throughout: the tiny random Llama with Meta's 128k vocabulary and SmolLM2 exported
to HF, converted, merged and quantized by the project, compared with transformers (+ peft).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner

from llama3zh_local.cli import app
from llama3zh_local.convert.llama import convert
from llama3zh_local.convert.lora import merge_lora
from llama3zh_local.errors import MissingExtraError
from llama3zh_local.hf import engine as hf_engine
from llama3zh_local.quant import fidelity as fid

from . import lorafix, models

pytestmark = pytest.mark.slow

runner = CliRunner()
CTX, WINDOWS = 64, 2  # tiny model: 128 positions of the held-out text


@pytest.fixture(scope="module")
def tiny_hf() -> Path:
    """The tiny random Llama-3 (real vocabulary) in float32: the exact reference."""
    return models.cached("tiny-llama3-hf-f32", models.build_tiny_llama3_hf, dtype="float32")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fidelity")


@pytest.fixture(scope="module")
def tiny_f32(tiny_hf: Path, work: Path) -> Path:
    return convert(source=tiny_hf, output=work / "tiny-f32.gguf", outtype="f32").path


@pytest.fixture(scope="module")
def tiny_f16(tiny_hf: Path, work: Path) -> Path:
    return convert(source=tiny_hf, output=work / "tiny-f16.gguf", outtype="f16").path


def check(files: list[Path], reference: Path, **kw: object) -> fid.FidelityReport:
    return fid.fidelity(files, reference=reference, n_ctx=CTX, windows=WINDOWS, threads=2, **kw)  # type: ignore[arg-type]


def test_converted_tiny_llama3_matches_transformers(
    tiny_f32: Path, tiny_f16: Path, tiny_hf: Path
) -> None:
    report = check([tiny_f32, tiny_f16], tiny_hf)
    assert report.mismatch is None and report.passed, report.verdict
    f32, f16 = report.rows
    assert f32.positions == f16.positions == CTX * WINDOWS
    # f32: the same arithmetic up to summation order
    assert f32.top1 == 1.0 and f32.kld_mean < 1e-7 and f32.max_abs_dlogit < 1e-3
    # f16 weights: llama.cpp also rounds activations to f16 in its matmuls; a flip is only
    # allowed where the reference itself had a near tie
    assert f16.top1 + f16.near_ties / f16.positions == 1.0
    assert f16.kld_mean < 1e-4 and f16.kld_p99 < 1e-3
    assert f32.verdict == f16.verdict == "pass"
    assert report.verdict.startswith("pass: f32, f16 match the reference")


def test_merged_lora_matches_peft_on_the_unmerged_adapter(
    tiny_hf: Path, work: Path, tiny_f32: Path
) -> None:
    # all linear layers plus embed_tokens and lm_head in full (modules_to_save)
    lora = lorafix.build_lora(work / "lora", tiny_hf, dtype="float32")
    merged = merge_lora(lora=lora, base=tiny_hf, output=work / "merged-f32.gguf", outtype="f32")
    report = check([merged.path, tiny_f32], tiny_hf, lora=lora)
    with_lora, base = report.rows
    assert with_lora.top1 == 1.0 and with_lora.kld_mean < 1e-7, report.verdict
    assert with_lora.verdict == "pass"
    # the base GGUF is not the adapted model: the check sees the difference
    assert base.verdict == "FAIL" and base.kld_mean > 100 * with_lora.kld_mean + 1e-4
    assert not report.passed


def _rewrite_copy(src: Path, dest: Path) -> gguf.GGUFReader:
    shutil.copyfile(src, dest)
    return gguf.GGUFReader(dest, "r+")


def test_broken_files_fail_with_a_clear_verdict(tiny_f32: Path, tiny_hf: Path, work: Path) -> None:
    rope = work / "wrong-rope.gguf"
    reader = _rewrite_copy(tiny_f32, rope)
    field = reader.fields["llama.rope.freq_base"]
    assert field.parts[field.data[0]][0] == 500000.0
    field.parts[field.data[0]][0] = 10000.0  # Llama-2's base instead of Llama-3's
    del reader

    transposed = work / "transposed.gguf"
    reader = _rewrite_copy(tiny_f32, transposed)
    (t,) = [t for t in reader.tensors if t.name == "blk.0.attn_q.weight"]
    assert t.data.shape[0] == t.data.shape[1]  # square: llama.cpp still loads it
    t.data[...] = t.data.T.copy()
    del reader

    report = check([tiny_f32, rope, transposed], tiny_hf)
    good, bad_rope, bad_t = report.rows
    assert good.verdict == "pass"
    for row in (bad_rope, bad_t):
        assert row.verdict == "FAIL", row
        assert "full-precision" in row.why or "broken" in row.why or "beyond" in row.why
    assert not report.passed
    assert report.verdict.startswith("FAIL: ")
    assert "wrong-rope.gguf" in report.verdict and "transposed.gguf" in report.verdict
    assert "tiny-f32.gguf" not in report.verdict  # labels repeat (all f32): file names instead
    table = fid.markdown_table(report)
    assert table.count("| FAIL") == 2 and "| pass" in table


def test_tokenizer_disagreement_is_reported_first(
    tiny_f32: Path, tiny_hf: Path, work: Path
) -> None:
    ref = work / "ref-no-bos"
    shutil.copytree(tiny_hf, ref)
    cfg = json.loads((ref / "tokenizer_config.json").read_text(encoding="utf-8"))
    (ref / "tokenizer_config.json").write_text(
        json.dumps({**cfg, "add_bos_token": False}), encoding="utf-8"
    )
    report = check([tiny_f32], ref)
    assert report.rows == () and report.mismatch is not None and not report.passed
    m = report.mismatch
    assert m.position == 0 and m.gguf_ids[0] == models.LLAMA3_BOS_ID
    assert m.reference_ids[0] != models.LLAMA3_BOS_ID
    assert report.verdict.startswith("FAIL: tiny-f32.gguf: tokenizers disagree at token 0")
    assert report.to_json()["token_mismatch"]["position"] == 0


def test_cli_table_json_and_exit_code(tiny_f32: Path, tiny_hf: Path, work: Path) -> None:
    base = ["eval", "fidelity", str(tiny_f32), "--reference", str(tiny_hf), "--ctx", "32"]
    result = runner.invoke(app, [*base, "--windows", "1"])
    assert result.exit_code == 0, result.output
    assert "| f32 |" in result.stdout and "pass: f32 matches the reference" in result.stdout
    result = runner.invoke(app, [*base, "--windows", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] and data["rows"][0]["top1"] == 1.0 and data["tokens"] == 32
    # `eval` itself still takes its list of models
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "eval fidelity" in result.stdout


def test_missing_torch_is_one_clear_line(
    tiny_f32: Path, tiny_hf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = hf_engine.importlib.util.find_spec

    def find_spec(name: str, *a: object) -> object:
        return None if name == "torch" else real(name, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(hf_engine.importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingExtraError) as info:
        fid.fidelity([tiny_f32], reference=tiny_hf)
    assert "torch not installed" in str(info.value)
    assert "pip install torch==" in (info.value.hint or "")
    assert '"llama3zh-local[train]"' in (info.value.hint or "")
    result = runner.invoke(app, ["eval", "fidelity", str(tiny_f32), "-r", str(tiny_hf)])
    assert result.exit_code == 1
    assert "Error: eval fidelity needs the [train] extra" in result.output
    assert "Hint: pip install torch==" in result.output and "Traceback" not in result.output


# -- SmolLM2: real weights, real quants ---------------------------------------------------------


def test_smollm2_f16_matches_and_quants_lose_less_with_an_imatrix(
    smollm2_hf: Path, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama3zh_local.llamacpp import installed
    from llama3zh_local.quant import imatrix, quantize
    from llama3zh_local.quant.options import ChunkOptions

    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(models.cache_root() / "tools"))
    out = work / "smol"
    out.mkdir()
    f16 = convert(source=smollm2_hf, output=out / "ggml-model-f16.gguf", outtype="f16")
    im = imatrix.compute_imatrix(
        imatrix.plan_imatrix(model=f16.path, options=ChunkOptions(chunks=16, ctx=128))
    )
    plain = quantize.quantize(quantize.plan_quantize(model=f16.path, types=["q4_k"], output=out))
    imq = quantize.quantize(
        quantize.plan_quantize(model=f16.path, types=["q4_k"], imatrix=im.path, output=out)
    )
    # f32 holds the export's f16 weights exactly: llama.cpp then computes as transformers does
    f32 = convert(source=smollm2_hf, output=out / "ggml-model-f32.gguf", outtype="f32")
    files = [f32.path, f16.path, plain.outputs[0].path, imq.outputs[0].path]
    report = fid.fidelity(files, reference=smollm2_hf, n_ctx=128, windows=2, threads=2)
    assert report.passed, report.verdict
    rf32, rf16, q4, q4im = report.rows
    assert [r.label for r in report.rows] == ["f32", "f16", "q4_k", "q4_k-im"]
    assert rf32.top1 == 1.0 and rf32.kld_mean < 1e-6
    # the same weights in f16: llama.cpp rounds activations to f16 in its f16 matmuls, which
    # flips the pick only where the reference itself had a near tie
    assert rf16.top1 + rf16.near_ties / rf16.positions == 1.0
    assert rf16.kld_mean < 1e-4 and rf16.verdict == "pass"
    assert q4.verdict == q4im.verdict == "info"
    assert q4.kld_mean > 1e-3 and q4.kld_mean > 100 * rf16.kld_mean and q4.top1 < 1.0
    # the imatrix quant loses no more than the plain one on held-out text, or the table says
    # by how much more
    if q4im.kld_mean <= q4.kld_mean:
        assert "lower than q4_k's" in q4im.note
    else:
        assert "higher than q4_k's" in q4im.note
    assert "lower than q4_k's" in fid.markdown_table(report) or "higher" in q4im.note


def test_run_finishes_with_a_fidelity_line(tiny_f32: Path, tiny_hf: Path) -> None:
    from llama3zh_local.errors import UsageError
    from llama3zh_local.pipeline import RunPlan, Step, check_fidelity_possible, run_fidelity

    convert_step = Step("convert", "convert", tiny_f32, 0, 0.0, source=tiny_hf)
    plan = RunPlan("instruct-v3", "ALL_F32", False, tiny_f32, "local", (convert_step,))
    report = run_fidelity(plan, tiny_f32, threads=2)
    assert report.passed and report.windows == fid.DEFAULT_WINDOWS
    assert report.line().startswith(f"fidelity vs {tiny_hf.name}: f32 top-1 100.00%, mean KLD ")
    assert report.line().endswith(
        "-> pass: f32 matches the reference (top-1 >= 99%, mean KLD <= 0.005)"
    )
    # a run that downloads the hub's GGUF has no reference: refused before any work
    hub_plan = RunPlan("instruct-v3", "Q4_K_M", False, tiny_f32, "hub-gguf", ())
    with pytest.raises(UsageError) as info:
        check_fidelity_possible(hub_plan)
    assert info.value.hint == "download them first: llama3zh pull instruct-v3 --variant full"


def test_train_then_finishes_with_a_fidelity_line(tiny_hf: Path, work: Path) -> None:
    """`train ... --then Q8_0 --fidelity`: the chain's f16 and quant against base + the LoRA."""
    import typer

    from llama3zh_local.cli import _finish
    from llama3zh_local.cli._errors import handle_errors

    lora = lorafix.build_lora(work / "then-lora", tiny_hf, dtype="float32")
    one = typer.Typer()

    @one.command()
    @handle_errors
    def main(out: Path) -> None:
        _finish.finish(adapter=lora, base=tiny_hf, then="Q8_0", out_dir=out, fidelity=True)

    result = runner.invoke(one, [str(work / "then-out")])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("fidelity vs "))
    assert line.startswith(f"fidelity vs {tiny_hf.name} + then-lora: f16 top-1 ")
    assert "q8_0 top-1 " in line and line.endswith("none broken"), line
    assert "pass: f16 matches the reference" in line


def test_train_fidelity_needs_then(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n', encoding="utf-8")
    result = runner.invoke(app, ["train", "sft", str(data), "--base", "x", "--fidelity"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --fidelity checks the GGUFs that --then makes")
    assert "Hint: e.g. --then Q4_K_M --fidelity" in result.stderr
