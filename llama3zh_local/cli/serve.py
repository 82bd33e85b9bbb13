"""`llama3zh serve`: an OpenAI- and Ollama-compatible server with a web chat page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import _output
from ._errors import handle_errors
from ._options import FlashAttn, GpuLayersOpt, ThreadsOpt

# The server (starlette, uvicorn, llama.cpp) is imported inside the command: `llama3zh --help`
# starts without it.

ModelsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Extra .gguf files to offer (every model in `llama3zh list` is offered too).",
        show_default=False,
    ),
]
HostOpt = Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")]
PortOpt = Annotated[int, typer.Option(help="Port (11434: where Ollama's clients look).")]
ParallelOpt = Annotated[
    int, typer.Option("--parallel", "-np", help="Answers generated at once.", min=1)
]
ServeCtxOpt = Annotated[
    int, typer.Option("--ctx", "-c", help="Context per request (prompt + answer).", min=64)
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LLAMA3ZH_API_KEY",
        help="Require this key (Authorization: Bearer KEY or x-api-key: KEY).",
    ),
]
CorsOpt = Annotated[
    str | None,
    typer.Option(help="Web origins allowed besides loopback ones, comma-separated ('*': any)."),
]
KeepAliveOpt = Annotated[
    str, typer.Option(help="Unload an idle model after this long (5m, 1h, 0, -1: never).")
]
QueueOpt = Annotated[
    int, typer.Option(help="Requests that may wait for a slot; more get 503.", min=0)
]
PrintConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--print-config",
        metavar="CLIENT",
        help="Print what to enter in a client and exit: cherry-studio, chatbox, open-webui, "
        "lobechat, dify, nextchat, vllm (the vllm serve command for a GPU server).",
    ),
]


@handle_errors
def serve(
    models: ModelsArg = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 11434,
    parallel: ParallelOpt = 4,
    ctx: ServeCtxOpt = 4096,
    n_gpu_layers: GpuLayersOpt = "auto",
    threads: ThreadsOpt = None,
    flash_attn: Annotated[FlashAttn, typer.Option(help="Flash attention.")] = FlashAttn.auto,
    api_key: ApiKeyOpt = None,
    cors: CorsOpt = None,
    keep_alive: KeepAliveOpt = "5m",
    queue: QueueOpt = 16,
    print_config: PrintConfigOpt = None
) -> None:
    """Serve the local models over OpenAI's and Ollama's APIs, with a chat page at /.

    Examples:

      llama3zh serve                                   # every model in `llama3zh list`

      llama3zh serve ./my-model.gguf --parallel 2 --ctx 8192

      llama3zh serve --host 0.0.0.0 --api-key $(openssl rand -hex 16)

      llama3zh serve --print-config cherry-studio
    """
    from ..hardware import parse_gpu_layers
    from ..serve.app import ServeConfig
    from ..serve.scheduler import EngineSettings, parse_duration
    from ..serve.server import check_config, client_config
    from ..serve.server import serve as run_server

    if print_config is not None:
        cfg = client_config(print_config, host=host, port=port, api_key=api_key)
        _output.result("\n".join(cfg.lines))
        return
    config = ServeConfig(
        models=tuple(models or ()),
        host=host,
        port=port,
        engine=EngineSettings(
            parallel=parallel,
            n_ctx=ctx,
            n_gpu_layers=parse_gpu_layers(n_gpu_layers),
            threads=threads,
            max_queue=queue,
            keep_alive=parse_duration(keep_alive, what="--keep-alive"),
            flash_attn=flash_attn.value,
        ),
        api_key=api_key,
        cors=tuple(o.strip() for o in (cors or "").split(",") if o.strip()),
    )
    for warning in check_config(config):
        _output.warn(warning)
    from ..serve.registry import Registry

    offered = Registry(list(config.models)).entries()
    if not offered:
        _output.warn("no models on this machine yet: `llama3zh pull instruct-v3`, or give a .gguf")
    else:
        _output.note("Models: " + ", ".join(e.name for e in offered))

    def ready(url: str) -> None:
        _output.note(f"Serving on {url}  (chat page: {url}/ , OpenAI: {url}/v1 , Ollama: {url})")
        _output.note("Ctrl-C stops the server.")

    run_server(config, on_ready=ready)
