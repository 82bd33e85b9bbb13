"""Nothing lost (issue 12, items 1-4 and 13; the rules are docs/safety.md).

The tool deletes or replaces only files it wrote itself (recorded) or the one output file the
user named with --force; a folder output with other files is refused and never emptied; an
artifact is reused only when its record says it came from these inputs; inputs and outputs are
never the same file; a FIFO or device is never read; SIGTERM cleans up like Ctrl-C; gc deletes
only temporaries that a llama3zh process listed in its journal.

Every refusal is checked the same way: exit code 1, exactly one ``Error:`` and one ``Hint:``
line, no traceback, nothing "unexpected", nothing on stdout, and every file under the test's
folder (and llama3zh's home) byte-identical before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama3zh_local import paths, pipeline
from llama3zh_local.cli import app
from llama3zh_local.errors import UsageError
from llama3zh_local.files import atomic, state
from llama3zh_local.hub import store

from . import lorafix
from .hub_server import HubServer, online

runner = CliRunner()
V3 = "llama-3-chinese-8b-instruct-v3"


# -- helpers --------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a real process; a hang fails the test (TimeoutExpired)."""
    return subprocess.run(
        [sys.executable, "-m", "llama3zh_local", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def refused(proc: subprocess.CompletedProcess, needle: str) -> str:
    """One ``Error:`` line (containing ``needle``) and one ``Hint:`` line, exit 1, nothing else."""
    err = proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}\n{err}\n{proc.stdout}"
    errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    hints = [ln for ln in err.splitlines() if ln.startswith("Hint:")]
    assert len(errors) == 1 and needle in errors[0], err
    assert len(hints) == 1, err
    assert "Traceback" not in err and "unexpected" not in err.lower(), err
    assert proc.stdout == ""
    return errors[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots``: files by sha256, links by target, folders and nodes by kind."""
    out: dict[str, str] = {}
    journals = atomic.journal_dir()  # the tool's own bookkeeping of its temporary names
    for root in roots:
        if not (root.exists() or root.is_symlink()):
            continue
        for p in [root, *sorted(root.rglob("*"))]:
            if p == journals or journals in p.parents or p in journals.parents:
                continue  # the journal, and the folders made to hold it
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                out[str(p)] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(mode):
                out[str(p)] = "dir"
            elif stat.S_ISREG(mode):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = f"node:{stat.S_IFMT(mode)}"
    return out


def user_folder(root: Path) -> Path:
    """A folder of a user's own files (text, a model, a subfolder)."""
    root.mkdir(parents=True)
    (root / "README.md").write_text("# my notes\n")
    (root / "sub").mkdir()
    (root / "sub" / "data.bin").write_bytes(os.urandom(1000))
    (root / "old-model.gguf").write_bytes(b"GGUF" + os.urandom(100))
    return root


@pytest.fixture(scope="module")
def work(tiny_llama3_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base checkpoint and an attention-only LoRA for it, copied (tests refuse to touch them)."""
    root = tmp_path_factory.mktemp("safety")
    shutil.copytree(tiny_llama3_hf, root / "base")
    lorafix.build_lora(root / "lora", root / "base", targets=lorafix.ATTN, full=(),
                       dtype="float32", tokenizer=False)  # fmt: skip
    return root


@pytest.fixture
def base(work: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(work / "base", tmp_path / "base"))


@pytest.fixture
def lora(work: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(work / "lora", tmp_path / "lora"))


def home() -> Path:
    return paths.home()


# -- 1. folder outputs are never emptied ----------------------------------------------------------

# (name, how to make the -o target under tmp_path, the -o argument, cwd, what the error says)
FOLDER_CASES = ["docs", "models", "base", "lora", "parent", "dot", "dotdot", "hidden", "symlink",
                "file", "own-plus-user-file"]  # fmt: skip


def _folder_case(case: str, tmp: Path, base: Path, lora: Path) -> tuple[str, Path | None, str]:
    """Make the situation; the -o argument, the cwd and the expected error text."""
    if case == "docs":  # the issue's -o docs
        return str(user_folder(tmp / "docs")), None, "did not write"
    if case == "models":  # the issue's -o ~/models: other models' folders in it
        m = user_folder(tmp / "models")
        shutil.copytree(base, m / "Meta-Llama-3-8B")
        return str(m), None, "did not write"
    if case == "base":  # the issue's --base folder itself
        return str(base), None, "is the input"
    if case == "lora":
        return str(lora), None, "is the input"
    if case == "parent":  # holds both inputs
        return str(tmp), None, "holds the input"
    if case == "dot":  # the issue's -o . (was: unexpected ValueError)
        return ".", user_folder(tmp / "cwd"), "did not write"
    if case == "dotdot":
        user_folder(tmp / "up")
        return "..", tmp / "up" / "sub", "did not write"
    if case == "hidden":  # a single hidden file is a file too
        (tmp / "h").mkdir()
        (tmp / "h" / ".keep").write_text("")
        return str(tmp / "h"), None, "did not write"
    if case == "symlink":  # a link to a user's folder
        (tmp / "link").symlink_to(user_folder(tmp / "target"))
        return str(tmp / "link"), None, "did not write"
    if case == "file":
        (tmp / "a-file").write_text("mine")
        return str(tmp / "a-file"), None, "is a file"
    # a folder the tool wrote, where the user has since put a file of their own
    proc = cli("merge-lora", str(lora), "--base", str(base), "--format", "hf", "-o",
               str(tmp / "merged"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (tmp / "merged" / "my-notes.txt").write_text("keep me")
    return str(tmp / "merged"), None, "did not write"


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
@pytest.mark.parametrize("case", FOLDER_CASES)
def test_merge_hf_never_replaces_a_folder_it_did_not_write(
    case: str, force: bool, base: Path, lora: Path, tmp_path: Path
) -> None:
    out, cwd, needle = _folder_case(case, tmp_path, base, lora)
    before = snapshot(tmp_path, home())
    args = ["merge-lora", str(lora), "--base", str(base), "--format", "hf", "-o", out]
    refused(cli(*args, *(["--force"] if force else []), cwd=cwd), needle)
    assert snapshot(tmp_path, home()) == before


def test_merge_hf_force_replaces_only_its_own_files(base: Path, lora: Path, tmp_path: Path):
    out = tmp_path / "merged"
    args = ["merge-lora", str(lora), "--base", str(base), "--format", "hf", "-o", str(out)]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(out)
    entries = state.read_state(out)
    assert {"config.json", "model.safetensors"} <= set(entries)
    assert all(e.step == "merge-lora" and e.matches(out / n) for n, e in entries.items())
    refused(cli(*args), "already exists")
    again = cli(*args, "--force")
    assert again.returncode == 0, again.stderr
    assert set(state.read_state(out)) == set(entries)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # an empty folder holds nothing to lose: written into
    (tmp_path / "empty").mkdir()
    ok = cli("merge-lora", str(lora), "--base", str(base), "--format", "hf", "-o",
             str(tmp_path / "empty"))  # fmt: skip
    assert ok.returncode == 0 and (tmp_path / "empty" / "model.safetensors").is_file()


# -- 1. a folder -o (or the default) never replaces a file llama3zh did not write -----------------


@pytest.mark.parametrize(
    "command",
    [
        "convert",
        "convert-default",
        "merge-gguf",
        "merge-gguf-default",
        "merge-adapter",
        "quantize",
        "quantize-default",
    ],
)
def test_a_derived_name_replaces_only_a_recorded_file(
    command: str, base: Path, lora: Path, tmp_path: Path, tiny_llama3_gguf: Path
) -> None:
    folder = user_folder(tmp_path / "out")
    (tmp_path / "src").mkdir()
    f16 = Path(shutil.copyfile(tiny_llama3_gguf, tmp_path / "src" / "m-f16.gguf"))
    name = {
        "merge-adapter": "ggml-adapter-f32.gguf",
        "quantize": "ggml-model-q8_0.gguf",
        "quantize-default": "ggml-model-q8_0.gguf",
    }.get(command, "ggml-model-f16.gguf")
    args = {
        "quantize": ["quantize", str(f16), "-q", "q8_0", "-o", str(folder)],
        "quantize-default": ["quantize", str(f16), "-q", "q8_0"],
        "convert": ["convert", str(base), "-o", str(folder)],
        "convert-default": ["convert", str(base)],
        "merge-gguf": ["merge-lora", str(lora), "--base", str(base), "-o", str(folder)],
        "merge-gguf-default": ["merge-lora", str(lora), "--base", str(base)],
        "merge-adapter": [
            "merge-lora",
            str(lora),
            "--base",
            str(base),
            "--format",
            "adapter",
            "-o",
            str(folder),
        ],  # fmt: skip
    }[command]
    where = {
        "convert-default": base,
        "merge-gguf-default": lora,
        "quantize-default": f16.parent,
    }.get(command, folder)
    foreign = where / name
    foreign.write_bytes(b"GGUF another model's weights")
    before = snapshot(tmp_path, home())
    refused(cli(*args, "--force"), "did not write")
    refused(cli(*args), "already exists")
    assert snapshot(tmp_path, home()) == before
    # once moved away, the tool writes it, records it, and --force may then replace it
    foreign.unlink()
    made = cli(*args)
    assert made.returncode == 0, made.stderr
    assert foreign.is_file() and state.completed(foreign) is not None
    others = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(str(foreign))
              and state.STATE_NAME not in k}  # fmt: skip
    again = cli(*args, "--force")
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(str(foreign))
            and state.STATE_NAME not in k} == others  # fmt: skip


def test_convert_into_dot(base: Path, tmp_path: Path) -> None:
    """``-o .`` is the current folder: a new file there, no 'unexpected' error."""
    (tmp_path / "cwd").mkdir()
    proc = cli("convert", str(base), "-o", ".", cwd=tmp_path / "cwd")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cwd" / "ggml-model-f16.gguf").is_file()
    assert "unexpected" not in proc.stderr.lower()


# -- 3. inputs are never outputs ------------------------------------------------------------------

INPUT_CASES = [
    "convert-model.safetensors",  # the example
    "convert-config.json",
    "convert-tokenizer.json",
    "convert-hardlink",
    "convert-symlink",
    "merge-base-weights",
    "merge-lora-weights",
    "adapter-lora-config",
    "quantize-source",
    "imatrix-model",
    "imatrix-calibration",
]


def _input_case(case: str, tmp: Path, base: Path, lora: Path, f16: Path) -> list[str]:
    if case.startswith("convert-") and case.endswith((".safetensors", ".json")):
        return ["convert", str(base), "-o", str(base / case.removeprefix("convert-"))]
    if case == "convert-hardlink":
        os.link(base / "model.safetensors", tmp / "weights.bin")
        return ["convert", str(base), "-o", str(tmp / "weights.bin")]
    if case == "convert-symlink":
        (tmp / "cfg").symlink_to(base / "config.json")
        return ["convert", str(base), "-o", str(tmp / "cfg")]
    if case == "merge-base-weights":
        return ["merge-lora", str(lora), "--base", str(base), "-o",
                str(base / "model.safetensors")]  # fmt: skip
    if case == "merge-lora-weights":
        return ["merge-lora", str(lora), "--base", str(base), "-o",
                str(lora / "adapter_model.safetensors")]  # fmt: skip
    if case == "adapter-lora-config":
        return ["merge-lora", str(lora), "--base", str(base), "--format", "adapter", "-o",
                str(lora / "adapter_config.json")]  # fmt: skip
    if case == "quantize-source":
        return ["quantize", str(f16), "-q", "q8_0", "-o", str(f16)]
    if case == "imatrix-model":
        return ["imatrix", str(f16), "--chunks", "1", "--ctx", "64", "-o", str(f16)]
    text = tmp / "calibration.txt"
    text.write_text("你好，世界。Hello world. " * 400, encoding="utf-8")
    return ["imatrix", str(f16), "--calibration", str(text), "--chunks", "1", "--ctx", "64",
            "-o", str(text)]  # fmt: skip


@pytest.mark.parametrize("case", INPUT_CASES)
def test_an_output_is_never_an_input(
    case: str, base: Path, lora: Path, tmp_path: Path, tiny_llama3_gguf: Path
) -> None:
    f16 = Path(shutil.copyfile(tiny_llama3_gguf, tmp_path / "model-f16.gguf"))
    args = _input_case(case, tmp_path, base, lora, f16)
    before = snapshot(tmp_path, home())
    refused(cli(*args, "--force"), "input")
    assert snapshot(tmp_path, home()) == before


# -- 2. demo and run: nothing foreign adopted, replaced or deleted --------------------------------

DEMO_FOREIGN = [
    "ggml-model-f16.gguf",  # the issue's: an unrelated F16 model (would have been adopted)
    "ggml-model-q4_k-im.gguf",
    "Modelfile",
    "eval.md",
    "eval.json",
    "answer.txt",
    "SmolLM2-135M-Instruct/model.safetensors",  # inside the checkpoint folder it exports
    "SmolLM2-135M-Instruct/notes.txt",
]


@pytest.mark.parametrize("name", DEMO_FOREIGN)
def test_demo_refuses_a_folder_with_files_it_did_not_write(
    name: str, tmp_path: Path, tiny_llama3_gguf: Path
) -> None:
    out = user_folder(tmp_path / "demo")
    target = out / name
    target.parent.mkdir(exist_ok=True)
    if name.endswith(".gguf"):
        shutil.copyfile(tiny_llama3_gguf, target)  # a real MOSTLY_F16 GGUF of another model
    else:
        target.write_text("my own text\n")
    before = snapshot(tmp_path, home())
    t = time.monotonic()
    refused(cli("demo", "--out", str(out)), "did not write" if "/" in name else "no record")
    assert time.monotonic() - t < 60  # refused before any work
    assert snapshot(tmp_path, home()) == before
    assert not state.state_file(out).exists()


def test_demo_refuses_a_recorded_f16_that_was_swapped(tmp_path: Path, smollm2_hf: Path,
                                                      tiny_llama3_gguf: Path) -> None:  # fmt: skip
    """A state record of the f16 does not vouch for another file put in its place."""
    out = tmp_path / "demo"
    out.mkdir()
    f16 = out / pipeline.F16
    f16.write_bytes(b"GGUF the demo's f16, say")
    state.record(f16, step="convert", inputs={"model.safetensors": "0" * 64}, folder=out)
    shutil.copyfile(tiny_llama3_gguf, f16)  # swapped for another model's F16
    before = snapshot(tmp_path, home())
    refused(cli("demo", "--out", str(out)), "no record")
    assert snapshot(tmp_path, home()) == before


def test_the_pipeline_refuses_an_f16_that_appears_after_planning(
    tmp_path: Path, base: Path, tiny_llama3_gguf: Path
) -> None:
    """``_convert_run`` itself never adopts an unrecorded MOSTLY_F16 file (it used to)."""
    out = tmp_path / "out"
    out.mkdir()
    plan = pipeline.plan_folder(base, quant="Q8_0", imatrix=False, out_dir=out)
    shutil.copyfile(tiny_llama3_gguf, out / pipeline.F16)
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="no record") as e:
        pipeline.execute(plan)
    assert e.value.hint
    assert snapshot(tmp_path) == before
    assert pipeline.F16 not in state.read_state(out)


RUN_FOREIGN = ["f16", "quant", "f16-symlink", "f16-changed"]


@pytest.mark.parametrize("case", RUN_FOREIGN)
def test_run_never_adopts_a_file_without_a_record(
    case: str, tmp_path: Path, smollm2_gguf: Path, tiny_llama3_gguf: Path
) -> None:
    folder = store.repo_folder(f"hfl/{V3}-gguf")
    folder.mkdir(parents=True)
    f16 = folder / pipeline.F16
    if case == "f16":  # the issue's: an unrelated F16 where run looks for its own
        shutil.copyfile(tiny_llama3_gguf, f16)
    elif case == "quant":
        shutil.copyfile(smollm2_gguf, folder / "ggml-model-q4_k-im.gguf")
    elif case == "f16-symlink":
        f16.symlink_to(shutil.copyfile(tiny_llama3_gguf, tmp_path / "elsewhere.gguf"))
    else:  # recorded by an earlier run, then changed in place
        shutil.copyfile(tiny_llama3_gguf, f16)
        state.record(f16, step="convert")
        data = bytearray(f16.read_bytes())
        data[-1] ^= 0xFF
        f16.write_bytes(bytes(data))
    before = snapshot(tmp_path, home())
    refused(cli("run", "instruct-v3", "-q", "q4_k", "--imatrix", "--chunks", "1", "-y",
                "--source", "hf"), "no record")  # fmt: skip
    assert snapshot(tmp_path, home()) == before


@pytest.mark.slow
def test_demo_in_a_folder_of_other_files_keeps_them(tmp_path: Path) -> None:
    """The issue's `demo --out EXISTING_DIR`: the demo's files are added, the user's kept; a
    rerun reuses every step."""
    out = user_folder(tmp_path / "mine")
    (out / "photos").mkdir()
    (out / "photos" / "a.jpg").write_bytes(os.urandom(5000))
    theirs = snapshot(out)
    first = cli("demo", "--out", str(out), "--chunks", "1", "--threads", "2", timeout=900)
    assert first.returncode == 0, first.stderr
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in theirs} == theirs
    again = cli("demo", "--out", str(out), "--chunks", "1", "--threads", "2", timeout=900)
    assert again.returncode == 0, again.stderr
    assert "every step was complete already" in again.stderr
    assert snapshot(out) == after


# -- 4. gc deletes only what a llama3zh process listed as its temporary ---------------------------


@pytest.fixture
def lookalike_hub(tiny_llama3_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[HubServer, int]]:  # fmt: skip
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    files: dict[str, Path | bytes] = {p.name: p for p in tiny_llama3_hf.iterdir()}
    # names the old patterns took for temporaries of a dead process
    files[f"model-pid{dead.pid}-00001.safetensors"] = tiny_llama3_hf / "model.safetensors"
    files[f".model.safetensors.tmp-{dead.pid}.safetensors"] = b"\0" * 8 + b"{}"
    with HubServer() as server:
        server.add_repo("test/lookalike", files)
        with online(server, tmp_path, monkeypatch):
            yield server, dead.pid


def test_gc_keeps_pulled_files_that_look_temporary(lookalike_hub: tuple[HubServer, int]) -> None:
    _server, dead = lookalike_hub
    pulled = runner.invoke(app, ["pull", "hf:test/lookalike", "--variant", "full"])
    assert pulled.exit_code == 0, pulled.output
    folder = store.repo_folder("test/lookalike")
    names = set(store.read_manifest(folder))
    assert f"model-pid{dead}-00001.safetensors" in names
    roots = [paths.home(), Path(os.environ["HF_HOME"])]
    before = snapshot(*roots)
    for args in (["gc"], ["gc", "--partial"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        assert r.stdout.strip() == "freed 0 B (0 files)", r.output
    assert snapshot(*roots) == before
    entries = store.read_manifest(folder)
    assert all(e.is_verified(Path(e.cache_path)) for e in entries.values())


# -- 13. SIGTERM, FIFOs and devices, unwritable outputs -------------------------------------------


def _terminate_when_writing(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """Start the CLI, send SIGTERM once a temporary file shows up in ``folder``."""
    proc = subprocess.Popen([sys.executable, "-m", "llama3zh_local", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(".tmp-" in p.name for p in folder.iterdir()):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize("command", ["convert", "merge-hf", "quantize"])
def test_sigterm_cleans_up_like_ctrl_c(command: str, smollm2_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    final = {"quantize": "q.gguf", "convert": "m.gguf"}.get(command, "merged")
    if command == "quantize":
        f16 = cli("convert", str(smollm2_hf), "-o", str(tmp_path / "f16.gguf"), timeout=300)
        assert f16.returncode == 0, f16.stderr
        args = ["quantize", str(tmp_path / "f16.gguf"), "-q", "q8_0", "-o", str(out / "q.gguf")]
    elif command == "convert":
        args = ["convert", str(smollm2_hf), "-o", str(out / "m.gguf"), "--outtype", "f32"]
    else:
        lora = lorafix.build_lora(tmp_path / "lora", smollm2_hf, targets=lorafix.ATTN, full=(),
                                  dtype="float32", tokenizer=False)  # fmt: skip
        args = ["merge-lora", str(lora), "--base", str(smollm2_hf), "--format", "hf",
                "--outtype", "f32", "-o", str(out / "merged")]  # fmt: skip
    proc = _terminate_when_writing(args, out)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr  # not 0: it was cut short
    assert "Interrupted." in proc.stderr and "Traceback" not in proc.stderr
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if ".tmp-" in n], left  # no temporary file
    # nothing, or (a signal that landed after the rename) the complete, recorded output
    assert left in ([], [final]), left
    if left:
        where = out / final if command == "merge-hf" else out
        assert state.read_state(where) or command != "merge-hf"


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _socket(path: Path) -> None:
    path.unlink(missing_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def _device(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


NODE_CASES = [
    ("convert", "config.json", _fifo),  # the issue's: a FIFO in place of a model file
    ("convert", "model.safetensors", _fifo),
    ("convert", "tokenizer.json", _fifo),
    ("convert", "model.safetensors", _device),
    ("convert", "tokenizer_config.json", _socket),
    ("merge-lora", "adapter_model.safetensors", _fifo),
    ("merge-lora", "adapter_config.json", _device),
    ("merge-lora", "base:config.json", _fifo),
]


@pytest.mark.parametrize(("command", "name", "make"), NODE_CASES,
                         ids=[f"{c}-{n}-{m.__name__[1:]}" for c, n, m in NODE_CASES])  # fmt: skip
def test_a_fifo_or_device_is_refused_not_read(
    command: str, name: str, make: object, base: Path, lora: Path, tmp_path: Path
) -> None:
    where = lora if command == "merge-lora" and not name.startswith("base:") else base
    make(where / name.removeprefix("base:"))  # type: ignore[operator]
    if command == "convert":
        args = ["convert", str(base), "-o", str(tmp_path / "m.gguf")]
    else:
        args = ["merge-lora", str(lora), "--base", str(base), "-o", str(tmp_path / "m.gguf")]
    before = snapshot(tmp_path, home())
    refused(cli(*args, timeout=60), "not a regular file")
    assert snapshot(tmp_path, home()) == before


@pytest.mark.parametrize("command", ["quantize", "imatrix", "chat", "eval"])
@pytest.mark.parametrize("make", [_fifo, _device], ids=["fifo", "device"])
def test_a_gguf_that_is_a_fifo_or_device_is_refused_not_read(
    command: str, make: object, tmp_path: Path
) -> None:
    model = tmp_path / "model.gguf"
    make(model)  # type: ignore[operator]
    args = {
        "quantize": ["quantize", str(model), "-q", "q8_0", "-o", str(tmp_path / "q.gguf")],
        "imatrix": ["imatrix", str(model), "-o", str(tmp_path / "im.gguf")],
        "chat": ["chat", str(model), "-p", "hi"],
        "eval": ["eval", str(model), "--chunks", "1"],
    }[command]
    before = snapshot(tmp_path, home())
    refused(cli(*args, timeout=60), "not a regular file")
    assert snapshot(tmp_path, home()) == before


@pytest.mark.parametrize("case", ["sysfs", "parent-is-a-file", "fifo", "fifo-force"])
def test_imatrix_checks_its_output_before_computing(
    case: str, tiny_llama3_gguf: Path, tmp_path: Path
) -> None:
    f16 = Path(shutil.copyfile(tiny_llama3_gguf, tmp_path / "m.gguf"))
    force: list[str] = []
    if case == "sysfs":  # read-only for root too
        out, needle = Path("/sys/llama3zh-test.imatrix.gguf"), "cannot write"
    elif case == "parent-is-a-file":
        (tmp_path / "f").write_text("x")
        out, needle = tmp_path / "f" / "im.gguf", "cannot write"
    else:
        out, needle = tmp_path / "im.gguf", "not a regular file"
        os.mkfifo(out)
        force = ["--force"] if case == "fifo-force" else []
    before = snapshot(tmp_path, home())
    t = time.monotonic()
    refused(cli("imatrix", str(f16), "--chunks", "1", "--ctx", "64", "-o", str(out), *force),
            needle)  # fmt: skip
    assert snapshot(tmp_path, home()) == before
    assert time.monotonic() - t < 60


@pytest.mark.parametrize("command", ["quantize", "convert"])
def test_a_device_is_never_replaced_as_output(
    command: str, base: Path, tiny_llama3_gguf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.gguf"
    os.mkfifo(out)
    f16 = Path(shutil.copyfile(tiny_llama3_gguf, tmp_path / "m.gguf"))
    args = (["quantize", str(f16), "-q", "q8_0", "-o", str(out)] if command == "quantize"
            else ["convert", str(base), "-o", str(out)])  # fmt: skip
    before = snapshot(tmp_path, home())
    refused(cli(*args, "--force"), "not a regular file")
    assert snapshot(tmp_path, home()) == before


def test_the_journal_lists_temporaries_before_they_exist(tmp_path: Path) -> None:
    tmp = atomic.temp_path(tmp_path / "x.gguf")
    journal = atomic.journal_dir() / str(os.getpid())
    lines = [json.loads(ln) for ln in journal.read_text(encoding="utf-8").splitlines()]
    assert str(tmp) in lines and not tmp.exists()


@pytest.mark.parametrize("case", ["foreign", "checkpoint-changed", "recorded"])
def test_quantize_of_a_checkpoint_reuses_only_its_own_conversion(
    case: str, base: Path, tmp_path: Path, tiny_llama3_gguf: Path
) -> None:
    """`quantize HF_FOLDER` used any ggml-model-f16.gguf found in the folder."""
    f16 = base / "ggml-model-f16.gguf"
    if case == "foreign":
        shutil.copyfile(tiny_llama3_gguf, f16)
    else:
        made = cli("convert", str(base))
        assert made.returncode == 0, made.stderr
    if case == "checkpoint-changed":  # the weights were replaced after the conversion
        weights = base / "model.safetensors"
        weights.write_bytes(weights.read_bytes())
    args = ["quantize", str(base), "-q", "q8_0", "-o", str(tmp_path / "q8.gguf")]
    if case == "recorded":
        ok = cli(*args)
        assert ok.returncode == 0, ok.stderr
        assert "converted earlier from this checkpoint" in ok.stderr
        return
    before = snapshot(tmp_path, home())
    refused(cli(*args), "no record of converting it")
    assert snapshot(tmp_path, home()) == before


@pytest.mark.slow
def test_sigterm_ends_the_chat_repl(smollm2_gguf: Path) -> None:
    """Ctrl-C at the prompt keeps the session; SIGTERM ends it (exit 143), without a traceback."""
    import pexpect

    child = pexpect.spawn(
        sys.executable,
        ["-m", "llama3zh_local", "chat", str(smollm2_gguf)],
        env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"},
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    child.expect_exact(">>> ")
    child.sendintr()
    child.expect_exact("Use Ctrl-D or /exit to leave.")
    child.expect_exact(">>> ")
    child.kill(signal.SIGTERM)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 128 + signal.SIGTERM, child.before
    assert "Traceback" not in (child.before or "")


@pytest.mark.parametrize("case", ["folder-foreign", "model-itself", "folder-recorded"])
def test_modelfile_output_rules(case: str, tmp_path: Path, tiny_llama3_gguf: Path) -> None:
    """`modelfile -o`: never the GGUF it describes; in an -o folder, never a foreign Modelfile."""
    model = Path(shutil.copyfile(tiny_llama3_gguf, tmp_path / "m.gguf"))
    folder = user_folder(tmp_path / "out")
    if case == "model-itself":
        before = snapshot(tmp_path, home())
        refused(cli("modelfile", str(model), "-o", str(model), "--force"), "is the input")
        assert snapshot(tmp_path, home()) == before
        return
    args = ["modelfile", str(model), "-o", str(folder)]
    if case == "folder-foreign":
        (folder / "Modelfile").write_text("FROM my-own-model\n")
        before = snapshot(tmp_path, home())
        refused(cli(*args, "--force"), "did not write")
        assert snapshot(tmp_path, home()) == before
        return
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert state.completed(folder / "Modelfile") is not None
    refused(cli(*args), "already exists")
    again = cli(*args, "--force")
    assert again.returncode == 0, again.stderr
