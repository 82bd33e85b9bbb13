"""Weight repacking per machine (llama3zh_local/llamacpp/repack.py) and tools that follow it.

The decision is tested with a stand-in probe (AMX cannot be switched on or off on a machine);
the real probe child, the engine's and the tools' switches and the crash report run for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llama3zh_local.errors import BackendError, UsageError
from llama3zh_local.llamacpp import installed, native, repack, repack_probe, tools
from llama3zh_local.llamacpp.repack import ProbeResult, RepackDecision

from . import models
from .test_cli import assert_one_line_error, run

CRASHED = ProbeResult(False, -int(signal.SIGSEGV), "SIGSEGV")
WORKS = ProbeResult(True, 0, "")
TOOLS_CACHE = models.cache_root() / "tools"


class Probe:
    """A stand-in for the probe child: counts its calls, returns a fixed result."""

    def __init__(self, result: ProbeResult) -> None:
        self.result, self.calls = result, 0

    def __call__(self) -> ProbeResult:
        self.calls += 1
        return self.result


def _decide(
    tmp_path: Path, probe: Probe, *, amx: bool = True, override: str | None = None, key: str = "k1"
) -> RepackDecision:
    cache = tmp_path / "cpu-repack.json"
    return repack.decide(amx=amx, override=override, key=key, cache=cache, probe=probe)


@pytest.fixture(autouse=True)
def _fresh_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test decides anew (the process keeps one verdict per override value)."""
    monkeypatch.setattr(repack, "_CURRENT", {})


# -- the decision ---------------------------------------------------------------------------------


def test_amx_and_a_crashing_probe_turn_repacking_off(tmp_path: Path) -> None:
    probe = Probe(CRASHED)
    d = _decide(tmp_path, probe)
    assert not d.enabled and d.source == "probe" and d.amx and probe.calls == 1
    assert "SIGSEGV" in d.reason and repack.UPSTREAM_BUG in d.reason
    saved = json.loads((tmp_path / "cpu-repack.json").read_text())
    assert saved["k1"]["enabled"] is False


def test_amx_and_a_working_probe_keep_repacking_on(tmp_path: Path) -> None:
    probe = Probe(WORKS)
    d = _decide(tmp_path, probe)
    assert d.enabled and d.source == "probe" and probe.calls == 1
    assert "works" in d.reason


def test_a_probe_that_hangs_counts_as_broken(tmp_path: Path) -> None:
    d = _decide(tmp_path, Probe(ProbeResult(False, None, "timed out after 120 s")))
    assert not d.enabled and "timed out" in d.reason


def test_no_amx_keeps_repacking_on_without_probing(tmp_path: Path) -> None:
    probe = Probe(CRASHED)
    d = _decide(tmp_path, probe, amx=False)
    assert d.enabled and d.source == "no-amx" and probe.calls == 0
    assert not (tmp_path / "cpu-repack.json").exists()


@pytest.mark.parametrize(
    ("override", "amx", "enabled"),
    [("on", True, True), ("off", True, False), ("off", False, False), ("ON", False, True),
     ("0", True, False), (" 1 ", True, True)],
)  # fmt: skip
def test_the_override_wins(tmp_path: Path, override: str, amx: bool, enabled: bool) -> None:
    probe = Probe(CRASHED if enabled else WORKS)  # the probe would say the opposite
    d = _decide(tmp_path, probe, amx=amx, override=override)
    assert d.enabled is enabled and d.source == "override" and probe.calls == 0
    assert repack.OVERRIDE_ENV in d.reason


@pytest.mark.parametrize("override", [None, "", "auto", "AUTO"])
def test_auto_decides(tmp_path: Path, override: str | None) -> None:
    assert _decide(tmp_path, Probe(CRASHED), override=override).source == "probe"


@pytest.mark.parametrize("bad", ["maybe", "2", "on off"])
def test_a_bad_override_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError) as err:
        _decide(tmp_path, Probe(WORKS), override=bad)
    assert repack.OVERRIDE_ENV in str(err.value) and "auto, on or off" in (err.value.hint or "")


def test_the_verdict_is_cached_per_build_and_cpu(tmp_path: Path) -> None:
    probe = Probe(CRASHED)
    first = _decide(tmp_path, probe)
    again = _decide(tmp_path, probe)
    assert probe.calls == 1 and again.source == "cache"
    assert (again.enabled, again.reason) == (first.enabled, first.reason)
    # another llama.cpp build (or CPU): probed again, and both verdicts kept
    probe.result = WORKS
    other = _decide(tmp_path, probe, key="k2")
    assert probe.calls == 2 and other.enabled
    assert _decide(tmp_path, probe).enabled is False and probe.calls == 2
    assert set(json.loads((tmp_path / "cpu-repack.json").read_text())) == {"k1", "k2"}


