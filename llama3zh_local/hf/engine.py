"""transformers inference: an HF checkpoint (and an unmerged LoRA) behind the GGUF engine's
``Model`` / ``Session`` interface, so that the chat REPL runs on it unchanged.

torch, transformers and peft (the ``[train]`` extra) are imported inside the functions that need
them: importing this module costs nothing, and a missing extra is one ``MissingExtraError``.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import LLAMA3_STOPS
from ..errors import InvalidModelError, MissingExtraError, ModelNotFoundError, UsageError
from ..llamacpp.engine import GenerationRecord, SamplingParams, reusable_prefix

# The install command of train/env.py (INSTALL, CUDA_HINT), mirrored: hf/ comes before train/ in
# the import order. tests/test_chat_hf.py checks that they stay equal.
TORCH_VERSION = "2.13.0"
INSTALL_HINT = (
    f'pip install torch=={TORCH_VERSION} && pip install "llama3zh-local[train]" '
    "(for an NVIDIA GPU, install a CUDA build of torch as https://pytorch.org/get-started/locally/ "
    "shows)"
)
LLAMA3_BOS = "<|begin_of_text|>"


def require_torch(*, lora: bool = False, what: str = "--engine hf") -> None:
    """Check that torch and transformers (and peft for a LoRA) are importable, without importing.

    Raises:
        MissingExtraError: one line naming what is missing, the install command as the hint.
    """
    wanted = ("torch", "transformers", "tokenizers") + (("peft",) if lora else ())
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{what} needs the [train] extra ({', '.join(missing)} not installed)",
            hint=INSTALL_HINT,
        )


@dataclass(frozen=True)
class DevicePlan:
    """Where and in which precision the weights run."""

    device: str  # "cuda", "mps" or "cpu"
    dtype: str  # "bfloat16", "float16" or "float32"

    @property
    def summary(self) -> str:
        return f"{self.device}, {self.dtype}"


def choose_device(device: str = "auto", dtype: str = "auto") -> DevicePlan:
    """``auto``: CUDA, then MPS, then the CPU; bf16 where the GPU supports it, fp16 on other
    GPUs, fp32 on the CPU (where half precision is slow and inexact)."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device == "mps":
            dtype = "float16"
        else:
            dtype = "float32"
    if dtype not in ("bfloat16", "float16", "float32"):
        raise UsageError(f"dtype {dtype}: not one of bfloat16, float16, float32", hint="use auto")
    return DevicePlan(device=device, dtype=dtype)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidModelError(
            f"{path} is not valid JSON: {e}", hint="download the model again"
        ) from e
    return data if isinstance(data, dict) else {}


def check_hf_folder(path: Path, *, lora: Path | None = None) -> None:
    """A clear error before torch loads anything: the folder holds config.json and tokenizer.json
    (and the LoRA folder adapter_config.json).

    Raises:
        ModelNotFoundError: a folder is missing.
        InvalidModelError: a file that must be there is not.
    """
    if not path.is_dir():
        raise ModelNotFoundError(
            f"{path} is not a folder",
            hint="--engine hf takes an HF checkpoint folder (config.json, *.safetensors) or a "
            "model pulled with --variant full",
        )
    for name in ("config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise InvalidModelError(
                f"{path} has no {name}: not an HF checkpoint transformers can run here",
                hint="give the folder of a full HF checkpoint (pull it with --variant full)",
            )
    if lora is not None:
        if not lora.is_dir():
            raise ModelNotFoundError(f"LoRA folder {lora} not found", hint="check the path")
        if not (lora / "adapter_config.json").is_file():
            raise InvalidModelError(
                f"{lora} has no adapter_config.json: not a PEFT LoRA folder",
                hint="give the folder that `llama3zh train` or PEFT's save_pretrained wrote",
            )


