"""Quality of quantized models: perplexity, and KL-divergence against the F16/F32 base.

Both are measured by llama.cpp's own ``llama-perplexity`` (built by ``llamacpp.tools``), so the
numbers are the ones llama.cpp users quote: perplexity over the second half of each chunk of
``ctx`` tokens, and for KLD the token distributions of each model against the base's, saved by
a first run with ``--kl-divergence-base``. Results are also recorded in ``quality.json`` under
llama3zh's home, where ``llama3zh recommend`` finds them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import BackendError, DiskSpaceError, InputError, UsageError
from ..files import atomic

EVAL_NAME = "llama3zh-eval-v1.txt"
DEFAULT_CTX = 512
QUALITY_FILE = "quality.json"

# "±" as printed; a mangled byte (errors="replace") or "+/-" are accepted too.
_PM = r"\s*(?:±|\+/-|\ufffd+)\s*"
_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|-?inf))"
_FINAL = re.compile(rf"Final estimate: PPL = {_NUM}{_PM}{_NUM}")
_CHUNK = re.compile(rf"\[(\d+)\]{_NUM},")
_KLD_PPL = re.compile(rf"Mean PPL\(Q\)\s*:\s*{_NUM}{_PM}{_NUM}")
_KLD_BASE_PPL = re.compile(rf"Mean PPL\(base\)\s*:\s*{_NUM}{_PM}{_NUM}")
_KLD = re.compile(rf"Mean\s+KLD:\s*{_NUM}{_PM}{_NUM}")
_KLD_MAX = re.compile(rf"Maximum KLD:\s*{_NUM}")
_KLD_999 = re.compile(rf"99\.9%\s+KLD:\s*{_NUM}")
_TOP_P = re.compile(rf"Same top p:\s*{_NUM}{_PM}{_NUM}\s*%")
_KLD_ROW = re.compile(rf"^\s*(\d+)\s+{_NUM}{_PM}{_NUM}\s", re.M)
_TOO_SHORT = re.compile(r"you need at least (\d+) tokens")


def default_eval_text() -> Path:
    """The held-out evaluation text shipped with the package (not the calibration text)."""
    return Path(str(resources.files("llama3zh_local.data").joinpath(EVAL_NAME)))


# -- parsing llama-perplexity's output ------------------------------------------------------------


@dataclass(frozen=True)
class PerplexityOutput:
    """The numbers of one llama-perplexity run."""

    ppl: float
    ppl_err: float
    chunks: tuple[float, ...]  # the running estimate after each chunk
    kld: float | None = None
    kld_err: float | None = None
    kld_max: float | None = None
    kld_99_9: float | None = None
    same_top_p: float | None = None  # percent
    base_ppl: float | None = None


def parse_perplexity(stdout: str, stderr: str = "") -> PerplexityOutput:
    """Parse llama-perplexity's output (plain perplexity, or ``--kl-divergence``).

    The tool prints its chunk values on stdout and its final estimate through the log (stderr);
    both are searched, so the split does not matter.

    Raises:
        BackendError: no result in the output (the tool's reason when it gave one).
    """
    text = stdout + "\n" + stderr
    chunks = [float(m.group(2)) for m in _CHUNK.finditer(text)]
    kld_rows = [float(m.group(2)) for m in _KLD_ROW.finditer(stdout)]
    if m := _KLD_PPL.search(text):
        kld = _KLD.search(text)
        top = _TOP_P.search(text)
        base = _KLD_BASE_PPL.search(text)
        mx, p999 = _KLD_MAX.search(text), _KLD_999.search(text)
        return PerplexityOutput(
            ppl=float(m.group(1)),
            ppl_err=float(m.group(2)),
            chunks=tuple(kld_rows),
            kld=float(kld.group(1)) if kld else None,
            kld_err=float(kld.group(2)) if kld else None,
            kld_max=float(mx.group(1)) if mx else None,
            kld_99_9=float(p999.group(1)) if p999 else None,
            same_top_p=float(top.group(1)) if top else None,
            base_ppl=float(base.group(1)) if base else None,
        )
    if m := _FINAL.search(text):
        return PerplexityOutput(float(m.group(1)), float(m.group(2)), tuple(chunks))
    if m := _TOO_SHORT.search(text):
        raise InputError(
            f"the evaluation text is too short: llama-perplexity needs at least {m.group(1)} "
            "tokens for this context",
            hint="use a longer --text or a smaller --ctx",
        )
    from ..llamacpp.process import without_debugger_noise

    lines = without_debugger_noise(text)
    raise BackendError(
        f"llama-perplexity printed no perplexity: {' | '.join(lines[-3:]) or 'no output'}",
        hint="rerun with LLAMA3ZH_DEBUG=1, or run the command by hand to see all of its output",
    )


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalProgress:
    """``chunk`` of ``n_chunks`` done for the ``index``-th of ``n_models`` models (chunk 0: its
    start, or a build message)."""

    model: str
    index: int
    n_models: int
    chunk: int
    n_chunks: int
    ppl: float | None
    message: str = ""


Progress = Callable[[EvalProgress], None]


@dataclass(frozen=True)
class EvalRow:
    """One model's quality on the evaluation text."""

    path: Path
    label: str  # quant label: f16, q4_k, q4_k-im, iq3_xxs-im
    file_type: str
    size: int  # bytes
    bpw: float
    ppl: float
    ppl_err: float
    kld: float | None = None
    kld_err: float | None = None
    kld_99_9: float | None = None
    same_top_p: float | None = None
    is_base: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class EvalResult:
    rows: tuple[EvalRow, ...]
    text: Path
    text_sha256: str
    ctx: int
    n_chunks: int
    n_tokens: int
    kld_base: Path | None
    commands: tuple[tuple[str, ...], ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": str(self.text),
            "text_sha256": self.text_sha256,
            "ctx": self.ctx,
            "chunks": self.n_chunks,
            "tokens": self.n_tokens,
            "kld_base": str(self.kld_base) if self.kld_base else None,
            "models": [
                {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(r).items()}
                for r in self.rows
            ],
        }


def model_label(path: Path) -> tuple[str, str]:
    """(label, file type) of a GGUF: ``q4_k-im`` from its metadata (recommend.file_label)."""
    from ..gguf.info import read_gguf_info
    from .recommend import file_label

    info = read_gguf_info(path)
    return file_label(info), info.file_type


# -- the stage ------------------------------------------------------------------------------------


def evaluate(
    *,
    models: Sequence[str | Path],
    text: str | Path | None = None,
    ctx: int = DEFAULT_CTX,
    chunks: int | None = None,
    kld_base: str | Path | None = None,
    n_gpu_layers: int | None = None,
    threads: int | None = None,
    record: bool = True,
    progress: Progress | None = None,
) -> EvalResult:
    """Perplexity of each model on a text, and KL-divergence against ``kld_base`` when given.

    Args:
        models: GGUF files (of one vocabulary).
        text: a UTF-8 file (default: the shipped held-out evaluation text).
        ctx: tokens per chunk; the second half of each is scored.
        chunks: how many chunks (default: all the text holds).
        kld_base: the F16/F32 GGUF to compare against; it gets a row of its own (KLD 0).
        record: add the rows to quality.json for ``recommend``.

    Raises:
        UsageError / InputError: bad settings, a missing or too short text.
        DiskSpaceError: no room for the base model's token distributions (KLD).
        BackendError: llama-perplexity failed.
    """
    from ..gguf.info import read_gguf_info
    from ..llamacpp import quant, tools
    from .imatrix import check_token_count, gpu_layers
    from .quantize import bits_per_weight

    if not models:
        raise UsageError("no model to evaluate", hint="give one or more .gguf files")
    if ctx < 16:
        raise UsageError(f"--ctx {ctx}: must be at least 16 tokens", hint="e.g. --ctx 512")
    if chunks is not None and chunks < 1:
        raise UsageError(
            f"--chunks {chunks}: must be at least 1", hint="leave it out to use all of the text"
        )
    from ..hardware import check_ctx, check_threads

    check_threads(threads)
    infos = [read_gguf_info(m) for m in models]
    base_info = read_gguf_info(kld_base) if kld_base is not None else None
    for info in [*infos, *([base_info] if base_info else [])]:
        info.check_loadable()
        info.check_vocab()
        check_ctx(ctx, info)
    if base_info is not None:
        # KL-divergence compares token distributions: llama-perplexity aborts on another vocab
        for info in infos:
            if info.vocab_sha256 != base_info.vocab_sha256 or info.n_vocab != base_info.n_vocab:
                raise UsageError(
                    f"{info.path.name} has another vocabulary ({info.n_vocab:,} tokens) than the "
                    f"--kld-base {base_info.path.name} ({base_info.n_vocab:,} tokens): they are "
                    "not quants of one model",
                    hint="give --kld-base the F16/BF16 GGUF these files were quantized from",
                )
    text_path = Path(text).expanduser() if text is not None else default_eval_text()
    if not text_path.is_file():
        raise InputError(f"no evaluation text at {text_path}", hint="give a UTF-8 text file")
    raw = text_path.read_bytes()
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{text_path} is not UTF-8 text (byte {e.start})",
            hint="convert it first: iconv -f GBK -t UTF-8 FILE > FILE.utf8",
        ) from None
    vocab_src = (base_info or infos[0]).path
    n_tokens = quant.count_tokens(vocab_src, body) if body.strip() else 0
    check_token_count(n_tokens, ctx=ctx, chunks=chunks, what="evaluation text")
    n_chunks = min(chunks, n_tokens // ctx) if chunks else n_tokens // ctx
    ordered = ([base_info] if base_info is not None else []) + [
        i for i in infos if base_info is None or i.path.resolve() != base_info.path.resolve()
    ]
    say = progress or (lambda _p: None)
    rows: list[EvalRow] = []
    commands: list[tuple[str, ...]] = []
    tmpdir: Path | None = None
    logits: Path | None = None
    try:
        if base_info is not None:
            # the base's token distributions: ctx/2 tokens x n_vocab x 2 bytes per chunk
            n_vocab = base_info.n_vocab or 1
            need = n_chunks * ctx * (n_vocab + 6) * 2 // 2 + n_chunks * ctx * 4 + (1 << 20)
            scratch = paths.home() / "tmp"
            scratch.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(scratch).free
            reserve = 256 << 20  # the disk is never filled to the last byte
            if free < need + reserve:
                raise DiskSpaceError(
                    f"KL-divergence needs {need / 1e9:.2f} GB for the base model's token "
                    f"distributions plus {reserve / 1e9:.2f} GB kept free; {scratch} has "
                    f"{free / 1e9:.2f} GB free",
                    hint="use fewer --chunks, or set LLAMA3ZH_HOME to a disk with more room",
                )
            tmpdir = atomic.scratch_dir("kld", scratch)
            logits = tmpdir / "base-logits.bin"
        for i, info in enumerate(ordered, 1):
            is_base = base_info is not None and info is base_info
            say(EvalProgress(info.path.name, i, len(ordered), 0, n_chunks, None))
            ngl = gpu_layers(info, ctx=ctx, requested=n_gpu_layers)
            args = [
                "llama-perplexity", "-m", str(info.path.resolve()), "-c", str(ctx),
                "--chunks", str(n_chunks), "-ngl", str(ngl),
            ]  # fmt: skip
            if threads:
                args += ["-t", str(threads)]
            if logits is not None and is_base:
                args += ["-f", text_path.name, "--kl-divergence-base", str(logits)]
            elif logits is not None:
                args += ["--kl-divergence-base", str(logits), "--kl-divergence"]
            else:
                args += ["-f", text_path.name]
            args += tools.repack_args("llama-perplexity")
            commands.append(tuple(args))
            tracker = _Tracker(info.path.name, i, len(ordered), n_chunks, say)
            t0 = time.perf_counter()
            done = tools.run_tool(
                args,
                cwd=text_path.resolve().parent,
                progress=tracker.message,
                on_output=tracker.feed,
            )
            out = parse_perplexity(done.stdout, done.stderr)
            label, ftype = model_label(info.path)
            rows.append(
                EvalRow(
                    path=info.path,
                    label=label,
                    file_type=ftype,
                    size=info.size,
                    bpw=bits_per_weight(info.path),
                    ppl=out.ppl,
                    ppl_err=out.ppl_err,
                    kld=0.0 if is_base else out.kld,
                    kld_err=0.0 if is_base else out.kld_err,
                    kld_99_9=0.0 if is_base else out.kld_99_9,
                    same_top_p=100.0 if is_base else out.same_top_p,
                    is_base=is_base,
                    seconds=time.perf_counter() - t0,
                )
            )
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    result = EvalResult(
        rows=tuple(rows),
        text=text_path,
        text_sha256=hashlib.sha256(raw).hexdigest(),
        ctx=ctx,
        n_chunks=n_chunks,
        n_tokens=n_tokens,
        kld_base=base_info.path if base_info else None,
        commands=tuple(commands),
    )
    if record:
        record_results(result)
    return result


class _Tracker:
    """Chunk progress from llama-perplexity's stdout: ``[3]12.34,`` or a KLD table row."""

    def __init__(self, name: str, index: int, n_models: int, n_chunks: int, say: Progress):
        self.args = (name, index, n_models)
        self.n_chunks = n_chunks
        self.say = say
        self.buf = ""
        self.done = 0

    def message(self, text: str) -> None:
        """A note from building the tool."""
        self.say(EvalProgress(*self.args, 0, self.n_chunks, None, text))

    def feed(self, stream: str, text: str) -> None:
        if stream != "stdout":
            return
        self.buf += text
        last = 0
        found: list[tuple[int, float]] = []
        for m in _CHUNK.finditer(self.buf):
            found.append((int(m.group(1)), float(m.group(2))))
            last = max(last, m.end())
        for m in _KLD_ROW.finditer(self.buf):  # complete: the second number ends in a space
            found.append((int(m.group(1)), float(m.group(2))))
            last = max(last, m.end())
        for chunk, ppl in found:
            if chunk > self.done:
                self.done = chunk
                self.say(EvalProgress(*self.args, chunk, self.n_chunks, ppl))
        self.buf = self.buf[last:][-512:]


def markdown_table(result: EvalResult) -> str:
    """The upstream project's layout as GitHub markdown: a column per model, rows Size (MiB),
    BPW, PPL +/- error and (with a base) KLD."""
    head = "| | " + " | ".join(r.label for r in result.rows) + " |"
    sep = "|---|" + "---:|" * len(result.rows)
    rows = [
        "| Size (MiB) | " + " | ".join(f"{r.size / 2**20:.1f}" for r in result.rows) + " |",
        "| BPW | " + " | ".join(f"{r.bpw:.2f}" for r in result.rows) + " |",
        "| PPL | " + " | ".join(f"{r.ppl:.4f} ± {r.ppl_err:.4f}" for r in result.rows) + " |",
    ]
    if result.kld_base is not None:
        kld = ("-" if r.kld is None else f"{r.kld:.4f}" for r in result.rows)
        rows.append("| KLD | " + " | ".join(kld) + " |")
    return "\n".join([head, sep, *rows])


# -- the record for recommend ---------------------------------------------------------------------


def quality_file() -> Path:
    return paths.home() / QUALITY_FILE


def record_results(result: EvalResult) -> None:
    """Add (or replace) the rows of ``result`` in quality.json, keyed by file and settings."""
    path = quality_file()
    data = read_quality()
    entries = data.setdefault("entries", [])
    for r in result.rows:
        try:
            st = r.path.stat()
        except OSError:
            continue
        entry = {
            "path": str(r.path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "label": r.label,
            "file_type": r.file_type,
            "bpw": r.bpw,
            "ppl": r.ppl,
            "ppl_err": r.ppl_err,
            "kld": r.kld,
            "kld_base": str(result.kld_base.resolve()) if result.kld_base else None,
            "text_sha256": result.text_sha256,
            "ctx": result.ctx,
            "chunks": result.n_chunks,
            "measured": time.time(),
        }
        same = (entry["path"], entry["text_sha256"], entry["ctx"], entry["chunks"])
        entries[:] = [
            e
            for e in entries
            if (e.get("path"), e.get("text_sha256"), e.get("ctx"), e.get("chunks")) != same
        ]
        entries.append(entry)
    data["version"] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(data, ensure_ascii=False, indent=1))


def read_quality() -> dict[str, Any]:
    """quality.json's content ({"entries": [...]}; empty when missing or unreadable)."""
    try:
        data = json.loads(quality_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {"entries": []}
    except (OSError, ValueError):
        return {"entries": []}


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
