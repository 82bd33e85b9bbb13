"""Read and check a GGUF file's header before llama.cpp loads it.

llama.cpp's own loader fails on a bad file with a log line and a NULL pointer; checking here first
lets us say *what* is wrong (not a GGUF, truncated, no layers) in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidModelError, ModelNotFoundError
from ..files.guard import require_regular_file
from ..llamacpp.engine import last_log_lines
from .reader import GGUFArray, TensorInfo, read_header

GGUF_MAGIC = b"GGUF"
DAMAGED_HINT = (
    "the file is damaged or was not made for llama.cpp's Llama: download or convert it again "
    "(`llama3zh pull` verifies, `llama3zh convert` writes a checked one)"
)

# llama.cpp's compile-time limits (src/llama-hparams.h): a GGUF beyond them makes the loader
# GGML_ASSERT and abort the process instead of refusing the file. Mirrored here; the parity test
# (tests/test_gguf_preflight.py) loads files on each side of them with llama.cpp itself.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 256
# tokenizer.ggml.model values this tool loads: SentencePiece (Llama-2, byte fallback) and
# byte-level BPE (Llama-3, SmolLM2). llama.cpp asserts on other vocab kinds' invariants.
TOKENIZER_MODELS = ("llama", "gpt2")
# GGUF value types (gguf.GGUFValueType)
_U32, _I32, _F32, _STR, _ARR = 4, 5, 6, 8, 9


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
    vocab_problem: str | None = None  # why llama.cpp cannot tokenize with it (see vocab_problem)
    load_problem: str | None = None  # why llama.cpp cannot load it (see check_loadable)
    vocab_sha256: str = ""  # of the token texts in order: equal for files of one vocabulary

    def check_loadable(self) -> None:
        """Refuse a file llama.cpp would abort on, or refuse, when it loads it.

        Only what loads the model needs this (chat, imatrix, eval, quantize, convert's
        read-back); reading a header for a Modelfile or a listing does not.

        Raises:
            InvalidModelError: what is wrong, in llama.cpp's terms where it has them.
        """
        if self.load_problem:
            raise InvalidModelError(self.load_problem, hint=DAMAGED_HINT)

    def check_vocab(self) -> None:
        """Refuse a vocabulary llama.cpp would abort on when it tokenizes (chat, imatrix, eval).

        Raises:
            InvalidModelError: what is wrong with it.
        """
        if self.vocab_problem:
            raise InvalidModelError(f"{self.path}: {self.vocab_problem}", hint=DAMAGED_HINT)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of f16 K+V cache one token takes, over all layers."""
        head_dim = self.n_embd // max(self.n_head, 1)
        return 2 * self.n_layer * self.n_head_kv * head_dim * 2


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Parse ``path``'s header with llama.cpp's GGUF reader and check it is a complete model.

    What llama.cpp would abort on or refuse when loading it is found here too, and raised by
    ``GGUFInfo.check_loadable`` / ``check_vocab`` for the commands that load it.

    Key names come from ``gguf.Keys``.

    Raises:
        ModelNotFoundError: the file does not exist.
        InvalidModelError: not a GGUF, truncated, or missing the keys llama.cpp needs.
    """
    path = Path(path)
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

    header = read_header(path, whole=(gguf.Keys.Tokenizer.LIST,))
    if header is None:
        raise InvalidModelError(
            f"{path} is damaged or truncated: its GGUF header cannot be read "
            f"({last_log_lines(1) or 'llama.cpp gave no reason'})",
            hint="download the file again (`llama3zh pull` resumes and verifies)",
        )
    kv, types, tensors = header.kv, header.types, header.tensors
    end = max((t.offset + t.size for t in tensors), default=0)
    if end > size:
        raise InvalidModelError(
            f"{path} is truncated: its tensors need {end:,} bytes, the file has {size:,}",
            hint="download the file again (`llama3zh pull` resumes and verifies)",
        )
    arch = kv.get(gguf.Keys.General.ARCHITECTURE)
    if not arch:
        raise InvalidModelError(
            f"{path} has no general.architecture key: not a model GGUF", hint=DAMAGED_HINT
        )

    def key(template: str) -> Any:
        value = kv.get(template.format(arch=arch))
        if isinstance(value, GGUFArray):  # per-layer values (e.g. head counts)
            return max(value.items or [0])
        return value

    n_layer = key(gguf.Keys.LLM.BLOCK_COUNT)
    n_embd = key(gguf.Keys.LLM.EMBEDDING_LENGTH)
    n_head = key(gguf.Keys.Attention.HEAD_COUNT)
    counts = (n_layer, n_embd, n_head, key(gguf.Keys.Attention.HEAD_COUNT_KV) or 1,
              key(gguf.Keys.LLM.CONTEXT_LENGTH) or 1)  # fmt: skip
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in counts):
        raise InvalidModelError(
            f"{path} lacks {arch}.block_count / embedding_length / head_count: not a usable model",
            hint=DAMAGED_HINT,
        )
    try:
        check_loadable(path, str(arch), kv, types, tensors)
        load_problem = None
    except InvalidModelError as e:  # kept for the commands that load it (see check_loadable)
        load_problem = str(e)
    ftype = kv.get(gguf.Keys.General.FILE_TYPE)
    try:
        ftype_name = gguf.LlamaFileType(ftype).name if ftype is not None else "unknown"
    except ValueError:
        ftype_name = f"type {ftype}"
    sizes = {t.name: t.size for t in tensors}
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
        layer_bytes=sum(t.size for t in tensors if t.name.startswith("blk.")),
        output_bytes=sizes.get("output.weight", sizes.get("token_embd.weight", 0)),
        metadata={k: v for k, v in kv.items() if not isinstance(v, GGUFArray)},
        vocab_problem=vocab_problem(kv),
        vocab_sha256=_vocab_sha256(tokens),
        load_problem=load_problem,
    )


def vocab_problem(kv: dict[str, Any]) -> str | None:
    """Why llama.cpp cannot tokenize with this vocabulary (it aborts instead), or None.

    Its kind must be one this tool runs, its arrays must agree, and a SentencePiece one must
    hold the 256 byte tokens that tokenizing text it has no token for falls back to.
    """
    tok_model = kv.get("tokenizer.ggml.model")
    if tok_model not in TOKENIZER_MODELS:
        return (
            f"tokenizer.ggml.model {tok_model!r}: this tool runs {' and '.join(TOKENIZER_MODELS)}"
            " (SentencePiece and byte-level BPE) vocabularies"
        )
    tokens = kv.get("tokenizer.ggml.tokens")
    items = tokens.items if isinstance(tokens, GGUFArray) else None
    if not items:
        return "tokenizer.ggml.tokens is missing or empty"
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        other = kv.get(key)
        if isinstance(other, GGUFArray) and len(other) != len(items):
            return f"{key} has {len(other)} entries for {len(items)} tokens"
    if tok_model != "llama":
        return None  # byte-level BPE skips a byte it has no token for; SentencePiece aborts
    known = set(items)
    missing = [t for t in (f"<0x{b:02X}>" for b in range(256)) if t not in known]
    if missing:
        return (
            f"its SentencePiece vocabulary lacks {len(missing)} of the 256 byte tokens (e.g. "
            f"{missing[0]!r}) that llama.cpp falls back to for text it has no token for"
        )
    return None


def check_loadable(
    path: Path,
    arch: str,
    kv: dict[str, Any],
    types: dict[str, tuple[int, int | None]],
    tensors: list[TensorInfo],
) -> None:
    """Check what llama.cpp's loader asserts on, or requires, before it ever sees the file.

    Compile-time limits (layers, experts), epsilons (a negative one aborts, NaN hangs), the
    vocabulary (its kind, the 256 byte tokens that tokenizing unknown text falls back to), and
    for Llama: every key the loader requires, with the exact type it requires, the heads and
    head sizes, and each tensor's shape against them.

    Raises:
        InvalidModelError: what is wrong, in llama.cpp's terms where it has them.
    """
    h = _Hparams(path, arch, kv)
    n_layer, n_expert = _check_limits(h)
    if arch != "llama":
        return
    _check_llama_types(h, types)
    _check_llama_shapes(h, n_layer, n_expert, tensors)


@dataclass(frozen=True)
class _Hparams:
    """The ``{arch}.*`` keys of a header, read as check_loadable needs them."""

    path: Path
    arch: str
    kv: dict[str, Any]

    def bad(self, what: str) -> InvalidModelError:
        return InvalidModelError(f"{self.path}: {what}", hint=DAMAGED_HINT)

    def values(self, key: str) -> list[Any]:
        v = self.kv.get(f"{self.arch}.{key}")
        if isinstance(v, GGUFArray):
            return list(v.items or [])
        return [] if v is None else [v]

    def ints(self, key: str) -> list[int]:
        found = self.values(key)
        for v in found:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise self.bad(f"{self.arch}.{key} is {v!r}, not a count")
        return found


def _check_limits(h: _Hparams) -> tuple[int, int]:
    """Counts, llama.cpp's compile-time limits, epsilons, experts: (layers, experts)."""
    import math

    arch, kv = h.arch, h.kv
    for key in (
        "embedding_length", "feed_forward_length", "attention.head_count",
        "attention.head_count_kv", "rope.dimension_count", "attention.key_length",
        "attention.value_length", "expert_count", "expert_used_count", "context_length",
    ):  # fmt: skip
        h.ints(key)

    n_layer = kv.get(f"{arch}.block_count")
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer > LLAMA_MAX_LAYERS:
        raise h.bad(f"{n_layer!r} layers: llama.cpp supports at most {LLAMA_MAX_LAYERS}")
    for key in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"):
        v = kv.get(f"{arch}.{key}")
        if isinstance(v, GGUFArray) and len(v) != n_layer:
            raise h.bad(f"{arch}.{key} has {len(v)} values for {n_layer} layers")
    for key in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        for eps in h.values(key):
            if not isinstance(eps, float) or not math.isfinite(eps) or eps <= 0:
                raise h.bad(f"{arch}.{key} is {eps!r}, not a small positive number")
    n_expert = (h.values("expert_count") or [0])[0]
    n_used = (h.values("expert_used_count") or [0])[0]
    if n_expert > LLAMA_MAX_EXPERTS or n_used > n_expert or (n_expert and not n_used):
        raise h.bad(
            f"{n_used} of {n_expert} experts used: llama.cpp needs 1 to expert_count, and at "
            f"most {LLAMA_MAX_EXPERTS} experts"
        )
    return n_layer, n_expert


