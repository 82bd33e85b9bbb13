"""`llama3zh models`: the model family this tool knows."""

from __future__ import annotations

import json
from typing import Any

from ..catalog import DEFAULT_ALIAS, GGUF_QUANTS, MODELS, Source, Variant
from . import _output
from ._errors import handle_errors
from ._options import JsonOpt


@handle_errors
def models(as_json: JsonOpt = False) -> None:
    """List the Chinese Llama-3 models: aliases, hub repos, variants, GGUF quants.

    Examples:

      llama3zh models

      llama3zh models --json | jq '.[].hf'
    """
    from .. import store

    rows: list[dict[str, Any]] = []
    for m in MODELS:
        rows.append(
            {
                "alias": m.alias,
                "title": m.title,
                "chat": m.chat,
                "default": m.alias == DEFAULT_ALIAS,
                "hf": m.repo_id(Variant.FULL, Source.HF),
                "modelscope": m.repo_id(Variant.FULL, Source.MODELSCOPE),
                "variants": [v.value for v in m.variants],
                "lora_base": m.lora_base,
                "gguf_files": [q.filename for q in GGUF_QUANTS],
                "local": [str(p) for p in store.local_ggufs(m)],
            }
        )
    if as_json:
        _output.result(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    from rich.table import Table

    table = Table(title="Chinese Llama-3 models", title_justify="left")
    for col in (
        "alias",
        "repo (hfl/… on HF, ChineseAlpacaGroup/… on ModelScope)",
        "variants",
        "chat",
        "LoRA base",
        "local",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        alias = r["alias"] + (" (default)" if r["default"] else "")
        table.add_row(
            alias,
            str(r["hf"]).split("/", 1)[1],
            ", ".join(r["variants"]),
            "yes" if r["chat"] else "no (base)",
            str(r["lora_base"]).split("/")[-1] if r["lora_base"] else "-",
            str(len(r["local"])) + " GGUF" if r["local"] else "-",
        )
    _output.out().print(table)
    quants = ", ".join(f"{q.short} ({q.ftype}, {q.size_gib:.1f} GiB)" for q in GGUF_QUANTS)
    _output.out().print(f"GGUF files: ggml-model-<quant>.gguf with quant in {quants}", markup=False)
