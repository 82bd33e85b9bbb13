"""The whole path to one quantized GGUF: pull -> convert -> imatrix -> quantize, resumable.

``plan_run`` picks the cheapest way to the requested file (already here; the hub's GGUF of that
quant; the hub's f16 GGUF or the full weights, then imatrix and quantize) and estimates sizes and
times; ``execute`` carries it out. Every step writes to a temporary name and records the finished
file in the model folder's state file (``files/state.py``), so a rerun after Ctrl-C, kill -9 or a
power cut reuses what is complete and redoes only the step that was cut short.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import catalog, paths
from .catalog import Variant
from .errors import Llama3zhError, ModelNotFoundError, NetworkError, UsageError
from .files import atomic, state
from .hub import store
from .progress import ADVANCE, START, Event

if TYPE_CHECKING:
    from .hub.pull import PullPlan
    from .quant.quantize import QuantType

F16 = "ggml-model-f16.gguf"
GB = 1e9

# First guesses for the time estimate, replaced by what this machine measured (rates.json) after
# each step. Disk-bound steps in bytes/s; imatrix in weights x tokens per second per CPU core.
DEFAULT_RATES: dict[str, float] = {
    "download": 20e6,
    "convert": 150e6,
    "quantize": 60e6,
    "hash": 500e6,
    "imatrix_cpu_core": 8e9,
    "imatrix_gpu": 2e12,
}
ASK_ABOVE_BYTES = 1 << 30  # "multi-GB work" asks first
FEWER_CHUNKS = 50  # suggested when an imatrix over the whole text would take hours


@dataclass(frozen=True)
class Step:
    """One piece of work in a plan."""

    kind: str  # pull, convert, imatrix, quantize
    title: str
    output: Path
    size: int  # bytes the step writes (downloads: bytes still to fetch)
    seconds: float  # estimate
    reuse: bool = False  # complete already: nothing to do
    pull: PullPlan | None = field(default=None, repr=False)
    source: Path | None = None  # the input of convert / imatrix / quantize
    note: str = ""  # convert: the hub repo of the weights
    quant: str = ""  # quantize: the llama.cpp type name


@dataclass(frozen=True)
class RunPlan:
    label: str  # the alias, or the source folder
    quant: str  # llama.cpp type name, e.g. Q4_K_M
    imatrix: bool
    target: Path
    route: str  # "local", "hub-gguf", "hub-f16", "full", "folder"
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    chunks: int | None = None
    ctx: int = 512
    calibration: Path | None = None

    @property
    def todo(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.reuse)

    @property
    def work_bytes(self) -> int:
        return sum(s.size for s in self.todo)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.todo)

    @property
    def needs_confirmation(self) -> bool:
        return self.work_bytes >= ASK_ABOVE_BYTES


@dataclass(frozen=True)
class RunEvent:
    """Progress: ``start``/``done``/``reuse`` of step ``index``, or ``work`` within it."""

    index: int
    steps: int
    kind: str
    event: str
    message: str = ""
    done: int = 0
    total: int = 0
    unit: str = ""


@dataclass(frozen=True)
class RunResult:
    plan: RunPlan
    target: Path
    sha256: str
    artifacts: tuple[state.Artifact, ...]
    seconds: float


# -- estimates ------------------------------------------------------------------------------------


def _rates_file() -> Path:
    return paths.home() / "rates.json"


def rates() -> dict[str, float]:
    """Throughputs measured on this machine (falling back to first guesses)."""
    out = dict(DEFAULT_RATES)
    try:
        data = json.loads(_rates_file().read_text(encoding="utf-8"))
        out.update({k: float(v) for k, v in data.items() if k in out and float(v) > 0})
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return out


def _remember_rate(name: str, amount: float, seconds: float) -> None:
    if seconds < 0.5 or amount <= 0:  # too short to say anything
        return
    path = _rates_file()
    current = {k: v for k, v in rates().items() if v != DEFAULT_RATES.get(k)}
    current[name] = amount / seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(current, indent=1) + "\n")


def _imatrix_seconds(n_weights: int, tokens: int) -> float:
    from .hardware import detect

    r = rates()
    hw = detect()
    if hw.gpu_offload and hw.devices:
        return n_weights * tokens / r["imatrix_gpu"]
    return n_weights * tokens / (r["imatrix_cpu_core"] * max(1, min(os.cpu_count() or 1, 16)))


def _imatrix_tokens(calibration: Path | None, chunks: int | None, ctx: int) -> int:
    if chunks is not None:
        return chunks * ctx
    from .quant.imatrix import default_calibration

    text = calibration or default_calibration()
    # ~3.3 bytes per Llama-3 token over the built-in mixed Chinese/English corpus
    return int(text.stat().st_size / 3.3) // ctx * ctx


# -- planning -------------------------------------------------------------------------------------


def _ready(path: Path, folder: Path | None = None) -> bool:
    """A finished artifact: recorded in the state file, or a verified pull in the store.

    A recorded file whose inputs are still here but changed since (an f16 replaced in place)
    is stale; inputs deleted to save space do not matter.
    """
    entry = state.completed(path, folder=folder)
    if entry is not None:
        where = folder or path.parent
        for name, sha in entry.inputs.items():
            if (where / name).exists():
                used = state.completed(where / name, folder=where)
                if used is None or used.sha256 != sha:
                    return False
        return True
    return _verified_pull(path) is not None


def _verified_pull(path: Path) -> store.StoreEntry | None:
    """The store's record of ``path`` when it is a pull whose checksum still holds."""
    entry = store.read_manifest(path.parent).get(path.name)
    return entry if entry is not None and entry.is_verified(Path(entry.cache_path)) else None


