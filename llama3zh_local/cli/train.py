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
from ._options import JsonOpt

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
    Path,
    typer.Option(
        "--base",
        "-b",
        help="The base model: an HF checkpoint folder (tokenizer.json, tokenizer_config.json).",
        show_default=False,
    ),
]
BlockSizeOpt = Annotated[
    int,
    typer.Option(
        "--block-size",
        help="Tokens per training sequence: pt packs text into blocks of it, sft cuts longer "
        "conversations to it.",
        min=2,
    ),
]
TrainOnPromptOpt = Annotated[
    bool,
    typer.Option(
        "--train-on-prompt",
        help="sft: train on the whole conversation, not only the assistant's turns.",
    ),
]
KindOpt = Annotated[DataKind, typer.Option("--kind", help="What the data is for.")]

SAMPLE_CHARS = 4000  # of the rendered sample shown (a pt block is ~4k characters)


@handle_errors
def check_data(
    data: DataArg,
    base: BaseOpt,
    kind: KindOpt = DataKind.sft,
    block_size: BlockSizeOpt = 1024,
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
        data, kind=kind.value, model_dir=base, block_size=block_size,
        train_on_prompt=train_on_prompt,
    )  # fmt: skip
    if as_json:
        _output.result(json.dumps(report_dict(report), ensure_ascii=False, indent=2))
        return
    print_report(report)


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


# The sub-app's commands, in the order `llama3zh train --help` lists them; cli/_app.py registers
# them (with its help_text) on train_app.
COMMANDS: dict[str, Any] = {"check-data": check_data}
