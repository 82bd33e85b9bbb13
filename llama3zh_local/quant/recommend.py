"""Which quant to run on this machine: the pick for the GPU (fully offloaded), and for RAM.

"Fits" counts the file, the KV cache for the chosen context (f16 K and V for every layer) and a
reserve for compute buffers. "Better quality" is a larger file (more bits per weight, less
quantization error), an imatrix (``-im``) file before the plain one of the same type. Quality
comes from ``llama3zh eval`` results (quality.json) when the file was measured, else from
llama.cpp's published perplexity increase on Llama-3-8B.

Decoding reads every weight once per token, so it is bound by memory bandwidth: expected
tokens/s = bandwidth / file size. The rate is measured when ``llama3zh chat`` has answered with
that file here (speed.json); otherwise it is estimated from a rate measured with another file,
or from a memory copy (CPU) or an assumed bandwidth (GPU). The rule (``RULE``): of the quants
at least as good as Q4_K_M, the best quality that still decodes at reading speed; when none is
that fast, the fastest of them.

Used by ``llama3zh recommend`` and by ``pull`` for its default quant. Imports nothing of the
later stages (quantize, evaluate): their data is read from quality.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from .. import catalog, hardware, paths
from ..files import atomic
from ..gguf.info import GGUFInfo, read_gguf_info
from ..gguf.reader import read_tensors
from ..hardware import GIB, VRAM_RESERVE, Hardware
from ..hub import store

RAM_RESERVE = 512 * 1024**2  # compute buffers and the runtime itself, on the CPU
DEFAULT_CTX = 8192  # the chat default
READING_TPS = 8.0  # tokens/s: about as fast as one reads an answer (Chinese or English)
FLOOR_TYPE = "Q4_K_M"  # below it quality drops steeply (+0.27 PPL Q4_K_S ... +3.5 Q2_K)
GPU_BANDWIDTH_ASSUMED = 200e9  # bytes/s: the low end of current discrete GPUs, if not measured
COPY_BYTES = 128 * 1024**2  # the memory copy that estimates the CPU's bandwidth


class Prefer(str, Enum):
    """How the pick weighs quality against speed."""

    balanced = "balanced"
    quality = "quality"
    speed = "speed"


RULE = {
    Prefer.balanced: "of the quants at least as good as q4_k (Q4_K_M; below it quality drops "
    f"steeply), the best quality that decodes at {READING_TPS:g} tok/s or more (about reading "
    "speed); when none is that fast, the fastest of them",
    Prefer.quality: "the best quality that fits, however slow",
    Prefer.speed: "the fastest (smallest) that fits",
}

# Perplexity increase over F16 on Llama-3-8B, as llama.cpp's llama-quantize lists it
# (tools/quantize/quantize.cpp QUANT_OPTIONS; parity test in tests/test_quantize_smollm2.py).
LLAMA3_8B_PPL_DELTA: dict[str, float] = {
    "Q8_0": 0.0026,
    "Q6_K": 0.0217,
    "Q5_K_M": 0.0569,
    "Q5_K_S": 0.1049,
    "Q5_1": 0.1062,
    "Q5_0": 0.1316,
    "Q4_K_M": 0.1754,
    "Q4_K_S": 0.2689,
    "Q4_1": 0.4511,
    "Q4_0": 0.4685,
    "Q3_K_L": 0.5562,
    "Q3_K_M": 0.6569,
    "Q3_K_S": 1.6321,
    "Q2_K_S": 3.1836,
    "Q2_K": 3.5199,
}


@dataclass(frozen=True)
class Candidate:
    """A quant that could be run: a local file, or a catalog size for one not downloaded."""

    label: str  # q4_k, q4_k-im, iq3_xxs-im
    type: str  # llama.cpp type: Q4_K_M
    size: int  # bytes
    path: Path | None = None  # the local file, if there is one
    ppl: float | None = None  # measured by llama3zh eval
    kld: float | None = None
    ppl_delta_llama3_8b: float | None = None  # llama.cpp's figure, when not measured

    @property
    def imatrix(self) -> bool:
        return self.label.endswith("-im")

    @property
    def quality(self) -> str:
        if self.ppl is not None:
            kld = f", KLD {self.kld:.4f}" if self.kld is not None else ""
            return f"PPL {self.ppl:.4f}{kld} (measured)"
        if self.ppl_delta_llama3_8b is not None:
            return f"PPL +{self.ppl_delta_llama3_8b:.4f} vs F16 on Llama-3-8B (llama.cpp)"
        return "unknown"

    @property
    def quality_short(self) -> str:
        if self.ppl is not None:
            return f"PPL {self.ppl:.3f}" + (f", KLD {self.kld:.3f}" if self.kld is not None else "")
        if self.ppl_delta_llama3_8b is not None:
            return f"+{self.ppl_delta_llama3_8b:.3f} PPL (8B)"
        return "-"


@dataclass(frozen=True)
class Speed:
    """Expected decoding tokens/s of one file on one device."""

    tps: float
    measured: bool  # this file was measured here; False: an estimate

    @property
    def text(self) -> str:
        return f"{self.tps:.1f}" if self.measured else f"~{self.tps:.1f}"


@dataclass(frozen=True)
class Bandwidth:
    """Bytes/s that decoding reads weights at, on the CPU and on the GPU, and where from."""

    cpu: float
    cpu_basis: str
    gpu: float
    gpu_basis: str


@dataclass(frozen=True)
class Fit:
    candidate: Candidate
    need: int  # bytes: file + KV cache + reserve
    budget: int  # bytes available there
    speed: Speed | None = None
    reason: str = ""  # why the rule picked it


@dataclass(frozen=True)
class Recommendation:
    model: str
    n_ctx: int
    kv_bytes: int
    gpu: Fit | None  # best that fits fully on the GPU (None: no usable GPU, or none fits)
    ram: Fit | None  # best that fits in RAM
    gpu_name: str | None
    gpu_free: int
    ram_available: int
    candidates: tuple[Candidate, ...]
    notes: tuple[str, ...] = field(default=())
    prefer: Prefer = Prefer.balanced
    bandwidth: Bandwidth | None = None
    cpu_speed: Mapping[str, Speed] = field(default_factory=dict)  # by label
    gpu_speed: Mapping[str, Speed] = field(default_factory=dict)  # by label; empty: no GPU

    @property
    def rule(self) -> str:
        return RULE[self.prefer]

    @property
    def choice(self) -> Candidate:
        """What to use: the GPU pick, else the RAM pick, else the smallest candidate."""
        if self.gpu is not None:
            return self.gpu.candidate
        if self.ram is not None:
            return self.ram.candidate
        return min(self.candidates, key=lambda c: c.size)


def kv_cache_bytes(*, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int) -> int:
    """f16 K and V of every layer for ``n_ctx`` tokens."""
    return 2 * n_layer * n_head_kv * head_dim * 2 * n_ctx


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: larger files first; at equal size, the imatrix one first."""
    return sorted(candidates, key=lambda c: (-c.size, not c.imatrix, c.label))


