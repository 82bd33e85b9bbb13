"""Issue 12, items 10-12: bad input ends in one Error: line and one Hint: line, never in the
catch-all "unexpected … report it"; the REPL survives its own commands."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pexpect
import pytest

from .oneline import assert_error, assert_no_crash_output, snapshot
from .quantfix import write_imatrix, write_llama_gguf
from .test_repl import PROMPT, spawn

CLI = [sys.executable, "-m", "llama3zh_local"]


def cli(
    *args: str | bytes, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a real process; arguments may be bytes (not UTF-8), stdin is bytes."""
    proc = subprocess.run(
        [*CLI, *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def cli_sh(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI started by a shell with ``redirect`` (``<&-``, ``>&-``) applied."""
    cmd = " ".join(shlex.quote(a) for a in [*CLI, *args])
    return subprocess.run(
        ["sh", "-c", f"exec {cmd} {redirect}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("synth") / "ggml-model-f16.gguf")


# -- 10: invalid UTF-8 in -p, --system and on stdin ----------------------------------------------

NOT_UTF8 = [
    b"\xff\xfe",  # the example: bytes no UTF-8 text starts with
    b"caf\xe9",  # Latin-1
    "你好".encode("gbk"),  # a GBK terminal
    "北京".encode()[:-1],  # UTF-8 cut inside a character
    b"ok \xc0\xaf",  # an overlong encoding
]


@pytest.mark.slow
@pytest.mark.parametrize("raw", NOT_UTF8)
def test_prompt_not_utf8(raw: bytes, tiny_llama3_gguf: Path) -> None:
    assert_error(cli("chat", str(tiny_llama3_gguf), "-p", raw), "-p is not valid UTF-8")


@pytest.mark.parametrize("raw", NOT_UTF8[:3])
def test_system_not_utf8(raw: bytes, tmp_path: Path) -> None:
    # checked before the model is even looked for
    proc = cli("chat", str(tmp_path / "m.gguf"), "-p", "hi", "-s", raw)
    assert_error(proc, "--system is not valid UTF-8")


@pytest.mark.slow
@pytest.mark.parametrize("raw", NOT_UTF8)
def test_stdin_not_utf8(raw: bytes, tiny_llama3_gguf: Path) -> None:
    proc = cli("chat", str(tiny_llama3_gguf), stdin=b"question: " + raw + b"\n")
    assert_error(proc, "stdin is not valid UTF-8")


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_has_a_hint(prompt: str, tiny_llama3_gguf: Path) -> None:
    assert_error(cli("chat", str(tiny_llama3_gguf), "-p", prompt), "the question is empty")


# -- 10: closed stdin / stdout, broken pipe -------------------------------------------------------


@pytest.mark.slow
def test_closed_stdin(tiny_llama3_gguf: Path) -> None:
    assert_error(cli_sh("<&-", "chat", str(tiny_llama3_gguf)), "standard input is closed")
    proc = cli_sh("<&-", "chat", str(tiny_llama3_gguf), "--temp", "0", "--stats")
    assert_error(proc, "standard input is closed")


@pytest.mark.parametrize(
    "args",
    [("models", "--json"), ("models",), ("doctor", "--json"), ("chat", "x.gguf", "-p", "hi")],
)
def test_closed_stdout(args: tuple[str, ...]) -> None:
    assert_error(cli_sh(">&-", *args), "standard output is closed")


def _broken_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its stdout a pipe whose reader is gone before anything is written."""
    r, w = os.pipe()
    os.close(r)  # nobody will ever read
    try:
        proc = subprocess.run(
            [*CLI, *args],
            stdout=w,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=300,
            env={**os.environ, "NO_COLOR": "1"},
        )
    finally:
        os.close(w)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr)


@pytest.mark.parametrize("args", [("models", "--json"), ("models",), ("doctor", "--json")])
def test_broken_pipe(args: tuple[str, ...]) -> None:
    err = assert_error(_broken_pipe(*args), "broken pipe")
    assert "permissions" not in err and "disk space" not in err


@pytest.mark.slow
def test_broken_pipe_mid_answer(tiny_llama3_gguf: Path) -> None:
    # the case: `llama3zh chat … | head -c 1`; random weights answer at length
    proc = subprocess.Popen(
        [*CLI, "chat", str(tiny_llama3_gguf), "-p", "写一个很长的故事。", "--ctx", "2048"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1)
    proc.stdout.close()  # what head does once it has its byte
    stderr = proc.stderr.read().decode("utf-8", "replace")
    done = subprocess.CompletedProcess(proc.args, proc.wait(timeout=300), "", stderr)
    assert_error(done, "broken pipe")
    assert "disk space" not in done.stderr and "Exception ignored" not in done.stderr


# -- 10: a truncated or damaged --imatrix-file ----------------------------------------------------


def _imatrix(tmp_path: Path) -> Path:
    n_embd = 256  # the synthetic model's row length
    names = [f"blk.{i}.{t}.weight" for i in range(2) for t in ("attn_q", "attn_k", "attn_v")]
    rng = np.random.default_rng(0)
    entries = {n: rng.random(n_embd).astype(np.float32) for n in names}
    return write_imatrix(tmp_path / "im.gguf", entries, {n: 3.0 for n in names})


@pytest.mark.parametrize("keep", [0.99, 0.9, 0.6, 0.3, 40, 24, 8, 4])
def test_truncated_imatrix_file(keep: float, synth: Path, tmp_path: Path) -> None:
    full = _imatrix(tmp_path).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: int(len(full) * keep) if keep < 1 else int(keep)])
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    proc = cli("quantize", str(synth), "-q", "Q4_K_M", "--imatrix-file", str(cut), "-o", str(out))
    assert_error(proc, str(cut))
    assert snapshot(tmp_path) == before


def test_imatrix_file_with_odd_shapes(synth: Path, tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), arch="")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["x.txt"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 512)
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones((1, 256), np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.ones((1, 0), np.float32))  # no counts at all
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    proc = cli("quantize", str(synth), "-q", "Q4_K_M", "--imatrix-file", str(path), "--dry-run")
    assert_error(proc, str(path))


