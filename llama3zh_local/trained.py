"""After training: a LoRA folder to a quantized GGUF, its perplexity, a Modelfile and Ollama.

``llama3zh train ... --then Q4_K_M [--ollama NAME]`` ends here, and so can any PEFT LoRA folder:
merge into the base (``convert/lora.merge_lora``, an HF checkpoint in ``OUT/merged``) -> the
pipeline's convert -> imatrix -> quantize (``pipeline.plan_folder`` / ``execute``) -> perplexity
of f16 and the quant on the held-out split (``quant/evaluate``) -> a Modelfile
(``ollama/modelfile``) -> ``ollama create`` (``ollama/client``). Every file is written under a
temporary name and recorded in ``OUT``'s state file with what it was made from, so a rerun
after an interruption reuses each finished step and a new adapter redoes them all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelNotFoundError, UsageError
from .files import atomic, state
from .progress import DONE, REUSE, START, Callback, emitter

if TYPE_CHECKING:
    from .ollama.client import OllamaCreateResult
    from .ollama.modelfile import Modelfile

MERGED = "merged"  # OUT/merged: the LoRA merged into the base, an HF checkpoint in f16
MERGE_RECORD = "merge.json"  # what OUT/merged was made from
EVAL_JSON, EVAL_MD = "eval.json", "eval.md"
MODELFILE = "Modelfile"
IM_SUFFIX = "-im"
# Types an importance matrix does not change: floats are not quantized, and llama.cpp's Q8_0
# quantizer takes no weights (ggml quantize_q8_0 ignores quant_weights).
NO_IMATRIX_GAIN = frozenset({"F32", "F16", "BF16", "Q8_0"})


@dataclass(frozen=True)
class FinishPlan:
    """What ``finish_adapter`` will do, checked before any heavy work."""

    adapter: Path
    base: Path
    out_dir: Path
    quant: str  # llama.cpp type name
    imatrix: bool
    steps: tuple[str, ...]  # merge, convert, imatrix, quantize, eval, modelfile, ollama
    merged: Path
    f16: Path
    target: Path
    eval_text: Path | None
    ollama: str | None
    ctx: int
    chunks: int | None

    @property
    def titles(self) -> tuple[str, ...]:
        """One line per step, for ``--dry-run``."""
        what = {
            "merge": f"merge {self.adapter.name} into {self.base.name} -> {self.merged}",
            "convert": f"convert {MERGED}/ to {self.f16.name}",
            "imatrix": f"importance matrix of {self.f16.name} (calibration text)",
            "quantize": f"quantize to {self.target.name} ({self.quant})",
            "eval": f"perplexity of {self.f16.name} and {self.target.name} on {self.eval_text}",
            "modelfile": f"write {MODELFILE} for {self.target.name}",
            "ollama": f"ollama create {self.ollama}",
        }
        return tuple(f"[{i}/{len(self.steps)}] {what[s]}" for i, s in enumerate(self.steps, 1))


@dataclass(frozen=True)
class FinishResult:
    """Every artifact of a finished adapter."""

    plan: FinishPlan
    merged: Path  # the merged HF checkpoint
    f16: Path
    quant: Path  # the quantized GGUF
    sha256: str  # of the quant
    imatrix: Path | None
    eval_json: Path | None
    eval_md: Path | None
    ppl: tuple[tuple[str, float, float], ...]  # (label, PPL, error): f16 first; empty without eval
    modelfile: Path
    ollama: OllamaCreateResult | None
    reused: tuple[str, ...]  # the steps that were complete already
    seconds: float
    notes: tuple[str, ...] = ()  # for the user: the Modelfile's template when not Llama-3


def parse_then(then: str, imatrix: bool | None = None) -> tuple[str, bool]:
    """``--then`` as a quant type and whether it gets an importance matrix.

    ``Q4_K_M`` (any name ``quantize`` takes: ``q4_k``, ``Q4_K``) gets one when the type gains
    from it (every quantized type but Q8_0); ``Q4_K_M-im`` asks for one explicitly.
    ``imatrix`` True / False overrides the choice.

    Raises:
        UsageError: an unknown type, a float type (merge-lora writes those), or a type that
            needs an imatrix with ``imatrix=False``.
    """
    from .quant.quantize import parse_type

    text = then.strip()
    explicit = text.lower().endswith(IM_SUFFIX)
    qtype = parse_type(text[: -len(IM_SUFFIX)] if explicit else text)
    if qtype.is_float:
        raise UsageError(
            f"--then {then}: {qtype.name} is not a quant type",
            hint="for a merged f16 GGUF use: llama3zh merge-lora LORA --base MODEL --outtype f16",
        )
    if explicit and imatrix is False:
        raise UsageError(f"--then {then} asks for an importance matrix that was turned off")
    want = imatrix if imatrix is not None else (explicit or qtype.name not in NO_IMATRIX_GAIN)
    if qtype.requires_imatrix and not want:
        raise UsageError(
            f"{qtype.name} needs an importance matrix", hint=f"use --then {qtype.name}{IM_SUFFIX}"
        )
    return qtype.name, want


def plan_finish(
    *,
    adapter: str | Path,
    base: str | Path,
    then: str,
    out_dir: str | Path,
    ollama: str | None = None,
    eval_text: str | Path | None = None,
    imatrix: bool | None = None,
    chunks: int | None = None,
    ctx: int = 512,
) -> FinishPlan:
    """Check the adapter, base, chain and names before anything is written.

    Raises:
        ModelNotFoundError: the adapter or base folder is not there.
        UsageError: a bad ``then``, Ollama name, eval text or chunk settings.
    """
    from .files import guard
    from .ollama.quoting import check_ollama_name
    from .pipeline import refuse_foreign
    from .quant.options import ChunkOptions
    from .quant.quantize import parse_type
    from .quant.source import F16

    adapter_dir, base_dir = Path(adapter).expanduser(), Path(base).expanduser()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"{adapter_dir} is not a LoRA folder (no adapter_config.json)",
            hint="give the folder llama3zh train wrote (adapter_config.json, "
            "adapter_model.safetensors)",
        )
    if not (base_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"{base_dir} is not an HF checkpoint (no config.json)",
            hint="give the base model's folder, the one the LoRA was trained on",
        )
    quant, want_im = parse_then(then, imatrix)
    ChunkOptions(ctx=ctx, chunks=chunks).check()
    if ollama is not None:
        check_ollama_name(ollama)
    text = Path(eval_text).expanduser() if eval_text is not None else None
    if text is not None and not (text.is_file() and text.stat().st_size > 0):
        raise UsageError(f"{text}: no held-out text there", hint="give a non-empty text file")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file", hint="give a folder for the outputs")
    merged = out / MERGED
    f16 = out / F16
    target = out / parse_type(quant).filename(imatrix=want_im)
    # OUT may hold the adapter (train writes it there): only what is written must not be an input
    outputs = (out / MERGE_RECORD, f16, target, out / EVAL_JSON, out / EVAL_MD, out / MODELFILE)
    for p in (merged, *outputs):
        guard.check_not_input(p, [adapter_dir, base_dir], option="the output")
    for p in outputs:
        refuse_foreign(p, out, made_from=str(adapter_dir))
    if out.is_dir():  # OUT/merged may hold only what an earlier merge wrote (it is replaced)
        guard.check_folder_output(merged, force=True, inputs=[adapter_dir, base_dir])
    steps = ["merge", "convert", *(["imatrix"] if want_im else []), "quantize"]
    steps += [*(["eval"] if text is not None else []), "modelfile"]
    steps += ["ollama"] if ollama is not None else []
    return FinishPlan(
        adapter=adapter_dir, base=base_dir, out_dir=out, quant=quant, imatrix=want_im,
        steps=tuple(steps), merged=merged, f16=f16, target=target, eval_text=text,
        ollama=ollama, ctx=ctx, chunks=chunks,
    )  # fmt: skip


def finish_adapter(
    *,
    adapter: str | Path,
    base: str | Path,
    then: str,
    out_dir: str | Path,
    ollama: str | None = None,
    eval_texts: str | Path | None = None,
    imatrix: bool | None = None,
    chunks: int | None = None,
    ctx: int = 512,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    ollama_host: str | None = None,
    progress: Callback | None = None,
) -> FinishResult:
    """Merge a PEFT LoRA into its base, quantize it, evaluate it, write its Modelfile and
    create it in Ollama; steps finished before (recorded in ``out_dir``) are reused.

    Args:
        adapter: the LoRA folder (``llama3zh train``'s output, or any PEFT LoRA).
        base: the base model's HF checkpoint folder.
        then: the quant type (``Q4_K_M``; ``Q4_K_M-im`` for an explicit imatrix): see
            :func:`parse_then`.
        out_dir: where everything goes (``merged/``, ``ggml-model-f16.gguf``, the quant,
            ``eval.*``, ``Modelfile``).
        ollama: create this Ollama model from the quant.
        eval_texts: the held-out text to measure perplexity on (f16 and the quant); None: no
            eval step.
        imatrix: force the importance matrix on or off (None: when the type gains from it).
        chunks / ctx: the imatrix's and the eval's chunks (None: all the text) of ctx tokens.
        progress: each stage's events, and "run" events for the steps (``[2/6] convert``).

    Raises:
        UsageError, ModelNotFoundError: bad inputs (before anything is written).
        whatever the stages raise (InvalidModelError for a LoRA of another base, BackendError,
        DiskSpaceError, OllamaError); a finished step stays finished.
    """
    t0 = time.monotonic()
    plan = plan_finish(
        adapter=adapter, base=base, then=then, out_dir=out_dir, ollama=ollama,
        eval_text=eval_texts, imatrix=imatrix, chunks=chunks, ctx=ctx,
    )  # fmt: skip
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(plan, progress)
    run.merge()
    quant, sha, im = run.quantize(threads=threads, n_gpu_layers=n_gpu_layers)
    ppl: tuple[tuple[str, float, float], ...] = ()
    if plan.eval_text is not None:
        ppl = run.evaluate(threads=threads, n_gpu_layers=n_gpu_layers)
    modelfile, built = run.modelfile()
    created = None
    if plan.ollama is not None:
        created = run.create(built, host=ollama_host)
    evaluated = plan.eval_text is not None
    return FinishResult(
        plan=plan, merged=plan.merged, f16=plan.f16, quant=quant, sha256=sha, imatrix=im,
        eval_json=plan.out_dir / EVAL_JSON if evaluated else None,
        eval_md=plan.out_dir / EVAL_MD if evaluated else None,
        ppl=ppl, modelfile=modelfile, ollama=created, reused=tuple(run.reused),
        seconds=time.monotonic() - t0, notes=run.notes,
    )  # fmt: skip


def _settings_sha(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()


class _Run:
    """The steps of one plan and their records in ``out_dir``'s state file."""

    def __init__(self, plan: FinishPlan, progress: Callback | None) -> None:
        self.plan = plan
        self.out = plan.out_dir
        self.progress = progress
        self.emit = emitter(progress, "run")
        self.reused: list[str] = []
        self.notes: tuple[str, ...] = ()

    def event(self, kind: str, event: str, message: str) -> None:
        head = f"[{self.plan.steps.index(kind) + 1}/{len(self.plan.steps)}] {kind}"
        self.emit(event, head, message=f"{head}: {message}")

    def title(self, kind: str) -> str:
        return self.plan.titles[self.plan.steps.index(kind)].split("] ", 1)[1]

    def reuse(self, kind: str, what: str) -> None:
        self.reused.append(kind)
        self.event(kind, REUSE, f"{what} is complete")

    def done(self, kind: str, t: float) -> None:
        from .estimates import duration

        self.event(kind, DONE, f"done ({duration(time.monotonic() - t)})")

    def write(self, path: Path, text: str, step: str, inputs: Mapping[str, str]) -> None:
        """``text`` to ``path`` through a temporary name, recorded before the rename."""
        with atomic.replacing(path) as tmp:
            tmp.write_bytes(text.encode("utf-8"))
            path.unlink(missing_ok=True)  # ours (plan_finish refused any other)
            state.record(path, step=step, inputs=inputs, folder=self.out, measure=tmp)

    def _sha(self, path: Path) -> str:
        entry = state.completed(path, folder=self.out)
        return entry.sha256 if entry is not None else state.sha256_file(path)

    # merge

    def merge(self) -> None:
        from .convert.lora import merge_lora
        from .convert.writer import fingerprint

        plan = self.plan
        record = self.out / MERGE_RECORD
        inputs = fingerprint(plan.adapter, plan.base)
        if state.completed(record, inputs=inputs, folder=self.out) and _merged_intact(plan.merged):
            self.reuse("merge", f"{MERGED}/")
            return
        self.event("merge", START, self.title("merge"))
        t = time.monotonic()
        # replaces only what an earlier merge wrote there (anything else is refused)
        result = merge_lora(lora=plan.adapter, base=plan.base, output=plan.merged, format="hf",
                            outtype="f16", force=True, progress=self.progress)  # fmt: skip
        summary = {
            "adapter": str(plan.adapter),
            "base": str(plan.base),
            "merged_modules": result.merged_modules,
            "replaced_modules": list(result.replaced_modules),
            "scale": result.scale,
        }
        self.write(record, json.dumps(summary, indent=1) + "\n", "merge", inputs)
        self.done("merge", t)

    # convert -> imatrix -> quantize: the pipeline's

    def quantize(
        self, *, threads: int | None, n_gpu_layers: int | None
    ) -> tuple[Path, str, Path | None]:
        from .pipeline import execute, plan_folder

        plan = self.plan
        run_plan = plan_folder(plan.merged, quant=plan.quant, imatrix=plan.imatrix,
                               out_dir=self.out, chunks=plan.chunks, ctx=plan.ctx)  # fmt: skip
        before = state.read_state(self.out)
        result = execute(run_plan, progress=self.progress, threads=threads,
                         n_gpu_layers=n_gpu_layers, first_step=2,
                         n_steps=len(plan.steps))  # fmt: skip
        # a step whose record is the one from before was reused (execute found it complete)
        self.reused += [a.step for a in result.artifacts if before.get(a.name) == a]
        im = next((self.out / a.name for a in result.artifacts if a.step == "imatrix"), None)
        return result.target, result.sha256, im

    # eval

    def evaluate(self, *, threads: int | None, n_gpu_layers: int | None
                 ) -> tuple[tuple[str, float, float], ...]:  # fmt: skip
        from .quant.evaluate import evaluate, markdown_table
        from .quant.options import ChunkOptions

        plan = self.plan
        assert plan.eval_text is not None
        md, js = self.out / EVAL_MD, self.out / EVAL_JSON
        settings = {"ctx": plan.ctx, "chunks": plan.chunks,
                    "text": state.sha256_file(plan.eval_text)}  # fmt: skip
        inputs = {
            plan.f16.name: self._sha(plan.f16),
            plan.target.name: self._sha(plan.target),
            "settings": _settings_sha(settings),
        }
        if state.completed(md, inputs=inputs, folder=self.out) and state.completed(
            js, inputs=inputs, folder=self.out
        ):
            try:
                rows = _ppl_rows(json.loads(js.read_text(encoding="utf-8")))
                self.reuse("eval", EVAL_MD)
                return rows
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: measure again
        self.event("eval", START, self.title("eval"))
        t = time.monotonic()
        options = ChunkOptions(text=plan.eval_text, ctx=plan.ctx, chunks=plan.chunks,
                               n_gpu_layers=n_gpu_layers, threads=threads)  # fmt: skip
        result = evaluate(models=[plan.f16, plan.target], options=options, record=False,
                          progress=self.progress)  # fmt: skip
        data = result.to_json()
        table = (
            f"# {plan.adapter.name}: f16 vs {plan.quant} on the held-out text\n\n"
            f"{markdown_table(result)}\n\n"
            f"Perplexity (llama-perplexity, +/- its standard error) on {result.n_chunks} chunks "
            f"of {result.ctx} tokens of {plan.eval_text.name}; the second half of each chunk is "
            "scored.\n"
        )
        self.write(js, json.dumps(data, ensure_ascii=False, indent=1) + "\n", "eval", inputs)
        self.write(md, table, "eval", inputs)
        self.done("eval", t)
        return _ppl_rows(data)

    # modelfile

    def modelfile(self) -> tuple[Path, Modelfile]:
        plan = self.plan
        path = self.out / MODELFILE
        built = modelfile_for(plan.target, relative_to=self.out, made_from=plan.adapter.name)
        self.notes += built.warnings
        text = built.text
        inputs = {
            plan.target.name: self._sha(plan.target),
            "settings": _settings_sha({"text": text}),
        }
        if state.completed(path, inputs=inputs, folder=self.out) and (
            path.read_text(encoding="utf-8") == text
        ):
            self.reuse("modelfile", MODELFILE)
            return path, built
        self.event("modelfile", START, self.title("modelfile"))
        t = time.monotonic()
        self.write(path, text, "modelfile", inputs)
        self.done("modelfile", t)
        return path, built

    # ollama

    def create(self, built: Modelfile, *, host: str | None) -> OllamaCreateResult:
        from .ollama.client import ollama_create

        assert self.plan.ollama is not None
        self.event("ollama", START, f"ollama create {self.plan.ollama}")
        t = time.monotonic()
        result = ollama_create(name=self.plan.ollama, modelfile=built, host=host,
                               progress=self.progress)  # fmt: skip
        self.done("ollama", t)
        return result


def modelfile_for(quant: Path, *, relative_to: Path, made_from: str) -> Modelfile:
    """The Modelfile for a finished quant, in the chat format its GGUF has.

    Llama-3-Instruct (what ``train sft`` renders) through ``build_modelfile``; a base with
    ChatML as its own template (SmolLM2) gets the demo's ChatML Modelfile; any other format a
    plain completion template, with a warning saying so.
    """
    from dataclasses import replace

    from . import __version__
    from .demo import SMOLLM2_REPO, TEMPLATE_NOTE, chatml_modelfile
    from .errors import InvalidModelError
    from .gguf.info import read_gguf_info
    from .ollama.modelfile import build_modelfile

    try:
        return build_modelfile(model=str(quant), relative_to=relative_to)
    except InvalidModelError:
        template = read_gguf_info(quant).chat_template or ""
        if "<|im_start|>" not in template:
            built = build_modelfile(model=str(quant), chat=False, relative_to=relative_to)
            why = (
                f"{quant.name}'s chat template is neither Llama-3-Instruct nor ChatML: the "
                "Modelfile has a plain completion template"
            )
            return replace(built, warnings=(why,))
    built = chatml_modelfile(quant, relative_to=relative_to)
    header = (
        built.header[0],  # the title
        built.header[1],  # the GGUF
        f"Model: the LoRA {made_from} merged into {SMOLLM2_REPO} (or another ChatML base)",
        built.header[3],  # the template
        f"Written by llama3zh {__version__} (llama3zh train --then).",
        "Use: ollama create NAME -f Modelfile && ollama run NAME",
    )
    note = f"the Modelfile has the base's own template: {TEMPLATE_NOTE}"
    return replace(built, header=header, warnings=(note,))


def _merged_intact(merged: Path) -> bool:
    """Every file of ``merged`` is one the last merge wrote, unchanged since, config included."""
    entries = state.read_state(merged)
    return (
        bool(entries)
        and (merged / "config.json").is_file()
        and all(e.matches(merged / name) for name, e in entries.items())
    )


def _ppl_rows(data: Mapping[str, Any]) -> tuple[tuple[str, float, float], ...]:
    return tuple((str(m["label"]), float(m["ppl"]), float(m["ppl_err"])) for m in data["models"])
