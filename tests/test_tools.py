"""llama.cpp tools compiled against llama_cpp's libraries: source selection, cache, build, run."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from llama3zh_local.errors import BackendError, UsageError
from llama3zh_local.llamacpp import installed, sdist, serverui, tools

from . import models, serveproc

# Read at import, before the autouse fixture points LLAMA3ZH_HOME at tmp_path: the slow tests
# share one build per llama-cpp-python version (about a minute) between sessions.
TOOLS_CACHE = models.cache_root() / "tools"


# -- pure logic ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "key"),
    [
        ("0.3.36", "0.3.36"),
        ("0.3.36+cu124", "0.3.36+cu124"),
        (" 0.3.36 ", "0.3.36"),
        ("1.0/../x", "1.0_.._x"),
        ("1.0 beta", "1.0_beta"),
    ],
)
def test_cache_key(version: str, key: str) -> None:
    assert installed.cache_key(version) == key


@pytest.mark.parametrize("version", ["", "..", "."])
def test_cache_key_rejects_non_versions(version: str) -> None:
    with pytest.raises(ValueError):
        installed.cache_key(version)


@pytest.mark.parametrize(
    ("version", "req"),
    [("0.3.36", "llama-cpp-python==0.3.36"), ("0.3.36+cu124", "llama-cpp-python==0.3.36")],
)
def test_sdist_requirement_drops_local_label(version: str, req: str) -> None:
    assert sdist.sdist_requirement(version) == req


CHANGELOG = """# Changelog

## [Unreleased]

## [0.3.36]

- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098

## [0.3.35]

- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f
- feat: update llama.cpp to ggml-org/llama.cpp@adb55e514

## [0.3.34]

