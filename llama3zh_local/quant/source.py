"""Where the weights to quantize come from: a GGUF file, an HF checkpoint folder (converted to
an f16 GGUF in it first), or a pulled alias (its float GGUF in the store, else its HF weights).

``quantize``, ``imatrix``, ``llama3zh run`` (``pipeline``) and the CLI all find them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import catalog
from ..convert.llama import convert
from ..convert.writer import fingerprint
from ..errors import InvalidModelError, ModelNotFoundError, UsageError
from ..files import state
from ..hub import store

F16 = "ggml-model-f16.gguf"
# float GGUFs, the sources of quantizing, in order of preference
FLOAT_FILES = (F16, "ggml-model-bf16.gguf", "ggml-model-f32.gguf")


@dataclass(frozen=True)
class StoreSource:
    """Where an alias's quantizable weights live in the store (there or not)."""

    gguf_dir: Path  # the -gguf release's folder: its f16 GGUF and the quants made from it
    f16: Path
    hf_dir: Path  # the full weights (config.json, *.safetensors)


def store_source(spec: catalog.ModelSpec) -> StoreSource:
    """The store folders of ``spec``'s f16 GGUF and its full HF weights."""
    gguf_dir = store.repo_folder(spec.repo_id(catalog.Variant.GGUF))
    hf_dir = store.repo_folder(spec.repo_id(catalog.Variant.FULL))
    return StoreSource(gguf_dir, gguf_dir / F16, hf_dir)


def resolve_source(model: str | Path) -> Path:
    """MODEL as a path: itself, or for a pulled alias its f16/bf16/f32 GGUF, else its HF folder.

    Raises:
        ModelNotFoundError: the alias has neither in the store (the hint says how to get one).
    """
    if isinstance(model, Path) or store.looks_like_path(model):
        return Path(model).expanduser()
    spec = catalog.get_model(model)
    for p in store.local_ggufs(spec):
        if p.name in FLOAT_FILES:
            return p
    hf_dir = store_source(spec).hf_dir
    if (hf_dir / "config.json").is_file():
        return hf_dir
    raise ModelNotFoundError(
        f"{spec.alias} has no f16 GGUF or HF weights on this machine to quantize from",
        hint=f"llama3zh pull {spec.alias} --quant f16   (or: llama3zh pull {spec.alias} "
        f"--variant full && llama3zh convert {spec.alias})",
    )


@dataclass(frozen=True)
class SourceGGUF:
    path: Path  # the GGUF to quantize (for a dry run of a checkpoint: where it would go)
    note: str = ""  # how it was found or made, for people


def source_gguf(model: Path, *, dry_run: bool) -> SourceGGUF:
    """The GGUF to quantize: ``model`` itself, or for an HF checkpoint folder its conversion
    (reused when the folder's state file says it was converted from these files).

    Raises:
        InvalidModelError: a folder that is not an HF checkpoint.
        UsageError: a float GGUF in the folder that llama3zh has no record of converting.
    """
    if not model.is_dir():
        return SourceGGUF(model)
    if not (model / "config.json").is_file():
        raise InvalidModelError(
            f"{model} is a folder without config.json: neither a GGUF file nor an HF checkpoint",
            hint="give a .gguf file, or an HF checkpoint folder (config.json, *.safetensors)",
        )
    for name in FLOAT_FILES:
        earlier = model / name
        if not (earlier.exists() or earlier.is_symlink()):
            continue
        if state.completed(earlier, inputs=fingerprint(model)) is None:
            raise UsageError(
                f"{earlier} is there, but llama3zh has no record of converting it from the "
                f"checkpoint in {model} as it is now",
                hint=f"quantize that file itself (llama3zh quantize {earlier} ...), or move it "
                "away to convert the checkpoint again",
            )
        return SourceGGUF(earlier, f"using {earlier} (converted earlier from this checkpoint)")
    done = convert(source=model, outtype="auto", dry_run=dry_run)
    verb = "would convert" if dry_run else "converted"
    note = f"{verb} the HF checkpoint to {done.path} ({done.file_type}) first"
    return SourceGGUF(done.path, note)
