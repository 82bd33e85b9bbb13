"""`llama3zh train ...`: LoRA training and its data (a sub-app: each command one function here)."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import _output
from ._errors import handle_errors
from ._options import DryRunOpt, JsonOpt

if TYPE_CHECKING:
    from ..train.checkdata import DataReport

# Library modules are imported inside the commands: `llama3zh --help` starts faster.

train_app = typer.Typer(
    name="train",
    help="LoRA training: continued pre-training (pt) and instruction tuning (sft), and their data.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class DataKind(str, Enum):
    sft = "sft"
    pt = "pt"


DataArg = Annotated[
    Path,
    typer.Argument(
        help="A data file or a folder of them: .json/.jsonl (sft: alpaca, ShareGPT or OpenAI "
        'messages), .txt/.jsonl {"text": ...} (pt).',
        show_default=False,
    ),
]
BaseOpt = Annotated[
    str,
    typer.Option(
        "--base",
        "-b",
        help="The base model: an HF checkpoint folder (config.json, safetensors, tokenizer.json), "
        "or a pulled alias with full weights (`llama3zh pull ALIAS --variant full`).",
        show_default=False,
    ),
]
TrainOnPromptOpt = Annotated[
    bool,
    typer.Option(
        "--train-on-prompt",
        help="sft: train on the whole conversation, not only the assistant's turns.",
    ),
]
# Options whose default depends on the kind (upstream's run_pt.sh / run_sft.sh): None = that.
KindBlockSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--block-size",
        help="Tokens per training sequence: pt packs text into blocks of it, sft cuts longer "
        "conversations to it. Default: 1024 for pt, 512 for sft (upstream's).",
        min=2,
        show_default=False,
    ),
]

KindOpt = Annotated[DataKind, typer.Option("--kind", help="What the data is for.")]

SAMPLE_CHARS = 4000  # of the rendered sample shown (a pt block is ~4k characters)


@handle_errors
def check_data(
    data: DataArg,
    base: BaseOpt,
    kind: KindOpt = DataKind.sft,
    block_size: KindBlockSizeOpt = None,
    train_on_prompt: TrainOnPromptOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Check training data: the format detected, counts, token lengths and one rendered sample
    with the trained tokens marked, exactly as training would see them.

    Examples:

      llama3zh train check-data my_sft.jsonl --base ./Llama-3-Chinese-8B-Instruct

      llama3zh train check-data corpus/ --kind pt --base ./llama-3-chinese-8b --json
    """
    from ..train.checkdata import check_data as check

    report = check(
        data, kind=kind.value, model_dir=base_dir(base),
        block_size=block_size or (1024 if kind is DataKind.pt else 512),
        train_on_prompt=train_on_prompt,
    )  # fmt: skip
    if as_json:
        _output.result(json.dumps(report_dict(report), ensure_ascii=False, indent=2))
        return
    print_report(report)


def base_dir(base: str) -> Path:
    """``--base``: a folder as given, else a pulled alias's full weights in the store."""
    from ..hub import store

    return store.resolve_hf_dir(base)


def report_dict(report: DataReport) -> dict[str, Any]:
    d = asdict(report)
    d["files"] = [str(f) for f in report.files]
    return d


