"""`llama3zh chat`: interactive or one-shot chat through llama.cpp."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..catalog import DEFAULT_ALIAS, DEFAULT_SYSTEM_PROMPT
from . import _output
from ._errors import handle_errors
from ._options import (
    CtxOpt,
    FlashAttn,
    GpuLayersOpt,
    ModelArg,
    QuantOpt,
    TemplateChoice,
    ThreadsOpt,
)
from ._signals import Terminated

if TYPE_CHECKING:
    from ..chat.conversation import Chat
    from ..errors import Llama3zhError

HELP = """Commands:
  /help          this list
  /clear         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt (empty: none)
  /save FILE     save the conversation as JSON
  /load FILE     load a saved conversation
  /stats         show timings of the last answer, and toggle them after each answer
  /exit          leave (or Ctrl-D)
Start and end a multi-line message with \"\"\". Ctrl-C stops an answer."""


@handle_errors
def chat(
    model: ModelArg = DEFAULT_ALIAS,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="Ask one question, print only the answer, and exit."),
    ] = None,
    system: Annotated[
        str, typer.Option("--system", "-s", help='System prompt ("" for none).')
    ] = DEFAULT_SYSTEM_PROMPT,
    template: Annotated[
        TemplateChoice,
        typer.Option(help="Chat template: the GGUF's own (auto), or the built-in Llama-3 one."),
    ] = TemplateChoice.auto,
    quant: QuantOpt = None,
    ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = "auto",
    threads: ThreadsOpt = None,
    flash_attn: Annotated[FlashAttn, typer.Option(help="Flash attention.")] = FlashAttn.auto,
    temperature: Annotated[float, typer.Option("--temperature", "--temp", min=0.0)] = 0.2,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.9,
    top_k: Annotated[int, typer.Option("--top-k", min=0)] = 40,
    min_p: Annotated[float, typer.Option("--min-p", min=0.0, max=1.0)] = 0.0,
    repeat_penalty: Annotated[float, typer.Option("--repeat-penalty")] = 1.1,
    seed: Annotated[int | None, typer.Option(help="Random seed, for reproducible answers.")] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", help="Longest answer in tokens (-1: no limit).")
    ] = -1,
    stats: Annotated[
        bool, typer.Option("--stats", help="Print timings (tokens/s, first token) after answers.")
    ] = False,
    load: Annotated[
        Path | None, typer.Option("--load", help="Continue a conversation saved with /save.")
    ] = None,
) -> None:
    """Chat with a model: interactive, or one answer with -p / a question on stdin.

    Examples:

      llama3zh chat                          # instruct-v3, interactive

      llama3zh chat ./ggml-model-q4_k.gguf -p "用一句话介绍北京"

      echo "What is GGUF?" | llama3zh chat instruct-v3 --temp 0 --stats
    """
    from .. import catalog, hardware
    from ..chat.conversation import Conversation, check_text, decode_input, format_stats, open_chat
    from ..errors import InputError
    from ..hub import store
    from ..llamacpp.engine import SamplingParams

    if prompt is not None:
        check_text(prompt, "-p")
        if not prompt.strip():
            raise InputError(
                "the question is empty (-p with no text)",
                hint='ask something: llama3zh chat -p "用一句话介绍北京", or leave out -p to chat',
            )
    check_text(system, "--system")
    if prompt is None and sys.stdin is None:  # started with <&-
        raise InputError(
            "no question: standard input is closed",
            hint='ask with -p "…", or pipe a question in (echo 你好 | llama3zh chat)',
        )
    interactive = prompt is None and sys.stdin.isatty()
    question = prompt
    if prompt is None and not interactive:
        question = decode_input(sys.stdin.buffer.read(), "the question on stdin")
        if not question.strip():
            raise InputError(
                "no question on stdin (it was empty)",
                hint='pipe a question in (echo 你好 | llama3zh chat) or use -p "…"',
            )
    # a saved conversation is checked before gigabytes are loaded
    conversation = Conversation.load(load) if load is not None else None
    gpu_layers = hardware.parse_gpu_layers(n_gpu_layers)
    path = store.resolve_gguf(model, quant=quant)
    if not store.looks_like_path(model) and not catalog.get_model(model).chat:
        _output.warn(
            f"{model} is a base model, not trained to chat: expect rambling answers "
            "(use instruct-v3 for chat)"
        )
    sampling = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repeat_penalty=repeat_penalty,
        seed=seed,
    )
    loaded = open_chat(
        path,
        n_ctx=ctx,
        gpu_layers=gpu_layers,
        threads=threads,
        flash_attn=flash_attn.value,
        template=template.value,
        sampling=sampling,
        system=system or None,
        max_tokens=max_tokens,
        notify=_output.note,
    )
    chat = loaded.chat
    if loaded.info.chat_template is None and template is TemplateChoice.auto:
        _output.warn(
            f"{path.name} has no chat template (a base model?): using the Llama-3-Instruct format"
        )
    if conversation is not None:
        chat.conversation = conversation
    _output.note(
        f"{path.name}: {loaded.info.file_type}, {loaded.info.n_layer} layers"
        f" · {loaded.plan.summary}"
        f" · ctx {loaded.n_ctx} · {loaded.n_threads} threads · template: {chat.template.origin}"
    )
    try:
        if interactive:
            _repl(chat, show_stats=stats)
        else:
            assert question is not None
            _answer(chat, question.strip())
            if stats and chat.last_stats:
                _output.note(format_stats(chat.last_stats))
    finally:
        chat.session.close()
        chat.model.close()


