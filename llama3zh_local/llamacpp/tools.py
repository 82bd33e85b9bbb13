"""llama.cpp's command-line tools (llama-bench, ...), compiled against llama_cpp's own libraries.

llama-cpp-python installs libllama and libggml but none of llama.cpp's programs, and a cmake build
of llama.cpp compiles all of ggml again (14 minutes on 2 cores). Here only the tool and the part
of llama.cpp's ``common`` library it links are compiled (about a minute, once per version), from
the llama.cpp source that the installed llama-cpp-python's sdist vendors, and linked to the shared
libraries that llama-cpp-python installed: a tool runs the same llama.cpp, with the same backend
(CPU, CUDA, Metal), as the chat engine.

llama-server (for bench/serve_speed.py) is built the same way: tools/server's sources, all of
common, the web UI's generated asset table (``serverui.py``: empty, the sdist ships no built UI)
and llama-cpp-python's libmtmd for its multimodal part; mtmd's headers are all of tools/mtmd it
copies.

Cache layout, one folder per llama-cpp-python version under ``installed.tools_root()``::

    <version>/llama.cpp/          the needed sources, extracted from the sdist (+ source.json)
    <version>/build/obj-<hash>/   object files, shared by the tools; <hash> is of the flags
    <version>/build/ui/           llama-server's generated ui.h, ui.cpp and its object
    <version>/libs-<key>/llama-bench
                                  the tools, each with <name>.json saying how it was built,
                                  linked to one folder of llama.cpp libraries: <key> hashes that
                                  folder and its files (two virtualenvs of the same version, a
                                  CPU and a CUDA build, get tools of their own; a relink reuses
                                  the object files)

Environment:

* ``LLAMA3ZH_TOOLS_DIR``: the cache root (default ``paths.tools_dir()``, under ``LLAMA3ZH_HOME``).
* ``LLAMA_CPP_LIB_PATH``: where the llama.cpp libraries are, as for ``llama_cpp`` itself.
* ``LLAMA3ZH_LLAMA_CPP_SOURCE``: a llama-cpp-python sdist (``.tar.gz``) or an unpacked sdist or
  llama.cpp tree to use instead of ``pip download`` (machines without PyPI access).
* ``CXX``: the C++ compiler (default: the first of c++, g++, clang++ on ``PATH``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError, UsageError
from ..files import atomic
from . import installed, process, repack, sdist, serverui
from .installed import DIST
from .process import Say

# The parts of llama.cpp's tree a tool build reads.
SOURCE_DIRS = ("include", "ggml/include", "common", "vendor/nlohmann", "vendor/cpp-httplib",
               "vendor/sheredom")  # fmt: skip
SOURCE_FILES = ("LICENSE",)
# llama-server's web UI (tools/ui): the templates of the generated ui.h/ui.cpp, and the built
# assets if an sdist ever ships them (0.3.36's has none: the UI is then an empty table, and
# llama-server answers its API without serving a page).
HTTPLIB = "vendor/cpp-httplib/httplib.cpp"
# cpp-httplib's compile definitions, from vendor/cpp-httplib/CMakeLists.txt.
HTTPLIB_DEFINES = (
    "CPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH=1048576",
    "CPPHTTPLIB_LISTEN_BACKLOG=512",
    "CPPHTTPLIB_REQUEST_URI_MAX_LENGTH=32768",
    "CPPHTTPLIB_TCP_NODELAY=1",
)
CXXFLAGS = ("-std=c++17", "-DNDEBUG", "-pthread", "-ffunction-sections", "-fdata-sections")
# The tools' own loops (imatrix's statistics, perplexity's softmax) get -O2. common (option
# parsing, JSON, downloads) and cpp-httplib run outside any timed or hot path, and -O1 halves
# their compile time (60 s instead of 100 s of CPU for llama-bench); the model itself runs in
# the installed libraries, whatever these flags are.
OPT_TOOL, OPT_COMMON = "-O2", "-O1"
COMMON_ALL = None  # ToolSpec.common: every source of llama.cpp's common library
REPACK_OPTIONS = ("-nr", "--no-repack", "--repack")  # a caller that sets repacking itself


@dataclass(frozen=True)
class ToolSpec:
    """How to build one tool: mirrors llama.cpp's tools/<folder>/CMakeLists.txt (parity test in
    tests/test_tools.py)."""

    name: str
    folder: str  # under tools/
    sources: tuple[str, ...]  # in ``dir``
    # The common/ sources (without .cpp) the tool needs once the linker drops unused functions
    # (--gc-sections), or COMMON_ALL: the objects a link against all of common pulled in. If a
    # newer llama.cpp needs more, the link reports undefined symbols and the build compiles all
    # of common (slower, never wrong).
    common: tuple[str, ...] | None
    httplib: bool = True  # common's arg.cpp downloads models (-hf) through cpp-httplib
    # The options that turn weight repacking off (see repack.py), as the tool spells them:
    # common/arg.cpp's ``-nr, --no-repack``; llama-bench's own parser takes ``--repack 0|1``.
    no_repack: tuple[str, ...] = ("--no-repack",)
    # Other tools/ folders whose headers the tool includes (llama-server: ../mtmd); their
    # libraries come from llama-cpp-python (``libs``), only the headers are copied.
    headers_from: tuple[str, ...] = ()
    # llama-cpp-python's libraries the tool links beyond llama, ggml and ggml-base (libmtmd).
    libs: tuple[str, ...] = ()
    ui: bool = False  # links tools/ui's generated asset table (ui.h, ui.cpp)


SERVER_SOURCES = (
    # server-context
    "server-chat.cpp", "server-task.cpp", "server-queue.cpp", "server-common.cpp",
    "server-context.cpp", "server-stream.cpp", "server-tools.cpp", "server-mcp.cpp",
    "server-schema.cpp",
    # llama-server-impl
    "server.cpp", "server-http.cpp", "server-models.cpp",
    # llama-server
    "main.cpp",
)  # fmt: skip


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "llama-bench",
            "llama-bench",
            ("llama-bench.cpp", "main.cpp"),
            ("arg", "common", "download", "fit", "hf-cache", "json", "log", "speculative"),
            no_repack=("--repack", "0"),
        ),
        # These parse their options with common_params_parse, which reaches chat templates,
        # samplers and presets: nearly all of common.
        ToolSpec("llama-imatrix", "imatrix", ("imatrix.cpp",), COMMON_ALL),
        ToolSpec("llama-perplexity", "perplexity", ("perplexity.cpp", "main.cpp"), COMMON_ALL),
        # Only for checking quant/quantize.py against it (byte-identical output) and for the speed
        # bench: quantization itself goes through llama_model_quantize in-process.
        # It never multiplies with the weights it writes: nothing to repack.
        ToolSpec(
            "llama-quantize", "quantize", ("quantize.cpp", "main.cpp"), COMMON_ALL, no_repack=()
        ),  # fmt: skip
        # For bench/serve_speed.py: tools/server's server-context, llama-server-impl and main
        # (tools/server/CMakeLists.txt), with mtmd from llama-cpp-python's libmtmd (the same
        # library llama_cpp's multimodal chat handlers load) and an empty web UI table.
        ToolSpec(
            "llama-server",
            "server",
            SERVER_SOURCES,
            COMMON_ALL,
            headers_from=("mtmd",),
            libs=("mtmd",),
            ui=True,
        ),
    )
}


# -- where things are -------------------------------------------------------------------------


def wanted_source(rel: str, tool_dirs: Iterable[str], header_dirs: Iterable[str] = ()) -> bool:
    """Whether a path of the llama.cpp tree (``common/arg.cpp``) is needed to build the tools:
    all of ``tools/<tool_dirs>``, the top-level headers of ``tools/<header_dirs>``."""
    dirs = (*SOURCE_DIRS, serverui.UI_DIST, *(f"tools/{d}" for d in tool_dirs))
    files = (*SOURCE_FILES, *serverui.UI_TEMPLATES)
    if rel in files or any(rel.startswith(d + "/") for d in dirs):
        return True
    head, _, name = rel.rpartition("/")
    if name.endswith(".h") and head in {f"tools/{d}" for d in header_dirs}:
        return True
    # fit.cpp includes ../src/llama-ext.h; the rest of src/ is compiled into libllama.
    return rel.startswith("src/") and rel.endswith(".h") and rel.count("/") == 1


def common_sources(src: Path, spec: ToolSpec, *, everything: bool = False) -> list[str]:
    """The common (and vendored) sources to compile for ``spec``, relative to ``src``."""
    if spec.common is COMMON_ALL or everything:
        found = [
            p.relative_to(src).as_posix()
            for pattern in ("common/*.cpp", "common/jinja/*.cpp", "common/parsers/*.cpp")
            for p in src.glob(pattern)
        ]
        out = sorted(found)
    else:
        out = [f"common/{name}.cpp" for name in spec.common]
    if spec.httplib:
        out.append(HTTPLIB)
    return out


def tool_binary(name: str, version: str | None = None, libs: Path | None = None) -> Path:
    """Where ``name`` is (or will be) once built for the installed llama-cpp-python and the
    libraries in ``libs`` (default: the ones llama_cpp loads)."""
    exe = ".exe" if sys.platform == "win32" else ""
    base = installed.tools_root() / installed.cache_key(version or installed.llama_cpp_version())
    return base / installed.library_key(libs) / f"{name}{exe}"


# -- the source -------------------------------------------------------------------------------


def ensure_source(*, version: str | None = None, progress: Say | None = None) -> Path:
    """The llama.cpp tree of the installed llama-cpp-python's sdist, downloaded once (pip).

    Returns the folder that holds ``include/``, ``common/`` and ``tools/``.
    """
    version = version or installed.llama_cpp_version()
    base = installed.tools_root() / installed.cache_key(version)
    dest = base / "llama.cpp"
    tool_dirs = sorted({spec.folder for spec in TOOLS.values()})
    header_dirs = sorted({d for spec in TOOLS.values() for d in spec.headers_from})
    if _source_complete(dest, tool_dirs):
        return dest
    say = progress or process.quiet
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".source-", dir=base) as tmp:
        origin = os.environ.get(sdist.SOURCE_ENV)
        archive = sdist.find_sdist(version, Path(tmp) / "download", progress=say)
        staged = Path(tmp) / "llama.cpp"
        changelog = sdist.copy_llama_cpp(
            archive, staged, lambda rel: wanted_source(rel, tool_dirs, header_dirs)
        )
        missing = [d for d in ("include", "common", *(f"tools/{t}" for t in tool_dirs))
                   if not (staged / d).is_dir()]  # fmt: skip
        if missing:
            raise BackendError(
                f"{archive} has no llama.cpp {', '.join(missing)}",
                hint=f"unset {sdist.SOURCE_ENV} or point it at the "
                f"{sdist.sdist_requirement(version)} sdist",
            )
        info = {
            "llama_cpp_python": version,
            "llama_cpp_commit": sdist.commit_from_changelog(changelog, version)
            if changelog
            else None,
            "origin": str(archive) if origin else sdist.sdist_requirement(version),
        }
        (staged / "source.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if dest.exists():  # an older, incomplete extraction (fewer tools): replace it
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(staged, dest)
        except OSError:
            if not _source_complete(dest, tool_dirs):  # else a concurrent run finished first
                raise
    return dest


def _source_complete(dest: Path, tool_dirs: Iterable[str]) -> bool:
    return (dest / "source.json").is_file() and all(
        (dest / "tools" / d).is_dir() for d in tool_dirs
    )


# -- the build --------------------------------------------------------------------------------


def find_compiler() -> str:
    """The C++ compiler: ``$CXX``, else c++, g++ or clang++ on ``PATH``."""
    if sys.platform == "win32":
        raise UsageError(
            "building llama.cpp tools is not supported on Windows",
            hint="use WSL, or the llama.cpp release binaries of the same version",
        )
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    hint = (
        "install the Xcode command line tools: xcode-select --install"
        if sys.platform == "darwin"
        else "install a C++ compiler: sudo apt install g++ (Debian/Ubuntu), "
        "sudo dnf install gcc-c++ (Fedora)"
    )
    raise BackendError(f"no C++ compiler found (looked for {', '.join(candidates)})", hint=hint)


def compile_command(
    cxx: str, src: Path, rel: str, obj: Path, *, extra_includes: Sequence[Path] = ()
) -> list[str]:
    """The compiler command for one source, with the include dirs cmake would give it."""
    cmd = [cxx, *CXXFLAGS, OPT_TOOL if rel.startswith("tools/") else OPT_COMMON]
    if rel == HTTPLIB:
        cmd += [f"-D{d}" for d in HTTPLIB_DEFINES]
    for inc in ("include", "ggml/include", "common", "vendor"):
        cmd.append(f"-I{src / inc}")
    cmd += [f"-I{p}" for p in extra_includes]
    return [*cmd, "-c", str(src / rel), "-o", str(obj)]


def link_command(
    cxx: str, objects: Sequence[Path], out: Path, libs: Path, extra_libs: Sequence[str] = ()
) -> list[str]:
    """The link command: llama.cpp's shared libraries by rpath, unused functions dropped."""
    gc = "-Wl,-dead_strip" if sys.platform == "darwin" else "-Wl,--gc-sections"
    return [
        cxx, *map(str, objects), "-o", str(out), f"-L{libs}", *(f"-l{n}" for n in extra_libs),
        "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{libs}", "-pthread", gc,
    ]  # fmt: skip


