"""The CLI shell: version, help, startup imports, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llama3zh_local import __version__
from llama3zh_local.cli import app

runner = CliRunner()


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a real process (real stdin/stdout, real exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "llama3zh_local", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("Error:", "Hint:"))]
    assert err_lines[0].startswith("Error:") and needle in err_lines[0], proc.stderr
    assert len([ln for ln in err_lines if ln.startswith("Error:")]) == 1
    assert any(ln.startswith("Hint:") for ln in err_lines), proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"llama3zh {__version__}"


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("models", "chat", "doctor"):
        assert cmd in result.stdout


def test_help_does_not_import_heavy_libraries() -> None:
    # `llama3zh --help` must start fast: the heavy clients are imported only when used.
    code = (
        "import sys\n"
        "from llama3zh_local.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "names = ('llama_cpp', 'huggingface_hub', 'modelscope', 'gguf', 'numpy', 'ollama')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_models_json() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["alias"] for r in rows] == ["base", "instruct", "instruct-v2", "instruct-v3"]
    v3 = rows[-1]
    assert v3["default"] and v3["hf"] == "hfl/llama-3-chinese-8b-instruct-v3"
    assert v3["modelscope"] == "ChineseAlpacaGroup/llama-3-chinese-8b-instruct-v3"
    assert v3["variants"] == ["full", "gguf"]


@pytest.mark.usefixtures("fresh_consoles")
def test_models_table_fits_80_columns() -> None:
    from llama3zh_local.catalog import MODELS, Variant
    from llama3zh_local.hub import store

    # a local GGUF, so the "local" column is as wide as it gets
    folder = store.repo_folder(MODELS[-1].repo_id(Variant.GGUF))
    folder.mkdir(parents=True)
    (folder / "ggml-model-q4_k.gguf").write_bytes(b"GGUF")
    result = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    header = next(line for line in lines if line.startswith("alias"))
    assert header.split() == ["alias", "repo", "variants", "chat", "local"]
    for m in MODELS:  # each row on one line, the repo name whole
        row = next(line for line in lines if line.split()[0] == m.alias)
        assert row.split()[1 + (m.alias == "instruct-v3")] == m.name
        assert (", ".join(v.value for v in m.variants)) in row
    assert "1 GGUF" in next(line for line in lines if line.startswith("instruct-v3 *"))
    text = " ".join(result.stdout.split())
    assert "* the default" in text and "hfl/<repo> on Hugging Face" in text
    assert "ChineseAlpacaGroup/<repo> on ModelScope" in text
    assert "instruct-v2: meta-llama/Meta-Llama-3-8B-Instruct" in text
    assert "ggml-model-<quant>.gguf" in text


def test_doctor_json() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["backend"] in ("CPU", "CUDA", "METAL", "VULKAN")
    assert data["llama_cpp_python"]
    assert any(d["kind"] == "cpu" for d in data["devices"])
    assert data["ram_total_bytes"] > 0


# -- bad input: one line of error + hint, exit != 0, no traceback ---------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    assert_one_line_error(run("chat", str(tmp_path / "nope.gguf"), "-p", "hi"), "no model file")


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model")
    assert_one_line_error(run("chat", str(bad), "-p", "hi"), "is not a GGUF file")


@pytest.mark.slow
def test_truncated_gguf(tmp_path: Path, smollm2_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_gguf.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(40_000_000))  # header complete, tensor data cut short
    proc = run("chat", str(cut), "-p", "hi")
    assert_one_line_error(proc, "truncated")
    tiny = tmp_path / "tiny.gguf"
    with smollm2_gguf.open("rb") as src, tiny.open("wb") as dst:
        dst.write(src.read(100_000))  # inside the vocabulary
    assert_one_line_error(run("chat", str(tiny), "-p", "hi"), "damaged or truncated")


def test_unknown_alias() -> None:
    assert_one_line_error(run("chat", "instruct-v9", "-p", "hi"), "unknown model 'instruct-v9'")


def test_alias_not_pulled() -> None:
    proc = run("chat", "instruct-v3", "-p", "hi")
    assert_one_line_error(proc, "not downloaded yet")
    assert "llama3zh pull instruct-v3" in proc.stderr


@pytest.mark.slow
def test_too_many_gpu_layers(smollm2_gguf: Path) -> None:
    proc = run("chat", str(smollm2_gguf), "-ngl", "99", "-p", "hi")
    assert_one_line_error(proc, "has 30 layers")


def test_bad_gpu_layers_value(tmp_path: Path) -> None:
    assert_one_line_error(run("chat", "x.gguf", "-ngl", "lots", "-p", "hi"), "-ngl 'lots'")


@pytest.mark.slow
def test_empty_stdin(smollm2_gguf: Path) -> None:
    assert_one_line_error(run("chat", str(smollm2_gguf), stdin=""), "no question on stdin")


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = run("chat", str(tmp_path / "nope.gguf"), "-p", "hi", env={"LLAMA3ZH_DEBUG": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ModelNotFoundError" in proc.stderr


def test_imatrix_with_a_file_after_it_says_use_imatrix_file(tmp_path: Path) -> None:
    # llama-quantize's habit: --imatrix FILE (here --imatrix is a flag, the file is --imatrix-file)
    im = tmp_path / "my imatrix.gguf"
    proc = run("quantize", "f16.gguf", "--type", "Q4_K_M", "--imatrix", str(im))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"Error: --imatrix takes no value, but {im} follows it",
        f"Hint: use --imatrix-file '{im}' (llama-quantize's --imatrix FILE); --imatrix alone "
        "computes one",
    ]
    proc = run("run", "instruct-v3", "--imatrix", "my.dat")
    assert_one_line_error(proc, "--imatrix takes no value, but my.dat follows it")
    assert "llama3zh quantize MODEL -q TYPE --imatrix-file my.dat" in proc.stderr
    # any other stray argument keeps click's usage error
    proc = run("quantize", "f16.gguf", "--type", "Q4_K_M", "--imatrix", "--force", "stray")
    assert proc.returncode == 2 and "unexpected extra argument" in proc.stderr
    assert "Error: --imatrix" not in proc.stderr


# -- help text -----------------------------------------------------------------------------------


def _help_prose(name: str, width: int) -> list[list[str]]:
    """The paragraphs of a command's --help description as rendered: lists of lines."""
    # COLUMNS, not TERMINAL_WIDTH: typer reads that once, when it first renders help
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= width for line in lines), name
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    paragraphs: list[list[str]] = [[]]
    for line in lines[start:end]:
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


