"""`lmforge generate`: sample text from a trained run, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

    from lmforge.data.tokenizer import Tokenizer

HELP = "sample text from a trained run"
OVERRIDES = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50,
                   help="sample among the k likeliest tokens; 0 is off (default: 50)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling mass; 1 is off (default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples (default: 1)")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default), best (when the run kept one) or a step_NNNNNNNN name")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, … (default: auto)")


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise LmforgeError("--max-new-tokens and --num-samples must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise LmforgeError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    import torch

    from lmforge.distributed.device import resolve_device
    from lmforge.generate import generate_tokens
    from lmforge.runs.load import load_run

    device = resolve_device(args.device)
    loaded = load_run(args.run, which=args.checkpoint, device=str(device))
    tok = loaded.tokenizer
    prompt_ids = tok.encode(args.prompt) if args.prompt else [tok.eot_id]
    prompt = torch.tensor([prompt_ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed) if args.seed is not None else gen.seed()
    stream = generate_tokens(loaded.model, prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             generator=gen)
    if args.num_samples == 1:
        _stream_one(stream, prompt=args.prompt, tokenizer=tok)
        return 0
    rows: list[list[int]] = [[] for _ in range(args.num_samples)]
    for step in stream:
        for row, token in zip(rows, step.tolist(), strict=True):
            row.append(token)
    for i, row in enumerate(rows):
        ended = row[:row.index(tok.eot_id)] if tok.eot_id in row else row
        print(f"----- sample {i + 1} -----\n{args.prompt}{tok.decode(ended)}")
    return 0


def _stream_one(stream: Iterator[torch.Tensor], *, prompt: str, tokenizer: Tokenizer) -> None:
    """Print text as it is generated. A character cut between two tokens waits for the next,
    and so does a trailing space of a segmented tokenizer: the next token may show it to be a
    segmentation space between two Chinese words, which decoding removes."""
    out = sys.stdout
    out.write(prompt)
    ids: list[int] = []
    shown = 0
    for step in stream:
        token = int(step[0])
        if token == tokenizer.eot_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd") and not (tokenizer.segmented and text.endswith(" ")):
            out.write(text[shown:])
            out.flush()
            shown = len(text)
    out.write(tokenizer.decode(ids)[shown:] + "\n")
    out.flush()