def pick(
    fitting: Sequence[Candidate],
    speed: Callable[[Candidate], Speed],
    prefer: Prefer,
    *,
    floor: int = 0,
) -> tuple[Candidate, str] | None:
    """``RULE[prefer]`` over the candidates that fit (ranked best quality first); ``floor`` is
    the size of the pool's Q4_K_M file (0: none)."""
    if not fitting:
        return None

    def fastest(cs: Sequence[Candidate]) -> Candidate:
        return min(cs, key=lambda c: (c.size, not c.imatrix))

    if prefer is Prefer.quality:
        return fitting[0], "the best quality that fits"
    if prefer is Prefer.speed:
        return fastest(fitting), "the fastest that fits"
    good = [c for c in fitting if c.size >= floor]
    if not good:
        return fitting[0], "nothing as good as q4_k (Q4_K_M) fits: the best that fits"
    for c in good:
        if speed(c).tps >= READING_TPS:
            return c, f"the best quality that decodes at {READING_TPS:g} tok/s or more"
    return fastest(good), (
        f"none as good as q4_k (Q4_K_M) decodes at {READING_TPS:g} tok/s here: the fastest of them"
    )


def speeds(
    candidates: Sequence[Candidate], rate: float, measured: Mapping[str, float]
) -> dict[str, Speed]:
    """tokens/s per label on one device: measured for a file (``measured``: path -> tok/s),
    else ``rate`` (bytes/s) / file size."""
    out = {}
    for c in candidates:
        tps = measured.get(str(c.path.resolve())) if c.path is not None else None
        if tps is not None:
            out[c.label] = Speed(tps, True)
        else:
            out[c.label] = Speed(rate / max(c.size, 1), False)
    return out