@pytest.mark.parametrize("width", [60, 80, 120])
def test_help_reads_as_paragraphs_at_any_width(width: int) -> None:
    import inspect

    from llama3zh_local.cli._app import help_text

    for command in app.registered_commands:
        name = command.name
        assert name and command.callback
        doc = inspect.cleandoc(command.callback.__doc__ or "")
        expected = [
            " ".join(p.split()) for p in help_text(doc).split("\n\n") if not p.startswith(" ")
        ]
        rendered = _help_prose(name, width)
        prose = [p for p in rendered if not p[0].startswith("   ")]  # examples are indented
        assert [" ".join(" ".join(p).split()) for p in prose] == expected, name
        for para in prose:
            # a line ends before the margin only where the next word would not have fitted
            for line, after in zip(para[:-1], para[1:], strict=True):
                next_word = after.split()[0]
                assert len(line) + 1 + len(next_word) > width - 1, (name, width, line, after)


@pytest.mark.parametrize("debug", [False, True])
def test_hub_client_logs_reach_the_terminal_only_with_debug(debug: bool) -> None:
    # the clients are imported after the CLI set up logging (as they are: lazily, in a command)
    code = (
        "import logging\n"
        "from llama3zh_local.cli._output import route_logs\n"
        f"route_logs(debug={debug})\n"
        "from huggingface_hub.utils import logging as hf\n"
        "from modelscope_hub.utils import logger as ms\n"
        "hf.get_logger('huggingface_hub.file_download').warning('hf noise')\n"
        "ms.get_logger('legacy_api').warning('ms noise')\n"
        "logging.getLogger('urllib3.connectionpool').warning('urllib3 noise')\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_VERBOSITY", "MODELSCOPE_LOG_LEVEL")
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    if debug:
        for noise in ("hf noise", "ms noise", "urllib3 noise"):
            assert noise in proc.stderr
    else:
        assert proc.stderr == ""
