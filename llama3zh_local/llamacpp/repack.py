"""Whether llama.cpp may repack weights on this CPU (its AMX and CPU_REPACK buffer types).

On CPUs with AMX, a llama.cpp built with ``GGML_NATIVE`` (what pip builds) puts quantized
weights into the AMX buffer type and multiplies batches with AMX tiles. In some builds that
crashes the process at the first batch (``ldtilecfg`` on an invalid tile configuration:
llama.cpp#20824, fix proposed in llama.cpp#26954). A crash cannot be caught in-process, so a
short child process finds out: it builds a tiny model (Q4_0 and Q4_K_M, shapes the AMX kernels
accept), loads it with repacking on and decodes a batch on all cores. If it dies, repacking is
turned off (``use_extra_bufts = false``, the tools' ``--no-repack``); if it answers, repacking
stays on, since it is a real speed-up on CPUs. CPUs without AMX keep repacking without a probe.

The verdict is cached per llama.cpp build and CPU (``cpu-repack.json`` in the tools cache).
``LLAMA3ZH_CPU_REPACK=auto|on|off`` overrides it. No library decides this: llama.cpp itself
enables the AMX buffer type whenever the CPU and the kernel allow it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UsageError
from ..files import atomic
from . import installed, native, process

OVERRIDE_ENV = "LLAMA3ZH_CPU_REPACK"
CACHE_NAME = "cpu-repack.json"
UPSTREAM_BUG = "llama.cpp#20824"
PROBE_TIMEOUT = 120.0  # seconds; the probe takes about one on a laptop
PROBE_OK = "repack-probe-ok"

# The probe model: every matrix a multiple of 256 wide (QK_K, and the AMX kernels' tile
# alignment), a batch well above one token (one token takes the AMX VNNI path, not the tiles).
PROBE_EMBD, PROBE_FF, PROBE_HEADS, PROBE_VOCAB, PROBE_BATCH = 256, 512, 4, 256, 64


@dataclass(frozen=True)
class ProbeResult:
    """How the probe child ended."""

    ok: bool
    returncode: int | None  # None: it did not finish in time
    detail: str  # "SIGSEGV", "timed out after 120 s", or its last lines

    @property
    def crashed(self) -> bool:
        return self.returncode is not None and self.returncode < 0


@dataclass(frozen=True)
class RepackDecision:
    """Whether weight repacking is on, and why (one line for ``doctor``)."""

    enabled: bool
    reason: str  # "no AMX on this CPU or in this llama.cpp build"
    source: str  # "override", "no-amx", "probe", "cache"
    amx: bool  # the CPU backend reports AMX

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_override(value: str | None) -> str:
    """``LLAMA3ZH_CPU_REPACK``'s value as auto, on or off."""
    v = (value or "auto").strip().lower()
    aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
    v = aliases.get(v, v)
    if v not in ("auto", "on", "off"):
        raise UsageError(
            f"{OVERRIDE_ENV}={value!r}: expected auto, on or off",
            hint=f"unset {OVERRIDE_ENV}, or set it to auto, on or off",
        )
    return v


