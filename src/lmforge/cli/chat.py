"""`lmforge chat`: a conversation with a run in the terminal, through the serving engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.cli.sampling_options import (
    add_run_arguments,
    add_sampling_arguments,
    check_sampling_arguments,
)
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.serve.conversation import Conversation

HELP = "talk with a run in the terminal (its chat template, the conversation kept)"
OVERRIDES = False
DESCRIPTION = (
    "A conversation with a language-model run: each line you type is a user message, the "
    "reply streams as it is generated, and the conversation so far goes with every turn "
    "(the oldest exchanges are left out when it outgrows the model's context). Lines "
    "starting with / are commands: /reset forgets the conversation, /exit (or Ctrl-D) ends "
    "it; Ctrl-C stops a reply. Read from a pipe, each line of input is one turn and only "
    "the replies are printed. A run fine-tuned with `lmforge finetune sft` answers; any "
    "other continues the text in the template's format.")
COMMANDS = "/reset forgets the conversation, /exit ends it, /help shows this"
MOST_TOKENS = 256  # a turn's default limit, and at most half the model's context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory (a language model, best an sft run)")
    p.add_argument("--system", default=None,
                   help="a system message that starts the conversation (default: none)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"most tokens a reply may take (default: {MOST_TOKENS}, and at most "
                        "half the model's context)")
    add_sampling_arguments(p)
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.max_tokens is not None and args.max_tokens < 1:
        raise LmforgeError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    check_sampling_arguments(args)
    from lmforge.distributed.device import resolve_device
    from lmforge.runs.load import load_run
    from lmforge.serve.conversation import Conversation
    from lmforge.serve.engine import Engine

    device = resolve_device(args.device)
    loaded = load_run(args.run, which=args.checkpoint, device=str(device))
    context = None if getattr(loaded.model, "recurrent", False) else loaded.cfg.model.block_size
    max_tokens = _max_tokens(args.max_tokens, context)
    try:
        engine = Engine(loaded.model, eot_id=loaded.tokenizer.eot_id, max_batch=1,
                        max_queue=1, device=str(device))
    except (TypeError, ValueError) as err:
        raise LmforgeError(f"{args.run} cannot chat: {err}") from None
    talk = Conversation(engine, loaded.tokenizer, system=args.system)
    interactive = sys.stdin.isatty()
    name = args.run.resolve().name
    if interactive:
        _line_editing()
        note = ("" if loaded.cfg.task.kind == "sft" else
                " It was not fine-tuned for chat (lmforge finetune sft): replies continue the "
                "text in the template's format.")
        print(f"chatting with {name} (step {loaded.step}, template {talk.template.name}); "
              f"{COMMANDS}.{note}", file=sys.stderr, flush=True)
    engine.start()
    try:
        return _loop(talk, args, max_tokens, interactive=interactive, name=name)
    finally:
        engine.stop()


def _max_tokens(asked: int | None, context: int | None) -> int:
    if context is None:  # a recurrent model: no window
        return asked or MOST_TOKENS
    if asked is not None and asked > context:
        raise LmforgeError(f"--max-tokens must be at most the model's context of {context} "
                           f"tokens, got {asked}")
    return asked or max(1, min(MOST_TOKENS, context // 2))


def _loop(talk: Conversation, args: argparse.Namespace, max_tokens: int, *,
          interactive: bool, name: str) -> int:
    from lmforge.serve.conversation import Turn
    from lmforge.serve.engine import SamplingParams

    out = sys.stdout
    turns = 0
    while (text := _read(interactive)) is not None:
        command = text.strip().lower()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            talk.reset()
            _note("(conversation forgotten)")
            continue
        if command in ("/help", "/?"):
            _note(COMMANDS)
            continue
        if not text.strip():
            continue
        seed = None if args.seed is None else (args.seed + turns) % 2**64  # each turn its own
        sampling = SamplingParams(max_tokens=max_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=seed)
        turns += 1
        turn = Turn()
        if interactive:
            out.write(f"{name}> ")
        try:
            for piece in talk.reply(text, sampling, turn):
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:  # stops this reply, not the conversation
            out.write(" [stopped]")
        out.write("\n")
        out.flush()
        if turn.finish_reason == "error":
            raise LmforgeError(f"the model failed to reply: {turn.error}")
        if turn.dropped:
            _note(f"({turn.dropped} oldest exchange{'s' * (turn.dropped > 1)} left out to fit "
                  "the model's context)")
        if turn.finish_reason == "length" and interactive:
            _note("(the reply reached --max-tokens)")
    return 0


def _read(interactive: bool) -> str | None:
    """The next line typed or piped in, None at its end (Ctrl-D)."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _line_editing() -> None:
    """Arrow keys and history at the prompt, where the platform has readline."""
    try:
        import readline  # noqa: F401
    except ImportError:
        pass
