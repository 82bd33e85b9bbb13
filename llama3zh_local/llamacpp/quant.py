"""Quantization through libllama's ``llama_model_quantize``, in-process (no llama-quantize).

``quantize_file`` does what llama.cpp's ``tools/quantize/quantize.cpp`` does around that call
(its importance matrix array and the ``quantize.imatrix.*`` metadata it adds), so the output is
byte-identical to ``llama-quantize --imatrix`` (tests/test_quantize_smollm2.py checks it).
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from . import native

if TYPE_CHECKING:
    import numpy as np

# The metadata keys llama-quantize writes for an imatrix (tools/quantize/quantize.cpp), in the
# order it writes them: the order decides the bytes of the output file.
KV_IMATRIX_FILE = "quantize.imatrix.file"
KV_IMATRIX_DATASET = "quantize.imatrix.dataset"
KV_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KV_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"

# llama.cpp's per-tensor log line: "[  12/ 272]   blk.1.attn_q.weight - [ 576, 576, ...], ..."
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+-")
_SIZE_LINE = re.compile(r"(model|quant) size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)")
_FALLBACK = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")

TensorProgress = Callable[[int, int, str], None]  # (index 1-based, count, tensor name)

KvValue = str | int | float | bool


@dataclass(frozen=True)
class QuantizeRun:
    """What llama.cpp reported for one ``llama_model_quantize`` call."""

    source_mib: float  # the input's tensor data
    output_mib: float  # the output's tensor data (exact for a dry run too)
    output_bpw: float
    fallback_tensors: int  # tensors whose row length forced another type (e.g. 576 for K-quants)
    log: tuple[str, ...]  # llama.cpp's log lines of this call


def imatrix_overrides(
    *, file: str, datasets: Sequence[str], n_entries: int, n_chunks: int
) -> list[tuple[str, KvValue]]:
    """The metadata llama-quantize adds for an imatrix, in its order (strings cut at 127 bytes)."""
    out: list[tuple[str, KvValue]] = [(KV_IMATRIX_FILE, file)]
    if datasets:
        out.append((KV_IMATRIX_DATASET, datasets[0]))
    out.append((KV_IMATRIX_N_ENTRIES, n_entries))
    if n_chunks > 0:
        out.append((KV_IMATRIX_N_CHUNKS, n_chunks))
    return out


def quantize_file(
    *,
    source: Path,
    output: Path,
    ftype: int,
    imatrix: Mapping[str, np.ndarray] | None = None,
    kv_overrides: Sequence[tuple[str, KvValue]] = (),
    allow_requantize: bool = False,
    nthread: int = 0,
    dry_run: bool = False,
    on_tensor: TensorProgress | None = None,
) -> QuantizeRun:
    """Quantize ``source`` to ``output`` as llama.cpp file type ``ftype`` (a ``LLAMA_FTYPE_*``).

    Args:
        imatrix: per-tensor importance (float32, already divided by the counts, as
            llama-quantize's ``load_imatrix`` leaves it).
        kv_overrides: metadata to set in the output, in order.
        nthread: 0 for all cores (as llama-quantize).
        dry_run: compute the output size only; nothing is written.
        on_tensor: called as each tensor starts.

    Raises:
        BackendError: llama.cpp refused (its reason from the log).
    """
    import numpy as np

    ll = native.lib()
    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    params.allow_requantize = allow_requantize
    params.dry_run = dry_run
    keep: list[Any] = []  # ctypes objects the params point into, alive until the call returns
    if imatrix:
        entries = (ll.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None  # the terminator
        keep.append(entries)
        params.imatrix = entries
    if kv_overrides:
        kvs = (ll.llama_model_kv_override * (len(kv_overrides) + 1))()
        for i, (key, value) in enumerate(kv_overrides):
            _set_override(ll, kvs[i], key, value)
        kvs[len(kv_overrides)].key = b""
        keep.append(kvs)
        params.kv_overrides = kvs
    lines: list[str] = []
    rc = _quantize_interruptibly(ll, str(source).encode(), str(output).encode(), params, keep,
                                 lines, on_tensor)  # fmt: skip
    if rc != 0:
        reason = next(
            (ln.split("failed to quantize:", 1)[1].strip() for ln in reversed(lines)
             if "failed to quantize:" in ln),
            native.last_log_lines() or "no reason given",
        )  # fmt: skip
        raise BackendError(f"llama.cpp could not quantize {source.name}: {reason}")
    sizes = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in _scan(_SIZE_LINE, lines)}
    fallback = [int(m.group(1)) for m in _scan(_FALLBACK, lines)]
    return QuantizeRun(
        source_mib=sizes.get("model", (0.0, 0.0))[0],
        output_mib=sizes.get("quant", (0.0, 0.0))[0],
        output_bpw=sizes.get("quant", (0.0, 0.0))[1],
        fallback_tensors=fallback[-1] if fallback else 0,
        log=tuple(lines),
    )


def _set_override(ll: Any, kv: Any, key: str, value: KvValue) -> None:
    raw_key = key.encode()
    if len(raw_key) > 127:
        raise ValueError(f"metadata key too long: {key}")
    kv.key = raw_key
    if isinstance(value, bool):
        kv.tag = ll.LLAMA_KV_OVERRIDE_TYPE_BOOL
        kv.value.val_bool = value
    elif isinstance(value, int):
        kv.tag = ll.LLAMA_KV_OVERRIDE_TYPE_INT
        kv.value.val_i64 = value
    elif isinstance(value, float):
        kv.tag = ll.LLAMA_KV_OVERRIDE_TYPE_FLOAT
        kv.value.val_f64 = value
    else:
        kv.tag = ll.LLAMA_KV_OVERRIDE_TYPE_STR
        # llama-quantize: strncpy(val_str, s, 127), then a NUL at 127
        kv.value.val_str = value.encode()[:127]


def _quantize_interruptibly(
    ll: Any,
    source: bytes,
    output: bytes,
    params: Any,
    keep: list[Any],
    lines: list[str],
    on_tensor: TensorProgress | None,
) -> int:
    """``llama_model_quantize`` on a worker thread, so that Ctrl-C still works.

    llama.cpp cannot be cancelled, and on the calling thread a KeyboardInterrupt would surface
    inside a log callback from C, where ctypes swallows it: the quantization would run to its end
    and the interrupt be lost. Here the main thread waits and gets the interrupt; the worker
    (a daemon, dying with the process) holds the parameters and the arrays they point into.
    """
    done: dict[str, int] = {}

    def work(*_alive: Any) -> None:
        done["rc"] = ll.llama_model_quantize(source, output, ctypes.byref(params))

    with _log_lines(lines, on_tensor):
        worker = threading.Thread(
            target=work, args=(params, keep), name="llama3zh-quantize", daemon=True
        )
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    return done.get("rc", 1)


@contextmanager
def _log_lines(lines: list[str], on_tensor: TensorProgress | None) -> Iterator[None]:
    """Collect llama.cpp's log as lines during the block; report each tensor line as it starts."""
    pending: list[str] = []

    def listen(text: str) -> None:
        pending.append(text)
        if on_tensor is not None and text.startswith("["):
            m = _TENSOR_LINE.match(text)
            if m:
                on_tensor(int(m.group(1)), int(m.group(2)), m.group(3))
        if text.endswith("\n"):
            lines.append("".join(pending).rstrip("\n"))
            pending.clear()

    with native.log_listener(listen):
        yield
    if pending:
        lines.append("".join(pending))


def _scan(pattern: re.Pattern[str], lines: Sequence[str]) -> Iterator[re.Match[str]]:
    for line in lines:
        m = pattern.search(line)
        if m:
            yield m


def count_tokens(model: Path, text: str) -> int:
    """How many tokens llama.cpp's tools make of ``text`` (with BOS, special tokens as text).

    Loads the vocabulary only (milliseconds, no weights): the tools tokenize with
    ``common_tokenize(ctx, text, add_special=true, parse_special=false)``.
    """
    ll = native.lib()
    params = ll.llama_model_default_params()
    params.vocab_only = True
    ptr = ll.llama_model_load_from_file(str(model).encode(), params)
    if not ptr:
        raise BackendError(
            f"llama.cpp could not read the vocabulary of {model}: "
            f"{native.last_log_lines() or 'no reason given'}",
            hint="check the file with `llama3zh doctor`",
        )
    try:
        vocab = ll.llama_model_get_vocab(ptr)
        data = text.encode("utf-8")
        n = ll.llama_tokenize(vocab, data, len(data), None, 0, True, False)
        return -n if n < 0 else n
    finally:
        ll.llama_model_free(ptr)
