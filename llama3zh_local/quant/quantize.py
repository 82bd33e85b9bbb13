"""Quantization: the llama.cpp quant types, upstream ``-im`` naming, and quantizing a GGUF.

Quantizing runs in-process through libllama's ``llama_model_quantize`` (``llamacpp.quant``),
with the importance matrix passed the way llama-quantize passes it: the output is byte-identical
to ``llama-quantize [--imatrix FILE] MODEL OUT TYPE``. Each output is written to a temporary name,
read back (architecture, file type, tensor count, size, bits per weight) and then renamed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .. import catalog, hardware
from .. import progress as p
from ..errors import BackendError, DiskSpaceError, InvalidModelError, UsageError
from ..files import atomic, guard, space, state
from ..gguf.info import GGUFInfo, read_gguf_info
from ..gguf.reader import read_header
from ..llamacpp import quant
from .imatrix import (
    Imatrix,
    ImatrixPlan,
    check_matches,
    compute_imatrix,
    plan_imatrix,
    read_imatrix,
)
from .options import ChunkOptions
from .source import source_gguf

# File types that are not quantizations: a source for quantizing, never requantized.
FLOAT_TYPES = ("F32", "F16", "BF16")

# File types llama.cpp refuses to write without an importance matrix: some of their tensors get
# a type that tensor_requires_imatrix() names (llama.cpp src/llama-quant.cpp; IQ2_M's default is
# IQ2_S, IQ3_XS puts IQ3_XXS in attention and most FFN layers). Parity test: llama.cpp's own
# dry run in tests/test_quant_quantize.py.
REQUIRES_IMATRIX = frozenset(
    {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
)

# llama-quantize's own aliases (tools/quantize/quantize.cpp QUANT_OPTIONS).
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# File types llama_cpp lists that llama-quantize does not offer for a dense model: GUESSED is no
# type, MXFP4_MOE is for MoE experts, NVFP4 has no default tensor type in llama_model_quantize
# ("invalid output file type"). Parity test with llama-quantize's list: test_quantize_smollm2.py.
_SKIP = {"GUESSED", "MXFP4_MOE", "NVFP4"}


@dataclass(frozen=True)
class QuantType:
    """One llama.cpp file type that quantize can produce."""

    name: str  # llama.cpp's name, e.g. Q4_K_M
    ftype: int  # llama_ftype value
    short: str  # the file-name part: catalog short name (q4_k) or the lower-case name

    @property
    def requires_imatrix(self) -> bool:
        return self.name in REQUIRES_IMATRIX

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_TYPES

    def filename(self, *, imatrix: bool) -> str:
        """The upstream file name: ``ggml-model-q4_k.gguf``, ``ggml-model-q4_k-im.gguf``."""
        return f"ggml-model-{self.short}{'-im' if imatrix else ''}.gguf"


def quant_types() -> dict[str, QuantType]:
    """All file types of the installed llama.cpp, by name (from ``llama_cpp.LLAMA_FTYPE_*``).

    Names are mirrored by gguf.LlamaFileType too; the installed library is what quantizes, so
    its list wins. Short names follow the upstream repos (catalog.GGUF_QUANTS).
    """
    import llama_cpp

    shorts = {q.ftype: q.short for q in catalog.GGUF_QUANTS}
    out: dict[str, QuantType] = {}
    for attr in sorted(dir(llama_cpp)):
        if not attr.startswith("LLAMA_FTYPE_"):
            continue
        name = attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
        if name in _SKIP:
            continue
        out[name] = QuantType(name, int(getattr(llama_cpp, attr)), shorts.get(name, name.lower()))
    return dict(sorted(out.items(), key=lambda kv: kv[1].ftype))


def parse_type(value: str, types: dict[str, QuantType] | None = None) -> QuantType:
    """A quant type from llama.cpp's name (``Q4_K_M``, any case), its alias (``Q4_K``) or an
    upstream short name (``q4_k``); a trailing ``-im`` is accepted and ignored.

    Raises:
        UsageError: unknown type (the message lists the valid ones).
    """
    types = types or quant_types()
    key = value.strip().upper().replace("-", "_").removesuffix("_IM")
    key = ALIASES.get(key, key)
    if key in types:
        return types[key]
    for t in types.values():
        if t.short.upper() == key:
            return t
    raise UsageError(
        f"unknown quant type {value!r}",
        hint="valid types: "
        + ", ".join(types)
        + "; upstream short names: "
        + ", ".join(q.short for q in catalog.GGUF_QUANTS),
    )


def parse_types(values: Iterable[str | QuantType]) -> list[QuantType]:
    """``--type`` values (repeated or comma-separated) as quant types, duplicates dropped."""
    table: dict[str, QuantType] | None = None
    out: list[QuantType] = []
    for v in values:
        if isinstance(v, QuantType):
            found = [v]
        else:
            table = table or quant_types()
            found = [parse_type(p, table) for p in v.split(",") if p.strip()]
        out.extend(t for t in found if t not in out)
    if not out:
        raise UsageError("no quant type given", hint="for example --type Q4_K_M")
    return out


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedFile:
    """One written (or, for a dry run, planned) output, as read back from disk."""

    path: Path
    type: str  # Q4_K_M
    file_type: str  # read back: gguf.LlamaFileType name, e.g. MOSTLY_Q4_K_M
    size: int  # bytes (estimated by llama.cpp for a dry run)
    bpw: float  # bits per weight of the tensor data
    tensor_count: int
    imatrix: Path | None
    fallback_tensors: int  # tensors llama.cpp gave another type (row length not a multiple)
    seconds: float
    dry_run: bool = False


@dataclass(frozen=True)
class QuantizeResult:
    source: Path
    source_file_type: str
    outputs: tuple[QuantizedFile, ...]
    imatrix: Path | None
    imatrix_computed: bool  # this run computed it (else given or reused from the cache)
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float


def output_path(source: Path, qtype: QuantType, *, imatrix: bool, output: Path | None,
                n_types: int) -> Path:  # fmt: skip
    """Where ``qtype`` goes: beside the source, in the ``output`` folder, or ``output`` itself.

    Raises:
        UsageError: ``output`` is a file name but several types were asked for.
    """
    name = qtype.filename(imatrix=imatrix)
    if output is None:
        return source.parent / name
    if output.is_dir() or str(output).endswith(os.sep):
        return output / name
    if n_types > 1:
        raise UsageError(
            f"-o {output} names one file, but {n_types} types were asked for",
            hint="give -o a folder, or quantize one type at a time",
        )
    return output


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One output: its type, where it goes, and llama.cpp's dry run of it (exact sizes)."""

    type: QuantType
    path: Path
    estimate: quant.QuantizeRun


