"""Quality of quantized models: perplexity, and KL-divergence against the F16/F32 base.

Both are measured by llama.cpp's own ``llama-perplexity`` (built by ``llamacpp.tools``), so the
numbers are the ones llama.cpp users quote: perplexity over the second half of each chunk of
``ctx`` tokens, and for KLD the token distributions of each model against the base's, saved by
a first run with ``--kl-divergence-base``. Results are also recorded in ``quality.json`` under
llama3zh's home, where ``llama3zh recommend`` finds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import hardware, paths
from ..errors import BackendError, InputError, UsageError
from ..files import atomic, space
from ..gguf.info import GGUFInfo, read_gguf_info
from ..llamacpp import process, quant, tools
from ..progress import DONE, FAILED, START, Callback, emitter
from .options import ChunkOptions, check_token_count, read_text
from .quantize import bits_per_weight
from .recommend import file_label
from .tracker import CHUNK, NUM, ChunkTracker

EVAL_NAME = "llama3zh-eval-v1.txt"
QUALITY_FILE = "quality.json"

# "±" as printed; a mangled byte (errors="replace") or "+/-" are accepted too.
_PM = r"\s*(?:±|\+/-|\ufffd+)\s*"
_NUM = NUM
_FINAL = re.compile(rf"Final estimate: PPL = {_NUM}{_PM}{_NUM}")
_KLD_PPL = re.compile(rf"Mean PPL\(Q\)\s*:\s*{_NUM}{_PM}{_NUM}")
_KLD_BASE_PPL = re.compile(rf"Mean PPL\(base\)\s*:\s*{_NUM}{_PM}{_NUM}")
_KLD = re.compile(rf"Mean\s+KLD:\s*{_NUM}{_PM}{_NUM}")
_KLD_MAX = re.compile(rf"Maximum KLD:\s*{_NUM}")
_KLD_999 = re.compile(rf"99\.9%\s+KLD:\s*{_NUM}")
_TOP_P = re.compile(rf"Same top p:\s*{_NUM}{_PM}{_NUM}\s*%")
KLD_ROW = re.compile(rf"^\s*(\d+)\s+{_NUM}{_PM}{_NUM}\s", re.M)
_TOO_SHORT = re.compile(r"you need at least (\d+) tokens")


def default_eval_text() -> Path:
    """The held-out evaluation text shipped with the package (not the calibration text)."""
    return paths.data_file(EVAL_NAME)


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
    chunks = [float(m.group(2)) for m in CHUNK.finditer(text)]
    kld_rows = [float(m.group(2)) for m in KLD_ROW.finditer(stdout)]
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
    lines = process.without_debugger_noise(text)
    raise BackendError(
        f"llama-perplexity printed no perplexity: {' | '.join(lines[-3:]) or 'no output'}",
        hint="rerun with LLAMA3ZH_DEBUG=1, or run the command by hand to see all of its output",
    )


# -- results --------------------------------------------------------------------------------------


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
    info = read_gguf_info(path)
    return file_label(info), info.file_type


# -- the stage ------------------------------------------------------------------------------------


def evaluate(
    *,
    models: Sequence[str | Path],
    options: ChunkOptions | None = None,
    kld_base: str | Path | None = None,
    record: bool = True,
    progress: Callback | None = None,
) -> EvalResult:
    """Perplexity of each model on a text, and KL-divergence against ``kld_base`` when given.

    Args:
        models: GGUF files (of one vocabulary).
        options: the text (default: the shipped held-out evaluation text), tokens per chunk
            (``ctx``; the second half of each is scored), how many chunks (default: all the
            text holds), GPU layers, threads.
        kld_base: the F16/F32 GGUF to compare against; it gets a row of its own (KLD 0).
        record: add the rows to quality.json for ``recommend``.
        progress: "eval" events: one task per model (``[1/2] NAME``), its chunks as they finish
            (the running perplexity in ``figures``), and build notes.

    Raises:
        UsageError / InputError: bad settings, a missing or too short text.
        DiskSpaceError: no room for the base model's token distributions (KLD).
        BackendError: llama-perplexity failed.
    """
    options = options or ChunkOptions()
    if not models:
        raise UsageError("no model to evaluate", hint="give one or more .gguf files")
    options.check()
    infos, base = _read_models(models, kld_base, ctx=options.ctx)
    text = _EvalText.read(options, vocab=(base or infos[0]).path)
    ordered = ([base] if base is not None else []) + [
        i for i in infos if base is None or i.path.resolve() != base.path.resolve()
    ]
    runs = [_PerplexityRun(info, i, len(ordered), text, options, is_base=info is base)
            for i, info in enumerate(ordered, 1)]  # fmt: skip
    commands: list[tuple[str, ...]] = []
    rows: list[EvalRow] = []
    with _kld_logits(base, n_chunks=text.n_chunks, ctx=options.ctx) as logits:
        for run in runs:
            commands.append(run.command(logits))
            rows.append(run.measure(commands[-1], progress))
    result = EvalResult(
        rows=tuple(rows),
        text=text.path,
        text_sha256=hashlib.sha256(text.raw).hexdigest(),
        ctx=options.ctx,
        n_chunks=text.n_chunks,
        n_tokens=text.n_tokens,
        kld_base=base.path if base else None,
        commands=tuple(commands),
    )
    if record:
        record_results(result)
    return result


def _read_models(models: Sequence[str | Path], kld_base: str | Path | None, *, ctx: int
                 ) -> tuple[list[GGUFInfo], GGUFInfo | None]:  # fmt: skip
    """The headers of the models (and the base), checked to load and to share a vocabulary."""
    infos = [read_gguf_info(m) for m in models]
    base = read_gguf_info(kld_base) if kld_base is not None else None
    for info in [*infos, *([base] if base else [])]:
        info.check_loadable()
        info.check_vocab()
        hardware.check_ctx(ctx, info)
    if base is None:
        return infos, None
    # KL-divergence compares token distributions: llama-perplexity aborts on another vocab
    for info in infos:
        if info.vocab_sha256 != base.vocab_sha256 or info.n_vocab != base.n_vocab:
            raise UsageError(
                f"{info.path.name} has another vocabulary ({info.n_vocab:,} tokens) than the "
                f"--kld-base {base.path.name} ({base.n_vocab:,} tokens): they are "
                "not quants of one model",
                hint="give --kld-base the F16/BF16 GGUF these files were quantized from",
            )
    return infos, base


@dataclass(frozen=True)
class _EvalText:
    path: Path
    raw: bytes
    n_tokens: int
    n_chunks: int

    @classmethod
    def read(cls, options: ChunkOptions, *, vocab: Path) -> _EvalText:
        """The text, counted in ``vocab``'s tokens and checked to hold the chunks asked for."""
        path = options.text.expanduser() if options.text is not None else default_eval_text()
        raw, body = read_text(
            path,
            what="evaluation text",
            iconv="convert it first: iconv -f GBK -t UTF-8 FILE > FILE.utf8",
        )
        n_tokens = quant.count_tokens(vocab, body) if body.strip() else 0
        check_token_count(n_tokens, ctx=options.ctx, chunks=options.chunks,
                          what="evaluation text")  # fmt: skip
        return cls(path, raw, n_tokens, options.n_chunks(n_tokens))


