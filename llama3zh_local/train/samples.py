"""What the data side hands the trainer: token ids and labels, with where they came from."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100  # the label of a token that is not trained on (transformers' convention)


@dataclass(frozen=True)
class Sample:
    """One training sequence.

    ``labels[i]`` is ``input_ids[i]`` where the loss is taken and ``IGNORE_INDEX`` elsewhere
    (transformers shifts them inside the model). ``source`` says where it came from (``file:line``
    for SFT, ``file:block N`` for packed PT blocks) for error messages and ``check-data``.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    source: str
    truncated: bool = False  # cut to the block size

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(
                f"{self.source}: {len(self.input_ids)} ids but {len(self.labels)} labels"
            )

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)