@dataclass(frozen=True)
class QuantizePlan:
    """Checked inputs and outputs of a quantize run; nothing written yet (an HF checkpoint
    folder is converted while planning: the sizes come from its GGUF)."""

    source: Path
    source_file_type: str  # F16, or "(not converted yet)" for a dry run of a checkpoint
    info: GGUFInfo | None  # the source's header (None: not converted yet)
    targets: tuple[Target, ...]
    # the importance matrix: computed (or reused from the cache) by this plan, a file read and
    # checked already, or none
    imatrix: ImatrixPlan | Imatrix | None
    named: bool  # -o names the output file (then it is not recorded in a state file)
    allow_requantize: bool
    threads: int | None
    dry_run: bool
    warnings: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def imatrix_path(self) -> Path | None:
        if isinstance(self.imatrix, ImatrixPlan):
            return self.imatrix.output
        return self.imatrix.path if self.imatrix is not None else None


def plan_quantize(
    *,
    model: str | Path,
    types: Sequence[str | QuantType],
    imatrix: Path | ChunkOptions | None = None,
    output: str | Path | None = None,
    force: bool = False,
    allow_requantize: bool = False,
    threads: int | None = None,
    dry_run: bool = False,
) -> QuantizePlan:
    """Check everything a quantize run needs, before any heavy work, and size the outputs.

    Args:
        model: an F32/F16/BF16 GGUF (a quantized one only with ``allow_requantize``), or an HF
            checkpoint folder (converted to ``ggml-model-<f16|bf16>.gguf`` in it first).
        types: llama.cpp type names, aliases or upstream short names.
        imatrix: an imatrix file; or the calibration run to compute one on (reused from the
            cache when model, text and settings are unchanged); or None for no imatrix.
        output: a folder for the outputs, or the file for a single type (default: beside the
            source, named as upstream: ``ggml-model-q4_k-im.gguf``).
        dry_run: check everything and report sizes (from llama.cpp's own dry run); write nothing.

    Raises:
        UsageError: unknown types, a type that needs an imatrix without one, outputs that exist.
        InvalidModelError: not a GGUF, already quantized, or an imatrix of another model.
        DiskSpaceError: the outputs do not fit the free space (checked before writing).
    """
    hardware.check_threads(threads)
    qtypes = parse_types(types)
    _check_needs_imatrix(qtypes, want=imatrix is not None)
    src_arg = Path(model).expanduser()
    if not src_arg.exists():
        raise InvalidModelError(
            f"no model at {src_arg}",
            hint="give an F16/BF16/F32 .gguf, an HF checkpoint folder, or a pulled alias",
        )
    out_arg = Path(output).expanduser() if output is not None else None
    if out_arg is not None and not out_arg.parent.exists():
        raise UsageError(f"the folder {out_arg.parent} does not exist", hint="create it first")
    found = source_gguf(src_arg, dry_run=dry_run)
    plan = QuantizePlan(
        source=found.path,
        source_file_type="(not converted yet)",
        info=None,
        targets=(),
        imatrix=None,
        named=False,
        allow_requantize=allow_requantize,
        threads=threads,
        dry_run=dry_run,
        warnings=(),
        notes=(found.note,) if found.note else (),
    )
    if dry_run and not found.path.exists():  # an HF checkpoint that a dry run did not convert
        return plan
    info = read_gguf_info(found.path)
    info.check_loadable()  # llama-quantize reads the hyperparameters as a load does
    src_type = info.file_type.removeprefix("MOSTLY_").removeprefix("ALL_")
    warnings = _requantize_warning(found.path, src_type, allow=allow_requantize)
    named = out_arg is not None and not (out_arg.is_dir() or str(out_arg).endswith(os.sep))
    paths = [
        output_path(found.path, t, imatrix=imatrix is not None, output=out_arg,
                    n_types=len(qtypes))
        for t in qtypes
    ]  # fmt: skip
    inputs = [found.path, *([imatrix.expanduser()] if isinstance(imatrix, Path) else [])]
    _check_outputs(paths, inputs=inputs, named=named, force=force, dry_run=dry_run)
    im = _plan_imatrix(imatrix, found.path)
    targets = _estimate(qtypes, paths, source=found.path, imatrix=im, allow=allow_requantize)
    if not dry_run:
        need = sum(int(t.estimate.output_mib * 1024 * 1024) + _HEADER for t in targets)
        hint = "quantize fewer types at once, or write elsewhere with -o"
        space.check_space(targets[0].path.parent, need, what="the quantized outputs", hint=hint)
    return replace(plan, source_file_type=src_type, info=info, targets=tuple(targets),
                   imatrix=im, named=named, warnings=warnings)  # fmt: skip