def _flags_hash(cxx: str) -> str:
    return hashlib.sha256(
        json.dumps([cxx, CXXFLAGS, OPT_TOOL, OPT_COMMON, HTTPLIB_DEFINES]).encode()
    ).hexdigest()[:10]


def ensure_tool(name: str, *, progress: Say | None = None, rebuild: bool = False) -> Path:
    """The path of llama.cpp tool ``name``, compiled on first use for the installed llama_cpp.

    Raises:
        UsageError: ``name`` is not a tool this module knows how to build.
        BackendError: no compiler, no source, or the build failed (the compiler's last lines).
    """
    spec = TOOLS.get(name)
    if spec is None:
        raise UsageError(f"unknown llama.cpp tool {name!r}", hint=f"one of: {', '.join(TOOLS)}")
    version = installed.llama_cpp_version()
    libs = installed.lib_dir()
    out = tool_binary(name, version, libs)
    if out.is_file() and not rebuild:
        return out
    with _build_lock(out.parent / f".{name}.lock"):
        if out.is_file() and not rebuild:  # built by whoever held the lock
            return out
        return _build(spec, version, out, libs, progress or process.quiet)


def _build(spec: ToolSpec, version: str, out: Path, libs: Path, say: Say) -> Path:
    missing = [n for n in ("llama", "ggml", "ggml-base", *spec.libs) if not _has_lib(libs, n)]
    if missing:
        raise BackendError(
            f"lib{missing[0]} not found in {libs}",
            hint=f"reinstall llama-cpp-python: pip install --force-reinstall {DIST}=={version}",
        )
    cxx = find_compiler()
    t0 = time.perf_counter()
    src = ensure_source(version=version, progress=say)
    build = out.parent.parent / "build"  # the version's folder: objects serve every libs-<key>
    objdir = build / f"obj-{_flags_hash(cxx)}"
    objdir.mkdir(parents=True, exist_ok=True)
    info = json.loads((src / "source.json").read_text(encoding="utf-8"))
    build_info = _write_build_info(src, build, cxx, info.get("llama_cpp_commit"))
    tool_dir = src / "tools" / spec.folder
    includes = [tool_dir]
    if spec.headers_from:  # tools/server's ../mtmd and ${PROJECT_SOURCE_DIR}
        includes += [src / "tools" / d for d in spec.headers_from] + [src]
    units: dict[str, tuple[Path, list[Path]]] = {}
    if spec.ui:
        ui_cpp = serverui.write_ui(src, build / "ui")
        includes.append(ui_cpp.parent)
        units[str(ui_cpp)] = (build / "ui" / f"ui-{_flags_hash(cxx)}.o", [ui_cpp.parent])
    units.update(
        {
            f"tools/{spec.folder}/{s}": (objdir / f"{spec.folder}__{s}.o", includes)
            for s in spec.sources
        }
    )
    units[str(build_info)] = (build / f"build-info-{_flags_hash(cxx)}.o", [])

    def add(rels: Iterable[str]) -> None:
        for rel in rels:
            units.setdefault(rel, (objdir / (rel.replace("/", "__") + ".o"), []))

    add(common_sources(src, spec))
    fallback = False
    t_compile = time.perf_counter()
    _compile_all(cxx, src, units, say)
    # journaled (gc removes it after a kill), renamed onto out when linked and recorded
    with atomic.replacing(out, sweep_first=False) as tmp:
        say(f"linking {spec.name}")

        def link() -> subprocess.CompletedProcess[str]:
            objects = [o for o, _ in units.values()]
            return process.run(link_command(cxx, objects, tmp, libs, spec.libs))

        done = link()
        if done.returncode != 0 and _undefined_symbols(done.stderr):
            # this llama.cpp needs more of common than ToolSpec.common lists: compile all of it
            fallback = True
            say(f"{spec.name} needs more of llama.cpp's common library; compiling all of it")
            add(common_sources(src, spec, everything=True))
            _compile_all(cxx, src, units, say)
            done = link()
        if done.returncode != 0:
            raise BackendError(
                f"linking {spec.name} failed: {process.tail(done.stderr or done.stdout)}",
                hint=f"the libraries in {libs} may not match {DIST} {version}; reinstall it",
            )
        seconds = time.perf_counter() - t0
        record = {
            "tool": spec.name,
            "llama_cpp_python": version,
            "llama_cpp_commit": info.get("llama_cpp_commit"),
            "lib_dir": str(libs),
            "lib_key": out.parent.name,
            "compiler": cxx,
            "flags": [*CXXFLAGS, f"tools: {OPT_TOOL}", f"common: {OPT_COMMON}"],
            "sources": sorted(units),
            "all_of_common": fallback or spec.common is COMMON_ALL,
            "seconds": round(seconds, 1),
            "compile_seconds": round(time.perf_counter() - t_compile, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic.write_text(out.with_name(out.name + ".json"), json.dumps(record, indent=2) + "\n")
    say(f"built {spec.name} in {seconds:.0f} s: {out}")
    return out


def _compile_all(
    cxx: str, src: Path, units: Mapping[str, tuple[Path, list[Path]]], say: Say
) -> None:
    """Compile the units whose object file is missing, longest first, one job per core."""
    todo = [(rel, obj, inc) for rel, (obj, inc) in units.items() if not obj.is_file()]
    if not todo:
        return
    # src / rel is rel itself when rel is absolute (the generated build-info.cpp)
    todo.sort(key=lambda t: (src / t[0]).stat().st_size, reverse=True)
    jobs = min(len(todo), _cpu_count())
    n = f"{len(todo)} llama.cpp source{'s' if len(todo) > 1 else ''}"
    say(f"compiling {n} with {jobs} job{'s' if jobs > 1 else ''} (once per llama-cpp-python)")
    counter = itertools.count(1)

    def one(rel: str, obj: Path, inc: list[Path]) -> None:
        with atomic.replacing(obj, sweep_first=False) as tmp:
            done = process.run(compile_command(cxx, src, rel, tmp, extra_includes=inc))
            if done.returncode != 0:
                raise BackendError(
                    f"compiling {rel} failed: {process.tail(done.stderr or done.stdout, 6)}",
                    hint=f"{Path(cxx).name} must support C++17 (gcc >= 9, clang >= 10)",
                )
        say(f"compiled {Path(rel).name} [{next(counter)}/{len(todo)}]")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, *t) for t in todo]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in finished:
            if (exc := f.exception()) is not None:
                for other in futures:
                    other.cancel()
                raise exc