- fix: something else
"""


@pytest.mark.parametrize(
    ("version", "commit"),
    [
        ("0.3.36", "0c1e57098"),
        ("0.3.36+cu124", "0c1e57098"),
        ("0.3.35", "4df29be4f"),  # the first (latest) update of the release
        ("0.3.34", None),
        ("0.3.3", None),  # no prefix match on 0.3.34/0.3.35/0.3.36
        ("9.9.9", None),
    ],
)
def test_commit_from_changelog(version: str, commit: str | None) -> None:
    assert sdist.commit_from_changelog(CHANGELOG, version) == commit


@pytest.mark.parametrize(
    ("rel", "wanted"),
    [
        ("include/llama.h", True),
        ("include/llama-cpp.h", True),
        ("ggml/include/ggml.h", True),
        ("ggml/src/ggml.c", False),
        ("common/arg.cpp", True),
        ("common/jinja/value.cpp", True),
        ("common/build-info.cpp.in", True),
        ("vendor/nlohmann/json.hpp", True),
        ("vendor/cpp-httplib/httplib.cpp", True),
        ("vendor/miniaudio/miniaudio.h", False),
        ("tools/llama-bench/llama-bench.cpp", True),
        ("tools/server/server.cpp", False),
        ("tools/llama-bench-other/x.cpp", False),
        ("src/llama-ext.h", True),
        ("src/llama.cpp", False),
        ("src/models/llama.h", False),
        ("LICENSE", True),
        ("CMakeLists.txt", False),
    ],
)
def test_wanted_source(rel: str, wanted: bool) -> None:
    assert tools.wanted_source(rel, ["llama-bench", "imatrix"]) is wanted


@pytest.mark.parametrize(
    ("rel", "wanted"),
    [
        ("tools/server/server.cpp", True),
        ("tools/server/tests/unit/test_basic.py", True),
        ("tools/mtmd/mtmd.h", True),
        ("tools/mtmd/mtmd-helper.h", True),
        ("tools/mtmd/mtmd.cpp", False),  # libmtmd comes from llama-cpp-python
        ("tools/mtmd/test-3.mp4", False),
        ("tools/mtmd/models/models.h", False),
        ("tools/ui/ui.h.in", True),
        ("tools/ui/ui.cpp.in", True),
        ("tools/ui/dist/index.html", True),
        ("tools/ui/src/app.html", False),
        ("tools/ui/package-lock.json", False),
    ],
)
def test_wanted_source_for_the_server(rel: str, wanted: bool) -> None:
    assert tools.wanted_source(rel, ["server"], ["mtmd"]) is wanted


def _fake_tree(root: Path, files: list[str]) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("// " + rel + "\n")
    return root


def test_common_sources_minimal_and_all(tmp_path: Path) -> None:
    src = _fake_tree(
        tmp_path,
        ["common/arg.cpp", "common/chat.cpp", "common/jinja/lexer.cpp", "common/parsers/a.cpp"],
    )
    bench = tools.TOOLS["llama-bench"]
    minimal = tools.common_sources(src, bench)
    assert minimal == [f"common/{n}.cpp" for n in bench.common or ()] + [tools.HTTPLIB]
    everything = [
        "common/arg.cpp",
        "common/chat.cpp",
        "common/jinja/lexer.cpp",
        "common/parsers/a.cpp",
        tools.HTTPLIB,
    ]
    assert tools.common_sources(src, bench, everything=True) == everything
    assert tools.common_sources(src, tools.TOOLS["llama-perplexity"]) == everything
    no_http = tools.ToolSpec("x", "x", ("x.cpp",), ("log",), httplib=False)
    assert tools.common_sources(src, no_http) == ["common/log.cpp"]


def test_tool_specs_name_their_sources() -> None:
    for name, spec in tools.TOOLS.items():
        assert name == spec.name and name.startswith("llama-")
        assert spec.sources and all(s.endswith(".cpp") for s in spec.sources)
        assert spec.common is None or all("/" not in c and "." not in c for c in spec.common)


def test_compile_command_flags(tmp_path: Path) -> None:
    tool = tools.compile_command("c++", tmp_path, "tools/llama-bench/main.cpp", tmp_path / "m.o")
    common = tools.compile_command("c++", tmp_path, "common/arg.cpp", tmp_path / "a.o")
    http = tools.compile_command("c++", tmp_path, tools.HTTPLIB, tmp_path / "h.o")
    assert tools.OPT_TOOL in tool and tools.OPT_COMMON not in tool
    assert tools.OPT_COMMON in common and tools.OPT_TOOL not in common
    assert "-std=c++17" in tool and "-DNDEBUG" in tool
    for inc in ("include", "ggml/include", "common", "vendor"):
        assert f"-I{tmp_path / inc}" in common
    assert any(a.startswith("-DCPPHTTPLIB_") for a in http)
    assert not any(a.startswith("-DCPPHTTPLIB_") for a in common)
    assert common[-4:] == ["-c", str(tmp_path / "common/arg.cpp"), "-o", str(tmp_path / "a.o")]
    absolute = tools.compile_command("c++", tmp_path, "/elsewhere/b.cpp", tmp_path / "b.o")
    assert "/elsewhere/b.cpp" in absolute


def test_link_command(tmp_path: Path) -> None:
    cmd = tools.link_command("c++", [tmp_path / "a.o"], tmp_path / "out", tmp_path / "lib")
    assert cmd[:4] == ["c++", str(tmp_path / "a.o"), "-o", str(tmp_path / "out")]
    assert f"-Wl,-rpath,{tmp_path / 'lib'}" in cmd
    assert {"-lllama", "-lggml", "-lggml-base"} <= set(cmd)
    assert ("-Wl,-dead_strip" if sys.platform == "darwin" else "-Wl,--gc-sections") in cmd
    assert not any(a == "-lmtmd" for a in cmd)
    server = tools.link_command("c++", [], tmp_path / "out", tmp_path / "lib", ("mtmd",))
    # before libllama: libmtmd needs it, and a linker resolves left to right
    assert server.index("-lmtmd") < server.index("-lllama")


def test_only_the_server_spec_has_extras() -> None:
    """The other tools' specs (so their object files and cache keys) are what they were."""
    for name, spec in tools.TOOLS.items():
        if name != "llama-server":
            assert (spec.headers_from, spec.libs, spec.ui) == ((), (), False), name
    server = tools.TOOLS["llama-server"]
    assert server.folder == "server" and server.common is tools.COMMON_ALL
    assert (server.headers_from, server.libs, server.ui) == (("mtmd",), ("mtmd",), True)
    assert server.no_repack == ("--no-repack",)  # common/arg.cpp's -nr, --no-repack


