"""Quantization: the llama.cpp quant types, upstream ``-im`` naming, and quantizing a GGUF.

Quantizing runs in-process through libllama's ``llama_model_quantize`` (``llamacpp.quant``),
with the importance matrix passed the way llama-quantize passes it: the output is byte-identical
to ``llama-quantize [--imatrix FILE] MODEL OUT TYPE``. Each output is written to a temporary name,
read back (architecture, file type, tensor count, size, bits per weight) and then renamed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import catalog
from ..errors import BackendError, DiskSpaceError, InvalidModelError, UsageError
from ..files import atomic, guard, state
from ..gguf.reader import read_header

# File types that are not quantizations: a source for quantizing, never requantized.
FLOAT_TYPES = ("F32", "F16", "BF16")

# File types llama.cpp refuses to write without an importance matrix: some of their tensors get
# a type that tensor_requires_imatrix() names (llama.cpp src/llama-quant.cpp; IQ2_M's default is
# IQ2_S, IQ3_XS puts IQ3_XXS in attention and most FFN layers). Parity test: llama.cpp's own
# dry run in tests/test_quantize.py.
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
class QuantizeProgress:
    """One tensor started: ``index`` of ``n_tensors`` of the ``type_index``-th output."""

    type_name: str
    type_index: int  # 1-based
    n_types: int
    index: int
    n_tensors: int
    tensor: str


Progress = Callable[[QuantizeProgress], None]


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


# -- the stage ------------------------------------------------------------------------------------


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


def source_gguf(model: Path, *, notes: list[str], dry_run: bool) -> Path:
    """The GGUF to quantize: ``model`` itself, or for an HF checkpoint folder its conversion."""
    if not model.is_dir():
        return model
    if not (model / "config.json").is_file():
        raise InvalidModelError(
            f"{model} is a folder without config.json: neither a GGUF file nor an HF checkpoint",
            hint="give a .gguf file, or an HF checkpoint folder (config.json, *.safetensors)",
        )
    from ..convert.llama import convert
    from ..convert.writer import fingerprint

    for name in ("ggml-model-f16.gguf", "ggml-model-bf16.gguf", "ggml-model-f32.gguf"):
        earlier = model / name
        if not (earlier.exists() or earlier.is_symlink()):
            continue
        # reused only when the folder's state file says it was converted from these files
        if state.completed(earlier, inputs=fingerprint(model)) is None:
            raise UsageError(
                f"{earlier} is there, but llama3zh has no record of converting it from the "
                f"checkpoint in {model} as it is now",
                hint=f"quantize that file itself (llama3zh quantize {earlier} ...), or move it "
                "away to convert the checkpoint again",
            )
        notes.append(f"using {earlier} (converted earlier from this checkpoint)")
        return earlier

    done = convert(source=model, outtype="auto", dry_run=dry_run)
    verb = "would convert" if dry_run else "converted"
    notes.append(f"{verb} the HF checkpoint to {done.path} ({done.file_type}) first")
    return done.path


def quantize(
    *,
    model: str | Path,
    types: Sequence[str | QuantType],
    imatrix: str | Path | bool | None = None,
    output: str | Path | None = None,
    force: bool = False,
    allow_requantize: bool = False,
    threads: int | None = None,
    dry_run: bool = False,
    calibration: str | Path | None = None,
    chunks: int | None = None,
    ctx: int | None = None,
    n_gpu_layers: int | None = None,
    progress: Progress | None = None,
    imatrix_progress: Callable[..., None] | None = None,
) -> QuantizeResult:
    """Quantize a GGUF (or an HF checkpoint folder, converted first) to one or more types.

    Args:
        model: an F32/F16/BF16 GGUF (a quantized one only with ``allow_requantize``), or an HF
            checkpoint folder (converted to ``ggml-model-<f16|bf16>.gguf`` in it first).
        types: llama.cpp type names, aliases or upstream short names.
        imatrix: an imatrix file, True to compute (or reuse from the cache) one on the
            calibration text, or None.
        output: a folder for the outputs, or the file for a single type (default: beside the
            source, named as upstream: ``ggml-model-q4_k-im.gguf``).
        calibration, chunks, ctx, n_gpu_layers: for computing the imatrix (``imatrix=True``).
        dry_run: check everything and report sizes (from llama.cpp's own dry run); write nothing.
        progress: called as each tensor starts.

    Raises:
        UsageError: unknown types, a type that needs an imatrix without one, outputs that exist.
        InvalidModelError: not a GGUF, already quantized, or an imatrix of another model.
        DiskSpaceError: the outputs do not fit the free space (checked before writing).
        BackendError: llama.cpp failed.
    """
    from ..gguf.info import read_gguf_info
    from ..hardware import check_threads
    from ..llamacpp import quant
    from .imatrix import check_matches, compute_imatrix, read_imatrix

    check_threads(threads)
    t0 = time.perf_counter()
    notes: list[str] = []
    warnings: list[str] = []
    qtypes_final = parse_types(types)
    src_arg = Path(model).expanduser()
    if not src_arg.exists():
        raise InvalidModelError(
            f"no model at {src_arg}",
            hint="give an F16/BF16/F32 .gguf, an HF checkpoint folder, or a pulled alias",
        )
    # -- checks that need no heavy work: types, imatrix presence, outputs
    want_imatrix = imatrix is not None and imatrix is not False
    need = [t.name for t in qtypes_final if t.requires_imatrix]
    if need and not want_imatrix:
        raise UsageError(
            f"{', '.join(need)} {'needs' if len(need) == 1 else 'need'} an importance matrix: "
            "llama.cpp refuses these types without one",
            hint="add --imatrix (computed on the built-in calibration text, or reused from "
            "the cache), or --imatrix-file FILE",
        )
    out_arg = Path(output).expanduser() if output is not None else None
    if out_arg is not None and not out_arg.parent.exists():
        raise UsageError(f"the folder {out_arg.parent} does not exist", hint="create it first")
    source = source_gguf(src_arg, notes=notes, dry_run=dry_run)
    if dry_run and not source.exists():  # an HF checkpoint that a dry run did not convert
        return QuantizeResult(
            source=source,
            source_file_type="(not converted yet)",
            outputs=(),
            imatrix=None,
            imatrix_computed=False,
            warnings=(),
            notes=tuple(notes),
            seconds=time.perf_counter() - t0,
        )
    info = read_gguf_info(source)
    info.check_loadable()  # llama-quantize reads the hyperparameters as a load does
    src_type = info.file_type.removeprefix("MOSTLY_").removeprefix("ALL_")
    if src_type not in FLOAT_TYPES:
        if not allow_requantize:
            raise InvalidModelError(
                f"{source.name} is already quantized ({src_type}); quantizing it again loses "
                "more quality than quantizing the F16/BF16 original",
                hint="quantize the f16 GGUF (llama3zh pull ALIAS --quant f16, or llama3zh "
                "convert), or add --allow-requantize to do it anyway",
            )
        warnings.append(
            f"requantizing {source.name} ({src_type}): the result is worse than the same type "
            "made from the F16/BF16 original"
        )
    targets = [
        (t, output_path(source, t, imatrix=want_imatrix, output=out_arg, n_types=len(qtypes_final)))
        for t in qtypes_final
    ]
    inputs = [source]
    if want_imatrix and imatrix is not True:
        inputs.append(Path(str(imatrix)).expanduser())
    # a name of its own (beside the source, or in an -o folder) replaces only a recorded file
    named = out_arg is not None and not (out_arg.is_dir() or str(out_arg).endswith(os.sep))
    for _t, path in targets:
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
    # -- the importance matrix
    im_path: Path | None = None
    im_computed = False
    if imatrix is True:
        im_res = compute_imatrix(
            model=source,
            calibration=calibration,
            chunks=chunks,
            ctx=ctx or 512,
            n_gpu_layers=n_gpu_layers,
            threads=threads,
            dry_run=dry_run,
            progress=imatrix_progress,
        )
        im_path = im_res.path
        im_computed = not im_res.cached and not dry_run
        how = (
            "reused from the cache"
            if im_res.cached
            else ("would be computed" if dry_run else "computed")
        )
        notes.append(f"imatrix {how}: {im_path} ({im_res.n_chunks} chunks of {im_res.ctx} tokens)")
    elif want_imatrix:
        im_path = Path(str(imatrix)).expanduser()
        if not im_path.is_file():
            read_imatrix(im_path)  # raises the "no imatrix file" error, dry run or not
    entries = None
    overrides: list[tuple[str, quant.KvValue]] = []
    if im_path is not None and im_path.is_file():
        im = read_imatrix(im_path)
        check_matches(im, source)
        entries = im.entries
        # as llama-quantize records them; the file by name, not by this machine's path
        overrides = quant.imatrix_overrides(
            file=im_path.name,
            datasets=im.datasets,
            n_entries=len(im.entries),
            n_chunks=im.chunk_count,
        )
    # -- sizes first (llama.cpp's dry run is exact), then the disk check
    planned: list[tuple[QuantType, Path, quant.QuantizeRun]] = []
    for t, path in targets:
        run = quant.quantize_file(
            source=source,
            output=path,
            ftype=t.ftype,
            imatrix=entries,
            allow_requantize=allow_requantize,
            dry_run=True,
        )
        planned.append((t, path, run))
    header = 8 << 20  # metadata (vocabulary) and alignment, generously
    need_bytes = sum(int(run.output_mib * 1024 * 1024) + header for *_, run in planned)
    if not dry_run:
        _check_space(out_dir=targets[0][1].parent, need=need_bytes)
    if dry_run:
        outputs = tuple(
            QuantizedFile(
                path=path,
                type=t.name,
                file_type=_ftype_name(t),
                size=int(run.output_mib * 1024 * 1024) + info.size - _tensor_bytes(source),
                bpw=run.output_bpw,
                tensor_count=info.tensor_count,
                imatrix=im_path,
                fallback_tensors=run.fallback_tensors,
                seconds=0.0,
                dry_run=True,
            )
            for t, path, run in planned
        )
        return QuantizeResult(
            source=source,
            source_file_type=src_type,
            outputs=outputs,
            imatrix=im_path,
            imatrix_computed=False,
            warnings=tuple(warnings),
            notes=tuple(notes),
            seconds=time.perf_counter() - t0,
        )
    written: list[QuantizedFile] = []
    for i, (t, path, _) in enumerate(planned, 1):
        t1 = time.perf_counter()
        atomic.sweep(path)
        tmp = atomic.temp_path(path)
        try:

            def on_tensor(idx: int, n: int, name: str, _t: QuantType = t, _i: int = i) -> None:
                if progress is not None:
                    progress(QuantizeProgress(_t.name, _i, len(planned), idx, n, name))

            run = quant.quantize_file(
                source=source,
                output=tmp,
                ftype=t.ftype,
                imatrix=entries,
                kv_overrides=overrides,
                allow_requantize=allow_requantize,
                nthread=threads or 0,
                on_tensor=on_tensor,
            )
            back = read_back(tmp, expect=t, source_tensors=info.tensor_count)
            if not named:  # recorded before the rename: the next --force may replace it
                path.unlink(missing_ok=True)  # ours (checked above); no stale record left
                st = source.stat()
                made_from = {source.name: f"size {st.st_size} mtime_ns {st.st_mtime_ns}"}
                state.record(path, step="quantize", inputs=made_from, measure=tmp)
            os.replace(tmp, path)
        except (BackendError, InvalidModelError) as e:
            # llama.cpp reports a full disk as a stream error ("basic_ios::clear"): say which
            if shutil.disk_usage(path.parent).free < (64 << 20):
                raise DiskSpaceError(
                    f"the disk holding {path.parent} is full: {t.name} could not be written ({e})",
                    hint="free some space or write elsewhere with -o; existing files were "
                    "left as they were",
                ) from e
            raise
        finally:
            tmp.unlink(missing_ok=True)
        written.append(
            QuantizedFile(
                path=path,
                type=t.name,
                file_type=back.file_type,
                size=path.stat().st_size,
                bpw=back.bpw,
                tensor_count=back.tensor_count,
                imatrix=im_path,
                fallback_tensors=run.fallback_tensors,
                seconds=time.perf_counter() - t1,
            )
        )
    for w in written:
        if w.fallback_tensors:
            notes.append(
                f"{w.type}: llama.cpp gave {w.fallback_tensors} of {w.tensor_count} tensors "
                f"another type, as their rows ({info.n_embd} wide) are not a multiple of the "
                "type's block"
            )
    return QuantizeResult(
        source=source,
        source_file_type=src_type,
        outputs=tuple(written),
        imatrix=im_path,
        imatrix_computed=im_computed,
        warnings=tuple(warnings),
        notes=tuple(notes),
        seconds=time.perf_counter() - t0,
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
    from ..gguf.info import read_gguf_info

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


def _check_space(*, out_dir: Path, need: int) -> None:
    free = shutil.disk_usage(out_dir).free
    reserve = 64 << 20  # the disk is never filled to the last byte
    if free < need + reserve:
        raise DiskSpaceError(
            f"not enough free space in {out_dir}: the outputs need {need / 1e9:.2f} GB plus "
            f"{reserve / 1e9:.2f} GB kept free, {free / 1e9:.2f} GB are free",
            hint="free some space, quantize fewer types at once, or write elsewhere with -o",
        )
