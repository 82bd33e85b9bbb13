"""Read and check a GGUF file's header before llama.cpp loads it.

llama.cpp's own loader fails on a bad file with a log line and a NULL pointer; checking here first
lets us say *what* is wrong (not a GGUF, truncated, no layers) in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidModelError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFInfo:
    """What the rest of the tool needs to know about a GGUF model."""

    path: Path
    size: int  # bytes on disk
    architecture: str
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ctx_train: int
    n_vocab: int
    file_type: str  # llama.cpp file type name, e.g. "MOSTLY_Q4_1"
    chat_template: str | None
    tensor_count: int
    layer_bytes: int  # bytes of the repeating blocks, all layers together
    output_bytes: int  # bytes of the output head (token_embd when the head is tied)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)  # scalar keys

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of f16 K+V cache one token takes, over all layers."""
        head_dim = self.n_embd // max(self.n_head, 1)
        return 2 * self.n_layer * self.n_head_kv * head_dim * 2


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Parse ``path``'s header with llama.cpp's GGUF reader and check it is a complete model.

    Key names come from ``gguf.Keys``.

    Raises:
        ModelNotFoundError: the file does not exist.
        InvalidModelError: not a GGUF, truncated, or missing the keys llama.cpp needs.
    """
    path = Path(path)
    from .guard import require_regular_file

    require_regular_file(path, what=".gguf file")  # a FIFO or device: refused, never read
    if not path.is_file():
        raise ModelNotFoundError(
            f"no model file at {path}",
            hint="give the path of a .gguf file, or a model alias (see `llama3zh models`)",
        )
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidModelError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
            hint="convert HF weights with `llama3zh convert`, or download a .gguf file",
        )
    import gguf

    from .llamacpp import engine

    header = engine.read_gguf_header(path)
    if header is None:
        raise InvalidModelError(
            f"{path} is damaged or truncated: its GGUF header cannot be read "
            f"({engine.last_log_lines(1) or 'llama.cpp gave no reason'})",
            hint="download the file again (`llama3zh pull` resumes and verifies)",
        )
    kv, tensors = header
    end = max((off + n for _, off, n in tensors), default=0)
    if end > size:
        raise InvalidModelError(
            f"{path} is truncated: its tensors need {end:,} bytes, the file has {size:,}",
            hint="download the file again (`llama3zh pull` resumes and verifies)",
        )
    arch = kv.get(gguf.Keys.General.ARCHITECTURE)
    if not arch:
        raise InvalidModelError(f"{path} has no general.architecture key: not a model GGUF")

    def key(template: str) -> Any:
        value = kv.get(template.format(arch=arch))
        if isinstance(value, engine.GGUFArray):  # per-layer values (e.g. head counts)
            return max(value.items or [0])
        return value

    n_layer = key(gguf.Keys.LLM.BLOCK_COUNT)
    n_embd = key(gguf.Keys.LLM.EMBEDDING_LENGTH)
    n_head = key(gguf.Keys.Attention.HEAD_COUNT)
    if not n_layer or not n_embd or not n_head:
        raise InvalidModelError(
            f"{path} lacks {arch}.block_count / embedding_length / head_count: not a usable model"
        )
    ftype = kv.get(gguf.Keys.General.FILE_TYPE)
    try:
        ftype_name = gguf.LlamaFileType(ftype).name if ftype is not None else "unknown"
    except ValueError:
        ftype_name = f"type {ftype}"
    sizes = {name: n for name, _, n in tensors}
    tokens = kv.get(gguf.Keys.Tokenizer.LIST)
    return GGUFInfo(
        path=path,
        size=size,
        architecture=str(arch),
        name=str(kv.get(gguf.Keys.General.NAME) or path.stem),
        n_layer=int(n_layer),
        n_embd=int(n_embd),
        n_head=int(n_head),
        n_head_kv=int(key(gguf.Keys.Attention.HEAD_COUNT_KV) or n_head),
        n_ctx_train=int(key(gguf.Keys.LLM.CONTEXT_LENGTH) or 0),
        n_vocab=len(tokens) if tokens is not None else 0,
        file_type=ftype_name,
        chat_template=kv.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE),
        tensor_count=len(tensors),
        layer_bytes=sum(n for name, _, n in tensors if name.startswith("blk.")),
        output_bytes=sizes.get("output.weight", sizes.get("token_embd.weight", 0)),
        metadata={k: v for k, v in kv.items() if not isinstance(v, engine.GGUFArray)},
    )