_HEADER = 8 << 20  # an output's metadata (vocabulary) and alignment, generously


def _check_needs_imatrix(qtypes: Sequence[QuantType], *, want: bool) -> None:
    need = [t.name for t in qtypes if t.requires_imatrix]
    if need and not want:
        raise UsageError(
            f"{', '.join(need)} {'needs' if len(need) == 1 else 'need'} an importance matrix: "
            "llama.cpp refuses these types without one",
            hint="add --imatrix (computed on the built-in calibration text, or reused from "
            "the cache), or --imatrix-file FILE",
        )


def _requantize_warning(source: Path, src_type: str, *, allow: bool) -> tuple[str, ...]:
    """Nothing for a float source; a warning for a quantized one (refused unless ``allow``)."""
    if src_type in FLOAT_TYPES:
        return ()
    if not allow:
        raise InvalidModelError(
            f"{source.name} is already quantized ({src_type}); quantizing it again loses "
            "more quality than quantizing the F16/BF16 original",
            hint="quantize the f16 GGUF (llama3zh pull ALIAS --quant f16, or llama3zh "
            "convert), or add --allow-requantize to do it anyway",
        )
    return (
        f"requantizing {source.name} ({src_type}): the result is worse than the same type "
        "made from the F16/BF16 original",
    )


