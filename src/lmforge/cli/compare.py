"""`lmforge compare`: several recipes on the same data for the same budget; a table and a plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmforge.cli.options import add_config_options
from lmforge.console import log

HELP = ("train several recipes on the same data for the same budget; print a table and plot "
        "validation bits per byte")
USAGE = ("lmforge compare [RECIPE ...] --data DATA [--minutes M | --tokens N] [--out DIR] "
         "[--SECTION.FIELD=VALUE ...]")
DESCRIPTION = ("Train each recipe (default: shakespeare_char and lstm_char) in its own run "
               "directory OUT/RECIPE on the same data and budget, evaluate each best checkpoint "
               "on the whole validation split, print a table and save OUT/compare.png and "
               "OUT/compare.json. --SECTION.FIELD overrides apply to every recipe.")
OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="*", metavar="RECIPE",
                   help="TOML recipes or shipped recipe names (default: shakespeare_char lstm_char)")
    p.add_argument("--data", required=True,
                   help="a prepared dataset directory, or a corpus to prepare into OUT/data "
                        "(anything `lmforge prepare --data` takes)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget: each recipe trains until its own train.max_steps or "
                        "for this many minutes, whichever comes first (default: 5)")
    p.add_argument("--tokens", type=int, default=None,
                   help="token budget: each recipe trains for as many steps as read this many "
                        "tokens, its learning-rate schedule fitted to them")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the runs, the table and the plot (default: runs/compare, "
                        "numbered if taken)")
    p.add_argument("--tokenizer", default="char", choices=("bpe", "char", "byte"),
                   help="tokenizer when --data must be prepared first (default: char)")
    add_config_options(p)


def run(args: argparse.Namespace) -> int:
    """The table on stdout, the progress of each run on stderr; inputs are checked before
    torch is imported."""
    from lmforge.runs.compare import check_budget, compare, table

    budget = check_budget(args.minutes, args.tokens)
    out, rows = compare(args.recipes, data=args.data, out=args.out, budget=budget,
                        tokenizer=args.tokenizer, overrides=args.overrides, log=log)
    print(table(rows))
    print(f"\nruns, compare.json and compare.png in {out}")
    sys.stdout.flush()
    return 0
