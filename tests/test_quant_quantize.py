"""quant/quantize.py: quant types and naming, the checks quantize makes before any heavy work,
the in-process call, and the CLI's one-line errors. Fast: a synthetic GGUF, no llama.cpp tools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llama3zh_local import catalog
from llama3zh_local.cli import app
from llama3zh_local.errors import (
    DiskSpaceError,
    InvalidModelError,
    UsageError,
)
from llama3zh_local.files import space, state
from llama3zh_local.llamacpp import quant
from llama3zh_local.quant import quantize

from .quantfix import write_imatrix

# -- quant types and names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name", "short"),
    [
        ("Q4_K_M", "Q4_K_M", "q4_k"),
        ("q4_k_m", "Q4_K_M", "q4_k"),
        ("Q4_K", "Q4_K_M", "q4_k"),  # llama-quantize's alias
        ("q4_k", "Q4_K_M", "q4_k"),  # upstream short name
        ("q4_k-im", "Q4_K_M", "q4_k"),
        ("q5_k", "Q5_K_M", "q5_k"),
        ("Q3_K", "Q3_K_M", "q3_k"),
        ("q8_0", "Q8_0", "q8_0"),
        ("iq3_xxs", "IQ3_XXS", "iq3_xxs"),
        ("IQ2-M", "IQ2_M", "iq2_m"),
        ("Q4_K_S", "Q4_K_S", "q4_k_s"),
        ("f16", "F16", "f16"),
        ("bf16", "BF16", "bf16"),
    ],
)
def test_parse_type(value: str, name: str, short: str) -> None:
    t = quantize.parse_type(value)
    assert (t.name, t.short) == (name, short)


def test_unknown_type_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="unknown quant type 'Q9_K'") as err:
        quantize.parse_type("Q9_K")
    assert err.value.hint and "Q4_K_M" in err.value.hint and "IQ3_XXS" in err.value.hint
    assert "q4_k" in err.value.hint  # the upstream short names too


def test_parse_types_repeated_and_comma_separated() -> None:
    got = quantize.parse_types(["q4_k,Q5_K_M", "Q4_K", "q8_0"])
    assert [t.name for t in got] == ["Q4_K_M", "Q5_K_M", "Q8_0"]
    with pytest.raises(UsageError, match="no quant type"):
        quantize.parse_types([" , "])


@pytest.mark.parametrize(
    ("name", "im", "filename"),
    [
        ("Q4_K_M", True, "ggml-model-q4_k-im.gguf"),
        ("Q4_K_M", False, "ggml-model-q4_k.gguf"),
        ("Q2_K", True, "ggml-model-q2_k-im.gguf"),
        ("IQ3_XXS", True, "ggml-model-iq3_xxs-im.gguf"),
        ("Q6_K", False, "ggml-model-q6_k.gguf"),
    ],
)
def test_upstream_file_names(name: str, im: bool, filename: str) -> None:
    assert quantize.parse_type(name).filename(imatrix=im) == filename


def test_quant_types_mirror_gguf_file_types() -> None:
    """Every gguf.LlamaFileType is offered under the same value (parity with gguf-py)."""
    import gguf

    types = quantize.quant_types()
    for ft in gguf.LlamaFileType:
        name = ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        if name in quantize._SKIP:
            continue
        assert types[name].ftype == ft.value, name
    for q in catalog.GGUF_QUANTS:  # the upstream names all resolve, to their own short name
        assert quantize.parse_type(q.short).short == q.short
        assert quantize.parse_type(q.ftype).name == q.ftype


def test_requires_imatrix_matches_llama_cpp(synth: Path, tmp_path: Path) -> None:
    """llama.cpp's own dry run says which types need an imatrix (on rows of 256)."""
    needs = set()
    for t in quantize.quant_types().values():
        if t.is_float:
            continue
        run = quant.quantize_file(source=synth, output=tmp_path / "x.gguf", ftype=t.ftype,
                                  dry_run=True)  # fmt: skip
        if any("will require an imatrix" in ln for ln in run.log):
            needs.add(t.name)
    assert needs == quantize.REQUIRES_IMATRIX
    assert not (tmp_path / "x.gguf").exists()


# -- quantize: checks before the heavy work, and the in-process call ------------------------------


def test_types_that_need_an_imatrix_are_refused_without(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="IQ2_XS, IQ3_XXS need an importance matrix") as err:
        quantize.quantize(
            quantize.plan_quantize(
                model=synth, types=["Q4_K_M", "IQ2_XS", "iq3_xxs"], output=tmp_path
            )
        )
    assert "--imatrix" in (err.value.hint or "")
    assert not list(tmp_path.iterdir())


def test_quantize_writes_reads_back_and_names(synth: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    res = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["q4_k", "Q8_0"], output=tmp_path),
        progress=lambda e: (
            seen.append((e.task.split()[0], e.done, e.total)) if e.kind == "advance" else None
        ),
    )
    assert [o.path.name for o in res.outputs] == ["ggml-model-q4_k.gguf", "ggml-model-q8_0.gguf"]
    q4, q8 = res.outputs
    assert q4.file_type == "MOSTLY_Q4_K_M" and q8.file_type == "MOSTLY_Q8_0"
    assert 4.5 < q4.bpw < 5.5 and 8.4 < q8.bpw < 8.6  # all rows are multiples of 256: no fallback
    assert q4.fallback_tensors == 0 and q4.tensor_count == 21
    assert seen[0] == ("Q4_K_M", 1, 21) and seen[-1] == ("Q8_0", 21, 21)
    # _env: conftest's LLAMA3ZH_HOME (which holds the journal of temporary names); the state
    # file records the two, so that a later --force may replace them
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "_env") == [
        ".llama3zh-state.json",
        ".llama3zh-state.json.lock",
        q4.path.name,
        q8.path.name,
    ]
    assert set(state.read_state(tmp_path)) == {q4.path.name, q8.path.name}
    # output exists
    with pytest.raises(UsageError, match="already exists") as err:
        quantize.quantize(quantize.plan_quantize(model=synth, types=["Q8_0"], output=tmp_path))
    assert "--force" in (err.value.hint or "")
    again = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["Q8_0"], output=tmp_path, force=True)
    )
    assert again.outputs[0].path == q8.path


