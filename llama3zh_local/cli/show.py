"""`llama3zh show`: what the catalog knows about a model, what is local, and GGUF metadata."""

from __future__ import annotations

import json
from typing import Any

from ..catalog import GGUF_QUANTS, Source
from . import _format, _output
from ._errors import handle_errors
from ._options import HubModelArg, JsonOpt, VariantOpt

# Library modules are imported inside the command: `llama3zh --help` starts faster.


@handle_errors
def show(model: HubModelArg, variant: VariantOpt = None, as_json: JsonOpt = False) -> None:
    """Show a model: hub repos, variants, local files and each local GGUF's metadata.

    Examples:

      llama3zh show instruct-v3

      llama3zh show hf:hfl/llama-3-chinese-8b-instruct-v3-gguf --json
    """
    from ..catalog import Variant
    from ..hub import store

    d = store.show(model, variant=Variant(variant.value) if variant else None)
    data: dict[str, Any] = {"model": model}
    if d.spec is not None:
        s = d.spec
        data.update(
            alias=s.alias,
            title=s.title,
            chat=s.chat,
            lora_base=s.lora_base,
            repos={
                v.value: {
                    "hf": s.repo_id(v, Source.HF),
                    "modelscope": s.repo_id(v, Source.MODELSCOPE),
                }
                for v in s.variants
            },
            gguf_quants={q.short: {"ftype": q.ftype, "size_gib": q.size_gib} for q in GGUF_QUANTS},
        )
    data["local"] = [
        {
            "path": str(f.path),
            **f.provenance(),
            "sha256": f.entry.sha256 if f.entry else None,
            "missing": f.missing,
        }
        for f in d.local
    ]
    data["gguf"] = [_gguf_dict(g) for g in d.gguf]
    if as_json:
        _output.result(json.dumps(data, ensure_ascii=False, indent=2))
        return
    out = _output.result
    if d.spec is not None:
        out(
            f"{d.spec.title}  (alias {d.spec.alias}; {'chat' if d.spec.chat else 'base, not chat'})"
        )
        for v, repos in data["repos"].items():
            out(f"  {v:5}  hf:{repos['hf']}   ms:{repos['modelscope']}")
        if d.spec.lora_base:
            out(f"  LoRA base: {d.spec.lora_base}")
        quants = ", ".join(f"{q.short} {q.size_gib:.1f} GiB" for q in GGUF_QUANTS)
        out(f"  GGUF quants (8B sizes): {quants}")
    if not d.local:
        out("Local files: none (llama3zh pull " + model + ")")
    else:
        out("Local files:")
        for f in d.local:
            size = "missing (cache file deleted)" if f.missing else _format.size(f.size)
            origin = f"{f.source}:{f.repo_id}" if f.repo_id else f.source
            out(f"  {f.path}  {size}  {origin}  {_format.date(f.date)}")
    for g in data["gguf"]:
        out(f"GGUF {g['path']}:")
        if g.get("error"):
            out(f"  unreadable: {g['error']}")
            continue
        for key in (
            "architecture",
            "name",
            "file_type",
            "n_layer",
            "n_ctx_train",
            "n_vocab",
            "n_head",
            "n_head_kv",
            "tensor_count",
            "chat_template",
        ):
            out(f"  {key:13} {g[key]}")


def _gguf_dict(g: Any) -> dict[str, Any]:
    if g.info is None:
        return {"path": str(g.path), "error": g.error}
    i = g.info
    return {
        "path": str(g.path),
        "architecture": i.architecture,
        "name": i.name,
        "file_type": i.file_type,
        "n_layer": i.n_layer,
        "n_ctx_train": i.n_ctx_train,
        "n_vocab": i.n_vocab,
        "n_head": i.n_head,
        "n_head_kv": i.n_head_kv,
        "tensor_count": i.tensor_count,
        "chat_template": "yes" if i.chat_template else "no",
        "size_bytes": i.size,
    }