def _present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _foreign(path: Path, folder: Path | None = None) -> bool:
    """A file at ``path`` that no record vouches for: neither the state file (as written by
    llama3zh and unchanged since) nor the store (a pull whose checksum holds)."""
    if not (path.exists() or path.is_symlink()):
        return False
    return state.completed(path, folder=folder) is None and _verified_pull(path) is None


def refuse_foreign(path: Path, folder: Path | None = None, *, made_from: str = "") -> None:
    """Stop before replacing or reusing a file llama3zh has no record of writing.

    Raises:
        UsageError: ``path`` is there without a record (copied in, changed since, or another
            model's).
    """
    if _foreign(path, folder):
        what = f" from {made_from}" if made_from else ""
        raise UsageError(
            f"{path} is there, but llama3zh has no record of making it{what} (or it changed "
            "since): it is neither reused nor replaced",
            hint="move it away or delete it, then run again",
        )


@dataclass(frozen=True)
class _Want:
    qtype: QuantType
    imatrix: bool
    chunks: int | None
    ctx: int
    calibration: Path | None


def plan_run(
    model: str,
    *,
    quant: str = catalog.DEFAULT_QUANT,
    imatrix: bool = False,
    source: str = "auto",
    chunks: int | None = None,
    ctx: int = 512,
    calibration: Path | None = None,
) -> RunPlan:
    """The cheapest way from what is here to ``model``'s ``quant`` GGUF (``-im`` with imatrix).

    In order: the file is here; the hub's GGUF of that quant (without imatrix); an f16 GGUF or
    the full weights here; the hub's f16 GGUF or its full weights (whichever is estimated
    quicker), then imatrix and quantize.

    Raises:
        ModelNotFoundError: unknown alias, or the hub has neither the GGUF nor the weights.
        UsageError: an unknown quant type.
        NetworkError / HubAccessError: the hub could not be asked (and nothing local suffices).
    """
    from .quant.quantize import parse_type

    spec = catalog.get_model(model)
    want = _Want(parse_type(quant), imatrix, chunks, ctx, calibration)
    _check_imatrix(want.qtype, imatrix)
    upstream = next((q for q in catalog.GGUF_QUANTS if q.ftype == want.qtype.name), None)
    gguf_dir = store.repo_folder(spec.repo_id(Variant.GGUF))
    f16 = gguf_dir / F16
    target = gguf_dir / want.qtype.filename(imatrix=imatrix)

    def finish(route: str, steps: list[Step], notes: list[str]) -> RunPlan:
        slow = [s for s in steps if s.kind == "imatrix" and s.seconds > 3600 and chunks is None]
        if slow:
            part = FEWER_CHUNKS * ctx / max(1, _imatrix_tokens(calibration, None, ctx))
            notes.append(
                f"the imatrix over all of the calibration text takes ~{duration(slow[0].seconds)} "
                f"here; --chunks {FEWER_CHUNKS} would take ~{duration(slow[0].seconds * part)}"
            )
        return RunPlan(
            spec.alias, want.qtype.name, imatrix, target, route, tuple(steps), tuple(notes),
            chunks=chunks, ctx=ctx, calibration=calibration,
        )  # fmt: skip

    if _ready(target):
        return finish("local", [_reuse("quantize", target)], [f"{target.name} is complete"])
    refuse_foreign(target)
    refuse_foreign(f16)
    notes: list[str] = []
    if upstream is not None and not imatrix:
        try:
            pull = _plan_pull(spec.alias, Variant.GGUF, upstream.short, source)
            return finish("hub-gguf", [_pull_step(pull, target)], list(pull.notes))
        except (ModelNotFoundError, NetworkError) as e:
            # not there, or the hub is unreachable: the f16 weights may be here already
            notes.append(f"{e}; making it from the f16 weights instead")
    if _ready(f16):  # recorded, made from what is here (an unrecorded f16 was refused above)
        steps = [_reuse("convert", f16), *_tail(f16, target, want)]
        return finish("local", _sized(steps, f16.stat().st_size, want), notes)
    hf_dir = store.repo_folder(spec.repo_id(Variant.FULL))
    weights = sorted(hf_dir.glob("*.safetensors"))
    if (hf_dir / "config.json").is_file() and weights and all(_ready(p) for p in weights):
        steps = [_reuse("pull", hf_dir), _convert(hf_dir, f16, spec), *_tail(f16, target, want)]
        return finish("local", _sized(steps, _weights_bytes(hf_dir), want), notes)
    # Two ways to the f16 weights: compare only what differs (the steps after it are the same).
    ways: list[tuple[str, list[Step], int]] = []  # route, steps up to the f16, f16 bytes
    errors: list[Llama3zhError] = []
    try:
        pull = _plan_pull(spec.alias, Variant.GGUF, "f16", source)
        ways.append(("hub-f16", [_pull_step(pull, f16)], pull.total_bytes))
    except (ModelNotFoundError, NetworkError) as e:
        errors.append(e)
    try:
        pull = _plan_pull(spec.alias, Variant.FULL, None, source)
        weight_bytes = sum(f.size for f in pull.files if f.name.endswith(".safetensors"))
        ways.append(("full", [_pull_step(pull, hf_dir), _convert(hf_dir, f16, spec)], weight_bytes))
    except (ModelNotFoundError, NetworkError) as e:
        errors.append(e)
    if not ways:
        raise errors[-1]
    f16_bytes = max(size for *_, size in ways)
    options = sorted(
        (_total(_sized(head, f16_bytes, want)), route, head) for route, head, _ in ways
    )
    if len(options) > 1:
        label = {"hub-f16": "the hub's f16 GGUF", "full": "the full weights + convert"}
        (t1, r1, _), (t2, r2, _) = options
        notes.append(f"{label[r1]} (~{duration(t1)}) rather than {label[r2]} (~{duration(t2)})")
    _, route, head = options[0]
    return finish(route, _sized([*head, *_tail(f16, target, want)], f16_bytes, want), notes)


