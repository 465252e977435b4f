"""`lmforge verify-resume`: does a killed and resumed run of a recipe train exactly as one
that never stopped?"""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.options import add_config_options, add_recipe_argument

HELP = ("check that a killed and resumed run of a recipe trains exactly as one that never "
        "stopped")
USAGE = "lmforge verify-resume [RECIPE] [--steps N] [--SECTION.FIELD=VALUE ...]"
DESCRIPTION = ("Train --steps steps of the recipe (with the usual --section.field overrides) "
               "twice in a temporary directory, as `lmforge train` subprocesses: straight, and "
               "killed with SIGKILL after a checkpoint in the middle, then resumed. Compare the "
               "per-step losses bit for bit. Exit code 0 when they match, 1 when not (the first "
               "step that differs and by how much are printed) or a run failed. Nothing is kept.")
OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_argument(p)
    p.add_argument("--steps", type=int, default=40,
                   help="steps of each run; the kill comes after the checkpoint at half of them "
                        "(default: 40)")
    add_config_options(p)


def run(args: argparse.Namespace) -> int:
    from lmforge.runs.verify_resume import RunFailed, verify_resume

    try:
        return verify_resume(args.recipe, overrides=args.overrides, steps=args.steps)
    except RunFailed as err:
        print(f"lmforge verify-resume: {err}", file=sys.stderr)
        return 1
