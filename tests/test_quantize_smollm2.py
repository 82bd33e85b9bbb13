"""imatrix / quantize / eval on real weights (SmolLM2-135M), checked against llama.cpp's tools.

The acceptance checks of issue 5: our imatrix is llama-imatrix's, our Q4_K_M-im is byte for
byte llama-quantize's, our perplexities are llama-perplexity's, and every -im quant scores a
perplexity no worse than its plain twin. Small chunks keep this under two minutes on 2 cores;
docs/quality.md has the full-size table (bench/quality_table.py).
"""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama3zh_local.cli import app
from llama3zh_local.errors import InvalidModelError
from llama3zh_local.llamacpp import installed, tools
from llama3zh_local.quant import evaluate, imatrix, quantize, recommend
from llama3zh_local.quant.options import ChunkOptions

from . import models

pytestmark = pytest.mark.slow

TOOLS_CACHE = models.cache_root() / "tools"
CTX, CHUNKS = 128, 16  # imatrix: 2,048 tokens of the calibration text
EVAL_CTX, EVAL_CHUNKS = 128, 12  # eval: 768 scored tokens of the evaluation text


@pytest.fixture(scope="module")
def toolenv() -> Iterator[None]:
    """The persistent tool cache for module fixtures (the autouse env is per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(installed.TOOLS_DIR_ENV, str(TOOLS_CACHE))
        yield


@pytest.fixture(autouse=True)
def _tools_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(TOOLS_CACHE))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def f16(work: Path, smollm2_hf: Path) -> Path:
    """SmolLM2's real weights as an F16 GGUF, through `convert`."""
    from llama3zh_local.convert.llama import convert

    return convert(source=smollm2_hf, output=work / "ggml-model-f16.gguf", outtype="f16").path


@pytest.fixture(scope="module")
def ours(f16: Path, toolenv: None) -> imatrix.ImatrixResult:
    return imatrix.compute_imatrix(
        imatrix.plan_imatrix(model=f16, options=ChunkOptions(chunks=CHUNKS, ctx=CTX))
    )


def run_tool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return tools.run_tool(list(args), cwd=cwd, timeout=600)


# -- imatrix ------------------------------------------------------------------------------------


def test_imatrix_equals_llama_imatrix(ours: imatrix.ImatrixResult, f16: Path, work: Path) -> None:
    assert not ours.cached and ours.n_chunks == CHUNKS and ours.n_entries > 0
    assert ours.path.parent == f16.parent / imatrix.CACHE_DIR  # cached beside the model
    calib = imatrix.default_calibration()
    direct = work / "direct-imatrix.gguf"
    # the same text, chunks and context, run by hand as a llama.cpp user would
    run_tool("llama-imatrix", "-m", str(f16), "-f", calib.name, "-c", str(CTX),
             "--chunks", str(CHUNKS), "-o", str(direct), cwd=calib.parent)  # fmt: skip
    assert filecmp.cmp(ours.path, direct, shallow=False)
    im = imatrix.read_imatrix(ours.path)
    assert im.datasets == (calib.name,) and im.chunk_count == CHUNKS and im.chunk_size == CTX
    assert all(v.dtype.name == "float32" and (v >= 0).all() for v in im.entries.values())


def test_imatrix_is_reused_from_the_cache(ours: imatrix.ImatrixResult, f16: Path) -> None:
    again = imatrix.compute_imatrix(
        imatrix.plan_imatrix(model=f16, options=ChunkOptions(chunks=CHUNKS, ctx=CTX))
    )
    assert again.cached and again.path == ours.path and again.seconds < 5
    other = imatrix.plan_imatrix(model=f16, options=ChunkOptions(chunks=CHUNKS - 1, ctx=CTX))
    assert other.output != ours.path and not other.cached  # other settings, other key


# -- quantize -----------------------------------------------------------------------------------


def test_q4_k_m_im_is_byte_identical_to_llama_quantize(
    ours: imatrix.ImatrixResult, f16: Path, work: Path
) -> None:
    out = work / "ours"
    out.mkdir()
    res = quantize.quantize(
        quantize.plan_quantize(model=f16, types=["Q4_K_M"], imatrix=ours.path, output=out)
    )
    (q,) = res.outputs
    assert q.path == out / "ggml-model-q4_k-im.gguf"
    assert q.file_type == "MOSTLY_Q4_K_M" and q.size == q.path.stat().st_size
    assert 4.5 < q.bpw < 7 and q.tensor_count == 272
    # llama-quantize, given the imatrix by the same name (it records the name it was given)
    direct = work / "llama-quantize-q4_k_m.gguf"
    run_tool("llama-quantize", "--imatrix", ours.path.name, str(f16), str(direct), "Q4_K_M",
             cwd=ours.path.parent)  # fmt: skip
    assert filecmp.cmp(q.path, direct, shallow=False)
    assert not list(out.glob(".*tmp*"))  # no temporary files left


