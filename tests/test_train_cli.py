"""Issue 15: `llama3zh train check-data` (train/checkdata.py and cli/train.py): the summary, the
histogram, the sample with its trained tokens marked, --json, and one-line errors for bad data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama3zh_local.cli import app
from llama3zh_local.train.checkdata import Bucket, check_data, histogram

from . import models
from .oneline import assert_error
from .test_numeric_options import run_batch
from .test_train_data import BAD_PT, BAD_SFT

runner = CliRunner()


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("llama3")
    shutil.copyfile(models.llama3_tokenizer_json(), d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text(json.dumps(models.llama3_tokenizer_config()))
    return d


SFT = [
    {"instruction": "介绍一下长城。", "output": "长城是中国古代的军事防御工程。"},
    {"instruction": "翻译：你好", "input": "", "output": "Hello", "history": [["在吗", "在的。"]]},
    {"instruction": "写一首长诗。", "output": "春眠不觉晓，" * 40},
]


def write_sft(path: Path) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SFT), encoding="utf-8"
    )
    return path


def test_check_data_sft(llama3_dir: Path, tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl")
    r = check_data(data, kind="sft", model_dir=llama3_dir, block_size=128)
    assert (r.kind, r.format, r.files, r.records) == ("sft", "alpaca", (data,), 3)
    assert r.samples == 3 and r.truncated == 1 and r.dropped == 0
    assert r.template == "built-in Llama-3-Instruct"
    assert 0 < r.trained_tokens < r.total_tokens <= 3 * 128
    assert sum(b.count for b in r.histogram) == 3 and r.histogram[-1].high == 128
    assert r.sample_source == f"{data}:1"
    trained = [s.text for s in r.sample if s.trained]
    assert trained == ["长城是中国古代的军事防御工程。<|eot_id|>"]
    assert "".join(s.text for s in r.sample).startswith(
        "<|begin_of_text|><|start_header_id|>system"
    )
    everything = check_data(data, kind="sft", model_dir=llama3_dir, block_size=128,
                            train_on_prompt=True)  # fmt: skip
    assert everything.trained_tokens == everything.total_tokens == r.total_tokens


def test_check_data_pt(llama3_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("北京是中国的首都。" * 30, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "你好"}\n', encoding="utf-8")
    r = check_data(tmp_path, kind="pt", model_dir=llama3_dir, block_size=64)
    assert (r.format, r.records, r.template) == ("text", 2, "")
    assert r.samples >= 2 and r.total_tokens == r.trained_tokens == 64 * r.samples
    assert r.dropped == 1 and 0 < r.dropped_tokens < 64
    assert r.sample_source == f"{tmp_path / 'a.txt'}:block 1"
    assert [s.trained for s in r.sample] == [True]


def test_histogram() -> None:
    assert histogram([]) == ()
    assert histogram([1, 64, 65, 300]) == (
        Bucket(1, 64, 2), Bucket(65, 128, 1), Bucket(129, 256, 0), Bucket(257, 512, 1),
    )  # fmt: skip


def test_cli_table_and_marked_sample(
    llama3_dir: Path, tmp_path: Path, fresh_consoles: None
) -> None:
    data = write_sft(tmp_path / "sft.jsonl")
    result = runner.invoke(
        app, ["train", "check-data", str(data), "--base", str(llama3_dir), "--block-size", "128"],
        env={"COLUMNS": "120"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in ("alpaca", "conversations", "trained tokens", "truncated", "65-128",
                   f"Sample {data}:1"):  # fmt: skip
        assert needle in out, (needle, out)
    # not a terminal: the trained text is marked in words
    assert "[trained]长城是中国古代的军事防御工程。<|eot_id|>[/trained]" in out
    assert "<|start_header_id|>user<|end_header_id|>\n\n介绍一下长城。<|eot_id|>" in out


def test_cli_json(llama3_dir: Path, tmp_path: Path, fresh_consoles: None) -> None:
    data = write_sft(tmp_path / "sft.jsonl")
    result = runner.invoke(
        app, ["train", "check-data", str(data), "--base", str(llama3_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["format"] == "alpaca" and d["files"] == [str(data)] and d["truncated"] == 0
    assert d["samples"] == 3 and d["block_size"] == 512  # sft: upstream run_sft.sh's length
    assert {"text": "长城是中国古代的军事防御工程。<|eot_id|>", "trained": True} in d["sample"]


def test_cli_pt(llama3_dir: Path, tmp_path: Path, fresh_consoles: None) -> None:
    (tmp_path / "a.txt").write_text("北京是中国的首都。" * 30, encoding="utf-8")
    result = runner.invoke(
        app, ["train", "check-data", str(tmp_path), "--kind", "pt", "--base", str(llama3_dir),
              "--block-size", "32"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "texts" in result.stdout and "the last, partial block" in result.stdout


def test_help_lists_train(fresh_consoles: None) -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert "train" in result.stdout
    result = runner.invoke(app, ["train", "check-data", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "llama3zh train check-data" in result.stdout


def test_bad_data_is_one_line_naming_file_and_line(llama3_dir: Path, tmp_path: Path) -> None:
    """Every bad-data class through the real CLI: Error: FILE:LINE ..., one Hint:, exit 1."""
    cases, expected = [], []
    for kind, table in (("sft", BAD_SFT), ("pt", BAD_PT)):
        for i, (file, content, says) in enumerate(table.values()):
            d = tmp_path / f"{kind}{i}"
            d.mkdir()
            path = d / file
            if content is None:
                path.write_bytes(b'{"instruction": "q", "output": "a"}\n' + "你好".encode("gbk"))
            else:
                path.write_text(content, encoding="utf-8")
            cases.append(["train", "check-data", str(path), "--kind", kind, "--base",
                          str(llama3_dir)])  # fmt: skip
            expected.append(f"Error: {path}" + (says if says.startswith(":") else f":{says}"))
    missing = tmp_path / "missing"
    cases.append(["train", "check-data", str(missing), "--base", str(llama3_dir)])
    expected.append(f"Error: {missing}: no such file or folder")
    cases.append(["train", "check-data", str(cases[0][2]), "--base", str(tmp_path / "no-model")])
    expected.append(f"Error: {tmp_path / 'no-model'}: no such model folder")
    for args, r, needle in zip(cases, run_batch(cases, tmp_path), expected, strict=True):
        proc = subprocess.CompletedProcess(r["args"], r["code"], r["out"], r["err"])
        line = assert_error(proc)
        assert line.startswith(needle), (args, proc.stderr)
        assert proc.stdout == ""
