"""A training run in a process of its own (``python -m tests.trainproc JSON``), for the resume
and multi-process tests: the samples are built here from fixed texts with the real Llama-3
tokenizer, so that every run and every DDP process trains on the same data.

JSON: ``{"base", "out", "kind", "options": {...}, "interrupt_at": step | null,
"signal_pid": the process to send SIGINT to (default this one)}``. Prints the
TrainResult as JSON on the last line; exit code 130 when the run was interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from llama3zh_local.progress import ADVANCE, Event
from llama3zh_local.train.options import TrainOptions
from llama3zh_local.train.samples import IGNORE_INDEX, Sample
from llama3zh_local.train.trainer import train
from tests import models

TEXTS = [
    ("北京是哪个国家的首都？", "北京是中国的首都。"),
    ("一年有几个季节？", "一年有四个季节：春、夏、秋、冬。"),
    ("What is two plus two?", "Two plus two is four."),
    ("熊猫吃什么？", "大熊猫主要吃竹子。"),
    ("水在多少度结冰？", "水在零摄氏度结冰。"),
    ("Name a primary colour.", "Red is a primary colour."),
]


def samples(kind: str) -> list[Sample]:
    """Prompt + answer pairs; SFT trains on the answer only, PT on every token."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models.llama3_tokenizer_json()))
    out = []
    for i, (q, a) in enumerate(TEXTS):
        p_ids = [models.LLAMA3_BOS_ID, *tok.encode(q, add_special_tokens=False).ids]
        a_ids = [*tok.encode(a, add_special_tokens=False).ids, models.LLAMA3_EOT_ID]
        labels = ([IGNORE_INDEX] * len(p_ids) if kind == "sft" else p_ids) + a_ids
        out.append(Sample(tuple(p_ids + a_ids), tuple(labels), f"texts:{i + 1}"))
    return out


def main() -> int:
    import torch

    torch.set_num_threads(1)  # the same sums in the same order in every run
    spec = json.loads(sys.argv[1])
    stop_at = spec.get("interrupt_at")

    def progress(e: Event) -> None:  # only the first process of a DDP run gets events
        if stop_at is not None and e.kind == ADVANCE and e.done == stop_at:
            # as Ctrl-C would: to this process, or to the launcher that forwards it (--gpus)
            os.kill(spec.get("signal_pid") or os.getpid(), signal.SIGINT)

    opts = TrainOptions.for_kind(spec["kind"], **spec["options"])
    res = train(samples(spec["kind"]), opts, base=Path(spec["base"]), out=Path(spec["out"]),
                progress=progress)  # fmt: skip
    print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(res).items()}))
    return 130 if res.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