# Llama: the keys its loader requires (or reads when present), with their exact types
_LLAMA_REQUIRED = {
    "context_length": (_U32,),
    "embedding_length": (_U32,),
    "block_count": (_U32,),
    "attention.head_count": (_U32, _ARR),
    "attention.layer_norm_rms_epsilon": (_F32,),
}
_LLAMA_OPTIONAL = {
    "feed_forward_length": (_U32, _ARR),
    "attention.head_count_kv": (_U32, _ARR),
    "rope.dimension_count": (_U32,),
    "rope.freq_base": (_F32,),
    "attention.key_length": (_U32,),
    "attention.value_length": (_U32,),
}


def _check_llama_types(h: _Hparams, types: dict[str, tuple[int, int | None]]) -> None:
    arch = h.arch
    for table, needed in ((_LLAMA_REQUIRED, True), (_LLAMA_OPTIONAL, False)):
        for key, allowed in table.items():
            typ = types.get(f"{arch}.{key}")
            if typ is None:
                if needed:
                    raise h.bad(f"{arch}.{key} is missing (llama.cpp requires it)")
                continue
            if typ[0] not in allowed or (typ[0] == _ARR and typ[1] not in (_U32, _I32)):
                raise h.bad(f"{arch}.{key} has GGUF type {typ[0]}, llama.cpp reads {allowed[0]}")