UI_H_IN = """#pragma once
#include <array>
#cmakedefine LLAMA_UI_HAS_ASSETS 1
const std::array<llama_ui_asset, @N_ASSETS@> & llama_ui_get_assets();
"""
UI_CPP_IN = """#include "ui.h"
@ASSET_ARRAYS@
static const std::array<llama_ui_asset, @N_ASSETS@> g_assets = {{
@ASSET_TABLE@
}};
bool llama_ui_use_gzip() { return @USE_GZIP@; }
"""


def test_ui_sources_without_assets(tmp_path: Path) -> None:
    _fake_tree(tmp_path, [])
    (tmp_path / "tools/ui").mkdir(parents=True)
    (tmp_path / "tools/ui/ui.h.in").write_text(UI_H_IN)
    (tmp_path / "tools/ui/ui.cpp.in").write_text(UI_CPP_IN)
    header, cpp = serverui.ui_sources(tmp_path)
    assert "/* #undef LLAMA_UI_HAS_ASSETS */" in header and "#define" not in header
    assert "std::array<llama_ui_asset, 0>" in header and "std::array<llama_ui_asset, 0>" in cpp
    assert "return false;" in cpp and "@" not in header + cpp and "asset_0" not in cpp


def test_ui_sources_with_assets(tmp_path: Path) -> None:
    (tmp_path / "tools/ui/dist/sub").mkdir(parents=True)
    (tmp_path / "tools/ui/ui.h.in").write_text(UI_H_IN)
    (tmp_path / "tools/ui/ui.cpp.in").write_text(UI_CPP_IN)
    (tmp_path / "tools/ui/dist/index.html").write_bytes(b"<p>")
    (tmp_path / "tools/ui/dist/sub/a.woff2").write_bytes(b"\x00\xff")
    header, cpp = serverui.ui_sources(tmp_path)
    assert "#define LLAMA_UI_HAS_ASSETS 1" in header and "llama_ui_asset, 2>" in header
    assert "asset_0[] = {0x3c,0x70,0x3e,};" in cpp  # sorted: index.html, sub/a.woff2
    assert "asset_1[] = {0x00,0xff,};" in cpp
    etag = hashlib.sha256(b"<p>").hexdigest()  # quoted, as cmake's file(SHA256) in the table
    assert f'{{ "index.html", asset_0, sizeof(asset_0), "\\"{etag}\\"",' in cpp
    assert '"text/html; charset=utf-8" },' in cpp and '"font/woff2" },' in cpp


@pytest.mark.parametrize(
    ("output", "undefined"),
    [
        ("a.o: in function `f':\nx.cpp:(.text+0x1): undefined reference to `g()'", True),
        ('Undefined symbols for architecture arm64:\n  "_g", referenced from:', True),
        ("ld.lld: error: undefined symbol: g()", True),
        ("ld: cannot find -lllama", False),
    ],
)
def test_undefined_symbols(output: str, undefined: bool) -> None:
    assert tools._undefined_symbols(output) is undefined


# -- environment --------------------------------------------------------------------------------


def test_tools_root_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(installed.TOOLS_DIR_ENV, raising=False)
    assert installed.tools_root() == Path(os.environ["LLAMA3ZH_HOME"]) / "tools"
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(tmp_path / "t"))
    assert installed.tools_root() == tmp_path / "t"
    exe = tools.tool_binary("llama-bench", "0.3.36")
    assert exe == tmp_path / "t" / "0.3.36" / installed.library_key() / "llama-bench"
    assert exe.parent.name.startswith("libs-")


def test_lib_dir_honours_llama_cpp_lib_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    default = installed.lib_dir()
    assert default.name == "lib" and default.parent.name == "llama_cpp"
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    assert installed.lib_dir() == tmp_path
    var = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    env = installed.tool_env({var: "/x"})
    assert env[var] == f"{tmp_path}{os.pathsep}/x"
    assert installed.tool_env({})[var] == str(tmp_path)


