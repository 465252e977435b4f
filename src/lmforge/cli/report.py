"""`lmforge report`: the HTML report of one run, or of several overlaid."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "an HTML report of one run, or of several overlaid"
OVERRIDES = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for report.html and its figures/ (default: the run itself; "
                        "for several runs, compare-A-B-… beside the first one)")


def run(args: argparse.Namespace) -> int:
    from lmforge.runs.report import write_report

    print(write_report(args.runs, out=args.out))
    return 0