def recommend(
    candidates: Sequence[Candidate],
    *,
    model: str,
    kv_bytes: int,
    n_ctx: int,
    hw: Hardware,
    include_f16: bool = False,
    prefer: Prefer = Prefer.balanced,
    bandwidth: Bandwidth | None = None,
) -> Recommendation:
    """The pick for the GPU (fully offloaded) and for RAM by ``RULE[prefer]``, given ``hw``'s
    free memory and ``bandwidth`` (default: this machine's, see ``machine_bandwidth``).

    F16/BF16/F32 files are left out unless ``include_f16`` (twice Q8_0's size for no visible
    gain), as pull's default does.
    """
    pool = [c for c in candidates if include_f16 or c.type not in ("F16", "BF16", "F32")]
    pool = pool or list(candidates)
    ranked = rank(pool)
    gpus = sorted(hw.gpus, key=lambda d: d.free, reverse=True) if hw.gpu_offload else []
    bw = bandwidth or machine_bandwidth()
    rates = measured_speeds()
    cpu_speed = speeds(ranked, bw.cpu, rates.get("cpu", {}))
    gpu_speed = speeds(ranked, bw.gpu, rates.get("gpu", {})) if gpus else {}
    floor = min((c.size for c in ranked if c.type == FLOOR_TYPE), default=0)
    gpu_fit = ram_fit = None
    if gpus:
        free = gpus[0].free
        fitting = [c for c in ranked if c.size + kv_bytes + VRAM_RESERVE <= free]
        got = pick(fitting, lambda c: gpu_speed[c.label], prefer, floor=floor)
        if got is not None:
            c, why = got
            gpu_fit = Fit(c, c.size + kv_bytes + VRAM_RESERVE, free, gpu_speed[c.label], why)
    fitting = [c for c in ranked if c.size + kv_bytes + RAM_RESERVE <= hw.ram_available]
    if (got := pick(fitting, lambda c: cpu_speed[c.label], prefer, floor=floor)) is not None:
        c, why = got
        need = c.size + kv_bytes + RAM_RESERVE
        ram_fit = Fit(c, need, hw.ram_available, cpu_speed[c.label], why)
    notes = []
    if not hw.gpu_offload:
        notes.append("llama.cpp here has no GPU backend: CPU only")
    elif not gpus:
        notes.append("no GPU found: CPU only")
    if ram_fit is None:
        notes.append(
            f"none fits the {hw.ram_available / GIB:.1f} GiB of available RAM with a "
            f"{n_ctx}-token context; try a smaller --ctx"
        )
    return Recommendation(
        model=model,
        n_ctx=n_ctx,
        kv_bytes=kv_bytes,
        gpu=gpu_fit,
        ram=ram_fit,
        gpu_name=gpus[0].description if gpus else None,
        gpu_free=gpus[0].free if gpus else 0,
        ram_available=hw.ram_available,
        candidates=tuple(ranked),
        notes=tuple(notes),
        prefer=prefer,
        bandwidth=bw,
        cpu_speed=cpu_speed,
        gpu_speed=gpu_speed,
    )