# -- 10: a malformed --host / OLLAMA_HOST ---------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["localhost:abc", "http://[::1", "localhost:99999", "[::1]:x", "ftp://x:1:2"]
)
def test_malformed_ollama_host(host: str, synth: Path) -> None:
    proc = cli("ollama-create", "llama3-zh", str(synth), "--host", host)
    assert_error(proc, "is not a server address")
    proc = cli("ollama-create", "llama3-zh", str(synth), env={"OLLAMA_HOST": host})
    assert_error(proc, f"OLLAMA_HOST {host!r} is not a server address")


# -- 10 + 11: --load / /load of a file with wrong types -------------------------------------------

BAD_CONVERSATIONS = [
    {"system": ["x"], "messages": []},
    {"system": 5, "messages": []},
    {"system": None, "messages": {"role": "user"}},
    {"system": None, "messages": ["hello"]},
    {"system": None, "messages": [{"role": 1, "content": "hi"}]},
    {"system": None, "messages": [{"role": "user", "content": None}]},
    {"system": None, "messages": [{"role": "user", "content": ["a", "b"]}]},
    {"system": None, "messages": [{"role": "user", "content": {"text": "hi"}}]},
    {"system": None, "messages": [{"role": "system", "content": "hi"}]},
    {"system": None},
    [{"role": "user", "content": "hi"}],
    "just a string",
]


@pytest.mark.parametrize("data", BAD_CONVERSATIONS)
def test_load_wrong_types(data: object, tmp_path: Path) -> None:
    saved = tmp_path / "conv.json"
    saved.write_text(json.dumps(data), encoding="utf-8")
    # checked before the model: a missing model file is not even reached
    proc = cli("chat", str(tmp_path / "none.gguf"), "-p", "hi", "--load", str(saved))
    assert_error(proc, "is not a saved conversation")


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe{}", b"", b"[" * 100_000, b'{"messages": [], "system": "\\ud800"}'],
)
def test_load_not_a_conversation(raw: bytes, tmp_path: Path) -> None:
    saved = tmp_path / "conv.json"
    saved.write_bytes(raw)
    proc = cli("chat", str(tmp_path / "none.gguf"), "-p", "hi", "--load", str(saved))
    assert_error(proc, "is not a saved conversation")