@pytest.fixture(scope="module")
def quants(f16: Path, ours: imatrix.ImatrixResult, work: Path) -> dict[str, Path]:
    """The issue's eight files: f16 and seven quants, -im ones with our imatrix."""
    out = work / "quants"
    out.mkdir()
    plain = quantize.quantize(
        quantize.plan_quantize(model=f16, types=["q4_k", "q3_k", "q2_k"], output=out)
    )
    im = quantize.quantize(
        quantize.plan_quantize(
            model=f16, types=["q4_k", "q3_k", "q2_k", "IQ3_XXS"], imatrix=ours.path, output=out
        )
    )
    files = {"f16": f16} | {o.path.stem.removeprefix("ggml-model-"): o.path for o in plain.outputs}
    files |= {o.path.stem.removeprefix("ggml-model-"): o.path for o in im.outputs}
    assert list(files) == ["f16", "q4_k", "q3_k", "q2_k", "q4_k-im", "q3_k-im", "q2_k-im",
                           "iq3_xxs-im"]  # fmt: skip
    return files


@pytest.fixture(scope="module")
def table(quants: dict[str, Path], toolenv: None, tmp_path_factory: pytest.TempPathFactory
          ) -> evaluate.EvalResult:  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMA3ZH_HOME", str(tmp_path_factory.mktemp("home")))
        return evaluate.evaluate(
            models=list(quants.values()),
            options=ChunkOptions(ctx=EVAL_CTX, chunks=EVAL_CHUNKS),
            kld_base=quants["f16"],
        )


def test_eval_table_has_every_model(table: evaluate.EvalResult, quants: dict[str, Path]) -> None:
    assert [r.label for r in table.rows] == list(quants)  # labels read from the files' metadata
    base = table.rows[0]
    assert base.is_base and base.kld == 0.0 and base.bpw == pytest.approx(16.0, abs=0.01)
    for r in table.rows[1:]:
        assert r.ppl > 0 and r.ppl_err > 0 and r.kld is not None and r.kld > 0
        assert r.size == r.path.stat().st_size and 3 < r.bpw < 8
    md = evaluate.markdown_table(table)
    assert md.splitlines()[0] == "| | " + " | ".join(quants) + " |"


def test_eval_ppl_matches_llama_perplexity(
    table: evaluate.EvalResult, quants: dict[str, Path]
) -> None:
    text = evaluate.default_eval_text()
    for label in ("q4_k-im", "iq3_xxs-im"):
        args = ["-m", str(quants[label]), "-f", text.name, "-c", str(EVAL_CTX)]
        done = run_tool("llama-perplexity", *args, "--chunks", str(EVAL_CHUNKS), cwd=text.parent)
        direct = evaluate.parse_perplexity(done.stdout, done.stderr).ppl
        ours = next(r.ppl for r in table.rows if r.label == label)
        assert ours == pytest.approx(direct, rel=0.005)


def test_imatrix_quants_are_no_worse(table: evaluate.EvalResult) -> None:
    ppl = {r.label: r.ppl for r in table.rows}
    kld = {r.label: r.kld for r in table.rows}
    for plain in ("q4_k", "q3_k", "q2_k"):
        assert ppl[f"{plain}-im"] <= ppl[plain], (plain, ppl)
        assert kld[f"{plain}-im"] <= kld[plain], (plain, kld)  # type: ignore[operator]