def _check_outputs(paths: Sequence[Path], *, inputs: Sequence[Path], named: bool, force: bool,
                   dry_run: bool) -> None:  # fmt: skip
    """Outputs never replace inputs; an existing one needs --force, and (unless -o names it)
    must be llama3zh's own."""
    for path in paths:
        guard.check_not_input(path, inputs)
        guard.check_replaceable(path)
        if path.exists() and not force and not dry_run:
            raise UsageError(
                f"{path} already exists", hint="add --force to replace it, or choose another -o"
            )
        if path.exists() and not named and not guard.owned_file(path):
            raise UsageError(
                f"{path} already exists and llama3zh did not write it",
                hint=f"name it to replace it: -o {path} --force (or choose another -o)",
            )


def _plan_imatrix(
    imatrix: Path | ChunkOptions | None, source: Path
) -> ImatrixPlan | Imatrix | None:
    """The computation planned, or the given file read and checked against the source."""
    if isinstance(imatrix, ChunkOptions):
        return plan_imatrix(model=source, options=imatrix)
    if imatrix is None:
        return None
    im = read_imatrix(imatrix.expanduser())  # a missing file is refused, dry run or not
    check_matches(im, source)
    return im


def _estimate(qtypes: Sequence[QuantType], paths: Sequence[Path], *, source: Path,
              imatrix: ImatrixPlan | Imatrix | None, allow: bool) -> list[Target]:  # fmt: skip
    """llama.cpp's dry run of each type: exact sizes before anything is written."""
    entries = imatrix.entries if isinstance(imatrix, Imatrix) else None
    return [
        Target(t, path, quant.quantize_file(source=source, output=path, ftype=t.ftype,
                                            imatrix=entries, allow_requantize=allow, dry_run=True))
        for t, path in zip(qtypes, paths, strict=True)
    ]  # fmt: skip


# -- carrying it out ------------------------------------------------------------------------------


def quantize(plan: QuantizePlan, *, progress: p.Callback | None = None) -> QuantizeResult:
    """Write the outputs of ``plan`` (for a dry run: report them), computing its imatrix first.

    Each output is written to a temporary name, read back (file type, tensor count) and
    renamed. ``progress`` gets the imatrix's events and "quantize" events: one task per output
    (``Q4_K_M [1/2]``), its tensors as they start.

    Raises:
        InvalidModelError: an output does not read back as asked.
        DiskSpaceError: the disk filled up while writing.
        BackendError: llama.cpp failed.
    """
    t0 = time.perf_counter()
    if plan.dry_run:
        return _result(plan, tuple(_planned(plan)), plan.notes + _imatrix_note(plan), t0)
    im, computed = _imatrix_for(plan, progress)
    overrides: list[tuple[str, quant.KvValue]] = []
    if im is not None:  # as llama-quantize records them; the file by name, not by its path
        overrides = quant.imatrix_overrides(
            file=im.path.name,
            datasets=im.datasets,
            n_entries=len(im.entries),
            n_chunks=im.chunk_count,
        )
    run = _Writer(plan, im, overrides, p.emitter(progress, "quantize"))
    written = tuple(run.write(i, t) for i, t in enumerate(plan.targets, 1))
    notes = plan.notes + _imatrix_note(plan, cached=not computed) + _fallback_notes(plan, written)
    return _result(plan, written, notes, t0, imatrix_computed=computed)