def test_no_compiler_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    if sys.platform == "win32":
        pytest.skip("builds are not supported on Windows")
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(BackendError) as err:
        tools.find_compiler()
    assert "no C++ compiler" in str(err.value)
    assert err.value.hint and ("g++" in err.value.hint or "xcode-select" in err.value.hint)


def test_unknown_tool() -> None:
    with pytest.raises(UsageError) as err:
        tools.ensure_tool("llama-nope")
    assert err.value.hint and "llama-bench" in err.value.hint


# -- the source, from a synthetic sdist ---------------------------------------------------------


def _sdist(path: Path, version: str = "0.3.36") -> Path:
    top = f"llama_cpp_python-{version}"
    members = {
        f"{top}/CHANGELOG.md": CHANGELOG,
        f"{top}/llama_cpp/__init__.py": "",
        f"{top}/vendor/llama.cpp/LICENSE": "MIT",
        f"{top}/vendor/llama.cpp/include/llama.h": "",
        f"{top}/vendor/llama.cpp/ggml/include/ggml.h": "",
        f"{top}/vendor/llama.cpp/ggml/src/ggml.c": "",
        f"{top}/vendor/llama.cpp/common/arg.cpp": "",
        f"{top}/vendor/llama.cpp/common/build-info.cpp.in": "",
        f"{top}/vendor/llama.cpp/src/llama-ext.h": "",
        f"{top}/vendor/llama.cpp/src/llama.cpp": "",
        f"{top}/vendor/llama.cpp/tools/server/server.cpp": "",
        f"{top}/vendor/llama.cpp/tools/mtmd/mtmd.h": "",
        f"{top}/vendor/llama.cpp/tools/mtmd/mtmd.cpp": "",
        f"{top}/vendor/llama.cpp/tools/ui/ui.h.in": "",
        f"{top}/vendor/llama.cpp/tools/ui/package.json": "",
        f"{top}/vendor/llama.cpp/../evil.cpp": "",
    }
    for spec in tools.TOOLS.values():
        for s in spec.sources:
            members[f"{top}/vendor/llama.cpp/tools/{spec.folder}/{s}"] = ""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_ensure_source_from_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(sdist.SOURCE_ENV, str(_sdist(tmp_path / "s.tar.gz")))
    messages: list[str] = []
    src = tools.ensure_source(version="0.3.36", progress=messages.append)
    assert src == tmp_path / "cache" / "0.3.36" / "llama.cpp"
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    expected = {
        "LICENSE",
        "include/llama.h",
        "ggml/include/ggml.h",
        "common/arg.cpp",
        "common/build-info.cpp.in",
        "src/llama-ext.h",
        "source.json",
        "tools/mtmd/mtmd.h",
        "tools/ui/ui.h.in",
    } | {f"tools/{s.folder}/{f}" for s in tools.TOOLS.values() for f in s.sources}
    assert set(files) == expected
    assert not (tmp_path / "cache" / "0.3.36" / "evil.cpp").exists()
    info = json.loads((src / "source.json").read_text())
    assert info["llama_cpp_commit"] == "0c1e57098" and info["llama_cpp_python"] == "0.3.36"
    assert messages and str(tmp_path / "s.tar.gz") in messages[0]
    # no temporary folders left, and the second call does nothing
    assert [p.name for p in (tmp_path / "cache" / "0.3.36").iterdir()] == ["llama.cpp"]
    monkeypatch.setenv(sdist.SOURCE_ENV, str(tmp_path / "gone.tar.gz"))
    assert tools.ensure_source(version="0.3.36") == src


def test_ensure_source_rejects_a_tree_without_llama_cpp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(sdist.SOURCE_ENV, str(tmp_path / "empty"))
    with pytest.raises(BackendError) as err:
        tools.ensure_source(version="0.3.36")
    assert "has no llama.cpp" in str(err.value) and sdist.SOURCE_ENV in (err.value.hint or "")
    assert not (tmp_path / "cache" / "0.3.36" / "llama.cpp").exists()


