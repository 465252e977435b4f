"""The `lmforge prepare` verb. Apart from the other verbs, so that preparing data never
imports torch (1.3 s of start-up for a command that may take 0.1 s)."""

from __future__ import annotations

import argparse

from lmforge.config import Config, set_value
from lmforge.data.document import SourceOptions
from lmforge.data.prepare import prepare
from lmforge.errors import LmforgeError
from lmforge.train.metrics import log


def prepare_command(args: argparse.Namespace, *, overrides: dict[str, str]) -> int:
    if args.tokenizer_from is not None and (args.tokenizer or args.vocab_size is not None):
        raise LmforgeError("--tokenizer-from gives the tokenizer; drop --tokenizer and "
                           "--vocab-size, or drop --tokenizer-from to train one")
    if args.vocab_size is not None and args.vocab_size < 1:
        raise LmforgeError(f"--vocab-size must be positive, got {args.vocab_size}")
    if not 0.0 < args.val_fraction < 1.0:
        raise LmforgeError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if args.workers < 0:
        raise LmforgeError(f"--workers must be 0 (one per core) or more, got {args.workers}")
    cfg = Config()
    for key, value in overrides.items():
        if not key.startswith("clean."):
            raise LmforgeError(f"prepare takes --clean.* options, not --{key}")
        set_value(cfg, key, value)
    prepare(args.data, args.out, tokenizer=args.tokenizer or "bpe",
            vocab_size=8192 if args.vocab_size is None else args.vocab_size,
            val_fraction=args.val_fraction, clean=cfg.clean, workers=args.workers,
            options=SourceOptions(text_field=args.text_field, split=args.split),
            shard_tokens=args.shard_tokens, log=log, progress=not args.no_progress,
            tokenizer_from=args.tokenizer_from)
    return 0