def decide(
    *,
    amx: bool,
    override: str | None,
    key: str,
    cache: Path,
    probe: Callable[[], ProbeResult],
) -> RepackDecision:
    """The repack verdict: the override; else on without AMX; else the cached or probed verdict.

    Args:
        amx: whether llama.cpp's CPU backend reports AMX (compiled in and present).
        override: ``LLAMA3ZH_CPU_REPACK`` (None or "auto": decide).
        key: the llama.cpp build and CPU the verdict holds for (``cache_key()``).
        cache: the JSON file of verdicts by key.
        probe: runs the child process (``probe_amx``); called only when needed.
    """
    mode = parse_override(override)
    if mode != "auto":
        return RepackDecision(mode == "on", f"set by {OVERRIDE_ENV}={mode}", "override", amx)
    if not amx:
        return RepackDecision(True, "no AMX on this CPU or in this llama.cpp build", "no-amx",
                              amx)  # fmt: skip
    verdicts = _read_cache(cache)
    if isinstance(found := verdicts.get(key), dict) and isinstance(found.get("enabled"), bool):
        return RepackDecision(found["enabled"], str(found.get("reason", "")), "cache", amx)
    result = probe()
    if result.ok:
        decision = RepackDecision(
            True, "AMX present and works in this llama.cpp build", "probe", amx
        )
    elif result.crashed or result.returncode is None:
        decision = RepackDecision(
            False,
            f"AMX present but a batch with repacked weights {_died(result)} in this llama.cpp "
            f"build, see {UPSTREAM_BUG}",
            "probe",
            amx,
        )
    else:  # the probe itself failed (no disk space, a Python error): off, ask again next time
        return RepackDecision(
            False, f"AMX present and the check of it could not run ({result.detail})",
            "probe", amx,
        )  # fmt: skip
    verdicts[key] = {**decision.as_dict(), "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with contextlib.suppress(OSError):  # a read-only cache: probe again next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache, json.dumps(verdicts, indent=2) + "\n")
    return decision


def _died(result: ProbeResult) -> str:
    return "timed out" if result.returncode is None else f"crashed with {result.detail}"


def _read_cache(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- this machine -----------------------------------------------------------------------------


def amx_reported() -> bool:
    """Whether this CPU has AMX and the installed llama.cpp was built with it."""
    flags = cpu_flags()
    if flags is not None and "amx_tile" not in flags:
        return False  # Linux says the CPU has none: no need to load llama.cpp to ask

    info = native.lib().llama_print_system_info().decode("utf-8", errors="replace")
    return "AMX_INT8 = 1" in info


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_identity() -> str:
    """The CPU model and its flags (what the verdict depends on besides the build)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} | {' '.join(sorted(cpu_flags() or ()))}"


def cache_key() -> str:
    """The llama.cpp libraries in use and this CPU, hashed."""
    cpu = hashlib.sha256(cpu_identity().encode()).hexdigest()[:12]
    return f"{installed.library_key()}-cpu{cpu}"


_CURRENT: dict[str, RepackDecision] = {}


def current() -> RepackDecision:
    """This process's verdict (decided once per override value)."""
    mode = parse_override(os.environ.get(OVERRIDE_ENV))
    if mode not in _CURRENT:
        amx = amx_reported()
        _CURRENT[mode] = decide(
            amx=amx,
            override=mode,
            key=cache_key() if amx and mode == "auto" else "",
            cache=installed.tools_root() / CACHE_NAME,
            probe=probe_amx,
        )
    return _CURRENT[mode]


def enabled() -> bool:
    """Whether llama.cpp should repack weights here (the engine and every tool follow this)."""
    return current().enabled


# -- the probe --------------------------------------------------------------------------------


def probe_command(folder: Path) -> list[str]:
    """The child that loads a tiny model with repacking on and decodes a batch in ``folder``."""
    return [sys.executable, "-m", "llama3zh_local.llamacpp.repack_probe", str(folder)]


def probe_amx(
    *, command: Sequence[str] | None = None, timeout: float = PROBE_TIMEOUT
) -> ProbeResult:
    """Run the probe child (or ``command``, with its scratch folder appended) and classify its end.

    The scratch folder is removed here, also after a crash.
    """
    # the system's temporary folder: a few MB, removed here whatever the child did
    with tempfile.TemporaryDirectory(prefix="llama3zh-repack-probe-") as tmp:
        cmd = list(command) + [tmp] if command is not None else probe_command(Path(tmp))
        env = {k: v for k, v in os.environ.items() if k != OVERRIDE_ENV}
        try:
            # tools' runner: UTF-8 output kept, and the child dies with us
            done = process.run(cmd, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return ProbeResult(False, None, f"timed out after {timeout:.0f} s")
    if done.returncode < 0:
        return ProbeResult(False, done.returncode, signal_name(-done.returncode))
    if done.returncode == 0 and PROBE_OK in done.stdout:
        return ProbeResult(True, 0, "")
    last = process.tail(done.stderr or done.stdout, 2)
    return ProbeResult(False, done.returncode, last or f"exit {done.returncode}")


def signal_name(signum: int) -> str:
    """``SIGSEGV`` for 11 (or ``signal 99``)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