# -- speed ----------------------------------------------------------------------------------------


def _speed_file() -> Path:
    return paths.home() / "speed.json"


@dataclass(frozen=True)
class SpeedEntry:
    """A decoding rate ``llama3zh chat`` measured: one file, on "cpu" or "gpu" (all layers)."""

    path: str
    size: int
    device: str
    tps: float
    tokens: int
    measured: float  # time.time()


def measured_speeds() -> dict[str, dict[str, float]]:
    """device -> path -> tok/s, for the files that are unchanged since (the newest per file)."""
    out: dict[str, dict[str, float]] = {}
    for e in _speed_entries():
        try:
            if Path(e.path).stat().st_size != e.size:
                continue
        except OSError:
            continue
        out.setdefault(e.device, {})[e.path] = e.tps
    return out


def _speed_entries() -> list[SpeedEntry]:
    """speed.json's entries, oldest first."""
    try:
        data = json.loads(_speed_file().read_text(encoding="utf-8"))
        raw = data.get("entries", []) if isinstance(data, dict) else []
    except (OSError, ValueError):
        return []
    out = []
    for e in raw:
        try:
            entry = SpeedEntry(
                str(e["path"]),
                int(e["size"]),
                str(e["device"]),
                float(e["tps"]),
                int(e.get("tokens", 0)),
                float(e.get("measured", 0)),
            )
        except (TypeError, KeyError, ValueError, AttributeError):
            continue
        if entry.device in ("cpu", "gpu") and entry.tps > 0:
            out.append(entry)
    return sorted(out, key=lambda e: e.measured)


def record_speed(path: Path, *, tps: float, device: str, tokens: int) -> None:
    """Remember the decoding rate of a file on "cpu" or "gpu" (all layers), for ``recommend``."""
    if tps <= 0 or device not in ("cpu", "gpu"):
        return
    resolved = path.resolve()
    entry = SpeedEntry(
        str(resolved), resolved.stat().st_size, device, round(tps, 3), tokens, time.time()
    )
    keep = [e for e in _speed_entries() if (e.path, e.device) != (entry.path, device)]
    entries = [asdict(e) for e in (*keep[-49:], entry)]
    _speed_file().parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(_speed_file(), json.dumps({"entries": entries}, indent=1) + "\n")


def copy_bandwidth() -> float:
    """Bytes/s of a large memory copy (read + write), best of three: the CPU's bandwidth."""
    import numpy as np

    src = np.ones(COPY_BYTES // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / max(best, 1e-9)


def machine_bandwidth() -> Bandwidth:
    """What decoding reads weights at here: from the newest rate chat measured on each device
    (tok/s x file size), else a memory copy (CPU) or ``GPU_BANDWIDTH_ASSUMED``."""
    newest = {e.device: e for e in _speed_entries()}
    basis = {}
    rate = {}
    for device, e in newest.items():
        rate[device] = e.tps * e.size
        basis[device] = (
            f"{rate[device] / 1e9:.1f} GB/s, from {Path(e.path).name} at {e.tps:.1f} tok/s in "
            "llama3zh chat"
        )
    if "cpu" not in rate:
        rate["cpu"] = copy_bandwidth()
        basis["cpu"] = f"{rate['cpu'] / 1e9:.1f} GB/s, measured by a memory copy"
    if "gpu" not in rate:
        rate["gpu"] = GPU_BANDWIDTH_ASSUMED
        basis["gpu"] = f"{GPU_BANDWIDTH_ASSUMED / 1e9:.0f} GB/s, assumed (a modest discrete GPU)"
    return Bandwidth(rate["cpu"], basis["cpu"], rate["gpu"], basis["gpu"])


# -- candidates -----------------------------------------------------------------------------------


def _type_of(label: str) -> str:
    base = label.removesuffix("-im")
    for q in catalog.GGUF_QUANTS:
        if q.short == base:
            return q.ftype
    return base.upper()


def measured() -> dict[str, dict[str, object]]:
    """quality.json's newest entry per file path (written by ``llama3zh eval``)."""
    try:
        data = json.loads((paths.home() / "quality.json").read_text(encoding="utf-8"))
        entries = data.get("entries", []) if isinstance(data, dict) else []
    except (OSError, ValueError):
        return {}
    out: dict[str, dict[str, object]] = {}
    for e in sorted(entries, key=lambda e: e.get("measured", 0)):
        if isinstance(e, dict) and "path" in e:
            out[str(e["path"])] = e
    return out


def candidate(label: str, size: int, path: Path | None = None) -> Candidate:
    """A candidate with its quality: measured for a file in quality.json, else llama.cpp's."""
    qtype = _type_of(label)
    ppl = kld = None
    if path is not None:
        entry = measured().get(str(path.resolve()))
        if entry is not None:
            try:
                same = path.stat().st_size == entry.get("size")
            except OSError:
                same = False
            if same:
                ppl = _num(entry.get("ppl"))
                kld = _num(entry.get("kld"))
    delta = LLAMA3_8B_PPL_DELTA.get(qtype)
    return Candidate(label, qtype, size, path, ppl, kld, delta)


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) else None