class HFModel:
    """An HF checkpoint loaded by transformers, with the tokenizer side of ``llamacpp.Model``.

    Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        lora: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        """Load ``path`` (and the LoRA ``lora`` on top of it, unmerged).

        Raises:
            MissingExtraError: torch / transformers / peft are not installed.
            ModelNotFoundError, InvalidModelError: not an HF checkpoint (or not a LoRA folder),
                or transformers / peft could not load it.
        """
        self.path = Path(path).expanduser()
        self.lora = None if lora is None else Path(lora).expanduser()
        require_torch(lora=self.lora is not None)
        check_hf_folder(self.path, lora=self.lora)
        self.tokenizer = _load_tokenizer(self.path)
        self.config = _read_json(self.path / "config.json")
        self._tok_config = _read_json(self.path / "tokenizer_config.json")
        self._gen_config = _read_json(self.path / "generation_config.json")
        self.plan = choose_device(device, dtype)
        self.torch_model = _load_model(self.path, self.lora, self.plan)
        self.cache_kw = _cache_keyword(self.torch_model)
        self.n_vocab: int = int(self.torch_model.get_output_embeddings().weight.shape[0])
        self.n_layer: int = int(self.config.get("num_hidden_layers", 0))
        self.n_ctx_train: int = int(self.config.get("max_position_embeddings", 0) or 0)
        self.bos_id = self._special_id("bos")
        self.eos_id = self._special_id("eos")
        self._eog = {self.eos_id} | set(_id_list(self._gen_config.get("eos_token_id")))
        self._eog |= {t for t in (self.token_id(s) for s in LLAMA3_STOPS) if t is not None}
        self._eog.discard(-1)
        self.add_bos = self._add_bos()

    def __enter__(self) -> HFModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the weights (and the GPU memory they held)."""
        if getattr(self, "torch_model", None) is not None:
            self.torch_model = None
            if self.plan.device == "cuda":
                import torch

                torch.cuda.empty_cache()

    # -- the tokenizer side, as llamacpp.engine.Model ---------------------------------------

    def _special_id(self, which: str) -> int:
        text = self._tok_config.get(f"{which}_token")
        if isinstance(text, dict):  # {"content": ..., "lstrip": ...} in older configs
            text = text.get("content")
        if isinstance(text, str):
            tid = self.tokenizer.token_to_id(text)
            if tid is not None:
                return int(tid)
        key = f"{which}_token_id"
        ids = _id_list(self._gen_config.get(key, self.config.get(key)))
        return ids[0] if ids else -1

    def _add_bos(self) -> bool:
        """Whether a text starts with BOS: tokenizer_config's ``add_bos_token``, else what the
        tokenizer's post-processor does, else True for the Llama-3 vocabulary (Meta's
        tokenizer.json adds it; the converter writes add_bos_token = true for it)."""
        flag = self._tok_config.get("add_bos_token")
        if isinstance(flag, bool):
            return flag
        if self.bos_id < 0:
            return False
        ids = self.tokenizer.encode("a", add_special_tokens=True).ids
        if ids and ids[0] == self.bos_id:
            return True
        return self.tokenizer.token_to_id(LLAMA3_BOS) == self.bos_id

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """As ``llamacpp.Model.tokenize``: BOS first when ``add_special`` and the model adds it;
        special-token text read as control tokens only when ``parse_special``."""
        tok = self.tokenizer
        tok.encode_special_tokens = not parse_special
        try:
            ids = list(tok.encode(text, add_special_tokens=False).ids)
        finally:
            tok.encode_special_tokens = False
        if add_special and self.add_bos and self.bos_id >= 0:
            ids.insert(0, self.bos_id)
        return ids

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=not special))

    def token_id(self, text: str) -> int | None:
        """The id of a special token given by its text (``<|eot_id|>``), or None."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def bos_text(self) -> str:
        return "" if self.bos_id < 0 else str(self.tokenizer.id_to_token(self.bos_id) or "")

    def eos_text(self) -> str:
        return "" if self.eos_id < 0 else str(self.tokenizer.id_to_token(self.eos_id) or "")

    def meta(self, key: str) -> str | None:
        """The few GGUF metadata keys the chat side reads, from the HF folder's JSON files."""
        if key == "tokenizer.chat_template":
            t = self._tok_config.get("chat_template")
            if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
                named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
                t = named.get("default") or next(iter(named.values()), None)
            if t is None and (self.path / "chat_template.jinja").is_file():
                t = (self.path / "chat_template.jinja").read_text(encoding="utf-8")
            return t if isinstance(t, str) and t else None
        if key == "general.architecture":
            return str(self.config.get("model_type", "")) or None
        return None

    # -- the forward pass ---------------------------------------------------------------------

    def logits(self, tokens: Sequence[int]) -> Any:
        """The logits of every position of ``tokens`` (a float32 numpy array, tokens x vocab),
        in one forward pass without a cache."""
        import torch

        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.plan.device)
        with torch.inference_mode():
            out = self.torch_model(input_ids=ids, use_cache=False)
        return out.logits[0].float().cpu().numpy()