def plan_folder(
    hf_dir: Path,
    *,
    quant: str = catalog.DEFAULT_QUANT,
    imatrix: bool = True,
    out_dir: Path | None = None,
    chunks: int | None = None,
    ctx: int = 512,
    calibration: Path | None = None,
) -> RunPlan:
    """The same path from a local HF checkpoint folder (no hub): convert -> imatrix -> quantize.

    Raises:
        ModelNotFoundError: ``hf_dir`` is not an HF checkpoint.
        UsageError: an unknown quant type.
    """
    from .quant.quantize import parse_type

    if not (hf_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"{hf_dir} is not an HF checkpoint (no config.json)",
            hint="give a folder with config.json, *.safetensors and tokenizer.json",
        )
    want = _Want(parse_type(quant), imatrix, chunks, ctx, calibration)
    _check_imatrix(want.qtype, imatrix)
    out = out_dir or hf_dir
    f16 = out / F16
    target = out / want.qtype.filename(imatrix=imatrix)
    for p in (f16, target):
        refuse_foreign(p, out, made_from=str(hf_dir))
    steps = [_convert(hf_dir, f16, None), *_tail(f16, target, want)]
    return RunPlan(
        str(hf_dir), want.qtype.name, imatrix, target, "folder",
        tuple(_sized(steps, _weights_bytes(hf_dir), want)),
        chunks=chunks, ctx=ctx, calibration=calibration,
    )  # fmt: skip


