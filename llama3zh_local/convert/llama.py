"""HF safetensors -> GGUF for Llama-architecture models, with numpy and the gguf library only.

The output is what llama.cpp's ``convert_hf_to_gguf.py`` writes for the same ``--outtype``,
tensor for tensor byte-identical (tests/test_convert_reference.py runs both), but without torch
or transformers and streaming: tensors are read from an mmap in chunks of rows, converted and
written one at a time, so the resident set stays near one chunk whatever the model's size.

What the reference does, and so this does too:

* ``auto`` picks bf16 when the first matrix is bf16, else f16.
* 1-D tensors and norms are F32; matrices get the out type; Q8_0 falls back to F16 for rows
  that are not a multiple of 32. f16 conversion overflows to inf (numpy's cast), as there.
* Q and K rows are permuted from HF's rotate-half order to llama.cpp's interleaved RoPE order.
* Llama-3.1 ``rope_scaling`` of type llama3 becomes the ``rope_freqs`` tensor.

Where it differs on purpose: the BPE pre-tokenizer is read from tokenizer.json (see hfvocab),
``add_bos_token`` is always written, and ``<|eot_id|>`` is written as the EOT token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModelError, UsageError
from ..files import atomic, state
from ..gguf.info import read_gguf_info
from ..gguf.reader import read_header
from ..progress import Callback
from .checkpoint import Checkpoint, load_config, open_checkpoint
from .vocab import GGUFVocab, load_vocab
from .writer import (
    InMemory,
    Permuted,
    RowSource,
    TensorPlan,
    add_general_metadata,
    check_output,
    check_space,
    file_type_for,
    fingerprint,
    output_path,
    qk_order,
    source_provenance,
    tensor_nbytes,
    tensor_qtype,
    write_gguf,
)

if TYPE_CHECKING:
    import gguf
    import numpy as np

OUTTYPES = ("auto", "f16", "bf16", "f32", "q8_0")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "LLaMAForCausalLM")


@dataclass(frozen=True)
class ConvertResult:
    """A written (or, with ``dry_run``, planned) GGUF."""

    path: Path
    source: Path
    outtype: str  # resolved: f16, bf16, f32 or q8_0
    file_type: str  # gguf.LlamaFileType name, e.g. MOSTLY_F16
    tensor_count: int
    size: int  # bytes of the file (estimated for a dry run)
    n_vocab: int
    pre_tokenizer: str
    chat_template: bool
    seconds: float
    dry_run: bool = False
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LlamaParams:
    """The hyperparameters llama.cpp needs, checked from config.json."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int | None
    rope_theta: float | None
    rms_eps: float | None
    rope: dict[str, Any] = field(default_factory=dict)
    tied: bool = False


# -- config ---------------------------------------------------------------------------------------

CONFIG_HINT = (
    "config.json does not describe a working Llama model: compare it with the original "
    "model's config.json (or download it again)"
)