@contextlib.contextmanager
def _kld_logits(base: GGUFInfo | None, *, n_chunks: int, ctx: int) -> Iterator[Path | None]:
    """Where the base's token distributions go (KLD), in a scratch folder removed afterwards;
    None without a base."""
    if base is None:
        yield None
        return
    # the base's token distributions: ctx/2 tokens x n_vocab x 2 bytes per chunk
    need = n_chunks * ctx * ((base.n_vocab or 1) + 6) * 2 // 2 + n_chunks * ctx * 4 + (1 << 20)
    scratch = paths.home() / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    space.check_space(
        scratch,
        need,
        what="the base model's token distributions (KL-divergence)",
        hint="use fewer --chunks, or set LLAMA3ZH_HOME to a disk with more room",
    )
    tmpdir = atomic.scratch_dir("kld", scratch)
    try:
        yield tmpdir / "base-logits.bin"
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@dataclass(frozen=True)
class _PerplexityRun:
    """llama-perplexity on one model: the base writes the token distributions, the others are
    compared with them."""

    info: GGUFInfo
    index: int
    n_models: int
    text: _EvalText
    options: ChunkOptions
    is_base: bool

    def command(self, logits: Path | None) -> tuple[str, ...]:
        ngl = self.options.gpu_layers(self.info)
        args = ["llama-perplexity", "-m", str(self.info.path.resolve()),
                *self.options.args(n_chunks=self.text.n_chunks, ngl=ngl)]  # fmt: skip
        if logits is not None and self.is_base:
            args += ["-f", self.text.path.name, "--kl-divergence-base", str(logits)]
        elif logits is not None:
            args += ["--kl-divergence-base", str(logits), "--kl-divergence"]
        else:
            args += ["-f", self.text.path.name]
        return (*args, *tools.repack_args("llama-perplexity"))

    def measure(self, command: tuple[str, ...], progress: Callback | None) -> EvalRow:
        name = self.info.path.name
        task = f"[{self.index}/{self.n_models}] {name}"
        tracker = ChunkTracker(progress, stage="eval", task=task, total=self.text.n_chunks,
                               rows=KLD_ROW, digits=3)  # fmt: skip
        emit = emitter(progress, "eval")
        emit(START, task, total=self.text.n_chunks, unit="chunks")
        t0 = time.perf_counter()
        try:
            done = tools.run_tool(list(command), cwd=self.text.path.resolve().parent,
                                  progress=tracker.note, on_output=tracker.feed)  # fmt: skip
            out = parse_perplexity(done.stdout, done.stderr)
        except Exception:
            emit(FAILED, task)
            raise
        emit(DONE, task, done=self.text.n_chunks, total=self.text.n_chunks, unit="chunks")
        label, ftype = model_label(self.info.path)
        base = self.is_base
        return EvalRow(
            path=self.info.path,
            label=label,
            file_type=ftype,
            size=self.info.size,
            bpw=bits_per_weight(self.info.path),
            ppl=out.ppl,
            ppl_err=out.ppl_err,
            kld=0.0 if base else out.kld,
            kld_err=0.0 if base else out.kld_err,
            kld_99_9=0.0 if base else out.kld_99_9,
            same_top_p=100.0 if base else out.same_top_p,
            is_base=base,
            seconds=time.perf_counter() - t0,
        )


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
