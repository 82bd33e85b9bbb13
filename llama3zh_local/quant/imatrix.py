"""Importance matrices: which inputs of each weight matrix matter, measured on calibration text.

The matrix is computed by llama.cpp's own ``llama-imatrix``, compiled from the llama.cpp source
of the installed llama-cpp-python against its libraries (``llamacpp.tools``: about three
minutes once, then cached; see docs/quantization.md for why not a Python re-implementation).
This module plans the run (tokens, chunks, GPU layers), streams its progress, caches the result
next to the model keyed by model + text + settings, and reads and checks imatrix files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import hardware, paths
from ..errors import InputError, InvalidModelError, UsageError
from ..files import atomic, guard
from ..gguf.info import read_gguf_info
from ..gguf.reader import read_tensors
from ..llamacpp import installed, process, quant, tools
from ..progress import Callback
from .options import ChunkOptions, check_token_count, read_text
from .tracker import ChunkTracker

if TYPE_CHECKING:
    import numpy as np

CALIBRATION_NAME = "llama3zh-calibration-v1.txt"
CACHE_DIR = ".imatrix"  # beside the model; hidden, so the store does not list it as a model
# bump when the cache key's meaning changes
_CACHE_VERSION = 1

# The GGUF imatrix format (llama.cpp common/imatrix-loader.h).
KV_DATASETS = "imatrix.datasets"
KV_CHUNK_COUNT = "imatrix.chunk_count"
KV_CHUNK_SIZE = "imatrix.chunk_size"
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"


def default_calibration() -> Path:
    """The calibration text shipped with the package (composition: docs/quantization.md)."""
    return paths.data_file(CALIBRATION_NAME)


@dataclass(frozen=True)
class ImatrixPlan:
    """What a run will do: checked inputs, the number of chunks, the command."""

    model: Path
    calibration: Path
    output: Path
    ctx: int
    n_chunks: int
    n_tokens: int
    n_gpu_layers: int
    threads: int | None
    cache_key: str
    cached: bool  # ``output`` already holds this imatrix
    command: tuple[str, ...]


@dataclass(frozen=True)
class ImatrixResult:
    path: Path
    model: Path
    calibration: Path
    ctx: int
    n_chunks: int
    n_tokens: int
    n_entries: int
    cached: bool
    dry_run: bool
    seconds: float
    ppl: float | None  # llama-imatrix's perplexity estimate over the chunks (None when cached)
    command: tuple[str, ...]


@dataclass(frozen=True)
class Imatrix:
    """An imatrix file as llama-quantize loads it: per tensor, the mean squared activations."""

    path: Path
    entries: dict[str, np.ndarray] = field(repr=False)  # float32, divided by the counts
    datasets: tuple[str, ...]
    chunk_count: int
    chunk_size: int
    legacy: bool  # the old .dat format


# -- reading -------------------------------------------------------------------------------------


def read_imatrix(path: str | Path) -> Imatrix:
    """Load an imatrix (GGUF, or the legacy .dat format) the way llama-quantize does.

    Mirrors ``load_imatrix`` in llama.cpp's tools/quantize/quantize.cpp: GGUF sums are divided
    by their per-expert counts (1 where a count is 0); legacy values by their call count.

    Raises:
        ModelNotFoundError-like InputError: no such file.
        InvalidModelError: not an imatrix file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"no imatrix file at {path}",
            hint="compute one: llama3zh imatrix MODEL -o imatrix.gguf (or --imatrix alone)",
        )
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return _read_gguf_imatrix(path)
    return _read_legacy_imatrix(path)


def _read_gguf_imatrix(path: Path) -> Imatrix:
    """An imatrix GGUF; a damaged one (truncated, odd shapes) is an InvalidModelError."""
    try:
        return _parse_gguf_imatrix(path)
    except InvalidModelError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, struct.error, ZeroDivisionError) as e:
        # GGUFReader and numpy fail in many ways on a cut file: every one means "damaged"
        raise InvalidModelError(
            f"{path} is a damaged or truncated imatrix file ({type(e).__name__}: {e})",
            hint="compute it again: llama3zh imatrix MODEL -o imatrix.gguf",
        ) from None
    except OSError as e:
        raise InvalidModelError(
            f"{path} cannot be read: {e.strerror or e}",
            hint="check the file and its permissions",
        ) from None