def catalog_candidates(local: Mapping[str, Path] | None = None) -> list[Candidate]:
    """The upstream quants of the 8B models (catalog sizes), replaced by local files."""
    local = dict(local or {})
    out = []
    for q in catalog.GGUF_QUANTS:
        if q.short in local:
            continue
        out.append(candidate(q.short, int(q.size_gib * GIB)))
    for label, path in local.items():
        out.append(candidate(label, path.stat().st_size, path))
    return out


def file_label(info: GGUFInfo) -> str:
    """A GGUF's quant label from its metadata, not its name: ``q4_k``, ``q4_k-im``, ``iq3_xxs-im``.

    The upstream short name (catalog) or llama.cpp's type in lower case; ``-im`` when the file
    records an imatrix (llama-quantize's ``quantize.imatrix.*`` keys).
    """
    name = info.file_type.removeprefix("MOSTLY_").removeprefix("ALL_")
    shorts = {q.ftype: q.short for q in catalog.GGUF_QUANTS}
    im = any(k.startswith("quantize.imatrix.") for k in info.metadata)
    return shorts.get(name, name.lower()) + ("-im" if im else "")


def _same_model(a: GGUFInfo, b: GGUFInfo) -> bool:
    return (a.architecture, a.n_layer, a.n_embd, a.n_vocab) == (
        b.architecture,
        b.n_layer,
        b.n_embd,
        b.n_vocab,
    )


def file_candidates(path: Path) -> tuple[GGUFInfo, list[Candidate], list[str]]:
    """A GGUF and the other quants of the same model beside it; catalog types it lacks are
    estimated from its parameter count (upstream bits per weight). Also notes on the choice."""
    info = read_gguf_info(path)
    found: dict[str, Candidate] = {}
    for p in sorted(path.parent.glob("*.gguf")):
        try:
            other = info if p == path else read_gguf_info(p)
        except Exception:  # noqa: BLE001 - not a model (an imatrix, a damaged file): skip it
            continue
        if _same_model(info, other):
            label = file_label(other)
            if label not in found or p == path:
                found[label] = candidate(label, other.size, p)
    n_params = sum(t.n_elements for t in read_tensors(path))
    f16 = next(q for q in catalog.GGUF_QUANTS if q.short == "f16")
    estimated = []
    for q in catalog.GGUF_QUANTS:
        if q.short not in found:
            bpw = 16 * q.size_gib / f16.size_gib  # upstream: 14.97 GiB for F16 = 16 bits
            found[q.short] = candidate(q.short, int(n_params * bpw / 8))
            estimated.append(q.short)
    notes = []
    if estimated:
        notes.append(
            f"sizes of {', '.join(estimated)} are estimated from {n_params / 1e9:.2f}B parameters "
            "(make them with `llama3zh quantize`)"
        )
    return info, list(found.values()), notes


