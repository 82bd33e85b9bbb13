"""The whole path to one quantized GGUF: pull -> convert -> imatrix -> quantize, resumable.

``plan_run`` picks the cheapest way to the requested file (already here; the hub's GGUF of that
quant; the hub's f16 GGUF or the full weights, then imatrix and quantize) and estimates sizes and
times; ``execute`` carries it out. Every step writes to a temporary name and records the finished
file in the model folder's state file (``files/state.py``), so a rerun after Ctrl-C, kill -9 or a
power cut reuses what is complete and redoes only the step that was cut short.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import catalog
from .catalog import Variant
from .convert.llama import convert
from .errors import Llama3zhError, ModelNotFoundError, NetworkError, UsageError
from .estimates import (
    bits_per_weight,
    duration,
    imatrix_seconds,
    imatrix_tokens,
    rates,
    remember_imatrix_rate,
    remember_rate,
)
from .files import atomic, state
from .gguf.info import read_gguf_info
from .hub import store
from .hub.pull import PullPlan, plan_pull, pull
from .progress import DONE, REUSE, START, Callback, emitter
from .quant.fidelity import FidelityReport, fidelity
from .quant.imatrix import compute_imatrix, plan_imatrix
from .quant.options import ChunkOptions
from .quant.quantize import QuantType, parse_type, plan_quantize, quantize
from .quant.recommend import default_quant
from .quant.source import F16, store_source

GB = 1e9
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
class RunResult:
    plan: RunPlan
    target: Path
    sha256: str
    artifacts: tuple[state.Artifact, ...]
    seconds: float


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
    spec = catalog.get_model(model)
    want = _Want(parse_type(quant), imatrix, chunks, ctx, calibration)
    _check_imatrix(want.qtype, imatrix)
    upstream = next((q for q in catalog.GGUF_QUANTS if q.ftype == want.qtype.name), None)
    where = store_source(spec)
    f16, hf_dir = where.f16, where.hf_dir
    target = where.gguf_dir / want.qtype.filename(imatrix=imatrix)

    def finish(route: str, steps: list[Step], notes: list[str]) -> RunPlan:
        slow = [s for s in steps if s.kind == "imatrix" and s.seconds > 3600 and chunks is None]
        if slow:
            part = FEWER_CHUNKS * ctx / max(1, imatrix_tokens(calibration, None, ctx))
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
    bpw = bits_per_weight(want.qtype.name)
    out = []
    for s in steps:
        if s.reuse or s.kind == "pull":
            out.append(s)
        elif s.kind == "convert":
            out.append(replace(s, size=f16_bytes, seconds=f16_bytes / r["convert"]))
        elif s.kind == "imatrix":
            tokens = imatrix_tokens(want.calibration, want.chunks, want.ctx)
            out.append(replace(s, size=0, seconds=imatrix_seconds(n_weights, tokens)))
        else:
            size = int(n_weights * bpw / 8)
            out.append(replace(s, size=size, seconds=f16_bytes / r["quantize"]))
    return out


def _total(steps: list[Step]) -> float:
    return sum(s.seconds for s in steps if not s.reuse)


# -- carrying it out ------------------------------------------------------------------------------


def execute(
    plan: RunPlan,
    *,
    progress: Callback | None = None,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    first_step: int = 1,
    n_steps: int | None = None,
) -> RunResult:
    """Do the steps of ``plan`` that are not complete; record each finished file.

    ``progress`` gets each stage's own events, and "run" events for the steps: START, REUSE and
    DONE of the task ``[2/4] convert``, with the line to show as the message. ``first_step`` /
    ``n_steps``: how the steps are numbered when the plan is part of a longer run (the demo).

    Raises:
        whatever the stages raise: NetworkError, IntegrityError, DiskSpaceError, BackendError,
        InvalidModelError. A finished step stays finished: the next run goes on from there.
    """
    emit = emitter(progress, "run")
    t0 = time.monotonic()
    n = n_steps or len(plan.steps)
    run = _Run(plan, progress, threads, n_gpu_layers)
    for i, step in enumerate(plan.steps, first_step):
        head = f"[{i}/{n}] {step.kind}"
        if step.reuse:
            emit(REUSE, head, message=f"{head}: {step.title.removeprefix(step.kind + ': ')}")
            continue
        emit(START, head, message=f"{head}: {step.title}")
        t1 = time.monotonic()
        run.step(step)
        emit(DONE, head, message=f"{head}: done ({duration(time.monotonic() - t1)})")
    final = state.completed(plan.target, folder=run.folder)
    if final is None:  # the plan reused a verified pull: record it once
        final = _record_pulled(plan.target, run.folder)
    return RunResult(plan, plan.target, final.sha256, tuple(run.made), time.monotonic() - t0)


class _Run:
    """The steps of one plan, carried out in order; what they made, for the result."""

    def __init__(self, plan: RunPlan, progress: Callback | None, threads: int | None,
                 n_gpu_layers: int | None) -> None:  # fmt: skip
        self.plan = plan
        self.progress = progress
        self.threads = threads
        self.n_gpu_layers = n_gpu_layers
        self.folder = plan.target.parent
        self.imatrix: Path | None = None
        self.made: list[state.Artifact] = []

    def step(self, step: Step) -> None:
        if step.kind == "pull":
            self.made += _pull(step, self.folder, self.progress)
        elif step.kind == "convert":
            self.made.append(_convert_run(step, self.folder, self.progress))
        elif step.kind == "imatrix":
            art = self._imatrix(step)
            self.imatrix = self.folder / art.name
            self.made.append(art)
        else:
            self.made.append(self._quantize(step))

    def _imatrix(self, step: Step) -> state.Artifact:
        assert step.source is not None
        options = ChunkOptions(text=self.plan.calibration, ctx=self.plan.ctx,
                               chunks=self.plan.chunks, n_gpu_layers=self.n_gpu_layers,
                               threads=self.threads)  # fmt: skip
        result = compute_imatrix(plan_imatrix(model=step.source, options=options),
                                 progress=self.progress)  # fmt: skip
        if not result.cached:
            remember_imatrix_rate(
                f16_bytes=step.source.stat().st_size,
                threads=self.threads,
                tokens=result.n_chunks * result.ctx,
                seconds=result.seconds,
            )
        inputs = {step.source.name: _sha_of(step.source, self.folder)}
        done = state.completed(result.path, inputs=inputs, folder=self.folder)
        return done or state.record(result.path, step="imatrix", inputs=inputs, folder=self.folder)

    def _quantize(self, step: Step) -> state.Artifact:
        assert step.source is not None
        folder = self.folder
        inputs = {step.source.name: _sha_of(step.source, folder)}
        if self.imatrix is not None:
            inputs[os.path.relpath(self.imatrix, folder)] = _sha_of(self.imatrix, folder)
        done = state.completed(step.output, inputs=inputs, folder=folder)
        if done is not None:
            return done
        refuse_foreign(step.output, folder, made_from=step.source.name)
        t = time.monotonic()
        with atomic.replacing(step.output) as staging:
            plan = plan_quantize(model=step.source, types=[step.quant], imatrix=self.imatrix,
                                 output=staging, force=True, threads=self.threads)  # fmt: skip
            result = quantize(plan, progress=self.progress)
            assert result.outputs[0].path == staging
            # recorded before the rename (see _convert_run)
            step.output.unlink(missing_ok=True)  # ours (refused above otherwise)
            entry = state.record(step.output, step="quantize", inputs=inputs, folder=folder,
                                 measure=staging)  # fmt: skip
        remember_rate("quantize", step.source.stat().st_size, time.monotonic() - t)
        return entry


def _pull(step: Step, folder: Path, progress: Callback | None) -> list[state.Artifact]:
    assert step.pull is not None
    t = time.monotonic()
    result = pull(step.pull, progress=progress)
    remember_rate("download", result.downloaded, time.monotonic() - t)
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


def _convert_run(step: Step, folder: Path, progress: Callback | None) -> state.Artifact:
    assert step.source is not None
    inputs = _inputs_of(step.source)
    done = state.completed(step.output, inputs=inputs, folder=folder)
    if done is not None and _header_is(step.output, "MOSTLY_F16"):
        return done
    # Only a file llama3zh recorded is replaced; one without a record (copied in, another
    # model's, changed since) is never adopted: its header may say F16 and its weights be others.
    refuse_foreign(step.output, folder, made_from=str(step.source))
    step.output.parent.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    with atomic.replacing(step.output) as staging:
        result = convert(
            source=step.source,
            output=staging,
            outtype="f16",
            force=True,
            repo=step.note or None,
            progress=progress,
        )
        # recorded before the rename (which keeps size and mtime): never in place unrecorded;
        # the old file (llama3zh's: refused above otherwise) goes first, so that a kill in
        # between leaves no file whose record was overwritten
        step.output.unlink(missing_ok=True)
        entry = state.record(step.output, step="convert", inputs=inputs, folder=folder,
                             measure=staging)  # fmt: skip
    remember_rate("convert", result.size, time.monotonic() - t)
    return entry


def _header_is(path: Path, file_type: str) -> bool:
    """A cheap look at a recorded file's header: still a model of that file type."""
    try:
        return read_gguf_info(path).file_type == file_type
    except Llama3zhError:
        return False