def _check_imatrix(qtype: QuantType, imatrix: bool) -> None:
    if qtype.requires_imatrix and not imatrix:
        raise UsageError(
            f"{qtype.name} needs an importance matrix",
            hint=f"add --imatrix: llama3zh run ... -q {qtype.name} --imatrix",
        )


def _reuse(kind: str, path: Path) -> Step:
    return Step(kind, f"{kind}: {path.name} is complete", path, 0, 0.0, reuse=True)


def _plan_pull(alias: str, variant: Variant, quant: str | None, source: str) -> PullPlan:
    from .hub.pull import plan_pull
    from .quant.recommend import default_quant

    return plan_pull(alias, variant=variant, quants=[quant] if quant else (), source=source,
                     default_quant=default_quant)  # fmt: skip


def _pull_step(pull: PullPlan, output: Path) -> Step:
    left = pull.download_bytes
    what = ", ".join(f.name for f in pull.files) if len(pull.files) <= 2 else "the weights"
    size = f"{pull.total_bytes / GB:.2f} GB" + (
        f", {left / GB:.2f} GB left" if 0 < left < pull.total_bytes else ""
    )
    return Step(
        "pull",
        f"pull {what} from {pull.repo_label} ({size})",
        output,
        left,
        left / rates()["download"],
        pull=pull,
    )


def _convert(hf_dir: Path, f16: Path, spec: catalog.ModelSpec | None) -> Step:
    return Step("convert", f"convert {hf_dir.name} to {f16.name}", f16, 0, 0.0, source=hf_dir,
                note=spec.repo_id() if spec else "")  # fmt: skip


def _tail(f16: Path, target: Path, want: _Want) -> list[Step]:
    steps = []
    if want.imatrix:
        what = f"{want.chunks} chunks of" if want.chunks else "the calibration text,"
        steps.append(
            Step(
                "imatrix",
                f"imatrix of {f16.name} on {what} {want.ctx} tokens each",
                f16,
                0,
                0.0,
                source=f16,
            )
        )
    steps.append(
        Step(
            "quantize",
            f"quantize to {target.name} ({want.qtype.name})",
            target,
            0,
            0.0,
            source=f16,
            quant=want.qtype.name,
        )
    )
    return steps


def _weights_bytes(hf_dir: Path) -> int:
    return sum(p.stat().st_size for p in hf_dir.glob("*.safetensors"))


def _sized(steps: list[Step], f16_bytes: int, want: _Want) -> list[Step]:
    """Sizes and times of the steps after the pull, from the f16 size (2 bytes per weight)."""
    r = rates()
    n_weights = f16_bytes // 2
    bpw = _bits_per_weight(want.qtype.name)
    out = []
    for s in steps:
        if s.reuse or s.kind == "pull":
            out.append(s)
        elif s.kind == "convert":
            out.append(replace(s, size=f16_bytes, seconds=f16_bytes / r["convert"]))
        elif s.kind == "imatrix":
            tokens = _imatrix_tokens(want.calibration, want.chunks, want.ctx)
            out.append(replace(s, size=0, seconds=_imatrix_seconds(n_weights, tokens)))
        else:
            size = int(n_weights * bpw / 8)
            out.append(replace(s, size=size, seconds=f16_bytes / r["quantize"]))
    return out


def _bits_per_weight(name: str) -> float:
    """About how many bits a weight takes: the upstream table's ratio, else the name's digit."""
    for q in catalog.GGUF_QUANTS:
        if q.ftype == name:
            return 16 * q.size_gib / catalog.GGUF_QUANTS[0].size_gib
    m = re.search(r"(\d+)", name)
    return float(m[1]) + 0.6 if m else 16.0


def _total(steps: list[Step]) -> float:
    return sum(s.seconds for s in steps if not s.reuse)


def duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- carrying it out ------------------------------------------------------------------------------