def _id_list(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def _cache_keyword(model: Any) -> str:
    """The forward pass's name for the KV cache: ``cache`` (transformers 5.2x), else the older
    ``past_key_values`` (the model output's field has the same name)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise InvalidModelError(
            f"{path / 'tokenizer.json'} could not be read: {e}", hint="download the model again"
        ) from e


def _load_model(path: Path, lora: Path | None, plan: DevicePlan) -> Any:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI reports the load; no tqdm bar on stderr
    model: Any
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=getattr(torch, plan.dtype), low_cpu_mem_usage=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise InvalidModelError(
            f"transformers could not load {path}: {str(e).splitlines()[0] if str(e) else e}",
            hint="check that it is a complete HF checkpoint (config.json, *.safetensors)",
        ) from e
    if lora is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(lora))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InvalidModelError(
                f"peft could not apply the LoRA {lora} to {path.name}: {first}",
                hint="was the adapter trained on this base model? (adapter_config.json "
                "base_model_name_or_path)",
            ) from e
    model.to(device=plan.device)
    model.eval()
    return model


class HFSession:
    """Generation on an ``HFModel`` with a KV cache kept between turns (the GGUF ``Session``'s
    interface: ``generate`` yields ``GenerationRecord``s; ``cached``, ``n_ctx``, ``reset``)."""

    def __init__(self, model: HFModel, *, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.cached: list[int] = []  # tokens whose keys/values are in the cache, in order
        self._cache: Any = None
        self._last_logits: Any = None

    def __enter__(self) -> HFSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache = None
        self.cached = []

    def reset(self) -> None:
        """Forget the KV cache."""
        self._cache = None
        self.cached = []

    def _forward(self, tokens: Sequence[int]) -> None:
        import torch

        model = self.model
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=model.plan.device)
        with torch.inference_mode():
            out = model.torch_model(
                input_ids=ids, use_cache=True, logits_to_keep=1, **{model.cache_kw: self._cache}
            )
        self._cache = getattr(out, model.cache_kw)
        self._last_logits = out.logits[0, -1].float().cpu()
        self.cached.extend(tokens)

    def evaluate(self, tokens: Sequence[int]) -> int:
        """Make the cache hold exactly ``tokens``; returns how many were evaluated now."""
        keep = reusable_prefix(self.cached, tokens, n_ctx=self.n_ctx)
        if keep == 0 or self._cache is None or not hasattr(self._cache, "crop"):
            self.reset()
            keep = 0
        else:
            remove = len(self.cached) - keep
            if remove:
                # a negative count removes that many (old and new transformers alike)
                self._cache.crop(-remove)
            del self.cached[keep:]
        try:
            self._forward(tokens[keep:])
        except BaseException:
            self.reset()  # an interrupted forward pass leaves the cache in an unknown state
            raise
        return len(tokens) - keep

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        max_tokens: int = -1,
        stop_tokens: frozenset[int] = frozenset(),
    ) -> Iterator[GenerationRecord]:
        """Evaluate ``prompt`` and yield the answer as it is generated, with its figures (as
        ``llamacpp.engine.Session.generate``: same stops, finish reasons and figures)."""
        import torch

        if params.grammar:
            raise UsageError("response grammars need the GGUF engine", hint="leave out --engine hf")
        model = self.model
        t0 = time.perf_counter()
        n_evaluated = self.evaluate(prompt)
        t1 = time.perf_counter()
        gen = torch.Generator()
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
        gen.manual_seed(seed & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        clock = time.perf_counter
        first = 0.0
        n = 0
        history: list[int] = []  # generated tokens (what llama.cpp's penalty sampler sees)
        pending: list[int] = []

        def record(text: str, finish: str | None = None) -> GenerationRecord:
            return GenerationRecord(
                text=text,
                tokens=tuple(pending),
                prompt_tokens=len(prompt),
                prompt_evaluated=n_evaluated,
                prompt_seconds=t1 - t0,
                generation_tokens=n,
                generation_seconds=clock() - t0 - first,
                first_token_seconds=first,
                finish_reason=finish,
            )

        while True:
            tok = sample(self._last_logits, history, params, gen)
            if n == 0:
                first = clock() - t0
            if model.is_eog(tok) or tok in stop_tokens:
                yield record("", "stop")
                return
            n += 1
            history.append(tok)
            pending.append(tok)
            text = decoder.decode(token_bytes(model, tok))
            if n == max_tokens or len(self.cached) >= self.n_ctx:
                yield record(text, "length")
                return
            if text:
                yield record(text)
                pending.clear()
            try:
                self._forward([tok])
            except BaseException:
                self.reset()  # Ctrl-C inside a forward pass: layers of the cache may differ
                raise


def token_bytes(model: HFModel, token: int) -> bytes:
    """The bytes of one token's text (byte-level BPE pieces mapped back; special tokens: none)."""
    piece = model.tokenizer.id_to_token(token)
    if piece is None or model.tokenizer.decode([token], skip_special_tokens=True) == "":
        return b""
    table = _byte_decoder()
    if all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    # not a byte-level vocabulary (SentencePiece): the tokenizer's own decoding of the piece
    return str(model.tokenizer.decode([token], skip_special_tokens=True)).encode("utf-8")


_BYTE_DECODER: dict[str, int] = {}


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table, reversed (byte-level BPE vocabularies)."""
    if not _BYTE_DECODER:
        keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        chars = list(keep)
        n = 0
        for b in range(256):
            if b not in keep:
                keep.append(b)
                chars.append(256 + n)
                n += 1
        _BYTE_DECODER.update({chr(c): b for b, c in zip(keep, chars, strict=True)})
    return _BYTE_DECODER


def sample(logits: Any, history: Sequence[int], p: SamplingParams, gen: Any) -> int:
    """One token from ``logits`` (a 1-D float tensor), as llama.cpp's sampler chain picks it:
    penalties over the last ``repeat_last_n`` generated tokens, then greedy at temperature 0,
    else top-k, top-p, min-p, temperature and a draw from ``gen``."""
    import torch

    logits = logits.clone()
    if p.penalized and history and p.repeat_last_n != 0:
        recent = history[-p.repeat_last_n :] if p.repeat_last_n > 0 else history
        ids, counts = torch.unique(torch.tensor(recent, dtype=torch.long), return_counts=True)
        vals = logits[ids]
        vals = torch.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        vals = vals - counts.float() * p.frequency_penalty - p.presence_penalty
        logits[ids] = vals
    if p.temperature <= 0:
        return int(torch.argmax(logits))
    if 0 < p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if p.top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        cut = cum - sorted_p >= p.top_p  # keep tokens until the mass reaches top_p
        cut[0] = False
        logits[order[cut]] = float("-inf")
    if p.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits[probs < p.min_p * probs.max()] = float("-inf")
    probs = torch.softmax(logits / p.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))
