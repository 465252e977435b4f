"""The sampling options that `lmforge generate` and `lmforge chat` share, and their checks:
each number in its range before anything is read or built."""

from __future__ import annotations

import argparse
import math

from lmforge.config_checks import MIN_TEMPERATURE
from lmforge.errors import LmforgeError

MAX_SEED = 2**64 - 1  # torch's generators take 64-bit seeds


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.8,
                   help=f"0 is greedy, else at least {MIN_TEMPERATURE:g} (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50,
                   help="sample among the k likeliest tokens; 0 is off (default: 50)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling mass; 1 is off (default: 1.0)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for reproducible samples (0 to 2**64 - 1)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Which checkpoint of the run, on which device."""
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default), best (when the run kept one) or a step_NNNNNNNN name")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, … (default: auto)")


def check_sampling_arguments(args: argparse.Namespace) -> None:
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise LmforgeError(f"--seed must be between 0 and 2**64 - 1 (torch's generators take "
                           f"64-bit seeds), got {args.seed}")
    for flag, number in (("--temperature", args.temperature), ("--top-p", args.top_p)):
        if not math.isfinite(number):
            raise LmforgeError(f"{flag} must be a finite number, got {number}")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise LmforgeError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    if 0 < args.temperature < MIN_TEMPERATURE:
        raise LmforgeError(f"--temperature {args.temperature:g} is too small to divide the "
                           f"logits by; use 0 for greedy decoding or at least {MIN_TEMPERATURE:g}")