def _parse_gguf_imatrix(path: Path) -> Imatrix:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    fields = reader.fields

    def scalar(key: str) -> int | None:
        f = fields.get(key)
        return int(f.parts[f.data[0]][0]) if f is not None and f.data else None

    datasets: tuple[str, ...] = ()
    if (f := fields.get(KV_DATASETS)) is not None:
        datasets = tuple(bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data)
    chunk_count, chunk_size = scalar(KV_CHUNK_COUNT), scalar(KV_CHUNK_SIZE)
    if f is None or chunk_count is None or chunk_size is None:
        kind = fields.get(gguf.Keys.General.ARCHITECTURE)
        what = "a model, not an imatrix" if kind is not None else "not an imatrix file"
        raise InvalidModelError(
            f"{path} is {what} (no imatrix.* metadata)",
            hint="give --imatrix the .gguf that `llama3zh imatrix` or llama-imatrix wrote",
        )
    size = path.stat().st_size
    for t in reader.tensors:  # GGUFReader maps a cut file without a word: check the ends
        if t.data_offset + t.n_bytes > size or t.data.size != t.n_elements:
            raise InvalidModelError(
                f"{path} is truncated: tensor {t.name} ends at byte {t.data_offset + t.n_bytes:,}"
                f", the file has {size:,}",
                hint="compute it again: llama3zh imatrix MODEL -o imatrix.gguf",
            )
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name.endswith(SUM_SUFFIX):
            sums[t.name[: -len(SUM_SUFFIX)]] = np.asarray(t.data, dtype=np.float32)
        elif t.name.endswith(COUNT_SUFFIX):
            counts[t.name[: -len(COUNT_SUFFIX)]] = np.asarray(t.data, dtype=np.float32)
    if not sums or set(sums) != set(counts):
        raise InvalidModelError(
            f"{path}: imatrix sums and counts do not pair up",
            hint="compute it again: llama3zh imatrix MODEL -o imatrix.gguf",
        )
    entries: dict[str, np.ndarray] = {}
    for name, s in sums.items():
        s = s.reshape(-1)
        c = np.rint(counts[name].reshape(-1))  # lround
        ne0 = s.size // c.size
        out = np.ones(s.size, dtype=np.float32)
        for j, count in enumerate(c):
            if count > 0:
                out[j * ne0 : (j + 1) * ne0] = s[j * ne0 : (j + 1) * ne0] / np.float32(count)
        entries[name] = out
    return Imatrix(path, entries, datasets, int(chunk_count), int(chunk_size), legacy=False)


