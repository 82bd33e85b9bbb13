"""The fidelity check: GGUFs (llama.cpp) against the HF checkpoint they came from (transformers).

``evaluate.py`` compares a quant with the f16 GGUF our own converter wrote; this compares each
GGUF with the model as its authors run it, so it checks the converter, ``merge-lora`` and the
quantization together. The same token windows go through both engines, with a logit row for every
position; per file: top-1 agreement, mean and 99th-percentile KL-divergence of the next-token
distributions (the reference as P), and the largest |Δ logit|.

llama.cpp runs with f32 keys/values and without flash attention (its f16 attention would add an
error that is not the file's); the reference runs in fp32 on the CPU unless told otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from ..gguf.info import read_gguf_info
from ..hf.engine import HFModel, check_hf_folder, require_torch
from ..llamacpp.engine import ContextSettings, Model, Session, default_threads
from ..progress import ADVANCE, DONE, NOTE, START, Callback, emitter
from .evaluate import default_eval_text
from .recommend import file_label

# Verdict thresholds (stated in `llama3zh eval fidelity --help` and docs/quality.md).
FULL_TYPES = frozenset({"ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"})
FULL_MIN_TOP1 = 0.99  # a full-precision file must pick the reference's next token this often
FULL_MAX_KLD = 0.005  # and its mean KLD must stay below this (fp16 rounding is ~1e-5..1e-4)
BROKEN_MAX_KLD = 1.5  # any file: a mean KLD above this is a broken file, not a lossy quant
BROKEN_MIN_TOP1 = 0.3  # any file: top-1 agreement below this likewise
# A top-1 disagreement where the reference's logit for the GGUF's pick is within this of its own
# best is a near tie: f16 rounding of activations in llama.cpp's matmuls can flip it.
NEAR_TIE = 0.05

DEFAULT_CTX = 256
DEFAULT_WINDOWS = 2


@dataclass(frozen=True)
class TokenMismatch:
    """Where the GGUF's tokenizer first disagrees with the reference's on the texts."""

    position: int  # index into the token sequence of the whole text
    gguf_ids: tuple[int, ...]  # a few ids from ``position`` on
    reference_ids: tuple[int, ...]
    gguf_text: str  # those ids as text
    reference_text: str
    context: str  # the text just before the position

    def describe(self) -> str:
        return (
            f"tokenizers disagree at token {self.position} (after {self.context!r}): "
            f"GGUF {list(self.gguf_ids)} {self.gguf_text!r}, reference {list(self.reference_ids)} "
            f"{self.reference_text!r}"
        )


@dataclass(frozen=True)
class FidelityRow:
    """One GGUF against the reference."""

    path: Path
    label: str  # q4_k-im, f16, ... (a file name where labels repeat)
    file_type: str
    size: int
    positions: int  # next-token distributions compared
    top1: float  # fraction of positions with the same most likely token
    near_ties: int  # of the other positions, those where the reference had a near tie
    kld_mean: float
    kld_p99: float
    kld_max: float
    max_abs_dlogit: float
    verdict: str  # "pass", "FAIL" or "info" (quants: reported, not judged)
    why: str  # the reason for the verdict, in a few words
    note: str = ""  # e.g. an -im file's KLD against its plain quant's

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "label": self.label, "file_type": self.file_type,
            "size": self.size, "positions": self.positions, "top1": self.top1,
            "near_ties": self.near_ties,
            "kld_mean": self.kld_mean, "kld_p99": self.kld_p99, "kld_max": self.kld_max,
            "max_abs_dlogit": self.max_abs_dlogit, "verdict": self.verdict, "why": self.why,
            "note": self.note,
        }  # fmt: skip


@dataclass(frozen=True)
class FidelityReport:
    """The result of ``fidelity``: one row per GGUF, or the token mismatch that stopped it."""

    reference: Path
    lora: Path | None
    texts: Path
    n_ctx: int
    windows: int
    tokens: int  # tokens per engine (all windows)
    reference_device: str
    rows: tuple[FidelityRow, ...] = ()
    mismatch: TokenMismatch | None = None
    mismatch_file: Path | None = None
    seconds: float = 0.0
    thresholds: dict[str, float] = field(default_factory=lambda: dict(
        full_min_top1=FULL_MIN_TOP1, full_max_kld=FULL_MAX_KLD,
        broken_max_kld=BROKEN_MAX_KLD, broken_min_top1=BROKEN_MIN_TOP1,
    ))  # fmt: skip

    @property
    def passed(self) -> bool:
        return self.mismatch is None and all(r.verdict != "FAIL" for r in self.rows)

    @property
    def verdict(self) -> str:
        """One line: pass, or FAIL and why."""
        if self.mismatch is not None:
            where = self.mismatch_file.name if self.mismatch_file else "the GGUF"
            return f"FAIL: {where}: {self.mismatch.describe()}"
        failed = [r for r in self.rows if r.verdict == "FAIL"]
        if failed:
            return "FAIL: " + "; ".join(f"{r.label}: {r.why}" for r in failed)
        full = [r.label for r in self.rows if r.verdict == "pass"]
        quants = [r.label for r in self.rows if r.verdict == "info"]
        parts = []
        if full:
            parts.append(
                f"{', '.join(full)} match{'es' if len(full) == 1 else ''} the reference "
                f"(top-1 >= {100 * FULL_MIN_TOP1:.0f}%, mean KLD <= {FULL_MAX_KLD})"
            )
        if quants:
            parts.append(f"{', '.join(quants)}: quantization loss reported, none broken")
        return "pass: " + "; ".join(parts)

    def line(self) -> str:
        """One line for the end of a run: each file's top-1 and mean KLD, then the verdict."""
        figures = "; ".join(
            f"{r.label} top-1 {100 * r.top1:.2f}%, mean KLD {r.kld_mean:.5f}" for r in self.rows
        )
        ref = self.reference.name + (f" + {self.lora.name}" if self.lora else "")
        return f"fidelity vs {ref}: " + (f"{figures} -> " if figures else "") + self.verdict

    def to_json(self) -> dict[str, Any]:
        m = self.mismatch
        return {
            "reference": str(self.reference),
            "lora": None if self.lora is None else str(self.lora),
            "texts": str(self.texts), "ctx": self.n_ctx, "windows": self.windows,
            "tokens": self.tokens, "reference_device": self.reference_device,
            "passed": self.passed, "verdict": self.verdict, "thresholds": self.thresholds,
            "token_mismatch": None if m is None else {
                "file": str(self.mismatch_file), "position": m.position,
                "gguf_ids": list(m.gguf_ids), "reference_ids": list(m.reference_ids),
                "gguf_text": m.gguf_text, "reference_text": m.reference_text,
            },
            "rows": [r.to_json() for r in self.rows],
            "seconds": self.seconds,
        }  # fmt: skip