def _imatrix_for(plan: QuantizePlan, progress: p.Callback | None) -> tuple[Imatrix | None, bool]:
    """The importance matrix to use (computed now when planned so) and whether it was."""
    if not isinstance(plan.imatrix, ImatrixPlan):
        return plan.imatrix, False
    done = compute_imatrix(plan.imatrix, progress=progress)
    im = read_imatrix(done.path)
    check_matches(im, plan.source)
    return im, not done.cached


def _imatrix_note(plan: QuantizePlan, *, cached: bool | None = None) -> tuple[str, ...]:
    im = plan.imatrix
    if not isinstance(im, ImatrixPlan):
        return ()
    if plan.dry_run:
        how = "reused from the cache" if im.cached else "would be computed"
    else:
        how = "reused from the cache" if cached else "computed"
    return (f"imatrix {how}: {im.output} ({im.n_chunks} chunks of {im.ctx} tokens)",)


def _fallback_notes(plan: QuantizePlan, written: Sequence[QuantizedFile]) -> tuple[str, ...]:
    n_embd = plan.info.n_embd if plan.info is not None else 0
    return tuple(
        f"{w.type}: llama.cpp gave {w.fallback_tensors} of {w.tensor_count} tensors another "
        f"type, as their rows ({n_embd} wide) are not a multiple of the type's block"
        for w in written
        if w.fallback_tensors
    )


def _planned(plan: QuantizePlan) -> list[QuantizedFile]:
    """A dry run's outputs, sized by llama.cpp's dry run plus the source's header."""
    if plan.info is None:
        return []
    header = plan.info.size - _tensor_bytes(plan.source)
    return [
        QuantizedFile(
            path=t.path,
            type=t.type.name,
            file_type=_ftype_name(t.type),
            size=int(t.estimate.output_mib * 1024 * 1024) + header,
            bpw=t.estimate.output_bpw,
            tensor_count=plan.info.tensor_count,
            imatrix=plan.imatrix_path,
            fallback_tensors=t.estimate.fallback_tensors,
            seconds=0.0,
            dry_run=True,
        )
        for t in plan.targets
    ]


