"""llama3zh-local: pull, convert, quantize and chat with the Chinese Llama-3 models locally.

The public API, stage by stage (``docs/architecture.md``)::

    plan = llama3zh_local.plan_run("instruct-v3", quant="q4_k", imatrix=True)
    result = llama3zh_local.execute(plan)
    loaded = llama3zh_local.open_chat(result.target)
    for record in loaded.chat.ask("你好"):
        print(record.text, end="")

Names are imported on first use (PEP 562): ``import llama3zh_local`` and ``llama3zh --help``
stay quick, and numpy, gguf and llama.cpp load only when a stage runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # errors and progress: what every stage raises and reports
    "Llama3zhError": "errors",
    "Event": "progress",
    # the whole path
    "plan_run": "pipeline",
    "execute": "pipeline",
    "RunPlan": "pipeline",
    "RunResult": "pipeline",
    "run_demo": "demo",
    # after training: a LoRA folder to a quantized GGUF, its Modelfile and Ollama
    "plan_finish": "trained",
    "finish_adapter": "trained",
    # hub: pull and the local store
    "plan_pull": "hub.pull",
    "pull": "hub.pull",
    "local_files": "hub.store",
    "show": "hub.store",
    "plan_remove": "hub.store",
    "remove": "hub.store",
    # convert
    "convert_checkpoint": "convert.llama",  # not "convert": that is the subpackage
    "merge_lora": "convert.lora",
    "export_hf": "convert.export",
    # quant
    "plan_imatrix": "quant.imatrix",
    "compute_imatrix": "quant.imatrix",
    "plan_quantize": "quant.quantize",
    "quantize": "quant.quantize",
    "evaluate": "quant.evaluate",
    "recommend": "quant.recommend",
    # ollama
    "build_modelfile": "ollama.modelfile",
    "write_modelfile": "ollama.modelfile",
    "ollama_create": "ollama.client",
    # chat and the engine under it
    "open_chat": "chat.session",
    "Model": "llamacpp.engine",
    "Session": "llamacpp.engine",
    "SamplingParams": "llamacpp.engine",
    "GenerationRecord": "llamacpp.engine",
    # the machine
    "detect_hardware": "hardware",
}
_RENAMED = {"detect_hardware": "detect", "convert_checkpoint": "convert"}

__all__ = [
    "__version__",
    "Llama3zhError",
    "Event",
    "plan_run",
    "execute",
    "RunPlan",
    "RunResult",
    "run_demo",
    "plan_finish",
    "finish_adapter",
    "plan_pull",
    "pull",
    "local_files",
    "show",
    "plan_remove",
    "remove",
    "convert_checkpoint",
    "merge_lora",
    "export_hf",
    "plan_imatrix",
    "compute_imatrix",
    "plan_quantize",
    "quantize",
    "evaluate",
    "recommend",
    "build_modelfile",
    "write_modelfile",
    "ollama_create",
    "open_chat",
    "Model",
    "Session",
    "SamplingParams",
    "GenerationRecord",
    "detect_hardware",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), _RENAMED.get(name, name))
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .chat.session import open_chat
    from .convert.export import export_hf
    from .convert.llama import convert as convert_checkpoint
    from .convert.lora import merge_lora
    from .demo import run_demo
    from .errors import Llama3zhError
    from .hardware import detect as detect_hardware
    from .hub.pull import plan_pull, pull
    from .hub.store import local_files, plan_remove, remove, show
    from .llamacpp.engine import GenerationRecord, Model, SamplingParams, Session
    from .ollama.client import ollama_create
    from .ollama.modelfile import build_modelfile, write_modelfile
    from .pipeline import RunPlan, RunResult, execute, plan_run
    from .progress import Event
    from .quant.evaluate import evaluate
    from .quant.imatrix import compute_imatrix, plan_imatrix
    from .quant.quantize import plan_quantize, quantize
    from .quant.recommend import recommend
    from .trained import finish_adapter, plan_finish