def _sha_of(path: Path, folder: Path) -> str:
    entry = state.completed(path, folder=folder)
    return entry.sha256 if entry is not None else state.record(path, step="input").sha256


# -- the optional fidelity line -------------------------------------------------------------------


def fidelity_reference(plan: RunPlan) -> Path | None:
    """The HF checkpoint folder ``plan``'s GGUF is made from, when the run has it on disk: the
    folder it converts (pulled first if need be), or the model's full weights in the store."""
    for s in plan.steps:
        if s.kind == "convert" and s.source is not None:
            return s.source
    try:
        hf_dir = store_source(catalog.get_model(plan.label)).hf_dir
    except ModelNotFoundError:
        return None
    return hf_dir if (hf_dir / "config.json").is_file() else None


def check_fidelity_possible(plan: RunPlan) -> Path:
    """``run --fidelity``'s check before any work: the reference will be on disk.

    Raises:
        UsageError: the run gets its GGUF without the HF weights (nothing to compare with).
        MissingExtraError: torch / transformers are not installed.
    """
    from .hf.engine import require_torch

    require_torch(what="--fidelity")
    ref = fidelity_reference(plan)
    if ref is None:
        raise UsageError(
            f"--fidelity compares the GGUF with the HF weights, and this run of {plan.label} "
            "does not have them on disk (it uses a GGUF from the hub)",
            hint=f"download them first: llama3zh pull {plan.label} --variant full",
        )
    return ref


def run_fidelity(
    plan: RunPlan,
    target: Path,
    *,
    threads: int | None = None,
    progress: Callback | None = None,
) -> FidelityReport:
    """``eval fidelity`` of a run's GGUF against the HF weights it came from (default windows).

    Raises:
        as ``check_fidelity_possible`` and ``quant.fidelity.fidelity``.
    """
    ref = check_fidelity_possible(plan)
    return fidelity([target], reference=ref, threads=threads, progress=progress)