def test_a_probe_that_could_not_run_is_not_cached(tmp_path: Path) -> None:
    probe = Probe(ProbeResult(False, 1, "OSError: No space left on device"))
    d = _decide(tmp_path, probe)
    assert not d.enabled and "could not run" in d.reason and "No space" in d.reason
    _decide(tmp_path, probe)
    assert probe.calls == 2 and not (tmp_path / "cpu-repack.json").exists()


def test_a_damaged_cache_is_probed_again(tmp_path: Path) -> None:
    (tmp_path / "cpu-repack.json").write_text('{"k1": {"enabled": "yes"}')
    probe = Probe(WORKS)
    assert _decide(tmp_path, probe).enabled and probe.calls == 1


def test_the_cache_key_names_the_libraries_and_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = repack.cache_key()
    assert key.startswith(installed.library_key()) and "-cpu" in key
    monkeypatch.setattr(repack, "cpu_identity", lambda: "Another CPU | amx_tile")
    assert repack.cache_key() != key


def test_current_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(repack.OVERRIDE_ENV, "off")
    assert repack.enabled() is False and repack.current().source == "override"
    monkeypatch.setenv(repack.OVERRIDE_ENV, "on")
    assert repack.enabled() is True
    monkeypatch.delenv(repack.OVERRIDE_ENV)
    d = repack.current()
    assert d.source in ("no-amx", "probe", "cache")
    assert d.amx is repack.amx_reported()
    if not d.amx:
        assert d.enabled


# -- the probe, for real --------------------------------------------------------------------------


def _scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return scratch


@pytest.mark.slow
def test_the_probe_child_runs_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantizes the tiny model, decodes a batch with repacking on; crashes only where AMX is."""
    scratch = _scratch(tmp_path, monkeypatch)
    result = repack.probe_amx()
    assert result.ok or (result.crashed and repack.amx_reported()), result
    assert list(scratch.iterdir()) == []


def test_a_crashing_probe_is_classified_and_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = _scratch(tmp_path, monkeypatch)
    code = (
        "import os, pathlib, signal, sys\n"
        "pathlib.Path(sys.argv[-1], 'half.gguf').write_bytes(b'GGUF')\n"
        "os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    result = repack.probe_amx(command=[sys.executable, "-c", code])
    assert result == ProbeResult(False, -int(signal.SIGSEGV), "SIGSEGV") and result.crashed
    assert list(scratch.iterdir()) == []
    hang = repack.probe_amx(command=[sys.executable, "-c", "import time; time.sleep(30)"],
                            timeout=1)  # fmt: skip
    assert hang.returncode is None and not hang.ok and not hang.crashed
    broken = repack.probe_amx(command=[sys.executable, "-c", "raise SystemExit('no space')"])
    assert broken.returncode == 1 and "no space" in broken.detail and not broken.crashed


def test_a_probe_that_exits_0_without_its_answer_did_not_work() -> None:
    assert not repack.probe_amx(command=[sys.executable, "-c", "pass"]).ok


# -- the engine and the tools follow the same verdict ---------------------------------------------


@pytest.mark.parametrize("setting", ["on", "off"])
def test_tools_get_no_repack_exactly_when_the_engine_does(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(repack.OVERRIDE_ENV, setting)
    off = setting == "off"
    assert tools.repack_args("llama-imatrix") == (["--no-repack"] if off else [])
    assert tools.repack_args("llama-perplexity") == (["--no-repack"] if off else [])
    assert tools.repack_args("llama-bench") == (["--repack", "0"] if off else [])
    assert tools.repack_args("llama-quantize") == []  # it never multiplies with the weights
    # a caller that sets it (the repack bench compares both) is left alone
    assert tools.repack_args("llama-bench", ["-m", "x", "--repack", "0,1"]) == []
    assert tools.repack_args("llama-perplexity", ["-nr"]) == []


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_engine_loads_with_the_verdict(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Q4_0 model: repacked (CPU_REPACK or AMX buffers) only when the verdict says so."""
    from llama3zh_local.llamacpp import engine, quant

    monkeypatch.setenv(repack.OVERRIDE_ENV, setting)
    f32 = repack_probe.write_probe_model(tmp_path / "f32.gguf")
    q4 = tmp_path / "q4_0.gguf"
    quant.quantize_file(source=f32, output=q4, ftype=native.lib().LLAMA_FTYPE_MOSTLY_Q4_0)
    lines: list[str] = []
    with native.log_listener(lines.append), engine.Model(q4) as model:
        assert model.repack is (setting == "on")
    buffers = [ln for ln in "".join(lines).splitlines() if "model buffer size" in ln]
    repacked = [ln for ln in buffers if "REPACK" in ln or "AMX" in ln]
    assert buffers
    if setting == "off":
        assert repacked == [], buffers
    elif "REPACK = 1" in native.lib().llama_print_system_info().decode():
        assert repacked, buffers


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script stands in for a tool")
@pytest.mark.parametrize("setting", ["on", "off"])
def test_run_tool_passes_the_verdict_on(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path / "tool", 'echo "args: $*"\n')
    monkeypatch.setattr(tools, "ensure_tool", lambda name, progress=None: script)
    monkeypatch.setenv(repack.OVERRIDE_ENV, setting)
    done = tools.run_tool(["llama-perplexity", "-m", "m.gguf"])
    want = "args: -m m.gguf" + (" --no-repack" if setting == "off" else "")
    assert done.stdout.strip() == want