def test_quantize_with_imatrix_records_it_like_llama_quantize(synth: Path, tmp_path: Path) -> None:
    from llama3zh_local.gguf.reader import read_header, read_tensors

    sums = {t.name: np.ones(t.shape[0], np.float32) * 4 for t in read_tensors(synth)
            if t.name.startswith("blk.") and len(t.shape) == 2}  # fmt: skip
    im = write_imatrix(tmp_path / "my.imatrix.gguf", sums, dict.fromkeys(sums, 2.0),
                       datasets=("x" * 200,), chunks=9)  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    res = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["IQ3_XXS"], imatrix=im, output=out)
    )
    (o,) = res.outputs
    assert o.path.name == "ggml-model-iq3_xxs-im.gguf" and o.imatrix == im
    kv = read_header(o.path).kv  # type: ignore[union-attr]
    assert kv["quantize.imatrix.file"] == "my.imatrix.gguf"  # the name, not this machine's path
    assert kv["quantize.imatrix.dataset"] == "x" * 127  # cut at 127 bytes, as llama-quantize
    assert kv["quantize.imatrix.entries_count"] == len(sums)
    assert kv["quantize.imatrix.chunks_count"] == 9


def test_requantize_needs_consent(smollm2_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match=r"already quantized \(Q4_1\)") as err:
        quantize.quantize(
            quantize.plan_quantize(model=smollm2_gguf, types=["Q4_0"], output=tmp_path)
        )
    assert "--allow-requantize" in (err.value.hint or "")
    res = quantize.quantize(
        quantize.plan_quantize(
            model=smollm2_gguf, types=["Q4_0"], output=tmp_path, allow_requantize=True
        )
    )
    assert res.outputs[0].file_type == "MOSTLY_Q4_0"
    assert res.warnings and "requantizing" in res.warnings[0]


def test_disk_too_small_is_refused_before_writing(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda p: 10 << 20)  # 10 MiB
    with pytest.raises(DiskSpaceError, match="not enough free space") as err:
        quantize.quantize(
            quantize.plan_quantize(model=synth, types=["Q8_0", "Q4_K_M"], output=tmp_path)
        )
    assert "-o" in (err.value.hint or "")
    assert not list(tmp_path.iterdir())


def test_output_paths(synth: Path, tmp_path: Path) -> None:
    t = quantize.parse_type("Q4_K_M")
    assert quantize.output_path(synth, t, imatrix=True, output=None, n_types=2) == (
        synth.parent / "ggml-model-q4_k-im.gguf"
    )
    assert quantize.output_path(synth, t, imatrix=False, output=tmp_path, n_types=2) == (
        tmp_path / "ggml-model-q4_k.gguf"
    )
    assert quantize.output_path(synth, t, imatrix=False, output=tmp_path / "x.gguf",
                                n_types=1) == tmp_path / "x.gguf"  # fmt: skip
    with pytest.raises(UsageError, match="names one file"):
        quantize.output_path(synth, t, imatrix=False, output=tmp_path / "x.gguf", n_types=2)


def test_not_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InvalidModelError, match="not a GGUF"):
        quantize.quantize(quantize.plan_quantize(model=tmp_path / "model.gguf", types=["Q8_0"]))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidModelError, match="neither a GGUF file nor an HF checkpoint"):
        quantize.quantize(quantize.plan_quantize(model=tmp_path / "folder", types=["Q8_0"]))


def test_dry_run_writes_nothing(synth: Path, tmp_path: Path) -> None:
    res = quantize.quantize(
        quantize.plan_quantize(model=synth, types=["Q4_K_M", "Q6_K"], output=tmp_path, dry_run=True)
    )
    assert [o.dry_run for o in res.outputs] == [True, True]
    assert res.outputs[0].size < res.outputs[1].size < synth.stat().st_size
    assert not list(tmp_path.iterdir())


def test_imatrix_overrides_order() -> None:
    kv = quant.imatrix_overrides(file="a.gguf", datasets=("d.txt", "e.txt"), n_entries=3,
                                 n_chunks=0)  # fmt: skip
    assert kv == [("quantize.imatrix.file", "a.gguf"), ("quantize.imatrix.dataset", "d.txt"),
                  ("quantize.imatrix.entries_count", 3)]  # fmt: skip


# -- the CLI: one-line errors ---------------------------------------------------------------------


def test_cli_errors_are_one_line_with_a_hint(synth: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["quantize", str(synth), "-q", "Q9_K"])
    assert r.exit_code == 1 and "Error: unknown quant type 'Q9_K'" in r.stderr
    assert "Hint: valid types:" in r.stderr and r.stdout == ""
    r = runner.invoke(app, ["quantize", str(synth), "-q", "IQ2_XXS", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "needs an importance matrix" in r.stderr
    r = runner.invoke(app, ["quantize", str(synth), "-q", "Q8_0", "-o", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"][0]["file_type"] == "MOSTLY_Q8_0"
    r = runner.invoke(app, ["quantize", str(synth), "-q", "Q8_0", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "already exists" in r.stderr and "--force" in r.stderr
    r = runner.invoke(app, ["imatrix", str(tmp_path / "nope.gguf")])
    assert r.exit_code == 1 and "Error:" in r.stderr
