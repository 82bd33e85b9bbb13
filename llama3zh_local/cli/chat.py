"""`llama3zh chat`: interactive or one-shot chat through llama.cpp.

Library modules are imported inside the functions: `llama3zh --help` starts without them.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import catalog
from ..catalog import DEFAULT_ALIAS, DEFAULT_SYSTEM_PROMPT
from ..errors import InputError, Llama3zhError
from ..paths import config_dir
from . import _output
from ._errors import handle_errors
from ._options import (
    CtxOpt,
    Engine,
    FlashAttn,
    GpuLayersOpt,
    ModelArg,
    QuantOpt,
    TemplateChoice,
    ThreadsOpt,
)
from ._signals import Terminated

if TYPE_CHECKING:
    from ..chat.session import Chat
    from ..llamacpp.engine import GenerationRecord, SamplingParams

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
    engine: Annotated[
        Engine,
        typer.Option(
            help="gguf: llama.cpp on a .gguf; hf: transformers on an HF checkpoint folder (or an "
            "alias pulled with --variant full); needs torch and transformers.",
        ),
    ] = Engine.gguf,
    lora: Annotated[
        str | None,
        typer.Option(
            "--lora",
            help="With --engine hf: a PEFT LoRA folder (or an alias pulled with --variant lora), "
            "applied unmerged.",
        ),
    ] = None,
) -> None:
    """Chat with a model: interactive, or one answer with -p / a question on stdin.

    Examples:

      llama3zh chat                          # instruct-v3, interactive

      llama3zh chat ./ggml-model-q4_k.gguf -p "用一句话介绍北京"

      echo "What is GGUF?" | llama3zh chat instruct-v3 --temp 0 --stats

      llama3zh chat ./Llama-3-Chinese-8B-Instruct-v3 --engine hf --lora ./my-lora
    """
    from ..hardware import parse_gpu_layers
    from ..llamacpp.engine import SamplingParams

    talk(
        model,
        prompt=prompt,
        system=system,
        template=template,
        quant=quant,
        ctx=ctx,
        gpu_layers=parse_gpu_layers(n_gpu_layers),
        threads=threads,
        flash_attn=flash_attn,
        sampling=SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            seed=seed,
        ),
        max_tokens=max_tokens,
        stats=stats,
        load=load,
        engine=engine,
        lora=lora,
        gpu_layers_given=n_gpu_layers != "auto",
    )


def _question(prompt: str | None, system: str) -> str | None:
    """The one question to answer (-p or stdin), or None for the REPL; checked before loading."""
    from ..chat.conversation import check_text, decode_input

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
    if prompt is not None or sys.stdin.isatty():
        return prompt
    question = decode_input(sys.stdin.buffer.read(), "the question on stdin")
    if not question.strip():
        raise InputError(
            "no question on stdin (it was empty)",
            hint='pipe a question in (echo 你好 | llama3zh chat) or use -p "…"',
        )
    return question


def talk(
    model: str,
    *,
    prompt: str | None = None,
    system: str = DEFAULT_SYSTEM_PROMPT,
    template: TemplateChoice = TemplateChoice.auto,
    quant: str | None = None,
    ctx: int | None = None,
    gpu_layers: int | None = None,
    threads: int | None = None,
    flash_attn: FlashAttn = FlashAttn.auto,
    sampling: SamplingParams | None = None,
    max_tokens: int = -1,
    stats: bool = False,
    load: Path | None = None,
    engine: Engine = Engine.gguf,
    lora: str | None = None,
    gpu_layers_given: bool = False,
) -> None:
    """Open a chat on ``model`` and run the REPL, or answer one question (-p or stdin).

    Shared by ``chat`` and ``run``; ``gpu_layers`` is parsed already (None: auto).
    """
    from ..chat.conversation import Conversation
    from ..chat.session import format_stats, open_chat
    from ..hub import store

    _check_engine_options(engine, lora=lora, quant=quant, gpu_layers_given=gpu_layers_given,
                          flash_attn=flash_attn)  # fmt: skip
    question = _question(prompt, system)
    # a saved conversation is checked before gigabytes are loaded
    conversation = Conversation.load(load) if load is not None else None
    if engine is Engine.hf:
        _talk_hf(model, question=question, system=system, template=template, lora=lora, ctx=ctx,
                 threads=threads, sampling=sampling, max_tokens=max_tokens, stats=stats,
                 conversation=conversation)  # fmt: skip
        return
    path = store.resolve_gguf(model, quant=quant)
    if not store.looks_like_path(model) and not catalog.get_model(model).chat:
        _output.warn(
            f"{model} is a base model, not trained to chat: expect rambling answers "
            "(use instruct-v3 for chat)"
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
        if question is None:
            _repl(chat, show_stats=stats)
        else:
            last = _answer(chat, question.strip())
            if stats and last is not None:
                _output.note(format_stats(last))
    finally:
        chat.session.close()
        chat.model.close()


def _check_engine_options(
    engine: Engine,
    *,
    lora: str | None,
    quant: str | None,
    gpu_layers_given: bool,
    flash_attn: FlashAttn,
) -> None:
    """Options that belong to the other engine, refused before anything loads."""
    from ..errors import UsageError

    if engine is Engine.gguf:
        if lora is not None:
            raise UsageError(
                "--lora applies an adapter with transformers: it needs --engine hf",
                hint="add --engine hf (and give the HF base folder), or merge it into a GGUF: "
                "llama3zh merge-lora",
            )
        return
    for given, option in ((quant is not None, "--quant"), (gpu_layers_given, "--n-gpu-layers"),
                          (flash_attn is not FlashAttn.auto, "--flash-attn")):  # fmt: skip
        if given:
            raise UsageError(
                f"{option} is an option of the GGUF engine (llama.cpp), not of --engine hf",
                hint=f"leave out {option}; transformers picks the device itself (CUDA, MPS, CPU)",
            )


def _talk_hf(
    model: str,
    *,
    question: str | None,
    system: str,
    template: TemplateChoice,
    lora: str | None,
    ctx: int | None,
    threads: int | None,
    sampling: SamplingParams | None,
    max_tokens: int,
    stats: bool,
    conversation: object,
) -> None:
    """``talk`` on transformers: an HF folder (or a pulled full-weights alias) and a LoRA."""
    from ..chat.conversation import Conversation
    from ..chat.session import format_stats, open_hf_chat
    from ..hf.engine import require_torch
    from ..hub import store

    require_torch(lora=lora is not None)
    path = store.resolve_hf_dir(model)
    adapter = None if lora is None else store.resolve_hf_dir(lora, variant=catalog.Variant.LORA)
    if not store.looks_like_path(model) and not catalog.get_model(model).chat:
        _output.warn(
            f"{model} is a base model, not trained to chat: expect rambling answers "
            "(use instruct-v3 for chat)"
        )
    _output.note(f"loading {path.name}{' + ' + adapter.name if adapter else ''} with transformers")
    loaded = open_hf_chat(
        path, lora=adapter, n_ctx=ctx, threads=threads, template=template.value,
        sampling=sampling, system=system or None, max_tokens=max_tokens, notify=_output.note,
    )  # fmt: skip
    chat = loaded.chat
    if isinstance(conversation, Conversation):
        chat.conversation = conversation
    if loaded.model.meta("tokenizer.chat_template") is None and template is TemplateChoice.auto:
        _output.warn(f"{path.name} has no chat template: using the Llama-3-Instruct format")
    _output.note(
        f"{path.name}{' + LoRA ' + adapter.name if adapter else ''}: transformers"
        f" · {loaded.model.plan.summary} · {loaded.model.n_layer} layers · ctx {loaded.n_ctx}"
        f" · template: {chat.template.origin}"
    )
    try:
        if question is None:
            _repl(chat, show_stats=stats)
        else:
            last = _answer(chat, question.strip())
            if stats and last is not None:
                _output.note(format_stats(last))
    finally:
        chat.session.close()
        chat.model.close()


def _answer(
    chat: Chat, text: str, last: list[GenerationRecord] | None = None
) -> GenerationRecord | None:
    """Stream one answer to stdout; returns its last record (the answer's figures).

    ``last`` holds the latest record as it comes, so that an answer stopped by Ctrl-C still
    has its figures up to there (the REPL's /stats).
    """
    write, flush = sys.stdout.write, sys.stdout.flush
    record = None
    with contextlib.closing(chat.ask(text)) as records:
        for record in records:
            if last is not None:
                last[:] = [record]
            if record.text:
                write(record.text)
                flush()
    write("\n")
    flush()
    return record


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
    from ..chat.session import format_stats

    last: list[GenerationRecord] = []  # the last answer's last record, for /stats
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
            if cmd in ("/exit", "/bye", "/quit"):
                return
            try:
                show_stats = _command(chat, cmd, arg.strip(), show_stats=show_stats, last=last)
            except Llama3zhError as err:  # a failed command should not end the session
                _warn_error(err)
            continue
        try:
            _answer(chat, text, last)
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated):
                raise
            sys.stdout.write("\n")
            _output.note("(answer stopped)")
        except Llama3zhError as err:  # a failed answer should not end the session
            _warn_error(err)
            continue
        if show_stats and last:
            _output.note(format_stats(last[0]))


def _command(
    chat: Chat, cmd: str, arg: str, *, show_stats: bool, last: list[GenerationRecord]
) -> bool:
    """Run one REPL command (not /exit); returns whether timings show after each answer."""
    from ..chat.conversation import Conversation, check_text, quoted
    from ..chat.session import format_stats

    if cmd == "/help":
        _output.err().print(HELP, markup=False)
    elif cmd == "/clear":
        chat.conversation.clear()
        chat.session.reset()
        _output.note("Conversation cleared.")
    elif cmd == "/system":
        check_text(arg, "the system prompt")
        chat.conversation.system = arg or None
        _output.note(f"System prompt {'set' if arg else 'removed'}.")
    elif cmd in ("/save", "/load") and not arg:
        _output.warn(f"usage: {cmd} FILE")
    elif cmd == "/save":
        saved = chat.conversation.save(arg)
        _output.note(f"Saved to {quoted(saved)}.")
    elif cmd == "/load":
        chat.conversation = Conversation.load(arg)
        _output.note(f"Loaded {len(chat.conversation.turns)} messages from {quoted(arg)}.")
    elif cmd == "/stats":
        show_stats = not show_stats
        if last:
            _output.note(format_stats(last[0]))
        _output.note(f"Timings after each answer: {'on' if show_stats else 'off'}.")
    else:
        _output.warn(f"unknown command {cmd}; /help lists them")
    return show_stats
