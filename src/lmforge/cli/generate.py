"""`lmforge generate`: sample text from a trained run, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.cli.sampling_options import (
    add_run_arguments,
    add_sampling_arguments,
    check_sampling_arguments,
)
from lmforge.config_checks import human_bytes
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

    from lmforge.config import ModelConfig
    from lmforge.data.tokenizer import Tokenizer

HELP = "sample text from a trained run"
OVERRIDES = False

MAX_NEW_TOKENS = 1_000_000  # as eval.sample_tokens: past that, sampling would run for days
MAX_SAMPLES = 10_000  # printed one after another; generated together, in one batch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help=f"tokens to generate (default: 200, at most {MAX_NEW_TOKENS:,})")
    add_sampling_arguments(p)
    p.add_argument("--num-samples", type=int, default=1,
                   help=f"independent samples, drawn as one batch (default: 1, at most "
                        f"{MAX_SAMPLES:,})")
    add_run_arguments(p)


def check_arguments(args: argparse.Namespace) -> None:
    """Every number given, in its range, before anything is read or built."""
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise LmforgeError("--max-new-tokens and --num-samples must be at least 1")
    for flag, value, most, why in (
            ("--max-new-tokens", args.max_new_tokens, MAX_NEW_TOKENS,
             "past that, sampling would run for days"),
            ("--num-samples", args.num_samples, MAX_SAMPLES,
             "they are generated as one batch; for more, run generate again with another "
             "--seed")):
        if value > most:
            raise LmforgeError(f"{flag} must be at most {most:,}, got {value} ({why})")
    check_sampling_arguments(args)


def check_memory(args: argparse.Namespace, model: ModelConfig, device: torch.device) -> None:
    """The samples must fit the device's free memory, judged from the run's config before
    its model is built: one batch of --num-samples needs a KV cache (or hidden state) each."""
    from lmforge.generate import available_memory, generation_bytes, most_that_fit

    free = available_memory(device)
    if free is None:
        return
    prompt = 2 * len(args.prompt.encode("utf-8", "surrogatepass")) + 1  # tokens, at most

    def need(samples: int) -> int:
        return generation_bytes(model, samples=samples, prompt_tokens=prompt,
                                new_tokens=args.max_new_tokens)

    if need(args.num_samples) <= free:
        return
    fit = most_that_fit(need, free, args.num_samples)
    fix = (f"lower --num-samples (about {fit:,} fit)" if fit else
           "even one sample does not fit: use another --device or a shorter --prompt")
    raise LmforgeError(f"--num-samples {args.num_samples} with --max-new-tokens "
                       f"{args.max_new_tokens} need about {human_bytes(need(args.num_samples))} "
                       f"on {device} (weights, KV cache, logits and the tokens drawn) and "
                       f"{human_bytes(free)} is free; {fix}")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    import torch

    from lmforge.distributed.device import resolve_device
    from lmforge.generate import generate_tokens
    from lmforge.models.decode_layout import use_decode_layout
    from lmforge.rundir import RunDir, read_run_config
    from lmforge.runs.load import load_run

    device = resolve_device(args.device)
    check_memory(args, read_run_config(RunDir(args.run)).model, device)
    loaded = load_run(args.run, which=args.checkpoint, device=str(device))
    tok = loaded.tokenizer
    # bos first where the model's tokenizer puts it before a text; eot alone for no prompt
    prompt_ids = tok.encode_prompt(args.prompt)
    if not getattr(loaded.model, "recurrent", False):  # generate_tokens would crop it as well
        prompt_ids = prompt_ids[-loaded.cfg.model.block_size:]
    prompt = torch.tensor([prompt_ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed) if args.seed is not None else gen.seed()
    stream = generate_tokens(use_decode_layout(loaded.model), prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             generator=gen)
    if args.num_samples == 1:
        _stream_one(stream, prompt=args.prompt, tokenizer=tok, context=prompt_ids)
        return 0
    rows: list[list[int]] = [[] for _ in range(args.num_samples)]
    for step in stream:
        for row, token in zip(rows, step.tolist(), strict=True):
            row.append(token)
    for i, row in enumerate(rows):
        ended = row[:row.index(tok.eot_id)] if tok.eot_id in row else row
        print(f"----- sample {i + 1} -----\n{args.prompt}{tok.decode_after(prompt_ids, ended)}")
    return 0


def _stream_one(stream: Iterator[torch.Tensor], *, prompt: str, tokenizer: Tokenizer,
                context: list[int] | None = None) -> None:
    """Print text as it is generated. A character cut between two tokens waits for the next,
    and so does a trailing space of a segmented tokenizer: the next token may show it to be a
    segmentation space between two Chinese words, which decoding removes. `context`: the
    prompt's ids, which the new text is decoded after (Tokenizer.decode_after)."""
    context = context or []
    out = sys.stdout
    out.write(prompt)
    ids: list[int] = []
    shown = 0
    for step in stream:
        token = int(step[0])
        if token == tokenizer.eot_id:
            break
        ids.append(token)
        text = tokenizer.decode_after(context, ids)
        if not text.endswith("\ufffd") and not (tokenizer.segmented and text.endswith(" ")):
            out.write(text[shown:])
            out.flush()
            shown = len(text)
    out.write(tokenizer.decode_after(context, ids)[shown:] + "\n")
    out.flush()