@pytest.mark.slow
def test_the_real_tools_take_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """The options ToolSpec.no_repack mirrors exist in this llama.cpp (parity with its parsers)."""
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(TOOLS_CACHE))
    src = tools.ensure_source()
    arg_cpp = (src / "common" / "arg.cpp").read_text(encoding="utf-8")
    assert '{"-nr", "--no-repack"}' in arg_cpp
    bench = (src / "tools" / "llama-bench" / "llama-bench.cpp").read_text(encoding="utf-8")
    assert 'arg == "--repack"' in bench
    for name, spec in tools.TOOLS.items():
        if spec.folder != "llama-bench" and spec.no_repack:
            assert spec.no_repack == ("--no-repack",), name


# -- a tool killed by a signal --------------------------------------------------------------------


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


CRASHING_TOOL = (
    "echo 'llama_model_loader: loaded meta data' >&2\n"
    "echo 'perplexity: calculating perplexity over 4 chunks' >&2\n"
    'for a in "$@"; do case "$prev" in -o) printf half > "$a";; esac; prev="$a"; done\n'
    "kill -SEGV $$\n"
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("setting", ["on", "off"])
def test_a_tool_killed_by_a_signal_is_one_error(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path / "tool", CRASHING_TOOL)
    monkeypatch.setattr(tools, "ensure_tool", lambda name, progress=None: script)
    monkeypatch.setenv(repack.OVERRIDE_ENV, setting)
    for stream in (None, lambda _s, _t: None):
        with pytest.raises(BackendError) as err:
            tools.run_tool(["llama-perplexity", "-m", "m.gguf"], check=False, on_output=stream)
        message, hint = str(err.value), err.value.hint or ""
        assert message.startswith("llama-perplexity was killed by SIGSEGV (Segmentation fault)")
        assert "calculating perplexity over 4 chunks" in message
        assert ("LLAMA3ZH_CPU_REPACK=off" in hint) is (setting == "on")
        assert "run it by hand" in hint and "\n" not in message + hint


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_tool_killed_by_the_kernel_says_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path / "tool", "kill -KILL $$\n")
    monkeypatch.setattr(tools, "ensure_tool", lambda name, progress=None: script)
    with pytest.raises(BackendError) as err:
        tools.run_tool(["llama-imatrix"])
    assert "SIGKILL" in str(err.value) and "memory" in (err.value.hint or "")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("command", ["eval", "imatrix"])
