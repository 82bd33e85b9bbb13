"""What llama-imatrix and llama-perplexity runs share: chunks of ``ctx`` tokens of a UTF-8
text, GPU layers and threads, checked once for both tools."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import hardware
from ..errors import InputError, UsageError
from ..gguf.info import GGUFInfo

DEFAULT_CTX = 512


@dataclass(frozen=True)
class ChunkOptions:
    """A tool run over chunks of a text (the imatrix's calibration, the eval's held-out text).

    ``text`` None: the text shipped for that tool. ``chunks`` None: all the text holds.
    ``n_gpu_layers`` None: as many as fit (hardware.plan_offload); -1: all.
    """

    text: Path | None = None
    ctx: int = DEFAULT_CTX
    chunks: int | None = None
    n_gpu_layers: int | None = None
    threads: int | None = None

    def check(self) -> None:
        """Refuse numbers the tools cannot use, before any model is read.

        Raises:
            UsageError: ``ctx`` under 16, ``chunks`` under 1, or an impossible thread count.
        """
        hardware.check_threads(self.threads)
        if self.ctx < 16:
            raise UsageError(f"--ctx {self.ctx}: must be at least 16 tokens", hint="e.g. --ctx 512")
        if self.chunks is not None and self.chunks < 1:
            raise UsageError(
                f"--chunks {self.chunks}: must be at least 1",
                hint="leave it out to use all of the text",
            )

    def n_chunks(self, n_tokens: int) -> int:
        """The chunks a run uses: ``chunks``, or all of the text (``n_tokens``) holds."""
        return min(self.chunks, n_tokens // self.ctx) if self.chunks else n_tokens // self.ctx

    def gpu_layers(self, info: GGUFInfo) -> int:
        """-ngl for ``info``'s model: ``n_gpu_layers``, or what fits (see :func:`gpu_layers`)."""
        return gpu_layers(info, ctx=self.ctx, requested=self.n_gpu_layers)

    def args(self, *, n_chunks: int, ngl: int) -> list[str]:
        """The options both tools take: ``-c CTX --chunks N -ngl L [-t T]``."""
        out = ["-c", str(self.ctx), "--chunks", str(n_chunks), "-ngl", str(ngl)]
        return out + (["-t", str(self.threads)] if self.threads else [])


def read_text(path: Path, *, what: str, iconv: str) -> tuple[bytes, str]:
    """A UTF-8 text file's bytes (for its hash) and text.

    Raises:
        InputError: no such file, or not UTF-8 (``iconv``: the command that converts it).
    """
    if not path.is_file():
        raise InputError(f"no {what} at {path}", hint="give a UTF-8 text file")
    raw = path.read_bytes()
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start})", hint=iconv) from None


def check_token_count(n_tokens: int, *, ctx: int, chunks: int | None, what: str) -> None:
    """Refuse a text too short for the chunks asked for (the tools need at least two).

    Raises:
        InputError: saying how many tokens the chunks need.
    """
    if n_tokens < 2 * ctx:
        fit = n_tokens // 2
        raise InputError(
            f"the {what} is too short: {n_tokens:,} tokens, and llama.cpp needs at least 2 "
            f"chunks of {ctx} tokens ({2 * ctx:,} tokens)",
            hint=f"use a longer text, or a smaller --ctx (at most {fit})"
            if fit >= 16
            else "use a longer text (a few hundred KB is typical)",
        )
    if chunks is not None and chunks * ctx > n_tokens:
        raise InputError(
            f"the {what} is too short for {chunks} chunks: they need {chunks * ctx:,} tokens "
            f"({chunks} x {ctx}), the text has {n_tokens:,}",
            hint=f"use --chunks {n_tokens // ctx} or fewer, a smaller --ctx, or a longer text",
        )


def gpu_layers(info: GGUFInfo, *, ctx: int, requested: int | None) -> int:
    """-ngl for the tools: the user's number, else what hardware.plan_offload fits (0 on CPU)."""
    if requested is not None and requested >= 0:
        return requested
    if requested == -1:
        return info.n_layer + 1
    try:
        hw = hardware.detect()
    except Exception:  # noqa: BLE001 - no device information: CPU
        return 0
    # the tools batch 2048 tokens: that many in the KV cache at once
    return hardware.plan_offload(info, n_ctx=max(ctx, 2048), requested=None, hw=hw).n_gpu_layers