def markdown_table(report: FidelityReport) -> str:
    """One row per GGUF: size, top-1, KLD mean / p99 / max, max |Δ logit|, verdict."""
    head = (
        "| File | Size (MiB) | Top-1 | KLD mean | KLD p99 | KLD max | max \\|Δ logit\\| | Verdict |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---|"
    lines = [head, sep]
    for r in report.rows:
        verdict = r.verdict + (f" ({r.why})" if r.verdict == "FAIL" else "")
        if r.note:
            verdict += f"; {r.note}"
        lines.append(
            f"| {r.label} | {r.size / 2**20:.1f} | {_top1(r)} | {r.kld_mean:.6f} | "
            f"{r.kld_p99:.6f} | {r.kld_max:.4f} | {r.max_abs_dlogit:.4f} | {verdict} |"
        )
    return "\n".join(lines)


def _top1(r: FidelityRow) -> str:
    ties = f" ({r.near_ties} near tie{'s' if r.near_ties != 1 else ''})" if r.near_ties else ""
    return f"{100 * r.top1:.2f}%{ties}"


# -- the stage ----------------------------------------------------------------------------------


def fidelity(
    ggufs: Sequence[Path],
    *,
    reference: Path,
    lora: Path | None = None,
    texts: Path | None = None,
    n_ctx: int = DEFAULT_CTX,
    windows: int = DEFAULT_WINDOWS,
    threads: int | None = None,
    gpu_layers: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    progress: Callback | None = None,
) -> FidelityReport:
    """Run the same token windows through each GGUF (llama.cpp) and the reference (transformers).

    Args:
        ggufs: the files to check (f16, merged LoRAs, quants of one model).
        reference: the HF checkpoint folder they were made from.
        lora: a PEFT LoRA applied to the reference unmerged (for a merged-LoRA GGUF).
        texts: UTF-8 text (default: the held-out evaluation text); ``windows`` windows of
            ``n_ctx`` tokens from its start are compared.
        device, dtype: where the reference runs (default fp32 on the CPU: the exact reference).

    Returns:
        The report; a tokenizer disagreement stops it there (``mismatch``, no rows).

    Raises:
        MissingExtraError: torch / transformers (/ peft) are not installed.
        UsageError: no files, or options out of range.
        ModelNotFoundError, InvalidModelError: a GGUF or the reference is missing or unusable.
        InputError: the text cannot be read or is too short.
    """
    t0 = time.perf_counter()
    if not ggufs:
        raise UsageError(
            "no GGUF files to check", hint="llama3zh eval fidelity F16.gguf --reference DIR"
        )
    if n_ctx < 16 or windows < 1:
        raise UsageError(
            f"--ctx {n_ctx} / --windows {windows}: need at least 16 tokens and one window",
            hint=f"use the defaults: --ctx {DEFAULT_CTX} --windows {DEFAULT_WINDOWS}",
        )
    require_torch(lora=lora is not None, what="eval fidelity")
    reference, lora = Path(reference).expanduser(), None if lora is None else Path(lora)
    check_hf_folder(reference, lora=lora)
    infos = []
    for path in ggufs:
        info = read_gguf_info(Path(path))
        info.check_loadable()
        info.check_vocab()
        infos.append(info)
    text_path = Path(texts).expanduser() if texts is not None else default_eval_text()
    text = _read_text(text_path)
    emit = emitter(progress, "eval")
    emit(NOTE, message=f"loading the reference {reference.name} with transformers ({device})")
    ref = HFModel(reference, lora=lora, device=device, dtype=dtype)
    try:
        # the reference's tokens, windows and logits: computed once for all files
        ref_ids = ref.tokenize(text, add_special=False, parse_special=False)
        bos = [ref.bos_id] if ref.add_bos and ref.bos_id >= 0 else []
        body = n_ctx - len(bos)
        n_windows = min(windows, len(ref_ids) // body)
        if n_windows < 1:
            raise InputError(
                f"{text_path} is too short: {len(ref_ids)} tokens, one window needs {body}",
                hint="give a longer text (--texts) or a smaller --ctx",
            )
        wins = [bos + ref_ids[i * body : (i + 1) * body] for i in range(n_windows)]
        emit(START, "reference", total=n_windows, unit="windows")
        ref_logits = []
        for i, w in enumerate(wins):
            ref_logits.append(ref.logits(w))
            emit(ADVANCE, "reference", done=i + 1, total=n_windows, unit="windows")
        emit(DONE, "reference")
    finally:
        ref.close()
    labels = _labels(infos)
    rows: list[FidelityRow] = []
    common: dict[str, Any] = dict(
        reference=reference, lora=lora, texts=text_path, n_ctx=n_ctx, windows=n_windows,
        tokens=n_windows * n_ctx, reference_device=ref.plan.summary,
    )  # fmt: skip
    for info, label in zip(infos, labels, strict=True):
        with Model(info.path, n_gpu_layers=gpu_layers) as model:
            gguf_ids = model.tokenize(text, add_special=False, parse_special=False)
            gguf_bos = [model.bos_id] if model.add_bos and model.bos_id >= 0 else []
            mismatch = _first_difference(
                gguf_bos + gguf_ids, bos + ref_ids, text=text, gguf=model, ref=ref
            )
            if mismatch is not None:
                return FidelityReport(
                    **common, rows=tuple(rows), mismatch=mismatch, mismatch_file=info.path,
                    seconds=time.perf_counter() - t0,
                )  # fmt: skip
            if model.n_vocab != ref_logits[0].shape[1]:
                rows.append(_failed_row(info, label, f"vocabulary of {model.n_vocab} tokens, "
                                        f"the reference has {ref_logits[0].shape[1]}"))  # fmt: skip
                continue
            settings = ContextSettings(
                n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, flash_attn="off", kv_f32=True,
                n_threads=threads or default_threads(),
            )  # fmt: skip
            emit(START, label, total=n_windows, unit="windows")
            acc = _Accumulator()
            with Session(model, settings) as session:
                for i, (w, r) in enumerate(zip(wins, ref_logits, strict=True)):
                    acc.add(r, session.all_logits(w))
                    emit(ADVANCE, label, done=i + 1, total=n_windows, unit="windows")
            emit(DONE, label)
            rows.append(acc.row(info, label))
    return FidelityReport(**common, rows=tuple(_with_notes(rows)), seconds=time.perf_counter() - t0)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}", hint="give a UTF-8 text file (--texts)") from e


def _labels(infos: Sequence[Any]) -> list[str]:
    labels = [file_label(i) for i in infos]
    return [
        i.path.name if labels.count(label) > 1 else label
        for i, label in zip(infos, labels, strict=True)
    ]


def _first_difference(
    a: Sequence[int], b: Sequence[int], *, text: str, gguf: Model, ref: HFModel
) -> TokenMismatch | None:
    n = min(len(a), len(b))
    pos = next((i for i in range(n) if a[i] != b[i]), n if len(a) != len(b) else -1)
    if pos < 0:
        return None
    ga, rb = tuple(a[pos : pos + 4]), tuple(b[pos : pos + 4])
    before = ref.detokenize(b[max(0, pos - 8) : pos], special=True)
    return TokenMismatch(
        position=pos,
        gguf_ids=ga,
        reference_ids=rb,
        gguf_text=gguf.detokenize(ga, special=True),
        reference_text=ref.detokenize(rb, special=True),
        context=before[-40:],
    )


class _Accumulator:
    """Per-position figures of one file, gathered window by window."""

    def __init__(self) -> None:
        self.klds: list[Any] = []
        self.same = 0
        self.ties = 0
        self.n = 0
        self.max_abs = 0.0

    def add(self, ref: Any, got: Any, rows: int = 64) -> None:
        import numpy as np

        for s in range(0, len(ref), rows):  # a slice at a time: 128k-wide rows in float64
            p = ref[s : s + rows].astype(np.float64)
            q = got[s : s + rows].astype(np.float64)
            lp = p - _logsumexp(p)
            lq = q - _logsumexp(q)
            self.klds.append(np.sum(np.exp(lp) * (lp - lq), axis=1))
            best, pick = p.argmax(axis=1), q.argmax(axis=1)
            differ = best != pick
            self.same += int(np.sum(~differ))
            rows_ = np.nonzero(differ)[0]
            gap = p[rows_, best[rows_]] - p[rows_, pick[rows_]]
            self.ties += int(np.sum(gap < NEAR_TIE))
            self.n += len(p)
            self.max_abs = max(self.max_abs, float(np.max(np.abs(p - q))))

    def row(self, info: Any, label: str) -> FidelityRow:
        import numpy as np

        kld = np.maximum(np.concatenate(self.klds), 0.0)  # rounding can give -1e-12
        top1 = self.same / self.n
        mean, p99, mx = float(kld.mean()), float(np.percentile(kld, 99)), float(kld.max())
        verdict, why = _verdict(info.file_type, top1=top1, kld=mean)
        return FidelityRow(
            path=info.path, label=label, file_type=info.file_type, size=info.size,
            positions=self.n, top1=top1, near_ties=self.ties, kld_mean=mean, kld_p99=p99,
            kld_max=mx, max_abs_dlogit=self.max_abs, verdict=verdict, why=why,
        )  # fmt: skip


def _logsumexp(x: Any) -> Any:
    import numpy as np

    m = x.max(axis=1, keepdims=True)
    return m + np.log(np.sum(np.exp(x - m), axis=1, keepdims=True))


def _verdict(file_type: str, *, top1: float, kld: float) -> tuple[str, str]:
    """pass / FAIL for full-precision files; quants are reported ("info") unless broken."""
    if kld > BROKEN_MAX_KLD or top1 < BROKEN_MIN_TOP1:
        return "FAIL", (
            f"top-1 {100 * top1:.1f}%, mean KLD {kld:.3f}: far beyond any quantization's loss "
            "(a wrong tensor layout, RoPE setting or vocabulary?)"
        )
    if file_type in FULL_TYPES:
        if top1 < FULL_MIN_TOP1:
            return "FAIL", (
                f"top-1 {100 * top1:.2f}% < {100 * FULL_MIN_TOP1:.0f}% for a full-precision file"
            )
        if kld > FULL_MAX_KLD:
            return "FAIL", f"mean KLD {kld:.5f} > {FULL_MAX_KLD} for a full-precision file"
        return "pass", f"top-1 >= {100 * FULL_MIN_TOP1:.0f}%, mean KLD <= {FULL_MAX_KLD}"
    return "info", "a quant: its loss is reported, not judged (no pass/fail threshold)"


def _failed_row(info: Any, label: str, why: str) -> FidelityRow:
    nan = float("nan")
    return FidelityRow(
        path=info.path, label=label, file_type=info.file_type, size=info.size, positions=0,
        top1=0.0, near_ties=0, kld_mean=nan, kld_p99=nan, kld_max=nan, max_abs_dlogit=nan,
        verdict="FAIL", why=why,
    )  # fmt: skip


def _with_notes(rows: list[FidelityRow]) -> list[FidelityRow]:
    """An -im file's mean KLD against the plain quant's, where both were checked."""
    import dataclasses

    by_label = {r.label: r for r in rows}
    out = []
    for r in rows:
        plain = by_label.get(r.label.removesuffix("-im")) if r.label.endswith("-im") else None
        if plain is not None and plain.kld_mean > 0:
            ratio = r.kld_mean / plain.kld_mean
            word = "lower" if ratio <= 1 else "higher"
            r = dataclasses.replace(
                r, note=f"KLD {abs(1 - ratio) * 100:.0f}% {word} than {plain.label}'s"
            )
        out.append(r)
    return out