def llama_params(cfg: dict[str, Any], *, where: Path) -> LlamaParams:
    """Check that config.json describes a Llama model this converter handles.

    Raises:
        InvalidModelError: another architecture, or a missing / invalid hyperparameter.
    """
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in LLAMA_ARCHITECTURES and not (arch is None and cfg.get("model_type") == "llama"):
        raise InvalidModelError(
            f"{where}: architecture {arch or cfg.get('model_type') or 'unknown'} is not supported "
            "(only LlamaForCausalLM: Llama-3 / 3.1, the Chinese Llama-3 models, SmolLM2, ...)",
            hint="llama.cpp's convert_hf_to_gguf.py handles other architectures",
        )

    def need(*keys: str) -> int:
        for k in keys:
            v = cfg.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1 << 31:
                return v
        raise InvalidModelError(
            f"{where}: config.json has no valid {keys[0]} (a positive integer, "
            f"found {cfg.get(keys[0])!r})",
            hint=CONFIG_HINT,
        )

    def number(key: str, value: Any, *, default: float | None) -> float | None:
        """A finite, positive number (JSON NaN and Infinity included in what is refused)."""
        if value is None:
            return default
        if not _positive(value):
            raise InvalidModelError(
                f"{where}: {key} is {value!r}, not a finite positive number", hint=CONFIG_HINT
            )
        return float(value)

    n_embd = need("hidden_size")
    n_head = need("num_attention_heads")
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or n_embd // n_head
    if (
        not isinstance(n_head_kv, int)
        or isinstance(n_head_kv, bool)
        or n_head_kv > n_head
        or n_head % n_head_kv
    ):
        raise InvalidModelError(
            f"{where}: num_key_value_heads {n_head_kv!r} does not divide num_attention_heads "
            f"{n_head}",
            hint=CONFIG_HINT,
        )
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim % 2:
        raise InvalidModelError(
            f"{where}: head_dim {head_dim!r} must be an even integer", hint=CONFIG_HINT
        )
    if "head_dim" not in cfg and n_embd % n_head:
        raise InvalidModelError(
            f"{where}: hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}",
            hint=CONFIG_HINT,
        )
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise InvalidModelError(
            f"{where}: rope_scaling must be an object, not {rope!r}", hint=CONFIG_HINT
        )
    check_rope_scaling(rope, where=where)
    theta = number("rope_theta", cfg.get("rope_theta", rope.get("rope_theta")), default=None)
    # transformers' LlamaConfig default; llama.cpp refuses a file without the key
    eps = number("rms_norm_eps", cfg.get("rms_norm_eps"), default=1e-6)
    n_ctx = need("max_position_embeddings")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise InvalidModelError(
            f"{where}: hidden_act {act!r}: llama.cpp's Llama runs SiLU (silu) only",
            hint=CONFIG_HINT,
        )
    tied = cfg.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise InvalidModelError(
            f"{where}: tie_word_embeddings is {tied!r}, not true or false", hint=CONFIG_HINT
        )
    return LlamaParams(
        n_layer=need("num_hidden_layers"),
        n_embd=n_embd,
        n_ff=need("intermediate_size"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_vocab=need("vocab_size"),
        n_ctx=n_ctx,
        rope_theta=theta,
        rms_eps=eps,
        rope=dict(rope),
        tied=tied,
    )


# rope_scaling types this converter writes, and the keys each must give (Llama-3.1's llama3
# type has no defaults worth guessing: a wrong factor silently changes every long answer)
ROPE_KEYS = {
    "linear": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _positive(value: Any) -> bool:
    """A finite, positive JSON number (NaN, Infinity and booleans are not)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def check_rope_scaling(rope: dict[str, Any], *, where: Path) -> None:
    """Refuse a rope_scaling block of an unknown type, or one without its numbers.

    Raises:
        InvalidModelError: the type is not none/default/linear/yarn/llama3, or a factor is
            missing, not a finite positive number, or (llama3) high_freq_factor <= low_freq_factor.
    """
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type == "default" or (rope_type in (None, "") and "factor" not in rope):
        return
    if not isinstance(rope_type, str) or rope_type.lower() not in ROPE_KEYS:
        raise InvalidModelError(
            f"{where}: rope_scaling type {rope_type!r} is not supported by this converter",
            hint="supported: none, linear, yarn, llama3 (Llama-3.1)",
        )
    for key in ROPE_KEYS[rope_type.lower()]:
        value = rope.get(key)
        if not _positive(value):
            raise InvalidModelError(
                f"{where}: rope_scaling ({rope_type}) needs {key} as a finite positive number, "
                f"found {value!r}",
                hint=CONFIG_HINT,
            )
    if rope_type.lower() == "llama3" and rope["high_freq_factor"] <= rope["low_freq_factor"]:
        raise InvalidModelError(
            f"{where}: rope_scaling (llama3) needs high_freq_factor > low_freq_factor",
            hint=CONFIG_HINT,
        )


def expected_shapes(p: LlamaParams) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for every tensor a Llama checkpoint must have."""
    q, kv = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (p.n_vocab, p.n_embd),
        "model.norm.weight": (p.n_embd,),
    }
    for i in range(p.n_layer):
        b = f"model.layers.{i}."
        shapes |= {
            b + "input_layernorm.weight": (p.n_embd,),
            b + "post_attention_layernorm.weight": (p.n_embd,),
            b + "self_attn.q_proj.weight": (q, p.n_embd),
            b + "self_attn.k_proj.weight": (kv, p.n_embd),
            b + "self_attn.v_proj.weight": (kv, p.n_embd),
            b + "self_attn.o_proj.weight": (p.n_embd, q),
            b + "mlp.gate_proj.weight": (p.n_ff, p.n_embd),
            b + "mlp.up_proj.weight": (p.n_ff, p.n_embd),
            b + "mlp.down_proj.weight": (p.n_embd, p.n_ff),
        }
    return shapes


def llama3_rope_factors(p: LlamaParams) -> np.ndarray | None:
    """Llama-3.1's ``rope_freqs`` (rope_type llama3), computed as the reference does in float32."""
    import numpy as np

    rope = p.rope
    if str(rope.get("rope_type", rope.get("type", ""))).lower() != "llama3":
        return None
    base = float(rope.get("rope_theta", p.rope_theta or 10000.0))
    dim = p.head_dim
    f32 = np.float32
    exponent = np.arange(0, dim, 2, dtype=f32) / f32(dim)
    freqs = f32(1.0) / np.power(f32(base), exponent, dtype=f32)
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < high_wavelen:
            out.append(f32(1.0))
        elif wavelen > low_wavelen:
            out.append(f32(factor))
        else:
            smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1.0) / ((f32(1.0) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


# -- planning -------------------------------------------------------------------------------------


def plan_tensors(
    ckpt: Checkpoint,
    p: LlamaParams,
    ftype: gguf.LlamaFileType,
    *,
    sources: dict[str, RowSource] | None = None,
) -> list[TensorPlan]:
    """The output tensors in the reference's order, with every checkpoint tensor checked.

    Args:
        sources: HF name -> replacement data (LoRA merges); same shape as the checkpoint's.

    Raises:
        InvalidModelError: an unknown tensor, a missing one, or a shape that disagrees with
            config.json.
    """
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, p.n_layer)
    shapes = expected_shapes(p)
    if "lm_head.weight" in ckpt.tensors or not p.tied:
        shapes["lm_head.weight"] = (p.n_vocab, p.n_embd)
    plans: list[TensorPlan] = []
    rope = llama3_rope_factors(p)
    if rope is not None:
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        q = gguf.GGMLQuantizationType.F32
        plans.append(TensorPlan(name, rope.shape, q, InMemory(rope), tensor_nbytes(rope.shape, q)))
    seen: set[str] = set()
    for hf_name, ref in ckpt.tensors.items():
        if hf_name.endswith(".rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp
        mapped = tmap.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise InvalidModelError(
                f"{ref.file.path.name}: tensor {hf_name!r} is not part of a Llama model",
                hint="the checkpoint is not a plain LlamaForCausalLM (adapters, vision towers "
                "and quantized weights are not supported)",
            )
        src: RowSource = (sources or {}).get(hf_name, ref)
        shape = tuple(src.shape)
        want = shapes.get(hf_name)
        if want is not None and shape != want:
            where = ref.file.path.name if src is ref else "the LoRA"
            raise InvalidModelError(
                f"{where}: {hf_name} has shape {list(shape)}, config.json says {list(want)}",
                hint="the weights and config.json are from different models, or a shard is from "
                "another download",
            )
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            src = Permuted(src, qk_order(shape[0], p.n_head))
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            src = Permuted(src, qk_order(shape[0], p.n_head_kv))
        gguf_name = mapped[1]
        qtype = tensor_qtype(gguf_name, shape, ftype)
        plans.append(TensorPlan(gguf_name, shape, qtype, src, tensor_nbytes(shape, qtype)))
        seen.add(hf_name)
    missing = [n for n in shapes if n not in seen]
    if missing:
        raise InvalidModelError(
            f"{ckpt.path}: {len(missing)} tensor(s) missing, e.g. {missing[0]}",
            hint="a shard of the checkpoint is missing or incomplete; download it again",
        )
    return plans


# -- metadata -------------------------------------------------------------------------------------


def add_llama_metadata(w: gguf.GGUFWriter, p: LlamaParams, ftype: gguf.LlamaFileType) -> None:
    """The ``llama.*`` hyperparameters, as ``LlamaModel.set_gguf_parameters`` writes them."""
    import gguf

    w.add_block_count(p.n_layer)
    if p.n_ctx is not None:
        w.add_context_length(p.n_ctx)
    w.add_embedding_length(p.n_embd)
    w.add_feed_forward_length(p.n_ff)
    w.add_head_count(p.n_head)
    w.add_head_count_kv(p.n_head_kv)
    rope_type = str(p.rope.get("rope_type", p.rope.get("type", "")) or "").lower()
    factor = p.rope.get("factor")
    if rope_type == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        w.add_rope_scaling_orig_ctx_len(int(p.rope["original_max_position_embeddings"]))
    elif rope_type not in ("", "default", "llama3"):
        raise InvalidModelError(
            f"rope scaling {rope_type!r} is not supported for Llama by this converter",
            hint="supported: none, linear, yarn, llama3 (Llama-3.1)",
        )
    if p.rope_theta is not None:
        w.add_rope_freq_base(p.rope_theta)
    if p.rms_eps is not None:
        w.add_layer_norm_rms_eps(p.rms_eps)
    w.add_key_length(p.head_dim)
    w.add_value_length(p.head_dim)
    w.add_file_type(ftype)
    w.add_vocab_size(p.n_vocab)
    w.add_rope_dimension_count(p.head_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


# -- read back ------------------------------------------------------------------------------------


def verify_gguf(
    path: Path,
    plans: Sequence[TensorPlan],
    *,
    ftype: gguf.LlamaFileType,
    vocab: GGUFVocab,
    p: LlamaParams,
) -> None:
    """Read the written file back with llama.cpp's GGUF parser and check it is what was planned.

    Raises:
        InvalidModelError: anything differs (the caller deletes the file).
    """
    # read_gguf_info checks every key llama.cpp requires (with its type), the vocabulary and each
    # tensor's shape against the hyperparameters, as llama.cpp's loader would
    info = read_gguf_info(path)
    info.check_loadable()
    header = read_header(path)
    problems = []
    if info.architecture != "llama":
        problems.append(f"architecture {info.architecture}")
    if info.file_type != ftype.name:
        problems.append(f"file type {info.file_type}, expected {ftype.name}")
    if info.n_vocab != len(vocab.tokens):
        problems.append(f"{info.n_vocab} tokens, expected {len(vocab.tokens)}")
    if (info.n_layer, info.n_embd, info.n_head) != (p.n_layer, p.n_embd, p.n_head):
        problems.append("hyperparameters differ")
    want_template = vocab.chat_template if isinstance(vocab.chat_template, str) else None
    if want_template and info.chat_template != want_template:
        problems.append("chat template differs")
    sizes = {t.name: t.size for t in header.tensors} if header else {}
    expect = {pl.name: pl.nbytes for pl in plans}
    if sizes != expect:
        diff = sorted(set(sizes.items()) ^ set(expect.items()))
        problems.append(f"tensor table differs ({diff[:2]})")
    if problems:
        raise InvalidModelError(
            f"the written GGUF does not read back as planned: {'; '.join(problems)}",
            hint="this is a bug in llama3zh convert; please report it",
        )


# -- the stage ------------------------------------------------------------------------------------


def convert(
    *,
    source: str | Path,
    output: str | Path | None = None,
    outtype: str = "auto",
    force: bool = False,
    dry_run: bool = False,
    name: str | None = None,
    repo: str | None = None,
    progress: Callback | None = None,
) -> ConvertResult:
    """Convert an HF Llama checkpoint folder to a GGUF file.

    Args:
        source: the checkpoint folder (config.json, *.safetensors, tokenizer.json).
        output: the .gguf to write, or a folder for ``ggml-model-<outtype>.gguf`` (default: the
            source folder).
        outtype: auto, f16, bf16, f32 or q8_0 (auto: bf16 for bf16 weights, else f16).
        force: replace an existing output.
        dry_run: check and plan everything, write nothing.
        name: general.name (default: from the model card / folder, as the reference).
        repo: the hub repo the checkpoint came from, recorded in the metadata.
        progress: ``convert`` events (bytes) as the file is written.

    Raises:
        UsageError: a bad outtype, or the output exists (without ``force``).
        ModelNotFoundError / InvalidModelError: missing or broken config, weights or tokenizer.
        DiskSpaceError: not enough space (checked first) or the disk filled up.
    """
    t0 = time.perf_counter()
    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype {outtype}: expected one of {', '.join(OUTTYPES)}")
    src = Path(source).expanduser()
    cfg = load_config(src)
    params = llama_params(cfg, where=src / "config.json")
    with open_checkpoint(src) as ckpt:
        ftype = file_type_for(outtype, ckpt.first_matrix_dtype())
        resolved = ftype.name.partition("_")[2].lower()
        out, named = output_path(output, src, f"ggml-model-{resolved}.gguf")
        check_output(out, force=force, named=named, inputs=[src])
        vocab = load_vocab(src, vocab_size=params.n_vocab)
        plans = plan_tensors(ckpt, params, ftype)
        provenance = source_provenance(src, repo=repo)
        return _write_checked(
            out=out,
            plans=plans,
            params=params,
            ftype=ftype,
            vocab=vocab,
            meta_dir=src,
            name=name,
            provenance=provenance,
            source=src,
            outtype=resolved,
            dry_run=dry_run,
            progress=progress,
            t0=t0,
            record=None if named else fingerprint(src),
        )


def _write_checked(
    *,
    out: Path,
    plans: list[TensorPlan],
    params: LlamaParams,
    ftype: gguf.LlamaFileType,
    vocab: GGUFVocab,
    meta_dir: Path,
    name: str | None,
    provenance: dict[str, str],
    source: Path,
    outtype: str,
    dry_run: bool,
    progress: Callback | None,
    t0: float,
    stage: str = "convert",
    extra_metadata: Callable[[gguf.GGUFWriter], None] | None = None,
    record: Mapping[str, str] | None = None,
) -> ConvertResult:
    """Write ``plans`` to a temporary file, read it back, then rename it to ``out``.

    ``record``: note the file in its folder's state file as made from these inputs (a derived
    name: the next ``--force`` may replace it, and ``quantize`` of the checkpoint reuse it).
    """
    size_estimate = sum(p.nbytes for p in plans) + 16 * len(vocab.tokens) + (8 << 20)

    def result(path: Path, size: int, warnings: Sequence[str] = ()) -> ConvertResult:
        return ConvertResult(
            path=path,
            source=source,
            outtype=outtype,
            file_type=ftype.name,
            tensor_count=len(plans),
            size=size,
            n_vocab=len(vocab.tokens),
            pre_tokenizer=vocab.pre,
            chat_template=bool(vocab.chat_template),
            seconds=time.perf_counter() - t0,
            dry_run=dry_run,
            warnings=tuple(warnings),
            notes=vocab.notes,
        )

    if dry_run:
        return result(out, size_estimate)
    check_space(out, size_estimate)

    def metadata(w: gguf.GGUFWriter) -> None:
        add_general_metadata(w, meta_dir, name=name, provenance=provenance)
        add_llama_metadata(w, params, ftype)
        vocab.add_to(w)
        if extra_metadata is not None:
            extra_metadata(w)

    with atomic.replacing(out) as tmp:
        warnings = write_gguf(tmp, plans, metadata, progress=progress, stage=stage, task=out.name)
        verify_gguf(tmp, plans, ftype=ftype, vocab=vocab, p=params)
    if record is not None:
        state.record(out, step="convert", inputs=record)
    return result(out, out.stat().st_size, warnings)