def _result(plan: QuantizePlan, outputs: tuple[QuantizedFile, ...], notes: tuple[str, ...],
            t0: float, *, imatrix_computed: bool = False) -> QuantizeResult:  # fmt: skip
    return QuantizeResult(
        source=plan.source,
        source_file_type=plan.source_file_type,
        outputs=outputs,
        imatrix=plan.imatrix_path,
        imatrix_computed=imatrix_computed,
        warnings=plan.warnings,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class _Writer:
    """Writes one target at a time: temporary name, read back, recorded, renamed."""

    plan: QuantizePlan
    imatrix: Imatrix | None
    overrides: list[tuple[str, quant.KvValue]]
    emit: Callable[..., None]

    def write(self, index: int, target: Target) -> QuantizedFile:
        t0 = time.perf_counter()
        assert self.plan.info is not None
        n_tensors = self.plan.info.tensor_count
        task = f"{target.type.name} [{index}/{len(self.plan.targets)}]"
        self.emit(p.START, task, total=n_tensors, unit="tensors")

        def on_tensor(idx: int, n: int, name: str) -> None:
            self.emit(p.ADVANCE, task, done=idx, total=n, unit="tensors", message=name)

        try:
            run, back = self._write(target, on_tensor)
        except (BackendError, InvalidModelError, DiskSpaceError) as e:
            self.emit(p.FAILED, task, message=str(e))
            raise
        self.emit(p.DONE, task, done=n_tensors, total=n_tensors, unit="tensors")
        return QuantizedFile(
            path=target.path,
            type=target.type.name,
            file_type=back.file_type,
            size=target.path.stat().st_size,
            bpw=back.bpw,
            tensor_count=back.tensor_count,
            imatrix=self.imatrix.path if self.imatrix is not None else None,
            fallback_tensors=run.fallback_tensors,
            seconds=time.perf_counter() - t0,
        )

    def _write(self, target: Target, on_tensor: quant.TensorProgress
               ) -> tuple[quant.QuantizeRun, ReadBack]:  # fmt: skip
        plan, path = self.plan, target.path
        assert plan.info is not None
        with atomic.replacing(path) as tmp:
            try:
                run = quant.quantize_file(
                    source=plan.source,
                    output=tmp,
                    ftype=target.type.ftype,
                    imatrix=self.imatrix.entries if self.imatrix is not None else None,
                    kv_overrides=self.overrides,
                    allow_requantize=plan.allow_requantize,
                    nthread=plan.threads or 0,
                    on_tensor=on_tensor,
                )
            except (BackendError, InvalidModelError) as e:
                # asked while the partial output still takes its room (it is removed after)
                full = _full_disk(target, e)
                if full is not None:
                    raise full from e
                raise
            back = read_back(tmp, expect=target.type, source_tensors=plan.info.tensor_count)
            if not plan.named:  # recorded before the rename: the next --force may replace it
                path.unlink(missing_ok=True)  # ours (checked when planning); no stale record
                st = plan.source.stat()
                made_from = {plan.source.name: f"size {st.st_size} mtime_ns {st.st_mtime_ns}"}
                state.record(path, step="quantize", inputs=made_from, measure=tmp)
        return run, back


def _full_disk(target: Target, e: Exception) -> DiskSpaceError | None:
    """llama.cpp reports a full disk as a stream error ("basic_ios::clear"): say which."""
    if space.free_bytes(target.path.parent) >= space.RESERVE:
        return None
    return DiskSpaceError(
        f"the disk holding {target.path.parent} is full: {target.type.name} could not be "
        f"written ({e})",
        hint="free some space or write elsewhere with -o; existing files were left as they were",
    )


@dataclass(frozen=True)
class ReadBack:
    file_type: str
    tensor_count: int
    bpw: float
    architecture: str


def read_back(path: Path, *, expect: QuantType, source_tensors: int) -> ReadBack:
    """Open a written GGUF with llama.cpp's parser and check it is the type asked for.

    Raises:
        InvalidModelError: anything is off (the caller deletes the file).
    """
    info = read_gguf_info(path)
    want = expect.name if expect.name == "F32" else f"MOSTLY_{expect.name}"
    problems = []
    if info.file_type.removeprefix("ALL_") != want.removeprefix("ALL_"):
        problems.append(f"file type {info.file_type}, expected {want}")
    if info.tensor_count != source_tensors:
        problems.append(f"{info.tensor_count} tensors, the source has {source_tensors}")
    if problems:
        raise InvalidModelError(
            f"the quantized file does not read back as expected: {'; '.join(problems)}",
            hint="this is a bug in llama3zh quantize; please report it",
        )
    return ReadBack(info.file_type, info.tensor_count, bits_per_weight(path), info.architecture)


def bits_per_weight(path: Path) -> float:
    """Bits of tensor data per weight (as llama.cpp reports BPW)."""
    header = read_header(path)
    if header is None:
        return 0.0
    n = sum(t.n_elements for t in header.tensors)
    return header.tensor_bytes * 8 / n if n else 0.0


def _ftype_name(t: QuantType) -> str:
    """gguf.LlamaFileType's name of a type (``MOSTLY_Q4_K_M``, ``ALL_F32``), as read back."""
    import gguf

    try:
        return gguf.LlamaFileType(t.ftype).name
    except ValueError:
        return f"MOSTLY_{t.name}"


def _tensor_bytes(path: Path) -> int:
    header = read_header(path)
    return header.tensor_bytes if header else 0
