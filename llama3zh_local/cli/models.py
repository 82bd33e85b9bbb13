"""`llama3zh models`: the model family this tool knows."""

from __future__ import annotations

import json
from typing import Any

from ..catalog import DEFAULT_ALIAS, GGUF_QUANTS, MODELS, Source, Variant
from . import _output
from ._errors import handle_errors
from ._options import JsonOpt

# Library modules are imported inside the command: `llama3zh --help` starts faster.


@handle_errors
def models(as_json: JsonOpt = False) -> None:
    """List the Chinese Llama-3 models: aliases, hub repos, variants, GGUF quants.

    Examples:

      llama3zh models

      llama3zh models --json | jq '.[].hf'
    """
    from ..hub import store

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
    from rich import box
    from rich.table import Table

    # Fits 80 columns: the org prefixes and the LoRA bases are said once, under the table.
    table = Table(
        title="Chinese Llama-3 models",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for col in ("alias", "repo", "variants", "chat", "local"):
        table.add_column(col, no_wrap=col in ("alias", "repo"))
    for r in rows:
        table.add_row(
            r["alias"] + (" *" if r["default"] else ""),
            str(r["hf"]).split("/", 1)[1],
            ", ".join(r["variants"]),
            "yes" if r["chat"] else "no",
            str(len(r["local"])) + " GGUF" if r["local"] else "-",
        )
    out = _output.out()
    out.print(table)
    bases: dict[str, list[str]] = {}
    for r in rows:
        if r["lora_base"]:
            bases.setdefault(r["lora_base"], []).append(r["alias"])
    lines = [
        "* the default. Repos: hfl/<repo> on Hugging Face, ChineseAlpacaGroup/<repo> on "
        "ModelScope; the lora and gguf variants add -lora or -gguf to the name.",
        "LoRA bases: " + "; ".join(f"{', '.join(a)}: {b}" for b, a in bases.items()) + ".",
        "GGUF files: ggml-model-<quant>.gguf, quant in "
        + ", ".join(f"{q.short} ({q.ftype}, {q.size_gib:.1f} GiB)" for q in GGUF_QUANTS)
        + ".",
    ]
    for line in lines:
        out.print(line, markup=False)
