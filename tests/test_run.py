"""`llama3zh run` and `llama3zh gc` on the loopback hub: routes, state file, reuse, leftovers."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

from llama3zh_local import estimates, paths, pipeline
from llama3zh_local.cli import app
from llama3zh_local.files import atomic, state

from .fake_ollama import FakeOllama
from .hub_server import HubServer, online

runner = CliRunner()

V3 = "llama-3-chinese-8b-instruct-v3"
V1 = "llama-3-chinese-8b-instruct"
REPOS = {"hf": "hfl/", "ms": "ChineseAlpacaGroup/"}


@pytest.fixture(scope="module")
def server(tiny_llama3_gguf: Path, tiny_llama3_hf: Path) -> Iterator[HubServer]:
    with HubServer() as s:
        for org in REPOS.values():
            s.add_repo(f"{org}{V3}-gguf", {"ggml-model-q4_k.gguf": tiny_llama3_gguf})
            s.add_repo(f"{org}{V3}", {p.name: p for p in tiny_llama3_hf.iterdir()})
        # instruct (v1): the GGUF repo has an f16 file too
        s.add_repo(f"hfl/{V1}-gguf", {"ggml-model-f16.gguf": tiny_llama3_gguf})
        s.add_repo(f"hfl/{V1}", {p.name: p for p in tiny_llama3_hf.iterdir()})
        yield s


@pytest.fixture
def hub(server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with online(server, tmp_path, monkeypatch):
        yield server


def run(*args: str) -> object:
    return runner.invoke(app, ["run", *args])


def ok(result: object) -> object:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return result


def gguf_dir() -> Path:
    return paths.models_dir() / f"{V3}-gguf"


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".incomplete")]


# -- planning -------------------------------------------------------------------------------------


def test_upstream_quant_is_pulled_as_is(hub: HubServer) -> None:
    plan = pipeline.plan_run("instruct-v3", quant="Q4_K_M", source="hf")
    assert plan.route == "hub-gguf"
    assert [s.kind for s in plan.steps] == ["pull"]
    assert plan.target == gguf_dir() / "ggml-model-q4_k.gguf"


def test_imatrix_or_other_quants_go_through_the_f16_weights(hub: HubServer) -> None:
    plan = pipeline.plan_run("instruct-v3", quant="q4_k", imatrix=True, source="hf", chunks=2)
    # the hub's GGUF repo has no f16 file here: the full weights, converted
    assert plan.route == "full"
    assert [s.kind for s in plan.steps] == ["pull", "convert", "imatrix", "quantize"]
    assert plan.target.name == "ggml-model-q4_k-im.gguf"
    assert plan.steps[0].size > 0 and all(s.seconds > 0 for s in plan.steps)
    other = pipeline.plan_run("instruct-v3", quant="Q5_K_S", source="hf")
    assert other.route == "full" and other.target.name == "ggml-model-q5_k_s.gguf"
    assert any("no q5_k_s GGUF" in n or "Q5_K_S" in n for n in other.notes) or other.route


def test_hours_of_imatrix_suggest_fewer_chunks(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rate in ("imatrix_cpu_core", "imatrix_gpu"):  # a machine far slower than this one
        monkeypatch.setitem(estimates.DEFAULT_RATES, rate, 1e4)
    plan = pipeline.plan_run("instruct-v3", imatrix=True, source="hf")
    (note,) = [n for n in plan.notes if "--chunks 50 would take" in n]
    assert note.startswith("the imatrix over all of the calibration text takes ~")
    few = pipeline.plan_run("instruct-v3", imatrix=True, source="hf", chunks=50)
    assert not any("--chunks" in n for n in few.notes)
    assert few.seconds < plan.seconds


def test_quants_that_need_an_imatrix_say_so_before_any_download(hub: HubServer) -> None:
    result = run("instruct-v3", "-q", "IQ3_XXS", "-y", "--source", "hf")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert "Error: IQ3_XXS needs an importance matrix" in err and "--imatrix" in err
    assert hub.bytes_served == 0


def test_big_work_asks_first_and_refuses_without_a_terminal(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "ASK_ABOVE_BYTES", 1)
    result = run("instruct-v3", "-q", "q4_k", "--source", "hf")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    lines = result.stderr.splitlines()  # type: ignore[attr-defined]
    assert [ln for ln in lines if ln.startswith("Error:")][0].endswith("stdin is not a terminal")
    assert any(ln.startswith("Hint: add -y") for ln in lines)
    assert hub.bytes_served == 0


def test_dry_run_prints_the_plan_and_does_nothing(hub: HubServer) -> None:
    result = ok(run("instruct-v3", "--imatrix", "--chunks", "2", "--source", "hf", "--dry-run"))
    err = result.stderr  # type: ignore[attr-defined]
    for needle in ("1. pull", "2. convert", "3. imatrix", "4. quantize", "in all:"):
        assert needle in err, err
    assert result.stdout.strip() == str(gguf_dir() / "ggml-model-q4_k-im.gguf")  # type: ignore[attr-defined]
    assert hub.bytes_served == 0 and not paths.models_dir().exists()


# -- doing it -------------------------------------------------------------------------------------


def test_hub_gguf_route_then_nothing_to_do(hub: HubServer, tiny_llama3_gguf: Path) -> None:
    result = ok(run("instruct-v3", "-q", "q4_k", "-y", "--source", "hf"))
    target = gguf_dir() / "ggml-model-q4_k.gguf"
    assert result.stdout == f"{target}\n"  # type: ignore[attr-defined]
    assert target.read_bytes() == tiny_llama3_gguf.read_bytes()
    entry = state.read_state(gguf_dir())["ggml-model-q4_k.gguf"]
    assert entry.step == "pull" and entry.sha256 == state.sha256_file(tiny_llama3_gguf)
    served = hub.bytes_served
    again = ok(run("instruct-v3", "-q", "q4_k", "-y", "--source", "hf"))
    assert "nothing to do" in again.stderr  # type: ignore[attr-defined]
    assert hub.bytes_served == served


@pytest.mark.slow
def test_full_route_records_every_step_and_reruns_for_free(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = ok(run("instruct-v3", "--imatrix", "--chunks", "2", "-y", "--source", "modelscope"))
    target = gguf_dir() / "ggml-model-q4_k-im.gguf"
    assert result.stdout == f"{target}\n"  # type: ignore[attr-defined]
    reader = gguf.GGUFReader(target)
    ftype = reader.fields[gguf.Keys.General.FILE_TYPE].contents()
    assert ftype == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert "quantize.imatrix.file" in reader.fields
    entries = state.read_state(gguf_dir())
    f16 = entries["ggml-model-f16.gguf"]
    assert f16.step == "convert" and "model.safetensors" in f16.inputs
    im = [e for e in entries.values() if e.step == "imatrix"]
    assert len(im) == 1 and im[0].inputs == {"ggml-model-f16.gguf": f16.sha256}
    quant = entries["ggml-model-q4_k-im.gguf"]
    assert quant.inputs == {"ggml-model-f16.gguf": f16.sha256, im[0].name: im[0].sha256}
    for e in entries.values():
        assert state.sha256_file(gguf_dir() / e.name) == e.sha256
    assert temporaries(paths.home()) == []

    served = hub.bytes_served
    before = {n: (gguf_dir() / n).stat().st_mtime_ns for n in entries}
    again = ok(run("instruct-v3", "--imatrix", "--chunks", "2", "-y", "--source", "modelscope"))
    assert "nothing to do" in again.stderr  # type: ignore[attr-defined]
    assert hub.bytes_served == served
    assert {n: (gguf_dir() / n).stat().st_mtime_ns for n in entries} == before

    # another quant from the same f16 and imatrix, offline: only quantize runs, no hub request
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hub.requests)
    q5 = ok(run("instruct-v3", "-q", "q5_k", "--imatrix", "--chunks", "2", "-y"))
    err = q5.stderr  # type: ignore[attr-defined]
    assert "convert: ggml-model-f16.gguf is complete" in err and "[3/3] quantize" in err
    assert len(hub.requests) == asked
    assert state.read_state(gguf_dir())["ggml-model-q5_k-im.gguf"].step == "quantize"


@pytest.mark.slow
def test_the_hubs_f16_gguf_beats_full_weights_plus_convert(hub: HubServer) -> None:
    plan = pipeline.plan_run("instruct", imatrix=True, chunks=2, source="hf")
    assert plan.route == "hub-f16", plan.notes
    assert [s.kind for s in plan.steps] == ["pull", "imatrix", "quantize"]
    assert any("rather than the full weights + convert" in n for n in plan.notes)
    result = pipeline.execute(plan)
    folder = paths.models_dir() / f"{V1}-gguf"
    entries = state.read_state(folder)
    assert entries["ggml-model-f16.gguf"].step == "pull"
    assert result.target == folder / "ggml-model-q4_k-im.gguf"
    assert entries[result.target.name].sha256 == result.sha256 == state.sha256_file(result.target)


def test_an_unreachable_hub_falls_back_to_the_local_f16(
    tiny_llama3_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    gguf_dir().mkdir(parents=True)
    shutil.copyfile(tiny_llama3_gguf, gguf_dir() / "ggml-model-f16.gguf")
    # as an earlier run leaves it: recorded (an unrecorded one is refused, see test_safety.py)
    state.record(gguf_dir() / "ggml-model-f16.gguf", step="convert")
    try:
        result = ok(run("instruct-v3", "-q", "q4_k", "-y", "--source", "hf"))
    finally:
        closed.close()
    err = result.stderr  # type: ignore[attr-defined]
    assert "cannot reach Hugging Face" in err and "making it from the f16 weights instead" in err
    target = gguf_dir() / "ggml-model-q4_k.gguf"
    assert result.stdout == f"{target}\n"  # type: ignore[attr-defined]
    assert state.read_state(gguf_dir())[target.name].step == "quantize"


@pytest.mark.slow
def test_a_changed_f16_is_not_trusted(hub: HubServer) -> None:
    ok(run("instruct-v3", "-q", "Q8_0", "--imatrix", "--chunks", "2", "-y", "--source", "hf"))
    target = gguf_dir() / "ggml-model-q8_0-im.gguf"
    first = target.read_bytes()
    f16 = gguf_dir() / "ggml-model-f16.gguf"
    data = bytearray(f16.read_bytes())
    data[-1] ^= 0xFF  # same size, one weight changed
    f16.write_bytes(bytes(data))
    changed = state.sha256_file(f16)
    # neither reused nor replaced: it is no longer the file llama3zh wrote
    again = run("instruct-v3", "-q", "Q8_0", "--imatrix", "--chunks", "2", "-y", "--source", "hf")
    assert again.exit_code == 1, again.output  # type: ignore[attr-defined]
    assert "no record of making it" in again.stderr  # type: ignore[attr-defined]
    assert state.sha256_file(f16) == changed and target.read_bytes() == first
    # moved away: the quant made from the f16 it recorded is complete (inputs deleted to save
    # space do not matter), and nothing adopted the changed one
    f16.unlink()
    ok(run("instruct-v3", "-q", "Q8_0", "--imatrix", "--chunks", "2", "-y", "--source", "hf"))
    entries = state.read_state(gguf_dir())
    assert entries["ggml-model-f16.gguf"].sha256 != changed
    assert entries["ggml-model-q8_0-im.gguf"].inputs["ggml-model-f16.gguf"] != changed
    assert target.read_bytes() == first


def test_ollama_route_creates_the_model(
    hub: HubServer, tiny_llama3_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOllama() as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        result = ok(run("instruct-v3", "-y", "--source", "hf", "--ollama", "llama3-zh:q4_k"))
        assert result.stdout.strip() == "llama3-zh:q4_k"  # type: ignore[attr-defined]
        (create,) = fake.find("POST", "/api/create")
        digest = state.read_state(gguf_dir())["ggml-model-q4_k.gguf"].sha256
        assert create.json["files"] == {"ggml-model-q4_k.gguf": f"sha256:{digest}"}
        assert "<|eot_id|>" in create.json["parameters"]["stop"]


# -- gc -------------------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def killed_writer(code: str) -> int:
    """Run ``code`` in a process that is then killed with SIGKILL (no cleanup); its PID.

    ``code`` sees ``atomic`` and ``Path``; it writes temporary files the way the stages do.
    """
    script = (
        "import os, signal\nfrom pathlib import Path\nfrom llama3zh_local.files import atomic\n"
        f"{code}\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    assert proc.wait(60) == -signal.SIGKILL
    return proc.pid


def test_gc_removes_orphans_of_dead_writers_only(tmp_path: Path) -> None:
    folder = paths.models_dir() / "some-model"
    folder.mkdir(parents=True)
    final = folder / "ggml-model-f16.gguf"
    final.write_bytes(b"good")
    scratch_parent = paths.home() / "tmp"
    dead = killed_writer(
        f"t = atomic.temp_path(Path({str(final)!r})); t.write_bytes(b'x' * 5000)\n"
        "Path(str(t) + '.at_10').write_bytes(b'y' * 300)\n"
        f"d = atomic.scratch_dir('kld', Path({str(scratch_parent)!r}))\n"
        "(d / 'base-logits.bin').write_bytes(b'z' * 1000)"
    )
    orphan = folder / f".ggml-model-f16.gguf.tmp-{dead}"
    checkpoint = folder / f".ggml-model-f16.gguf.tmp-{dead}.at_10"
    (scratch,) = scratch_parent.glob(f"kld-pid{dead}-*")
    assert orphan.is_file() and checkpoint.is_file()
    live = atomic.temp_path(folder / "ggml-model-q4_k.gguf")  # this process: still writing
    live.write_bytes(b"in progress")
    # named like temporary files, but no llama3zh process listed them: never deleted
    lookalikes = [
        folder / f".ggml-model-q8_0.gguf.tmp-{dead_pid()}",
        folder / f".notes.txt.tmp-{dead}",
        scratch_parent / f"kld-pid{dead_pid()}-mine",
    ]
    for p in lookalikes:
        p.write_bytes(b"mine")
    partial = paths.home() / "xdg" / "blob.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"p" * 700)

    dry = ok(runner.invoke(app, ["gc", "--dry-run"]))
    assert dry.stdout.strip() == "would free 6.2 KiB (3 files)"  # type: ignore[attr-defined]
    assert orphan.exists()

    result = ok(runner.invoke(app, ["gc", "--json"]))
    data = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert data["freed_bytes"] == 6300
    assert {Path(r["path"]) for r in data["removed"]} == {orphan, checkpoint, scratch}
    assert not orphan.exists() and not scratch.exists() and not checkpoint.exists()
    assert final.read_bytes() == b"good" and live.exists() and partial.exists()
    assert all(p.read_bytes() == b"mine" for p in lookalikes)
    assert not (atomic.journal_dir() / str(dead)).exists()  # nothing left to sweep

    ok(runner.invoke(app, ["gc", "--partial"]))
    assert not partial.exists() and live.exists()
    live.unlink()


def test_gc_drops_state_entries_of_vanished_files() -> None:
    folder = paths.models_dir() / "m"
    folder.mkdir(parents=True)
    (folder / "a.gguf").write_bytes(b"a")
    (folder / "b.gguf").write_bytes(b"b")
    state.record(folder / "a.gguf", step="quantize")
    state.record(folder / "b.gguf", step="quantize")
    (folder / "b.gguf").unlink()
    result = ok(runner.invoke(app, ["gc"]))
    assert "dropped the state entry of" in result.stderr  # type: ignore[attr-defined]
    assert set(state.read_state(folder)) == {"a.gguf"}


def test_a_new_write_sweeps_the_orphans_of_its_output(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    dead = killed_writer(
        f"atomic.temp_path(Path({str(out)!r})).write_bytes(b'half')\n"
        f"atomic.temp_path(Path({str(tmp_path / 'y.gguf')!r})).write_bytes(b'other')"
    )
    stale, other = tmp_path / f".x.gguf.tmp-{dead}", tmp_path / f".y.gguf.tmp-{dead}"
    lookalike = tmp_path / f".x.gguf.tmp-{dead_pid()}"  # not listed by any llama3zh process
    lookalike.write_bytes(b"mine")
    assert stale.exists() and other.exists()
    assert atomic.sweep(out) == 4
    assert not stale.exists() and other.exists() and lookalike.read_bytes() == b"mine"
