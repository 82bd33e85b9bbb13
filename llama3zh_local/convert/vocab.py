"""A Hugging Face ``tokenizer.json`` as GGUF tokenizer metadata, without transformers.

llama.cpp's converter names the BPE pre-tokenizer by hashing the token ids that transformers
produces for a test string. That needs transformers, and it mislabels Llama-3: the tokenizer.json
many copies ship (without the post-processor that prepends ``<|begin_of_text|>``) hashes to
``smaug-bpe``, which llama.cpp tokenizes without Llama-3's ``ignore_merges`` and without BOS.
Here the pre-tokenizer is recognised from what decides it, the ``pre_tokenizer`` section
itself, and anything not in the table below is refused rather than guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidModelError, ModelNotFoundError

if TYPE_CHECKING:
    import gguf

# Mirrors llama.cpp: the regex of LLAMA_VOCAB_PRE_TYPE_LLAMA3 in src/llama-vocab.cpp, written as
# Meta's tokenizer.json has it (test_convert_vocab checks both files).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# pre-tokenizer signature -> tokenizer.ggml.pre. A signature is the pre_tokenizer section with
# the keys that do not change the split (trim_offsets) removed; see _signature.
KNOWN_PRE: dict[str, str] = {}


def _register(name: str, pre_tokenizer: dict[str, Any], *, ignore_merges: bool | None) -> None:
    KNOWN_PRE[_signature(pre_tokenizer, ignore_merges)] = name


def _signature(pre: Any, ignore_merges: bool | None) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in sorted(x.items()) if k != "trim_offsets"}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps([clean(pre), ignore_merges], sort_keys=True, ensure_ascii=False)


TOKENIZER_HINT = (
    "copy tokenizer.json and tokenizer_config.json from the original model again (they are "
    "damaged or not from the tokenizers library)"
)
_BYTELEVEL_NO_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
_BYTELEVEL_GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_LLAMA3_SPLIT = {
    "type": "Split",
    "pattern": {"Regex": LLAMA3_REGEX},
    "behavior": "Isolated",
    "invert": False,
}
# Llama-3 / 3.1 / 3.2 and their finetunes (the Chinese Llama-3 family): llama.cpp's llama-bpe
# splits with this regex and sets ignore_merges, as Meta's tokenizer.json does.
_register(
    "llama-bpe",
    {"type": "Sequence", "pretokenizers": [_LLAMA3_SPLIT, _BYTELEVEL_NO_REGEX]},
    ignore_merges=True,
)
# The same split without ignore_merges: llama.cpp's smaug-bpe (same regex, merges applied).
_register(
    "smaug-bpe",
    {"type": "Sequence", "pretokenizers": [_LLAMA3_SPLIT, _BYTELEVEL_NO_REGEX]},
    ignore_merges=False,
)
# SmolLM / SmolLM2: single digits, then GPT-2's regex.
_register(
    "smollm",
    {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTELEVEL_GPT2],
    },
    ignore_merges=False,
)
# Plain GPT-2 byte-level BPE.
_register("gpt-2", _BYTELEVEL_GPT2, ignore_merges=False)

# llama.cpp's llama_vocab::load marks these as control tokens by their text, whatever the file
# says (does_token_look_special in convert_hf_to_gguf.py mirrors that).
_LOOKS_SPECIAL_EXACT = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")


def looks_special(token: str) -> bool:
    """Mirrors ``TextModel.does_token_look_special`` of llama.cpp's convert_hf_to_gguf.py."""
    return (
        token in _LOOKS_SPECIAL_EXACT
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer of a model as llama.cpp reads it from GGUF metadata."""

    pre: str  # tokenizer.ggml.pre
    tokens: list[str] = field(repr=False)
    token_types: list[int] = field(repr=False)
    merges: list[str] = field(repr=False)
    special_ids: dict[str, int]  # bos, eos, eot, unk, pad, ... -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | list[dict[str, str]] | None = field(repr=False)
    notes: tuple[str, ...] = ()  # what was decided and why, for the user

    model: str = "gpt2"

    def add_to(self, w: gguf.GGUFWriter) -> None:
        """Write the ``tokenizer.*`` keys (names from gguf.Keys, through GGUFWriter's adders)."""
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.token_types)
        w.add_token_merges(self.merges)
        for typ, tid in self.special_ids.items():
            getattr(w, f"add_{typ}_token_id")(tid)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            w.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


def detect_pre(tokenizer: dict[str, Any], *, where: Path) -> str:
    """The llama.cpp pre-tokenizer name for a tokenizer.json, or a clear refusal."""
    model = tokenizer.get("model") or {}
    if tokenizer.get("normalizer") not in (None, {}):
        raise InvalidModelError(
            f"{where}: tokenizers with a normalizer ({tokenizer['normalizer'].get('type')}) are "
            "not supported by this converter",
            hint="only byte-level BPE tokenizers (Llama-3, SmolLM, GPT-2) are; use llama.cpp's "
            "convert_hf_to_gguf.py for others",
        )
    sig = _signature(tokenizer.get("pre_tokenizer"), bool(model.get("ignore_merges", False)))
    name = KNOWN_PRE.get(sig)
    if name is None:
        pre = json.dumps(tokenizer.get("pre_tokenizer"), ensure_ascii=False)
        raise InvalidModelError(
            f"{where}: unknown BPE pre-tokenizer {pre[:160]}{'…' if len(pre) > 160 else ''}",
            hint="known: " + ", ".join(sorted(set(KNOWN_PRE.values()))) + " (Llama-3, SmolLM, "
            "GPT-2); a wrong pre-tokenizer silently changes tokenization, so it is not guessed",
        )
    return name


def load_vocab(model_dir: Path, *, vocab_size: int | None = None) -> GGUFVocab:
    """Read ``tokenizer.json`` of an HF model folder as GGUF tokenizer metadata (see _load_vocab).

    Raises:
        ModelNotFoundError: no tokenizer.json.
        InvalidModelError: not a byte-level BPE tokenizer, an unknown pre-tokenizer, ids that do
            not fit ``vocab_size``, or files of the wrong shape (a list where an object belongs).
    """
    try:
        return _load_vocab(model_dir, vocab_size=vocab_size)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        # valid JSON of the wrong shape fails deep inside gguf.BpeVocab / SpecialVocab
        raise InvalidModelError(
            f"{model_dir / 'tokenizer.json'} (or tokenizer_config.json) is not a valid tokenizer "
            f"file ({type(e).__name__}: {e})",
            hint=TOKENIZER_HINT,
        ) from None


def _load_vocab(model_dir: Path, *, vocab_size: int | None = None) -> GGUFVocab:
    """Read ``tokenizer.json`` (+ tokenizer_config.json, config.json) of an HF model folder.

    Args:
        vocab_size: the model's ``vocab_size``; the token list is padded to it with unused
            ``[PADn]`` tokens, as the reference converter does.

    Raises:
        ModelNotFoundError: no tokenizer.json.
        InvalidModelError: not a byte-level BPE tokenizer, an unknown pre-tokenizer, or ids that
            do not fit ``vocab_size``.
    """
    import gguf

    path = model_dir / "tokenizer.json"
    pre, added_list = _read_tokenizer(path, model_dir)
    try:
        bpe = gguf.BpeVocab(model_dir)  # checks the vocab and the added-token ids
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise InvalidModelError(f"{path}: {e}", hint=TOKENIZER_HINT) from None
    tok_config = _tokenizer_config(model_dir / "tokenizer_config.json")
    added = _added_tokens(added_list, tok_config)
    by_id = {i: text for text, i in bpe.vocab.items()}
    del bpe
    tokens, types = _token_table(by_id, added, vocab_size=vocab_size, where=path)

    sv = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if not sv.merges:
        raise InvalidModelError(f"{path} has no BPE merges", hint="the tokenizer file is damaged")
    special_ids = dict(sv.special_token_ids)
    notes: list[str] = []
    if "eos" not in special_ids:
        gen = model_dir / "generation_config.json"
        eos = _json_field(gen, "eos_token_id")
        first = eos[0] if isinstance(eos, list) and eos else eos
        if isinstance(first, int) and 0 <= first < len(tokens):
            special_ids["eos"] = first
    ids_by_text = {t: i for i, t in enumerate(tokens)}
    if "<|eot_id|>" in ids_by_text:  # Llama-3's end of turn
        special_ids.setdefault("eot", ids_by_text["<|eot_id|>"])
    add_bos = sv.add_special_token.get("bos")
    if add_bos is None:
        # Llama-3 is trained with <|begin_of_text|> first; tokenizer.json files without the
        # post-processor that adds it would otherwise leave llama.cpp's default to decide
        add_bos = pre == "llama-bpe"
        notes.append(
            f"add_bos_token = {add_bos} ({'Llama-3 tokenizer' if add_bos else 'not requested'})"
        )
    add_prefix = tok_config.get("add_prefix_space")
    return GGUFVocab(
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=list(sv.merges),
        special_ids=special_ids,
        add_bos=bool(add_bos),
        add_eos=bool(sv.add_special_token.get("eos", False)),
        add_space_prefix=add_prefix if isinstance(add_prefix, bool) else None,
        chat_template=sv.chat_template,  # type: ignore[arg-type]
        notes=tuple(notes),
    )


def _read_tokenizer(path: Path, model_dir: Path) -> tuple[str, list[Any]]:
    """Check ``tokenizer.json`` is a byte-level BPE one: its pre-tokenizer name and added
    tokens (the parsed file is dropped: BpeVocab and SpecialVocab parse it again)."""
    if not path.is_file():
        spm = (model_dir / "tokenizer.model").is_file()
        raise ModelNotFoundError(
            f"no tokenizer.json in {model_dir}",
            hint="this looks like a SentencePiece (Llama-2 style) tokenizer, which this converter "
            "does not handle"
            if spm
            else "copy the tokenizer files (tokenizer.json, tokenizer_config.json) of the model "
            "into the folder",
        )
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelError(f"{path} is not valid JSON ({e})", hint=TOKENIZER_HINT) from None
    if not isinstance(tok, dict) or not isinstance(tok.get("model") or {}, dict):
        raise InvalidModelError(f"{path} is not a tokenizers file", hint=TOKENIZER_HINT)
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or (tok.get("decoder") or {}).get("type") != "ByteLevel":
        raise InvalidModelError(
            f"{path}: a {model.get('type')} tokenizer with a "
            f"{(tok.get('decoder') or {}).get('type')} decoder, not a byte-level BPE one",
            hint="only byte-level BPE tokenizers (Llama-3, SmolLM, GPT-2) are supported",
        )
    return detect_pre(tok, where=path), tok.get("added_tokens") or []


def _tokenizer_config(config_path: Path) -> dict[str, Any]:
    if not config_path.is_file():
        return {}
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidModelError(
            f"{config_path} is not valid JSON ({e})", hint=TOKENIZER_HINT
        ) from None


def _added_tokens(added_list: list[Any], tok_config: dict[str, Any]) -> dict[int, tuple[str, bool]]:
    """id -> (text, special); tokenizer_config.json's added_tokens_decoder wins, as in
    transformers."""
    added: dict[int, tuple[str, bool]] = {
        int(t["id"]): (str(t["content"]), bool(t.get("special", False))) for t in added_list
    }
    for sid, t in (tok_config.get("added_tokens_decoder") or {}).items():
        if isinstance(t, dict) and "content" in t and str(sid).isdigit():
            added[int(sid)] = (str(t["content"]), bool(t.get("special", False)))
    return added


def _token_table(
    by_id: dict[int, str],
    added: dict[int, tuple[str, bool]],
    *,
    vocab_size: int | None,
    where: Path,
) -> tuple[list[str], list[int]]:
    """Token texts and GGUF token types by id, padded to ``vocab_size`` with ``[PADn]``."""
    import gguf

    for i, (text, _) in added.items():
        by_id[i] = text
    n_tok = max(by_id) + 1 if by_id else 0
    size = n_tok if vocab_size is None else vocab_size
    if n_tok > size:
        raise InvalidModelError(
            f"{where} has token ids up to {n_tok - 1}, but config.json says vocab_size {size}",
            hint="the tokenizer does not belong to these weights",
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        found = by_id.get(i)
        if found is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            text = found
            if added[i][1] or looks_special(text):
                types.append(int(gguf.TokenType.CONTROL))
            else:
                text = text.replace("\u2581", " ")  # pre-normalized user-defined spaces
                types.append(int(gguf.TokenType.USER_DEFINED))
            tokens.append(text)
        else:
            tokens.append(found)
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def _json_field(path: Path, key: str) -> Any:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get(key) if isinstance(data, dict) else None