def test_eval_results_feed_recommend(
    table: evaluate.EvalResult, quants: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate.record_results(table)  # into this test's LLAMA3ZH_HOME
    c = recommend.candidate("q4_k-im", quants["q4_k-im"].stat().st_size, quants["q4_k-im"])
    row = next(r for r in table.rows if r.label == "q4_k-im")
    assert c.ppl == row.ppl and c.kld == row.kld and "measured" in c.quality
    info, cands, notes = recommend.file_candidates(quants["q4_k"])
    labels = {x.label: x for x in cands}
    assert {"f16", "q4_k", "q4_k-im", "iq3_xxs-im"} <= set(labels)
    assert labels["q4_k"].path == quants["q4_k"] and labels["q4_k"].ppl is not None
    assert labels["q8_0"].path is None and any("estimated" in n for n in notes)


# -- the CLI, on the real files -----------------------------------------------------------------


def test_cli_quantize_eval_and_recommend(
    ours: imatrix.ImatrixResult, f16: Path, quants: dict[str, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    # --imatrix alone reuses the cached imatrix of the same model, text and settings
    args = ["--imatrix", "--chunks", str(CHUNKS), "--ctx", str(CTX), "-o", str(tmp_path)]
    r = runner.invoke(app, ["quantize", str(f16), "-q", "Q8_0", *args, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["imatrix"] == str(ours.path)
    (o,) = data["outputs"]
    assert (
        o["path"] == str(tmp_path / "ggml-model-q8_0-im.gguf") and o["file_type"] == "MOSTLY_Q8_0"
    )
    r = runner.invoke(app, ["eval", quants["q4_k"].as_posix(), "--ctx", "64", "--chunks", "2"])
    assert r.exit_code == 0, r.output
    assert "PPL" in r.stdout and "q4_k" in r.stdout and "±" in r.stdout
    r = runner.invoke(app, ["recommend", str(quants["q4_k"]), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["ram"] is not None and rec["choice"] in {c["label"] for c in rec["candidates"]}


def test_cli_imatrix_prints_the_cached_path(ours: imatrix.ImatrixResult, f16: Path) -> None:
    r = CliRunner().invoke(app, ["imatrix", str(f16), "--chunks", str(CHUNKS), "--ctx", str(CTX)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(ours.path)


# -- bad input that needs the real model ----------------------------------------------------------


def test_imatrix_of_another_model_is_refused(
    ours: imatrix.ImatrixResult, tiny_llama3_gguf: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidModelError, match="computed on a different model") as err:
        quantize.quantize(
            quantize.plan_quantize(
                model=tiny_llama3_gguf, types=["Q8_0"], imatrix=ours.path, output=tmp_path
            )
        )
    assert "llama3zh imatrix" in (err.value.hint or "")
    assert not list(tmp_path.iterdir())


def test_hf_checkpoint_is_converted_first(smollm2_hf: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in smollm2_hf.iterdir():  # the shared fixture is read-only: link its files
        (ckpt / f.name).symlink_to(f)
    res = quantize.quantize(quantize.plan_quantize(model=ckpt, types=["Q8_0"]))
    assert res.source == ckpt / "ggml-model-f16.gguf" and res.source.is_file()
    assert res.outputs[0].path == ckpt / "ggml-model-q8_0.gguf"
    assert any("converted the HF checkpoint" in n for n in res.notes)


# -- parity with the llama.cpp source the tools are built from ------------------------------------


def test_llama_quantize_figures_and_aliases_match(toolenv: None) -> None:
    src = tools.ensure_source() / "tools" / "quantize" / "quantize.cpp"
    text = src.read_text(encoding="utf-8")
    deltas = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'\{ "(\w+)",\s+LLAMA_FTYPE_\w+,\s+"\s*[\d.]+G, \+([\d.]+) ppl @ '
            r"Llama-3-8B\"",
            text,
        )  # fmt: skip
    }
    assert deltas == recommend.LLAMA3_8B_PPL_DELTA
    aliases = dict(re.findall(r'\{ "(\w+)",\s+LLAMA_FTYPE_MOSTLY_(\w+),\s+"alias for', text))
    assert aliases == quantize.ALIASES
    # the types offered are llama-quantize's (less its COPY mode and the MoE-only MXFP4)
    offered = set(re.findall(r'\{ "(\w+)",\s+LLAMA_FTYPE_\w+,', text)) - set(aliases)
    assert set(quantize.quant_types()) == offered - {"COPY", "MXFP4_MOE"}
    # the metadata keys quantize.py writes for an imatrix
    from llama3zh_local.llamacpp import quant

    for key in (quant.KV_IMATRIX_FILE, quant.KV_IMATRIX_DATASET, quant.KV_IMATRIX_N_ENTRIES,
                quant.KV_IMATRIX_N_CHUNKS):  # fmt: skip
        assert f'"{key}"' in text