def _answer(chat: Chat, text: str) -> None:
    """Stream one answer to stdout."""
    write, flush = sys.stdout.write, sys.stdout.flush
    with contextlib.closing(chat.ask(text)) as pieces:
        for piece in pieces:
            write(piece)
            flush()
    write("\n")
    flush()


def _read_message(prompt: str) -> str:
    """One message from the terminal; \"\"\" starts and ends a multi-line one."""
    line = input(prompt)
    if not line.lstrip().startswith('"""'):
        return line
    lines = [line.lstrip()[3:]]
    while not lines[-1].rstrip().endswith('"""'):
        lines.append(input("... "))
    lines[-1] = lines[-1].rstrip()[:-3]
    return "\n".join(lines).strip("\n")


def _history() -> None:
    """Line editing and history through readline, where the platform has it."""
    try:
        import atexit
        import readline

        from ..paths import config_dir
    except ImportError:
        return
    hist = config_dir() / "chat_history"
    with contextlib.suppress(OSError):
        hist.parent.mkdir(parents=True, exist_ok=True)
        if hist.exists():
            readline.read_history_file(hist)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(hist)

    atexit.register(save)


def _warn_error(err: Llama3zhError) -> None:
    """A failure inside the REPL: one warning line (with the hint), and the session goes on."""
    _output.warn(str(err) + (f" ({err.hint})" if err.hint else ""))


def _repl(chat: Chat, *, show_stats: bool) -> None:
    from ..chat.conversation import Conversation, check_text, format_stats, quoted
    from ..errors import Llama3zhError
    from ..llamacpp.engine import GenerationStats

    _history()
    _output.note('Type a message; /help for commands, """ for multi-line, Ctrl-D to exit.')
    while True:
        try:
            text = _read_message(">>> ")
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated):  # SIGTERM ends the session; Ctrl-C does not
                raise
            sys.stdout.write("\n")
            _output.note("Use Ctrl-D or /exit to leave.")
            continue
        except EOFError:
            sys.stdout.write("\n")
            return
        except UnicodeDecodeError as err:  # bytes that are not UTF-8 (a GBK terminal, say)
            _output.warn(
                f"that line is not valid UTF-8 text (byte 0x{err.object[err.start]:02x}); "
                "type it again (set the terminal to UTF-8: LANG=C.UTF-8)"
            )
            continue
        stripped = text.strip()
        if not stripped:
            continue
        if stripped.startswith("/"):
            cmd, _, arg = stripped.partition(" ")
            arg = arg.strip()
            if cmd in ("/exit", "/bye", "/quit"):
                return
            if cmd == "/help":
                _output.err().print(HELP, markup=False)
            elif cmd == "/clear":
                chat.conversation.clear()
                chat.session.reset()
                _output.note("Conversation cleared.")
            elif cmd == "/system":
                try:
                    check_text(arg, "the system prompt")
                except Llama3zhError as err:
                    _warn_error(err)
                    continue
                chat.conversation.system = arg or None
                _output.note(f"System prompt {'set' if arg else 'removed'}.")
            elif cmd == "/save":
                if not arg:
                    _output.warn("usage: /save FILE")
                    continue
                try:
                    saved = chat.conversation.save(arg)
                except Llama3zhError as err:
                    _warn_error(err)
                    continue
                _output.note(f"Saved to {quoted(saved)}.")
            elif cmd == "/load":
                if not arg:
                    _output.warn("usage: /load FILE")
                    continue
                try:
                    chat.conversation = Conversation.load(arg)
                except Llama3zhError as err:
                    _warn_error(err)
                    continue
                _output.note(f"Loaded {len(chat.conversation.turns)} messages from {quoted(arg)}.")
            elif cmd == "/stats":
                show_stats = not show_stats
                if chat.last_stats:
                    _output.note(format_stats(chat.last_stats))
                _output.note(f"Timings after each answer: {'on' if show_stats else 'off'}.")
            else:
                _output.warn(f"unknown command {cmd}; /help lists them")
            continue
        try:
            _answer(chat, text)
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated):
                raise
            sys.stdout.write("\n")
            _output.note("(answer stopped)")
        except Llama3zhError as err:  # a failed answer should not end the session
            _warn_error(err)
            continue
        if show_stats and isinstance(chat.last_stats, GenerationStats):
            _output.note(format_stats(chat.last_stats))