# -- running ------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script stands in for a tool")
def test_run_tool_keeps_output_for_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "fake-tool"
    script.write_text(
        "#!/bin/sh\necho \"args: $*\"\necho '第一行' >&2\necho '错误：模型文件损坏' >&2\nexit 3\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(tools, "ensure_tool", lambda name, progress=None: script)
    monkeypatch.setenv("LLAMA3ZH_CPU_REPACK", "on")  # no --repack 0 added (tests/test_repack.py)
    with pytest.raises(BackendError) as err:
        tools.run_tool(["llama-bench", "-m", "模型.gguf"])
    assert "exit code 3" in str(err.value) and "错误：模型文件损坏" in str(err.value)
    done = tools.run_tool(["llama-bench", "-m", "模型.gguf"], check=False)
    assert done.returncode == 3 and done.stdout.strip() == "args: -m 模型.gguf"


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script stands in for a tool")
def test_run_tool_streams_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "progress-tool"
    # progress without newlines, as llama-imatrix prints it, and a character split across writes
    script.write_text(
        "#!/bin/sh\nprintf '[1]5.25,'\nsleep 0.2\nprintf '[2]4.75,\\344\\270'\nsleep 0.2\n"
        "printf '\\255\\n'\necho '加载' >&2\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(tools, "ensure_tool", lambda name, progress=None: script)
    seen: list[tuple[str, str]] = []

    def on_output(stream: str, text: str) -> None:
        seen.append((stream, text))
        if len(seen) == 1:
            raise RuntimeError("a broken progress callback does not stop the tool")

    done = tools.run_tool(["llama-imatrix"], on_output=on_output)
    assert done.stdout == "[1]5.25,[2]4.75,中\n" and done.stderr == "加载\n"
    assert "".join(t for s, t in seen if s == "stdout") == done.stdout
    assert "".join(t for s, t in seen if s == "stderr") == done.stderr
    assert seen[0] == ("stdout", "[1]5.25,")  # as it came, not at the end


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script stands in for a tool")
@pytest.mark.parametrize("stream", [False, True])
def test_run_tool_timeout(stream: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "slow-tool"
    script.write_text("#!/bin/sh\necho '加载模型' >&2\nexec sleep 30\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(tools, "ensure_tool", lambda name, progress=None: script)
    on_output = (lambda _s, _t: None) if stream else None
    with pytest.raises(BackendError) as err:
        tools.run_tool(["llama-bench"], timeout=1, on_output=on_output)
    assert "did not finish within 1 s" in str(err.value)
    if stream:  # what it printed before it was killed is in the message
        assert "加载模型" in str(err.value)


# -- real builds --------------------------------------------------------------------------------


@pytest.fixture
def tools_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The persistent tool cache (the first use downloads the sdist and compiles, ~1 minute)."""
    monkeypatch.setenv(installed.TOOLS_DIR_ENV, str(TOOLS_CACHE))
    return TOOLS_CACHE


@pytest.mark.slow
def test_specs_match_llama_cpp_cmake(tools_cache: Path) -> None:
    """ToolSpec, the common sources and cpp-httplib's defines mirror llama.cpp's CMake files."""
    src = tools.ensure_source()
    for spec in tools.TOOLS.values():
        cmake = (src / "tools" / spec.folder / "CMakeLists.txt").read_text()
        assert set(re.findall(r"[\w.-]+\.cpp", cmake)) == set(spec.sources), spec.name
        assert f"set(TARGET {spec.name})" in cmake
    listed = re.findall(r"[\w/.${}-]+\.cpp", (src / "common" / "CMakeLists.txt").read_text())
    parsers = (src / "common" / "parsers" / "sources.cmake").read_text()
    listed += ["parsers/" + Path(p).name for p in re.findall(r"[\w/.${}-]+\.cpp", parsers)]
    everything = tools.common_sources(src, tools.TOOLS["llama-perplexity"])
    listed = [c for c in listed if "$" not in c and c != "build-info.cpp"]  # generated: ours
    assert {f"common/{c}" for c in listed} == set(everything) - {tools.HTTPLIB}
    httplib_cmake = (src / "vendor" / "cpp-httplib" / "CMakeLists.txt").read_text()
    for define in tools.HTTPLIB_DEFINES:
        assert define in httplib_cmake


@pytest.mark.slow
def test_server_spec_matches_llama_cpp_cmake(tools_cache: Path) -> None:
    """llama-server's extras mirror tools/server/CMakeLists.txt: its three targets' sources (in
    the generic test above), the ../mtmd include and mtmd link, the llama-ui library; and the
    UI templates have no placeholder that ui_sources leaves unset."""
    src = tools.ensure_source()
    spec = tools.TOOLS["llama-server"]
    cmake = (src / "tools" / "server" / "CMakeLists.txt").read_text()
    for target in ("server-context", "llama-server-impl", "llama-server"):
        assert f"set(TARGET {target})" in cmake
    includes = re.findall(r"target_include_directories\([^)]*\)", cmake)
    assert {f"../{d}" for d in spec.headers_from} <= {
        w for inc in includes for w in inc.split() if w.startswith("../")
    }
    links = " ".join(re.findall(r"target_link_libraries\([^)]*\)", cmake)).split()
    assert set(spec.libs) | {"llama-common", "cpp-httplib", "llama-ui"} <= set(links)
    assert spec.ui and "llama-ui" in links
    for d in spec.headers_from:  # each header the server includes from there was copied
        wanted = set(re.findall(r'#include "([\w.-]+\.h)"', "".join(
            (src / "tools" / "server" / s).read_text() for s in spec.sources
        )))  # fmt: skip
        present = {p.name for p in (src / "tools" / d).glob("*.h")}
        assert wanted & {"mtmd.h", "mtmd-helper.h"} <= present
    header, cpp = serverui.ui_sources(src)
    assert not re.search(r"@\w+@|#cmakedefine", header + cpp)
    assert "llama_ui_find_asset" in cpp and "llama_ui_get_assets" in header


@pytest.mark.slow
def test_llama_server_builds_and_answers(tools_cache: Path, smollm2_gguf: Path) -> None:
    exe = tools.ensure_tool("llama-server")
    record = json.loads(exe.with_name(exe.name + ".json").read_text())
    assert "tools/server/server-context.cpp" in record["sources"]
    port = serveproc.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(exe), "-m", str(smollm2_gguf), "--port", str(port), "-t", "2", "-c", "1024",
           *tools.repack_args("llama-server")]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=installed.tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            pytest.fail("llama-server did not become healthy within 120 s")
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        done = httpx.post(url + "/v1/chat/completions", json=body, timeout=300).json()
        assert done["usage"]["completion_tokens"] >= 1
        assert done["timings"]["predicted_per_second"] > 0  # what bench/serve_speed.py reads
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_llama_bench_builds_and_runs(tools_cache: Path) -> None:
    exe = tools.ensure_tool("llama-bench")
    assert exe.is_file() and exe.parent.parent.parent == tools_cache
    record = json.loads(exe.with_name(exe.name + ".json").read_text())
    # the ToolSpec's short list of common sources still links (no fallback to all of common)
    assert record["all_of_common"] is False
    assert record["llama_cpp_python"] == installed.llama_cpp_version()
    done = tools.run_tool(["llama-bench", "--help"])
    assert "usage:" in done.stdout and "--n-prompt" in done.stdout
    assert tools.ensure_tool("llama-bench") == exe  # cached


@pytest.mark.slow
def test_llama_bench_measures_a_real_model(tools_cache: Path, smollm2_gguf: Path) -> None:
    done = tools.run_tool(
        [
            "llama-bench",
            "-m",
            str(smollm2_gguf),
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "1",
            "-t",
            "1",
            "-o",
            "json",
        ],  # fmt: skip
        timeout=300,
    )
    records = json.loads(done.stdout)
    assert [(r["n_prompt"], r["n_gen"]) for r in records] == [(16, 0), (0, 4)]
    assert all(r["avg_ts"] > 0 for r in records)
    assert records[0]["build_commit"] != "unknown"  # from the sdist's CHANGELOG