def print_report(report: DataReport) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = _output.out()
    table = Table(title=f"Training data ({report.kind})", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    unit = "conversations" if report.kind == "sft" else "texts"
    rows = [
        ("format", report.format),
        ("files", f"{len(report.files)}: {_files(report.files)}"),
        (unit, f"{report.records:,}"),
        ("samples", f"{report.samples:,} of up to {report.block_size:,} tokens"),
        ("tokens", f"{report.total_tokens:,}"),
        ("trained tokens", f"{report.trained_tokens:,}"),
    ]
    if report.template:
        rows.append(("chat template", report.template))
    if report.kind == "sft":
        rows.append(("truncated", f"{report.truncated:,} (cut to --block-size)"))
        rows.append(("dropped", f"{report.dropped:,} (no trained token left after the cut)"))
    else:
        rows.append(("dropped", f"{report.dropped_tokens:,} tokens (the last, partial block)"))
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)

    hist = Table(
        title=f"Lengths of the {'samples' if report.kind == 'sft' else 'texts'} (tokens)",
        title_justify="left",
    )
    hist.add_column("tokens", justify="right")
    hist.add_column("count", justify="right")
    hist.add_column("")
    top = max((b.count for b in report.histogram), default=0) or 1
    for b in report.histogram:
        hist.add_row(f"{b.low:,}-{b.high:,}", f"{b.count:,}", "#" * round(30 * b.count / top))
    out.print(hist)

    if not report.sample:
        return
    out.print(f"Sample {escape(report.sample_source)}:", soft_wrap=True)
    plain = not out.is_terminal or out.no_color
    if plain:
        out.print(escape("(trained text between [trained] and [/trained])"), soft_wrap=True)
    else:
        out.print("([green]green[/green]: trained on; [dim]dim[/dim]: masked)", soft_wrap=True)
    left = SAMPLE_CHARS
    pieces = []
    for seg in report.sample:
        text = seg.text[:left]
        left -= len(text)
        if plain:
            pieces.append(escape(f"[trained]{text}[/trained]" if seg.trained else text))
        else:
            pieces.append(
                f"[green]{escape(text)}[/green]" if seg.trained else f"[dim]{escape(text)}[/dim]"
            )
        if left <= 0:
            pieces.append(escape(" [...]"))
            break
    out.print("".join(pieces), soft_wrap=True, highlight=False)


def _files(files: tuple[Path, ...]) -> str:
    shown = ", ".join(str(f) for f in files[:3])
    return shown + (f", ... ({len(files) - 3} more)" if len(files) > 3 else "")


# -- train pt / train sft ---------------------------------------------------------------------

OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="The run's folder: checkpoints/, then adapter/ (a PEFT LoRA), loss.csv, loss.png "
        "and, with --then, the merged model and its quant. Default: ./lora-KIND-DATA.",
        show_default=False,
    ),
]
EpochsOpt = Annotated[
    float | None,
    typer.Option(
        "--epochs",
        help="Passes over the data (default: 1 for pt, 3 for sft).",
        min=0.01,
        show_default=False,
    ),
]
MaxStepsOpt = Annotated[
    int | None,
    typer.Option("--max-steps", help="Stop after this many optimizer steps.", min=1),
]
LrOpt = Annotated[
    float | None,
    typer.Option("--lr", help="Peak learning rate (default: upstream's 1e-4).", min=0.0),
]
RankOpt = Annotated[
    int | None, typer.Option("--rank", "-r", help="LoRA rank (upstream: 64).", min=1)
]
AlphaOpt = Annotated[
    int | None, typer.Option("--alpha", help="LoRA alpha (default: twice the rank).", min=1)
]
EmbeddingsOpt = Annotated[
    bool | None,
    typer.Option(
        "--train-embeddings/--no-train-embeddings",
        help="Train embed_tokens and lm_head in full (modules_to_save; ~1B parameters on 8B). "
        "Default: on for pt, as upstream; off for sft.",
        show_default=False,
    ),
]
BitsOpt = Annotated[
    int | None,
    typer.Option(
        "--bits",
        help="QLoRA: load the base in 4 or 8 bits (bitsandbytes, the [qlora] extra).",
        show_default=False,
    ),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Sequences per device step (1).", min=1)
]
AccumOpt = Annotated[
    int | None,
    typer.Option("--grad-accum", help="Device steps per optimizer step (8).", min=1),
]
SaveStepsOpt = Annotated[
    int | None, typer.Option("--save-steps", help="Write a checkpoint every N steps (200).", min=1)
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Random seed (42; a rerun resumes the same run).")
]
GpusOpt = Annotated[
    int,
    typer.Option(
        "--gpus",
        help="Train on N GPUs of this machine: the command runs again under torchrun (DDP).",
        min=1,
    ),
]
DeepSpeedOpt = Annotated[
    str | None,
    typer.Option(
        "--deepspeed", help="zero2 or zero3: DeepSpeed ZeRO (where DeepSpeed is installed)."
    ),
]
HoldoutOpt = Annotated[
    float,
    typer.Option(
        "--holdout",
        help="Fraction of the samples kept out of training: their loss (and, with --then, the "
        "quant's perplexity on them) is reported.",
        min=0.0,
        max=0.5,
    ),
]
RestartOpt = Annotated[
    bool,
    typer.Option("--restart", help="Discard the checkpoints of an earlier run in --out."),
]
ThenOpt = Annotated[
    str | None,
    typer.Option(
        "--then",
        help="After training: merge the LoRA, convert, quantize to this type (Q4_K_M: an "
        "importance matrix first, as `quantize --imatrix`), evaluate and write a Modelfile.",
        show_default=False,
    ),
]
OllamaOpt = Annotated[
    str | None,
    typer.Option("--ollama", help="With --then: create this Ollama model.", show_default=False),
]
FidelityOpt = Annotated[
    bool,
    typer.Option(
        "--fidelity",
        help="With --then: finish with a fidelity line, the f16 and quant GGUFs against the base "
        "+ the unmerged LoRA run by transformers (as `eval fidelity --lora`).",
    ),
]