def alias_candidates(alias: str) -> tuple[catalog.ModelSpec, list[Candidate]]:
    """A catalog model: its files in the store, and the upstream sizes of the quants it lacks."""
    spec = catalog.get_model(alias)
    local: dict[str, Path] = {}
    for p in store.local_ggufs(spec):
        try:
            label = file_label(read_gguf_info(p))
        except Exception:  # noqa: BLE001 - a damaged or partial file: not a candidate
            continue
        local.setdefault(label, p)
    return spec, catalog_candidates(local)


@dataclass(frozen=True)
class ModelCandidates:
    """What ``recommend`` weighs for one model: its quants, the context and its KV cache."""

    label: str  # the alias, or the file name
    candidates: list[Candidate]
    n_ctx: int
    kv_bytes: int
    notes: tuple[str, ...]  # on the candidates (sizes estimated)


def model_candidates(model: str | None, *, ctx: int | None) -> ModelCandidates:
    """The candidates for an alias (default: instruct-v3), or for a GGUF file and its sibling
    quants, with the KV cache of ``ctx`` tokens (default: 8192, or the model's if smaller)."""
    name = model or catalog.DEFAULT_ALIAS
    if store.looks_like_path(name):
        info, candidates, notes = file_candidates(Path(name).expanduser())
        n_ctx = ctx or min(DEFAULT_CTX, info.n_ctx_train or DEFAULT_CTX)
        return ModelCandidates(info.path.name, candidates, n_ctx,
                               info.kv_bytes_per_token * n_ctx, tuple(notes))  # fmt: skip
    spec, candidates = alias_candidates(name)
    n_ctx = ctx or min(DEFAULT_CTX, spec.n_ctx)
    kv = kv_cache_bytes(
        n_layer=spec.n_layer, n_head_kv=spec.n_head_kv, head_dim=spec.head_dim, n_ctx=n_ctx
    )
    return ModelCandidates(spec.alias, candidates, n_ctx, kv, ())


def default_quant(
    sizes: Mapping[str, int], *, hw: Hardware | None = None, bandwidth: Bandwidth | None = None
) -> tuple[str, str]:
    """pull's default: the label to download among ``sizes`` (bytes), and a note saying why.

    The model is taken to be an 8B Llama-3 of the catalog at the chat's default context; the
    pick follows ``recommend``'s rule.
    """
    spec = catalog.get_model(catalog.DEFAULT_ALIAS)
    kv = kv_cache_bytes(
        n_layer=spec.n_layer, n_head_kv=spec.n_head_kv, head_dim=spec.head_dim, n_ctx=DEFAULT_CTX
    )
    if hw is None:
        hw = hardware.detect()
    rec = recommend(
        [candidate(label, size) for label, size in sizes.items()],
        model=spec.alias,
        kv_bytes=kv,
        n_ctx=DEFAULT_CTX,
        hw=hw,
        bandwidth=bandwidth,
    )
    c = rec.choice
    if rec.gpu is not None:
        why = (
            f"{rec.gpu.reason}, fits fully on {rec.gpu_name} ({rec.gpu_free / GIB:.1f} GiB free; "
            f"{_speed_words(rec.gpu.speed)})"
        )
    elif rec.ram is not None:
        why = (
            f"{rec.ram.reason}, in {rec.ram_available / GIB:.1f} GiB of available RAM "
            f"({_speed_words(rec.ram.speed)} on the CPU)"
        )
    else:
        why = f"the smallest; even it may not fit {rec.ram_available / GIB:.1f} GiB of RAM"
    return c.label, (
        f"quant {c.label} ({c.size / GIB:.2f} GiB + {kv / GIB:.1f} GiB KV cache for "
        f"{DEFAULT_CTX} tokens): {why} (`llama3zh recommend` explains)"
    )


def _speed_words(speed: Speed | None) -> str:
    if speed is None:
        return "speed unknown"
    return f"{speed.tps:.1f} tok/s" + ("" if speed.measured else " estimated")