def execute(
    plan: RunPlan,
    *,
    progress: Callable[[RunEvent], None] | None = None,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
) -> RunResult:
    """Do the steps of ``plan`` that are not complete; record each finished file.

    Raises:
        whatever the stages raise: NetworkError, IntegrityError, DiskSpaceError, BackendError,
        InvalidModelError. A finished step stays finished: the next run goes on from there.
    """
    emit = progress or (lambda _e: None)
    t0 = time.monotonic()
    n = len(plan.steps)
    folder = plan.target.parent
    imatrix_file: Path | None = None
    made: list[state.Artifact] = []
    for i, step in enumerate(plan.steps, 1):

        def work(done: int, total: int, unit: str, message: str = "", _i: int = i,
                 _s: Step = step) -> None:  # fmt: skip
            emit(RunEvent(_i, n, _s.kind, "work", message, done, total, unit))

        if step.reuse:
            emit(RunEvent(i, n, step.kind, "reuse", step.title))
            continue
        emit(RunEvent(i, n, step.kind, "start", step.title))
        t1 = time.monotonic()
        if step.kind == "pull":
            made += _pull(step, folder, work)
        elif step.kind == "convert":
            made.append(_convert_run(step, folder, work))
        elif step.kind == "imatrix":
            art = _imatrix_run(plan, step, folder, work, threads, n_gpu_layers)
            imatrix_file = folder / art.name
            made.append(art)
        else:
            made.append(_quantize_run(step, folder, imatrix_file, work, threads))
        emit(RunEvent(i, n, step.kind, "done", f"{step.kind} {duration(time.monotonic() - t1)}"))
    final = state.completed(plan.target, folder=folder)
    if final is None:  # the plan reused a verified pull: record it once
        final = _record_pulled(plan.target, folder)
    return RunResult(plan, plan.target, final.sha256, tuple(made), time.monotonic() - t0)


Work = Callable[..., None]


def _pull(step: Step, folder: Path, work: Work) -> list[state.Artifact]:
    from .hub.pull import pull

    assert step.pull is not None
    total = step.pull.download_bytes
    start: dict[str, int] = {}  # bytes of each file on disk before this run, and now
    have: dict[str, int] = {}

    def on_event(e: Event) -> None:
        if e.kind == START and e.message != "verifying":
            start[e.task] = have[e.task] = e.done
        elif e.kind == ADVANCE and e.message == "verifying":
            work(sum(have.values()) - sum(start.values()), total, "bytes", f"verifying {e.task}")
        elif e.kind == ADVANCE and e.task in start:
            have[e.task] = e.done
            work(sum(have.values()) - sum(start.values()), total, "bytes", e.task)

    t = time.monotonic()
    result = pull(step.pull, progress=on_event)
    _remember_rate("download", result.downloaded, time.monotonic() - t)
    out = []
    for f in result.files:
        if f.path.suffix == ".gguf" and f.path.parent == folder:
            out.append(_record_pulled(f.path, folder))
    return out


def _record_pulled(path: Path, folder: Path) -> state.Artifact:
    """A pulled (hub-verified) file into the state file, with the hub's sha256 when it has one."""
    entry = _verified_pull(path)
    sha = entry.sha256 if entry is not None else None
    return state.record(path, step="pull", sha256=sha, folder=folder)