def _write_build_info(src: Path, build: Path, cxx: str, commit: str | None) -> Path:
    """common/build-info.cpp, which cmake configures from build-info.cpp.in."""
    template = (src / "common" / "build-info.cpp.in").read_text(encoding="utf-8")
    version = process.run([cxx, "--version"]).stdout.splitlines()
    values = {
        "LLAMA_BUILD_NUMBER": "0",
        "LLAMA_BUILD_COMMIT": commit or "unknown",
        "BUILD_COMPILER": (version[0] if version else Path(cxx).name).replace('"', "'"),
        "BUILD_TARGET": f"{platform.system()} {platform.machine()}",
    }
    text = re.sub(r"@(\w+)@", lambda m: values.get(m.group(1), m.group(0)), template)
    out = build / "build-info.cpp"
    if not out.is_file() or out.read_text(encoding="utf-8") != text:
        atomic.write_text(out, text)
        for stale in build.glob("build-info-*.o"):
            stale.unlink(missing_ok=True)
    return out


def _undefined_symbols(linker_output: str) -> bool:
    return bool(
        re.search(r"undefined reference to|Undefined symbols for|undefined symbol:", linker_output)
    )


def _has_lib(libs: Path, name: str) -> bool:
    return any((libs / f"lib{name}{ext}").exists() for ext in (".so", ".dylib"))


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One build per tool at a time across processes (two test runs, two terminals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: builds are not supported there anyway
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- running ----------------------------------------------------------------------------------


def run_tool(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    progress: Say | None = None,
    on_output: Callable[[str, str], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run llama.cpp tool ``args[0]`` (built on first use) with ``args[1:]``; output captured.

    ``on_output(stream, text)`` (stream "stdout" or "stderr") sees the output as it comes, in
    pieces that need not end at a newline (the tools print progress like ``[3]12.34,``).

    Raises:
        BackendError: the tool could not start, timed out, or (with ``check``) exited non-zero;
            the message ends with its last lines of output.
    """
    if not args:
        raise UsageError("run_tool needs a tool name")
    exe = ensure_tool(args[0], progress=progress)
    rest = [str(a) for a in args[1:]]
    cmd = [str(exe), *rest, *repack_args(args[0], rest)]
    try:
        if on_output is None:
            done = process.run(cmd, timeout=timeout, cwd=cwd, env=installed.tool_env())
        else:
            done = process.run_streaming(
                cmd, on_output, timeout=timeout, cwd=cwd, env=installed.tool_env()
            )
    except subprocess.TimeoutExpired as e:
        raw = e.stderr or e.stdout or b""  # bytes, whatever text= says
        out = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        raise BackendError(
            f"{args[0]} did not finish within {timeout:.0f} s: {process.tail(out)}",
            hint="give it more time, or a smaller model / fewer tokens",
        ) from None
    except OSError as e:
        raise BackendError(
            f"{args[0]} could not start: {e}",
            hint=f"rebuild it: delete {exe} and run again",
        ) from None
    if done.returncode < 0:  # killed by a signal: never a result a caller can use
        raise _killed(args[0], -done.returncode, done, cmd)
    if check and done.returncode != 0:
        raise BackendError(
            f"{args[0]} failed (exit code {done.returncode}): "
            f"{process.tail(done.stderr or done.stdout) or 'no output'}",
            hint=f"run it by hand to see all of its output: {shlex.join(cmd)}",
        )
    return done


def repack_args(name: str, args: Sequence[str] = ()) -> list[str]:
    """The options ``run_tool`` adds for tool ``name``: its no-repack option when weight
    repacking is off on this machine (``repack.enabled()``, as the chat engine), unless
    ``args`` set repacking themselves."""
    spec = TOOLS.get(name)
    if spec is None or not spec.no_repack or any(a in REPACK_OPTIONS for a in args):
        return []
    return [] if repack.enabled() else list(spec.no_repack)


_CRASHES = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGTRAP")


def _killed(
    name: str, signum: int, done: subprocess.CompletedProcess[str], cmd: Sequence[str]
) -> BaseException:
    """The error for a tool that died from signal ``signum``: which signal, its last lines, and
    what to try next (the repack override after a crash, memory after a SIGKILL)."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    sig = repack.signal_name(signum)
    what = signal.strsignal(signum) or sig
    last = process.tail(done.stderr or done.stdout)
    message = f"{name} was killed by {sig} ({what})" + (f": {last}" if last else "")
    by_hand = f"run it by hand to see all of its output: {shlex.join(cmd)}"
    if sig in _CRASHES and TOOLS[name].no_repack and repack.enabled():
        hint = (
            f"it crashed inside llama.cpp; try again with {repack.OVERRIDE_ENV}=off (weight "
            f"repacking, see {repack.UPSTREAM_BUG}); {by_hand}"
        )
    elif sig in _CRASHES:
        hint = f"it crashed inside llama.cpp; {by_hand}"
    elif sig == "SIGKILL":
        hint = (
            "it was killed from outside, often by the kernel when memory ran out: close other "
            "programs, or use a smaller model, context (-c) or fewer chunks"
        )
    else:
        hint = by_hand
    return BackendError(message, hint=hint)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)