def _read_legacy_imatrix(path: Path) -> Imatrix:
    import numpy as np

    data = path.read_bytes()
    try:
        (n_entries,) = struct.unpack_from("<i", data, 0)
        if n_entries < 1:
            raise ValueError
        pos = 4
        entries: dict[str, np.ndarray] = {}
        for _ in range(n_entries):
            (n,) = struct.unpack_from("<i", data, pos)
            name = data[pos + 4 : pos + 4 + n].decode("utf-8")
            pos += 4 + n
            ncall, nval = struct.unpack_from("<ii", data, pos)
            pos += 8
            if nval < 1:
                raise ValueError
            vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
            pos += 4 * nval
            entries[name] = vals / np.float32(ncall) if ncall > 0 else vals.copy()
        chunks = 0
        datasets: tuple[str, ...] = ()
        if pos + 4 <= len(data):
            (chunks,) = struct.unpack_from("<i", data, pos)
            if pos + 8 <= len(data):
                (n,) = struct.unpack_from("<i", data, pos + 4)
                if n > 0:
                    datasets = (data[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace"),)
    except (struct.error, ValueError, UnicodeDecodeError):
        raise InvalidModelError(
            f"{path} is not an imatrix file (neither GGUF nor llama.cpp's .dat format)",
            hint="give --imatrix the file that `llama3zh imatrix` or llama-imatrix wrote",
        ) from None
    return Imatrix(path, entries, datasets, chunks, 0, legacy=True)


def check_matches(imatrix: Imatrix, model: Path) -> None:
    """Refuse an imatrix computed on another model: every entry must name a weight of
    ``model`` and have its row length (x experts), as llama.cpp requires.

    Raises:
        InvalidModelError: names or sizes differ (the first few are listed).
    """
    shapes = {t.name: t.shape for t in read_tensors(model)}
    missing, wrong = [], []
    for name, values in imatrix.entries.items():
        shape = shapes.get(name)
        if shape is None:
            missing.append(name)
            continue
        want = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if values.size != want:
            wrong.append(f"{name} ({values.size} values, the model's rows have {want})")
    if missing or wrong:
        problems = (
            [f"{len(missing)} tensors the model lacks, e.g. {', '.join(missing[:2])}"]
            if missing
            else []
        ) + ([f"{len(wrong)} of another size, e.g. {wrong[0]}"] if wrong else [])
        raise InvalidModelError(
            f"{imatrix.path.name} was computed on a different model than {model.name}: "
            + "; ".join(problems),
            hint=f"compute one for this model: llama3zh imatrix {model}",
        )


# -- computing ---------------------------------------------------------------------------------


def model_fingerprint(path: Path) -> str:
    """A cheap content hash of a model file: its size and 16 blocks of 64 KiB spread over it.

    Different weights (another fine-tune of the same architecture) differ in the sampled blocks;
    a copied or re-downloaded file keeps its key.
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    block, n = 1 << 16, 16
    with path.open("rb") as fh:
        for i in range(n):
            fh.seek(max(0, (size - block) * i // (n - 1)))
            h.update(fh.read(block))
    return h.hexdigest()


def cache_key(
    *, model: Path, calibration_sha256: str, ctx: int, n_chunks: int, version: str
) -> str:
    """The cache key of an imatrix: model content, text, settings and llama.cpp version."""
    parts = [_CACHE_VERSION, model_fingerprint(model), calibration_sha256, ctx, n_chunks, version]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def cache_path(model: Path, key: str) -> Path:
    """``<model dir>/.imatrix/<model stem>-<key>.gguf``, or under llama3zh's home when the
    model's folder is read-only."""
    folder = model.resolve().parent / CACHE_DIR
    if not os.access(model.resolve().parent, os.W_OK):
        folder = paths.home() / "imatrix"
    return folder / f"{model.stem}-{key}.gguf"


def plan_imatrix(
    *,
    model: str | Path,
    options: ChunkOptions | None = None,
    output: str | Path | None = None,
    force: bool = False,
) -> ImatrixPlan:
    """Check the inputs and work out the run, without computing anything heavy.

    Args:
        model: an F16/BF16/F32 (or quantized) GGUF of the model to be quantized.
        options: the calibration text (default: the shipped corpus), chunks of ``ctx`` tokens
            (default: all the text holds), GPU layers, threads (default: ``ChunkOptions()``).
        output: where to write (default: the cache beside the model).

    Raises:
        UsageError: bad numbers, or ``output`` exists (without ``force``).
        InputError: the text is empty, not UTF-8, or too short for the chunks.
        ModelNotFoundError / InvalidModelError: the model file.
    """
    options = options or ChunkOptions()
    options.check()
    info = read_gguf_info(model)
    info.check_loadable()
    info.check_vocab()
    model = info.path
    hardware.check_ctx(options.ctx, info)
    calib = options.text.expanduser() if options.text else default_calibration()
    raw, text = read_text(calib, what="calibration text", iconv="convert it: iconv -t UTF-8")
    if not text.strip():
        raise InputError(
            f"the calibration text {calib} is empty",
            hint="give a text of a few hundred KB, or leave --calibration out for the built-in",
        )
    n_tokens = quant.count_tokens(model, text)
    check_token_count(n_tokens, ctx=options.ctx, chunks=options.chunks, what="calibration text")
    n_chunks = options.n_chunks(n_tokens)
    key = cache_key(
        model=model,
        calibration_sha256=hashlib.sha256(raw).hexdigest(),
        ctx=options.ctx,
        n_chunks=n_chunks,
        version=installed.llama_cpp_version(),
    )
    out = _output(model, calib, cache_path(model, key), output, force=force)
    ngl = options.gpu_layers(info)
    cmd = ["llama-imatrix", "-m", str(model.resolve()), "-f", calib.name,
           *options.args(n_chunks=n_chunks, ngl=ngl), "-o", str(out.resolve())]  # fmt: skip
    cmd += tools.repack_args("llama-imatrix")  # shown by --dry-run as it will run
    return ImatrixPlan(
        model=model,
        calibration=calib,
        output=out,
        ctx=options.ctx,
        n_chunks=n_chunks,
        n_tokens=n_tokens,
        n_gpu_layers=ngl,
        threads=options.threads,
        cache_key=key,
        cached=out == cache_path(model, key) and out.is_file() and not force,
        command=tuple(cmd),
    )


def _output(model: Path, calib: Path, cached: Path, output: str | Path | None, *,
            force: bool) -> Path:  # fmt: skip
    """Where the imatrix goes: ``output`` (a file, or a folder for the default name) or the
    cache; a named output that exists needs ``force``."""
    out = Path(output).expanduser() if output is not None else cached
    if out.is_dir():
        out = out / f"{model.stem}.imatrix.gguf"
    guard.check_not_input(out, [model, calib])
    guard.check_replaceable(out)
    if output is not None and out.exists() and not force:
        raise UsageError(
            f"{out} already exists", hint="add --force to replace it, or choose another -o"
        )
    if output is not None and not out.parent.exists():
        raise UsageError(f"the folder {out.parent} does not exist", hint="create it first")
    return out


def compute_imatrix(
    plan: ImatrixPlan, *, dry_run: bool = False, progress: Callback | None = None
) -> ImatrixResult:
    """Compute (or reuse from the cache) the importance matrix ``plan`` describes.

    The tool writes to a temporary name beside the output, renamed once it finished and reads
    back as an imatrix of this model. ``progress`` gets "imatrix" events: chunks done (with the
    running perplexity and an ETA in ``figures``), and build/load notes.

    Raises:
        BackendError: the tool could not be built or failed (its last lines).
    """
    t0 = time.perf_counter()

    def result(*, n_entries: int, cached: bool, ppl: float | None) -> ImatrixResult:
        return ImatrixResult(
            path=plan.output, model=plan.model, calibration=plan.calibration, ctx=plan.ctx,
            n_chunks=plan.n_chunks, n_tokens=plan.n_tokens, n_entries=n_entries, cached=cached,
            dry_run=dry_run, seconds=time.perf_counter() - t0, ppl=ppl, command=plan.command,
        )  # fmt: skip

    if dry_run:
        return result(n_entries=0, cached=plan.cached, ppl=None)
    if plan.cached:
        try:
            found = read_imatrix(plan.output)
            check_matches(found, plan.model)
            return result(n_entries=len(found.entries), cached=True, ppl=None)
        except InvalidModelError:
            pass  # a damaged cache entry: compute it again
    guard.check_writable(plan.output)  # before minutes of work, not at the rename after them
    with atomic.replacing(plan.output) as tmp:
        try:
            found, stdout = _run(plan, tmp, progress)
        finally:
            for partial in tmp.parent.glob(tmp.name + ".at_*"):  # the tool's checkpoints
                partial.unlink(missing_ok=True)
    return result(n_entries=len(found.entries), cached=False, ppl=_final_ppl(stdout))


def _run(plan: ImatrixPlan, tmp: Path, progress: Callback | None) -> tuple[Imatrix, str]:
    """llama-imatrix writing to ``tmp``; the file read back and checked against the model."""
    cmd = list(plan.command)
    cmd[cmd.index("-o") + 1] = str(tmp.resolve())
    tracker = ChunkTracker(progress, stage="imatrix", task="imatrix", total=plan.n_chunks)
    done = tools.run_tool(
        cmd,
        cwd=plan.calibration.resolve().parent,  # the dataset is recorded by file name
        progress=tracker.note,
        on_output=tracker.feed,
    )
    if not tmp.is_file():
        raise InvalidModelError(
            f"llama-imatrix wrote no file: {_tail(done.stderr or done.stdout)}",
            hint=f"run it by hand to see all of its output: {shlex.join(cmd)}",
        )
    found = read_imatrix(tmp)
    check_matches(found, plan.model)
    return found, done.stdout


_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+)")


def _final_ppl(out: str) -> float | None:
    m = _FINAL.search(out)
    return float(m.group(1)) if m else None


def _tail(text: str, n: int = 3) -> str:
    return " | ".join(process.without_debugger_noise(text)[-n:])