def _check_llama_shapes(
    h: _Hparams, n_layer: int, n_expert: int, tensors: list[TensorInfo]
) -> None:
    """Heads and head sizes against each other, then every tensor's shape against them."""
    arch, kv = h.arch, h.kv
    n_embd = kv[f"{arch}.embedding_length"]
    heads = h.values("attention.head_count")
    heads_kv = h.values("attention.head_count_kv")
    ffs = h.values("feed_forward_length") or [0]
    heads_kv = heads_kv or heads
    if len(set(heads)) != 1 or len(set(heads_kv)) != 1 or len(set(ffs)) != 1:
        raise h.bad("per-layer head counts or feed-forward sizes differ: not a plain Llama")
    n_head, n_head_kv, n_ff = heads[0], heads_kv[0], ffs[0]
    if n_head < 1 or n_head_kv < 1 or n_head % n_head_kv:
        raise h.bad(f"head_count_kv {n_head_kv} does not divide head_count {n_head}")
    key_len = kv.get(f"{arch}.attention.key_length")
    val_len = kv.get(f"{arch}.attention.value_length")
    if key_len is None and n_embd % n_head:
        raise h.bad(f"embedding_length {n_embd} is not a multiple of head_count {n_head}")
    head_k = key_len if key_len is not None else n_embd // n_head
    head_v = val_len if val_len is not None else n_embd // n_head
    n_rot = kv.get(f"{arch}.rope.dimension_count", head_k)
    if n_rot != head_k or head_k < 2 or head_k % 2:
        raise h.bad(
            f"rope.dimension_count {n_rot} does not match the head size {head_k} "
            "(llama.cpp: invalid n_rot)"
        )
    tokens = kv.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, GGUFArray) or not len(tokens):
        raise h.bad("tokenizer.ggml.tokens is missing or empty (llama.cpp requires a vocabulary)")
    n_vocab = len(tokens)
    want: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_embd, n_vocab),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_embd, n_vocab),
    }
    for i in range(n_layer):
        b = f"blk.{i}."
        want |= {
            b + "attn_norm.weight": (n_embd,),
            b + "attn_q.weight": (n_embd, head_k * n_head),
            b + "attn_k.weight": (n_embd, head_k * n_head_kv),
            b + "attn_v.weight": (n_embd, head_v * n_head_kv),
            b + "attn_output.weight": (head_v * n_head, n_embd),
            b + "ffn_norm.weight": (n_embd,),
        }
        if not n_expert:
            want |= {
                b + "ffn_gate.weight": (n_embd, n_ff),
                b + "ffn_up.weight": (n_embd, n_ff),
                b + "ffn_down.weight": (n_ff, n_embd),
            }
    shapes = {t.name: t.shape for t in tensors}
    beyond = [n for n in shapes if n.startswith("blk.") and n.split(".")[1].isdigit()
              and int(n.split(".")[1]) >= n_layer]  # fmt: skip
    if beyond:
        raise h.bad(f"tensor {beyond[0]} lies beyond the {n_layer} layers block_count gives")
    for name, shape in want.items():
        have = shapes.get(name)
        if have is None:
            if name == "output.weight":  # tied to token_embd
                continue
            raise h.bad(f"tensor {name} is missing ({n_layer} layers)")
        if tuple(have) != shape:
            raise h.bad(f"tensor {name} has shape {list(have)}, the metadata implies {list(shape)}")


def _vocab_sha256(tokens: Any) -> str:
    import hashlib

    if not isinstance(tokens, GGUFArray) or tokens.items is None:
        return ""
    h = hashlib.sha256()
    for t in tokens.items:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()