def test_load_missing_file(tmp_path: Path) -> None:
    proc = cli("chat", "x.gguf", "-p", "hi", "--load", str(tmp_path / "nope.json"))
    assert_error(proc, "no conversation file")


# -- 11: the REPL survives its own commands -------------------------------------------------------

def _spawn(model: Path, *args: str) -> pexpect.spawn:
    # bytes that are not UTF-8 come back: replaced, not raised; long lines stay whole
    return spawn(model, *args, codec_errors="replace", timeout=60, dimensions=(40, 400))


@pytest.mark.slow
def test_repl_survives_failing_save_and_bad_load(tiny_llama3_gguf: Path, tmp_path: Path) -> None:
    child = _spawn(tiny_llama3_gguf, "-n", "4", "--seed", "1")
    child.sendline("Hello")
    child.expect_exact(PROMPT)
    (tmp_path / "a-folder").mkdir()
    ro = tmp_path / "ro.json"
    ro.write_text("{}")
    ro.chmod(0o444)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    targets = {
        str(tmp_path / "a-folder"): "it is a folder",
        str(tmp_path / "no" / "such" / "conv.json"): "there is no folder",
        str(tmp_path / "ro.json" / "conv.json"): "there is no folder",  # a file as folder
        str(fifo): "not a regular file",
        "/sys/conv.json": "Permission denied",  # unwritable, even for root
    }
    if os.geteuid() != 0:
        targets[str(ro)] = "read-only"
    for target, why in targets.items():
        child.sendline(f"/save {target}")
        child.expect_exact(f"cannot save to {target}")
        child.expect_exact(why)
        line = child.before + child.after
        assert ".tmp-" not in line  # the path typed, never the temporary file
        child.expect_exact(PROMPT)
    assert snapshot(tmp_path) == before
    for i, data in enumerate(BAD_CONVERSATIONS[:9]):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(json.dumps(data), encoding="utf-8")
        child.sendline(f"/load {bad}")
        child.expect_exact("is not a saved conversation")
        child.expect_exact(PROMPT)
    # the session and its conversation are intact: a message is answered, /save works
    child.sendline("Again")
    child.expect_exact(PROMPT)
    good = tmp_path / "good.json"
    child.sendline(f"/save {good}")
    child.expect_exact("Saved to")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    turns = json.loads(good.read_text(encoding="utf-8"))["messages"]
    assert [t["content"] for t in turns if t["role"] == "user"] == ["Hello", "Again"]


@pytest.mark.slow
def test_repl_survives_invalid_utf8(tiny_llama3_gguf: Path, tmp_path: Path) -> None:
    child = _spawn(tiny_llama3_gguf, "-n", "4", "--seed", "1")
    seen = ""
    for raw in NOT_UTF8:
        # readline drops some bytes itself (an unfinished sequence); what reaches us is refused
        os.write(child.child_fd, b"tell me " + raw + b"\r")
        child.expect_exact(PROMPT)
        seen += child.before
    assert "not valid UTF-8" in seen and "byte 0xff" in seen, seen
    os.write(child.child_fd, b"/system \xff\xfe\r")  # a system prompt too
    child.expect("the system prompt is not valid UTF-8")
    child.expect_exact(PROMPT)
    assert "Traceback" not in seen and "unexpected" not in seen
    child.sendline("Hello")
    child.expect_exact(PROMPT)
    saved = tmp_path / "conv.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("Saved to")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    turns = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    users = [t["content"] for t in turns if t["role"] == "user"]
    assert users[-1] == "Hello" and not any("\ufffd" in u or "\xff" in u for u in users)


def test_no_crash_output_helper_catches_gdb() -> None:
    """The checker itself: a gdb backtrace or an abort exit code fails it."""
    gdb = subprocess.CompletedProcess([], 134, "", "#0  0x00007f in __GI_raise\n")
    with pytest.raises(AssertionError):
        assert_no_crash_output(gdb)


def test_whole_imatrix_file_is_accepted(synth: Path, tmp_path: Path) -> None:
    """The control for the truncation tests: the same file, whole, passes the dry run."""
    im = _imatrix(tmp_path)
    proc = cli("quantize", str(synth), "-q", "Q4_K_M", "--imatrix-file", str(im), "--dry-run")
    assert proc.returncode == 0, proc.stderr