def test_the_cli_reports_a_crashed_tool_and_keeps_no_output(
    command: str, smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached llama-perplexity / llama-imatrix that dies by SIGSEGV: Error + Hint, exit 1."""
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(tmp_path / "tools"))
    tool = "llama-perplexity" if command == "eval" else "llama-imatrix"
    _script(tools.tool_binary(tool), CRASHING_TOOL)
    work = tmp_path / "work"
    work.mkdir()
    model = work / smollm2_gguf.name
    shutil.copyfile(smollm2_gguf, model)
    before = sorted(p.name for p in work.iterdir())
    args = [command, str(model), "--chunks", "2", "-c", "128"]
    if command == "imatrix":
        args += ["-o", str(work / "model.imatrix.gguf")]
    proc = run(*args)
    assert_one_line_error(proc, f"{tool} was killed by SIGSEGV")
    assert proc.returncode == 1
    assert sorted(p.name for p in work.iterdir()) == before  # no half-written output


# -- the tools cache follows the libraries --------------------------------------------------------


def test_library_key_hashes_folder_and_contents(tmp_path: Path) -> None:
    real = installed.lib_dir()
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(real, a, symlinks=True)
    shutil.copytree(real, b, symlinks=True)
    key_a, key_b = installed.library_key(a), installed.library_key(b)
    assert key_a != key_b != installed.library_key(real)  # same files, another folder
    assert installed.library_key(a) == key_a
    c = tmp_path / "c"
    shutil.copytree(real, c, symlinks=True)
    key_c = installed.library_key(c)
    installed._LIBRARY_KEYS.clear()  # another process: sees the changed file
    lib = next(p for p in sorted(c.iterdir()) if p.is_file() and ".so" in p.name)
    with open(lib, "ab") as f:
        f.write(b"\0")
    assert installed.library_key(c) != key_c


@pytest.mark.slow
def test_tools_are_relinked_for_another_library_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tools built against one copy of the libraries are not reused for another; deleting the
    first copy leaves the second working (the README walk-through's fresh virtualenv)."""
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(TOOLS_CACHE))  # object files are shared
    real = installed.lib_dir()
    first, second = tmp_path / "venv1-lib", tmp_path / "venv2-lib"
    shutil.copytree(real, first, symlinks=True)
    shutil.copytree(real, second, symlinks=True)
    built: list[Path] = []
    try:
        monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(first))
        exe1 = tools.ensure_tool("llama-bench")
        built.append(exe1.parent)
        monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(second))
        exe2 = tools.ensure_tool("llama-bench")
        built.append(exe2.parent)
        assert exe1 != exe2 and exe1.parent.parent == exe2.parent.parent
        rec1 = json.loads(exe1.with_name(exe1.name + ".json").read_text())
        rec2 = json.loads(exe2.with_name(exe2.name + ".json").read_text())
        assert (rec1["lib_dir"], rec2["lib_dir"]) == (str(first), str(second))
        assert rec2["lib_key"] == installed.library_key(second) == exe2.parent.name
        shutil.rmtree(first)
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        done = subprocess.run([str(exe2), "--help"], capture_output=True, text=True, env=env,
                              check=False)  # fmt: skip
        assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
        assert tools.run_tool(["llama-bench", "--help"]).returncode == 0
        # a changed library file in the same folder: a new key, relinked again
        installed._LIBRARY_KEYS.clear()
        with open(second / "libllama.so", "ab") as f:
            f.write(b"\0")
        exe3 = tools.ensure_tool("llama-bench")
        built.append(exe3.parent)
        assert exe3 != exe2
    finally:
        installed._LIBRARY_KEYS.clear()
        for folder in built:  # the cache is shared: drop what points into tmp_path
            shutil.rmtree(folder, ignore_errors=True)


# -- what the user sees ---------------------------------------------------------------------------


def test_doctor_shows_the_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = run("doctor", "--json", env={repack.OVERRIDE_ENV: "off"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)["cpu_repack"]
    assert data["enabled"] is False and data["source"] == "override"
    assert data["reason"] == f"set by {repack.OVERRIDE_ENV}=off"
    auto = run("doctor", env={repack.OVERRIDE_ENV: "auto"})
    line = next(ln for ln in auto.stdout.splitlines() if ln.startswith("weight repacking"))
    verdict = repack.current()
    assert line.split(None, 2)[2] == f"{'on' if verdict.enabled else 'off'}: {verdict.reason}"
    assert_one_line_error(run("doctor", env={repack.OVERRIDE_ENV: "sometimes"}),
                          "LLAMA3ZH_CPU_REPACK='sometimes'")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["on", "off"])
def test_the_readme_question_is_answered_either_way(smollm2_gguf: Path, setting: str) -> None:
    """The README's first chat, with repacking forced on and off (auto is one of the two)."""
    proc = run("chat", str(smollm2_gguf), "-p", "What is the capital of France?", "--temp", "0",
               env={repack.OVERRIDE_ENV: setting})  # fmt: skip
    if setting == "on" and proc.returncode < 0 and repack.amx_reported():
        pytest.skip(f"AMX here crashes with repacking forced on ({proc.returncode})")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


@pytest.mark.parametrize("setting", ["on", "off"])
def test_dry_runs_show_the_option(smollm2_gguf: Path, setting: str, tmp_path: Path) -> None:
    proc = run("imatrix", str(smollm2_gguf), "--dry-run", "-o", str(tmp_path / "m.imatrix"),
               env={repack.OVERRIDE_ENV: setting})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    command = next(ln for ln in proc.stderr.splitlines() if ln.startswith("command:"))
    assert command.endswith("--no-repack") is (setting == "off")
    assert not (tmp_path / "m.imatrix").exists()
