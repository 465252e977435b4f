"""`lmforge prepare`: clean, split and tokenize a corpus into verified shards.

Its options are the config fields that say how a corpus is prepared (their defaults and
checks are the config's), plus where the text comes from and where the dataset goes.
Preparing never imports torch (over a second of start-up for a command that may take 0.1 s).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.options import add_prepare_options, named_as_typed, prepare_flags
from lmforge.config import Config, set_value, validate_data
from lmforge.console import log
from lmforge.errors import LmforgeError

HELP = "clean, split and tokenize a corpus into verified shards"
OVERRIDES = True  # --clean.* and the prepare options of [data] and [tokenizer]
NAMES = prepare_flags()  # config key → the option prepare gives it


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", action="extend", required=True, metavar="SOURCE",
                   help="files, directories or globs of text (also .gz .bz2 .xz .zst), JSONL, "
                        "Parquet, Reuters-21578 (reuters21578.tar.gz or its .sgm files), "
                        "'stdlib' (the Python standard library), nltk:NAME, hf:NAME[:CONFIG], "
                        "a URL, or 'tinyshakespeare'")
    p.add_argument("--out", required=True, type=Path, help="directory for the prepared dataset")
    p.add_argument("--tokenizer-from", type=Path, metavar="PATH",
                   help="use the tokenizer of a prepared dataset, a run or a tokenizer directory "
                        "instead of training one (to evaluate or fine-tune a model on new text)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on a terminal, no progress lines elsewhere")
    add_prepare_options(p)


def _config(overrides: dict[str, str]) -> Config:
    """The defaults with the options given; a problem is named by the option the user typed."""
    cfg = Config()
    with named_as_typed(NAMES):
        for key, value in overrides.items():
            if not key.startswith("clean.") and key not in NAMES:
                raise LmforgeError(f"prepare takes --clean.* options and "
                                   f"{', '.join(NAMES.values())}, not --{key}")
            set_value(cfg, key, value)
        validate_data(cfg.data, cfg.tokenizer, cfg.clean)
    return cfg


def run(args: argparse.Namespace) -> int:
    given = set(args.overrides)
    if args.tokenizer_from is not None and given & {"tokenizer.kind", "tokenizer.vocab_size"}:
        raise LmforgeError("--tokenizer-from gives the tokenizer; drop --tokenizer and "
                           "--vocab-size, or drop --tokenizer-from to train one")
    cfg = _config(args.overrides)
    from lmforge.data.prepare import prepare

    prepare(args.data, args.out, data=cfg.data, tokenizer=cfg.tokenizer, clean=cfg.clean,
            tokenizer_from=args.tokenizer_from, log=log, progress=not args.no_progress)
    return 0
