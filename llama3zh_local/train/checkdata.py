"""``llama3zh train check-data``: what training would see, without torch: the format detected,
counts, a length histogram and one rendered sample with its trained tokens marked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import UsageError
from .data import read_pt, read_sft
from .render import ChatFormat, Samples, encode_pt, encode_sft, load_tokenizer
from .samples import IGNORE_INDEX, Sample

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["Bucket", "DataReport", "Segment", "check_data", "histogram", "segments"]


@dataclass(frozen=True)
class Bucket:
    low: int  # tokens, inclusive
    high: int  # tokens, inclusive
    count: int


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass(frozen=True)
class DataReport:
    kind: str  # sft | pt
    format: str  # alpaca / sharegpt / messages (joined with + across files), or text
    files: tuple[Path, ...]
    records: int  # conversations (SFT) or texts (PT) read
    samples: int  # training sequences made from them
    total_tokens: int
    trained_tokens: int
    truncated: int  # SFT samples cut to the block size
    dropped: int  # SFT: samples left with no trained token; PT: the short last block (0 or 1)
    dropped_tokens: int
    block_size: int
    template: str  # where the chat template came from (SFT), "" for PT
    histogram: tuple[Bucket, ...]  # sample lengths (SFT) or text lengths (PT), in tokens
    sample_source: str
    sample: tuple[Segment, ...]  # the first sample, its trained and masked parts told apart


def check_data(
    path: Path,
    *,
    kind: Literal["pt", "sft"],
    model_dir: Path,
    block_size: int = 1024,
    train_on_prompt: bool = False,
) -> DataReport:
    """Read, render and tokenize the data as ``llama3zh train`` would, and summarize it.

    Raises:
        UsageError: an unknown kind.
        DataError: bad data (file and line named), or nothing left to train on.
        ModelNotFoundError, InvalidModelError, ChatTemplateError: the base model's tokenizer.
    """
    if kind == "sft":
        fmt = ChatFormat.from_model_dir(model_dir)  # the base first: a wrong --base is cheap
        data = read_sft(path)
        samples: Samples = encode_sft(
            data, fmt, max_len=block_size, train_on_prompt=train_on_prompt
        )
        lengths = [len(s.input_ids) for s in samples]
        return _report(
            kind, data.format, data.files, len(data.conversations), samples, lengths,
            block_size, fmt.tokenizer, template=fmt.template.origin,
        )  # fmt: skip
    if kind == "pt":
        tok = load_tokenizer(model_dir)
        pt = read_pt(path)
        samples = encode_pt(pt, tok, block_size=block_size)
        lengths = [len(e.ids) for e in tok.tokenizer.encode_batch([t.text for t in pt.texts])]
        return _report(
            kind, "text", pt.files, len(pt.texts), samples, lengths, block_size, tok.tokenizer,
            template="",
        )  # fmt: skip
    raise UsageError(f"unknown kind of training data {kind!r}: pt or sft")


def _report(
    kind: str,
    fmt_name: str,
    files: tuple[Path, ...],
    records: int,
    samples: Samples,
    lengths: list[int],
    block_size: int,
    tokenizer: Tokenizer,
    *,
    template: str,
) -> DataReport:
    first = samples[0] if samples else None
    return DataReport(
        kind=kind,
        format=fmt_name,
        files=files,
        records=records,
        samples=len(samples),
        total_tokens=sum(len(s.input_ids) for s in samples),
        trained_tokens=sum(s.trained_tokens for s in samples),
        truncated=sum(s.truncated for s in samples),
        dropped=samples.dropped,
        dropped_tokens=samples.dropped_tokens,
        block_size=block_size,
        template=template,
        histogram=histogram(lengths),
        sample_source=first.source if first else "",
        sample=segments(first, tokenizer) if first else (),
    )


def histogram(lengths: list[int]) -> tuple[Bucket, ...]:
    """Counts in power-of-two buckets (1-64, 65-128, 129-256, ...) up to the longest length."""
    if not lengths:
        return ()
    edges = [64]
    while edges[-1] < max(lengths):
        edges.append(edges[-1] * 2)
    buckets = []
    low = 1
    for high in edges:
        buckets.append(Bucket(low, high, sum(1 for n in lengths if low <= n <= high)))
        low = high + 1
    return tuple(buckets)


def segments(sample: Sample, tokenizer: Tokenizer) -> tuple[Segment, ...]:
    """The sample's text in runs of trained and masked tokens (special tokens written out)."""
    runs: list[tuple[bool, list[int]]] = []
    for tid, label in zip(sample.input_ids, sample.labels, strict=True):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(tid)
        else:
            runs.append((trained, [tid]))
    return tuple(
        Segment(tokenizer.decode(ids, skip_special_tokens=False), trained) for trained, ids in runs
    )