@handle_errors
def pt(
    data: DataArg,
    base: BaseOpt,
    out: OutOpt = None,
    block_size: KindBlockSizeOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    lr: LrOpt = None,
    rank: RankOpt = None,
    alpha: AlphaOpt = None,
    train_embeddings: EmbeddingsOpt = None,
    bits: BitsOpt = None,
    batch_size: BatchOpt = None,
    grad_accum: AccumOpt = None,
    save_steps: SaveStepsOpt = None,
    seed: SeedOpt = None,
    gpus: GpusOpt = 1,
    deepspeed: DeepSpeedOpt = None,
    holdout: HoldoutOpt = 0.0,
    restart: RestartOpt = False,
    then: ThenOpt = None,
    ollama: OllamaOpt = None,
    fidelity: FidelityOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Continued pre-training: a LoRA (with embed_tokens and lm_head in full, as upstream) on
    plain text, packed into --block-size blocks.

    Rerun the same command to resume from the last checkpoint; Ctrl-C saves one and stops.

    Examples:

      llama3zh train pt corpus/ --base base --dry-run

      llama3zh train pt corpus/ --base ./llama-3-chinese-8b --bits 4 --then Q4_K_M
    """
    _train("pt", **locals())


@handle_errors
def sft(
    data: DataArg,
    base: BaseOpt,
    out: OutOpt = None,
    block_size: KindBlockSizeOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    lr: LrOpt = None,
    rank: RankOpt = None,
    alpha: AlphaOpt = None,
    train_embeddings: EmbeddingsOpt = None,
    train_on_prompt: TrainOnPromptOpt = False,
    bits: BitsOpt = None,
    batch_size: BatchOpt = None,
    grad_accum: AccumOpt = None,
    save_steps: SaveStepsOpt = None,
    seed: SeedOpt = None,
    gpus: GpusOpt = 1,
    deepspeed: DeepSpeedOpt = None,
    holdout: HoldoutOpt = 0.0,
    restart: RestartOpt = False,
    then: ThenOpt = None,
    ollama: OllamaOpt = None,
    fidelity: FidelityOpt = False,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Instruction tuning: a LoRA on conversations (alpaca with system/history, ShareGPT or
    OpenAI messages, detected), rendered with the model's chat template (Llama-3-Instruct's for
    Llama-3 vocabularies, with the upstream default system prompt); the loss is taken on every
    assistant turn and its end-of-turn token.

    Rerun the same command to resume from the last checkpoint; Ctrl-C saves one and stops.

    Examples:

      llama3zh train sft alpaca_zh.json --base instruct-v3 --dry-run

      llama3zh train sft chats.jsonl --base instruct-v3 --then Q4_K_M --ollama my-zh
    """
    _train("sft", **locals())


def _train(kind: str, **opts: Any) -> None:
    from ..train import launch

    if opts["gpus"] > 1 and not launch.is_child():
        if opts["dry_run"]:
            _output.note(f"--gpus {opts['gpus']}: the run would start under torchrun")
        else:
            raise typer.Exit(launch.relaunch(opts["gpus"]))
    if opts["ollama"] and not opts["then"]:
        from ..errors import UsageError

        raise UsageError("--ollama needs --then TYPE", hint="e.g. --then Q4_K_M --ollama my-model")
    if opts["fidelity"] and not opts["then"]:
        from ..errors import UsageError

        raise UsageError(
            "--fidelity checks the GGUFs that --then makes: it needs --then TYPE",
            hint="e.g. --then Q4_K_M --fidelity (or later: llama3zh eval fidelity F16.gguf "
            "--reference BASE --lora ADAPTER)",
        )
    from ..train.options import TrainOptions, require_extra
    from ..train.plan import plan_training

    base = base_dir(opts["base"])
    changes = {
        k: v
        for k, v in {
            "block_size": opts["block_size"], "epochs": opts["epochs"],
            "max_steps": opts["max_steps"], "learning_rate": opts["lr"],
            "lora_rank": opts["rank"],
            "lora_alpha": opts["alpha"] or (2 * opts["rank"] if opts["rank"] else None),
            "bits": opts["bits"], "batch_size": opts["batch_size"],
            "grad_accum": opts["grad_accum"], "save_steps": opts["save_steps"],
            "seed": opts["seed"], "gpus": opts["gpus"], "deepspeed": opts["deepspeed"],
        }.items()
        if v is not None
    }  # fmt: skip
    options = TrainOptions.for_kind(kind, train_embeddings=opts["train_embeddings"], **changes)
    data: Path = opts["data"]
    out: Path = opts["out"] or Path(f"lora-{kind}-{data.stem or 'data'}")
    samples, held = _samples(kind, data, base, options, opts)
    plan = plan_training(samples, options, model_dir=base)
    show_plan(plan, options, out, held=len(held), as_json=opts["as_json"] and opts["dry_run"])
    if opts["then"]:  # checked now; the whole chain is planned once the adapter exists
        from ..ollama.quoting import check_ollama_name
        from ..trained import parse_then

        quant, imatrix = parse_then(opts["then"])
        if opts["ollama"]:
            check_ollama_name(opts["ollama"])
        steps = ["merge", "convert", *(["imatrix"] if imatrix else []), quant]
        steps += [*(["eval (held-out)"] if held else []), "Modelfile"]
        steps += ["fidelity (transformers + the LoRA)"] if opts["fidelity"] else []
        steps += [f"ollama create {opts['ollama']}"] if opts["ollama"] else []
        _output.note("then: " + " -> ".join(steps))
    if opts["dry_run"]:
        return
    require_extra(bits=options.bits, deepspeed=options.deepspeed)
    from ..train.trainer import train
    from ._progress import Progress

    with Progress() as bar:
        result = train(samples, options, base=base, out=out, progress=bar,
                       eval_samples=held or None, restart=opts["restart"])  # fmt: skip
    if not launch.is_main_process():
        return
    if result.interrupted:
        _output.note(
            f"Interrupted at step {result.steps} of {result.total_steps}: checkpoint "
            f"{result.checkpoint}. Run the same command again to resume."
        )
        raise typer.Exit(130)
    assert result.adapter_dir is not None
    how = "already trained (same data and options)" if result.reused else (
        f"{result.steps} steps in {result.seconds:.0f} s"
        + (f", resumed at step {result.resumed_from_step}" if result.resumed_from_step else "")
    )  # fmt: skip
    loss = f", loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    held_loss = f", held-out loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
    _output.note(f"LoRA: {result.adapter_dir} ({how}{loss}{held_loss})")
    if result.loss_png is not None:
        _output.note(f"loss curve: {result.loss_png} ({result.loss_csv})")
    if not opts["then"]:
        _output.result(str(result.adapter_dir))
        return
    from ._finish import finish

    eval_text = _heldout_text(held, base, out) if held else None
    finish(adapter=result.adapter_dir, base=base, then=opts["then"], out_dir=out,
           ollama=opts["ollama"], eval_text=eval_text, fidelity=opts["fidelity"])  # fmt: skip


def _samples(
    kind: str, data: Path, base: Path, options: Any, opts: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """(training samples, held-out samples): every --holdout-th sample is held out."""
    from ..train import data as train_data
    from ..train import render

    if kind == "pt":
        samples = list(render.encode_pt(
            train_data.read_pt(data), render.load_tokenizer(base), block_size=options.block_size
        ))  # fmt: skip
    else:
        samples = list(render.encode_sft(
            train_data.read_sft(data), render.ChatFormat.from_model_dir(base),
            max_len=options.block_size, train_on_prompt=opts.get("train_on_prompt", False),
        ))  # fmt: skip
    fraction = opts["holdout"]
    if not fraction or len(samples) < 2:
        return samples, []
    every = max(2, round(1 / fraction))
    held = samples[every - 1 :: every]
    kept = [s for i, s in enumerate(samples) if (i + 1) % every]
    return kept, held


def _heldout_text(held: list[Any], base: Path, out: Path) -> Path:
    """The held-out samples as text for the quant's perplexity (written once, atomically)."""
    from ..files import atomic
    from ..train import render

    tok = render.load_tokenizer(base).tokenizer
    text = "\n\n".join(tok.decode(list(s.input_ids), skip_special_tokens=True) for s in held)
    path = out / "heldout.txt"
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        with atomic.replacing(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return path


def show_plan(plan: Any, options: Any, out: Path, *, held: int, as_json: bool) -> None:
    """The plan: on stdout for --dry-run --json, else on stderr."""
    m = plan.memory
    if as_json:
        d = asdict(plan)
        d["fits"] = plan.fits
        d["out"] = str(out)
        d["held_out"] = held
        _output.result(json.dumps(d, ensure_ascii=False, indent=2))
        return
    gib = 1 << 30
    lines = [
        f"train {options.kind}: {plan.samples:,} samples ({held:,} held out), "
        f"{plan.tokens:,} tokens ({plan.trained_tokens:,} trained), {plan.truncated:,} truncated "
        f"to {options.block_size:,}",
        f"  {plan.steps:,} steps ({plan.steps_per_epoch:,} per epoch; batch {options.batch_size} "
        f"x accumulation {options.grad_accum} x {options.gpus} process(es))",
        f"  LoRA rank {options.lora_rank}, alpha {options.lora_alpha} on "
        f"{', '.join(options.target_modules)}"
        + (f"; in full: {', '.join(options.modules_to_save)}" if options.modules_to_save else ""),
        f"  trainable parameters {plan.trainable_params:,} of {plan.total_params:,} "
        f"({100 * plan.trainable_params / max(plan.total_params, 1):.2f}%)",
        f"  memory: about {m.total / gib:.1f} GiB on {plan.device} ({plan.dtype}"
        + (f", {options.bits}-bit base" if options.bits else "")
        + f"); {plan.budget_what}: {plan.budget / gib:.1f} GiB"
        + ("" if plan.fits else " - it will not fit"),
        f"  output: {out}",
    ]
    for line in lines:
        _output.note(line)
    for advice in plan.advice:
        (_output.note if plan.fits else _output.warn)(f"  {advice}")


# The sub-app's commands, in the order `llama3zh train --help` lists them; cli/_app.py registers
# them (with its help_text) on train_app.
COMMANDS: dict[str, Any] = {"pt": pt, "sft": sft, "check-data": check_data}