def _inputs_of(hf_dir: Path) -> dict[str, str]:
    """sha256 of each file of a checkpoint (the hub's, for verified pulls; else hashed here)."""
    out = {}
    for p in sorted(hf_dir.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix == ".gguf":
            continue
        e = _verified_pull(p)
        out[p.name] = e.sha256 if e is not None and e.sha256 else state.sha256_file(p)
    return out


def _convert_run(step: Step, folder: Path, work: Work) -> state.Artifact:
    from .convert.llama import convert

    assert step.source is not None
    inputs = _inputs_of(step.source)
    done = state.completed(step.output, inputs=inputs, folder=folder)
    if done is not None and _header_is(step.output, "MOSTLY_F16"):
        return done
    # Only a file llama3zh recorded is replaced; one without a record (copied in, another
    # model's, changed since) is never adopted: its header may say F16 and its weights be others.
    refuse_foreign(step.output, folder, made_from=str(step.source))

    def on_progress(e: Event) -> None:
        if e.kind == ADVANCE:
            work(e.done, e.total, "bytes", e.message.partition("] ")[2])

    step.output.parent.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    with _staged(step.output) as staging:
        result = convert(
            source=step.source,
            output=staging,
            outtype="f16",
            force=True,
            repo=step.note or None,
            progress=on_progress,
        )
        # recorded before the rename (which keeps size and mtime): never in place unrecorded;
        # the old file (llama3zh's: refused above otherwise) goes first, so that a kill in
        # between leaves no file whose record was overwritten
        step.output.unlink(missing_ok=True)
        entry = state.record(step.output, step="convert", inputs=inputs, folder=folder,
                             measure=staging)  # fmt: skip
        os.replace(staging, step.output)
    _remember_rate("convert", result.size, time.monotonic() - t)
    return entry


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary name beside ``final`` for a stage to write to; removed unless renamed."""
    atomic.sweep(final)
    staging = atomic.temp_path(final)
    try:
        yield staging
    finally:
        staging.unlink(missing_ok=True)


def _header_is(path: Path, file_type: str) -> bool:
    """A cheap look at a recorded file's header: still a model of that file type."""
    from .gguf.info import read_gguf_info

    try:
        return read_gguf_info(path).file_type == file_type
    except Llama3zhError:
        return False


def _imatrix_run(
    plan: RunPlan,
    step: Step,
    folder: Path,
    work: Work,
    threads: int | None,
    n_gpu_layers: int | None,
) -> state.Artifact:
    from .quant.imatrix import ImatrixProgress, compute_imatrix

    assert step.source is not None

    def on_progress(p: ImatrixProgress) -> None:
        if p.message:  # building the tool, loading the model: a line of its own
            work(0, 0, "", p.message)
        elif p.chunk:
            work(p.chunk, p.n_chunks, "chunks")

    result = compute_imatrix(
        model=step.source,
        calibration=plan.calibration,
        chunks=plan.chunks,
        ctx=plan.ctx,
        n_gpu_layers=n_gpu_layers,
        threads=threads,
        progress=on_progress,
    )
    if not result.cached:
        from .hardware import detect

        hw = detect()
        weights_tokens = step.source.stat().st_size / 2 * result.n_chunks * result.ctx
        if hw.gpu_offload and hw.devices:
            _remember_rate("imatrix_gpu", weights_tokens, result.seconds)
        else:
            cores = max(1, min(threads or os.cpu_count() or 1, 16))
            _remember_rate("imatrix_cpu_core", weights_tokens / cores, result.seconds)
    inputs = {step.source.name: _sha_of(step.source, folder)}
    done = state.completed(result.path, inputs=inputs, folder=folder)
    return done or state.record(result.path, step="imatrix", inputs=inputs, folder=folder)


def _sha_of(path: Path, folder: Path) -> str:
    entry = state.completed(path, folder=folder)
    return entry.sha256 if entry is not None else state.record(path, step="input").sha256


def _quantize_run(
    step: Step, folder: Path, imatrix_file: Path | None, work: Work, threads: int | None
) -> state.Artifact:
    from .quant.quantize import QuantizeProgress, quantize

    assert step.source is not None
    inputs = {step.source.name: _sha_of(step.source, folder)}
    if imatrix_file is not None:
        inputs[os.path.relpath(imatrix_file, folder)] = _sha_of(imatrix_file, folder)
    done = state.completed(step.output, inputs=inputs, folder=folder)
    if done is not None:
        return done
    refuse_foreign(step.output, folder, made_from=step.source.name)

    def on_progress(p: QuantizeProgress) -> None:
        work(p.index, p.n_tensors, "tensors", p.tensor)

    t = time.monotonic()
    with _staged(step.output) as staging:
        result = quantize(
            model=step.source,
            types=[step.quant],
            imatrix=imatrix_file,
            output=staging,
            force=True,
            threads=threads,
            progress=on_progress,
        )
        assert result.outputs[0].path == staging
        step.output.unlink(missing_ok=True)  # ours (refused above otherwise): see _convert_run
        entry = state.record(step.output, step="quantize", inputs=inputs, folder=folder,
                             measure=staging)  # fmt: skip
        os.replace(staging, step.output)
    _remember_rate("quantize", step.source.stat().st_size, time.monotonic() - t)
    return entry
