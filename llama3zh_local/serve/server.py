"""Run the server (uvicorn), and what to type into each desktop client."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .app import ServeConfig, create_app, is_loopback_host

DRAIN_SECONDS = 3


def check_config(config: ServeConfig) -> list[str]:
    """Refuse settings that cannot work; return warnings for risky ones.

    Raises:
        UsageError: a port or limit out of range.
    """
    s = config.engine
    if not 0 <= config.port <= 65535:
        raise UsageError(f"--port {config.port}: must be 0-65535", hint="e.g. --port 11434")
    if not 1 <= s.parallel <= 256:
        raise UsageError(f"--parallel {s.parallel}: must be 1-256", hint="e.g. --parallel 4")
    if not 64 <= s.n_ctx <= 1 << 20:
        raise UsageError(f"--ctx {s.n_ctx}: must be 64 or more", hint="e.g. --ctx 4096")
    if config.api_key is not None and not config.api_key.strip():
        raise UsageError(
            "--api-key is empty", hint="give a key, e.g. --api-key $(openssl rand -hex 16)"
        )
    warnings = []
    if not is_loopback_host(config.host) and not config.api_key:
        warnings.append(
            f"listening on {config.host} without --api-key: anyone who can reach this machine "
            "can use the models. Add --api-key KEY, or bind 127.0.0.1"
        )
    if "*" in config.cors:
        warnings.append("--cors '*': any web page you open can use this server")
    return warnings


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {port} on {host} is already in use (is Ollama running?)",
                    hint=f"stop the other server, or pick another port: --port {port + 1}",
                ) from None
            raise UsageError(
                f"cannot listen on {host}:{port}: {err.strerror or err}",
                hint="check --host (an address of this machine) and --port",
            ) from None


def serve(config: ServeConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM (running answers get a few seconds to finish).

    Raises:
        UsageError: bad settings, or the port is taken.
    """
    import uvicorn

    check_config(config)
    _check_port(config.host, config.port)
    app = create_app(config)
    uconfig = uvicorn.Config(
        app,
        host=config.host.strip("[]"),
        port=config.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=DRAIN_SECONDS + 5,
        lifespan="on",
    )
    scheduler = app.server.scheduler

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # running answers get DRAIN_SECONDS to finish, then end with an error event
            if not self.should_exit and scheduler.loop is not None:
                scheduler.loop.call_soon_threadsafe(scheduler.begin_shutdown, DRAIN_SECONDS)
            super().handle_exit(sig, frame)

    server = Server(uconfig)
    if on_ready is not None:
        host = f"[{config.host}]" if ":" in config.host else config.host
        on_ready(f"http://{host}:{config.port}")
    server.run()


@dataclass(frozen=True)
class ClientConfig:
    client: str
    lines: tuple[str, ...]


CLIENTS = ("cherry-studio", "chatbox", "open-webui", "lobechat", "dify", "nextchat")


def client_config(client: str, *, host: str, port: int, api_key: str | None) -> ClientConfig:
    """What to type into ``client`` to use this server (base URL with or without ``/v1``).

    Raises:
        UsageError: an unknown client.
    """
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    base = f"http://{shown}:{port}"
    docker = f"http://host.docker.internal:{port}"
    key = api_key or "llama3zh (any text: this server has no --api-key)"
    c = client.lower()
    if c == "vllm":
        return ClientConfig(c, vllm_lines(api_key=api_key))
    table: dict[str, tuple[str, ...]] = {
        "cherry-studio": (
            "Cherry Studio → 设置 Settings → 模型服务 Model Provider → 添加 Add",
            "  提供商类型 Provider type: OpenAI",
            f"  API 地址 API host: {base}   (without /v1: Cherry Studio adds /v1/chat/completions)",
            f"  API 密钥 API key: {key}",
            "  模型 Models: 管理 Manage → 获取列表 fetch the list (from /v1/models)",
        ),
        "chatbox": (
            "Chatbox → 设置 Settings → 模型提供方 Model provider → 添加 Add → OpenAI API 兼容",
            f"  API 域名 API host: {base}",
            "  API 路径 API path: /v1/chat/completions",
            f"  API 密钥 API key: {key}",
            f"  (or the Ollama provider with API host {base} when no --api-key is set)",
        ),
        "open-webui": (
            "Open WebUI → 管理员设置 Admin Settings → 外部连接 Connections",
            f"  Ollama API: {base}   (no /v1; in Docker: {docker})",
            f"  or OpenAI API: {base}/v1   (in Docker: {docker}/v1), key: {key}",
            f"  environment: OLLAMA_BASE_URL={base}  or  OPENAI_API_BASE_URL={base}/v1",
        ),
        "lobechat": (
            "LobeChat → 设置 Settings → 语言模型 Language Model → OpenAI",
            f"  API 代理地址 API proxy URL: {base}/v1   (with /v1)",
            f"  API Key: {key}",
            f"  or Ollama → 接口代理地址 Ollama proxy URL: {base}   (no /v1)",
        ),
        "dify": (
            "Dify → 设置 Settings → 模型供应商 Model Provider → OpenAI-API-compatible",
            f"  API endpoint URL: {base}/v1   (Dify in Docker: {docker}/v1)",
            f"  API Key: {key}",
            "  Model name: a name from GET /v1/models; 模型类型 Model type: LLM (chat)",
            f"  or the Ollama provider with base URL {base} (Docker: {docker})",
        ),
        "nextchat": (
            "NextChat → 设置 Settings → 自定义接口 Custom endpoint → OpenAI",
            f"  接口地址 Endpoint: {base}   (without /v1: NextChat adds /v1/chat/completions)",
            f"  API Key: {key}",
            "  自定义模型名 Custom models: +NAME (a name from GET /v1/models)",
            f"  or the environment: BASE_URL={base} OPENAI_API_KEY={api_key or 'llama3zh'}",
        ),
    }
    if c not in table:
        raise UsageError(f"no settings for client {client!r}", hint=f"one of: {', '.join(CLIENTS)}")
    return ClientConfig(c, table[c])


def vllm_template() -> str:
    """The Llama-3-Instruct chat template file vLLM needs (the one ``chat`` and ``serve`` use)."""
    from importlib import resources

    return str(resources.files("llama3zh_local.data").joinpath("llama3_instruct.jinja"))


def vllm_lines(*, api_key: str | None) -> tuple[str, ...]:
    """The ``vllm serve`` command for the same models on a GPU server (docs/scale-out.md)."""
    key = f" \\\n  --api-key {api_key}" if api_key else ""
    return (
        "# on a machine with an NVIDIA GPU (pip install vllm); MODEL_DIR is the merged HF",
        "# checkpoint: `llama3zh pull instruct-v3 --variant full` or",
        "# `llama3zh merge-lora LORA --base BASE --format hf -o MODEL_DIR`",
        "vllm serve MODEL_DIR \\",
        "  --served-model-name llama3zh-instruct-v3 \\",
        f"  --chat-template {vllm_template()} \\",
        f"  --max-model-len 8192 --host 0.0.0.0 --port 8000{key}",
        "# Llama-3 answers end with <|eot_id|> (128009) or <|end_of_text|> (128001): vLLM stops at",
        "# the eos_token_id list of MODEL_DIR/generation_config.json; if it has only one of them,",
        '# send "stop_token_ids": [128001, 128009] with each request.',
        "# clients: base URL http://SERVER:8000/v1, the same settings as for llama3zh serve",
    )
