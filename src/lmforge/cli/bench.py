"""`lmforge bench`: time training steps of a recipe: tokens/s, MFU, memory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lmforge.cli.options import add_config_options, add_recipe_argument

HELP = "time training steps of a recipe: tokens/s, MFU, memory"
USAGE = "lmforge bench [RECIPE] [--steps N] [--warmup N] [--json] [--SECTION.FIELD=VALUE ...]"
DESCRIPTION = ("Build the recipe's model, optimizer and data as `lmforge train` does, run "
               "--warmup steps, time --steps steps and print tokens/s, time per step, MFU "
               "against the device's peak (re-measured by a matmul probe, the median of 5; "
               "cached only when the machine is not busy; an MFU above 100% shows a wrong peak "
               "and is printed as n/a with the reason, null in --json) and peak memory. "
               "Nothing is saved.")
OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_argument(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_config_options(p)


def run(args: argparse.Namespace) -> int:
    from lmforge.train.bench import bench, describe

    result = bench(args.recipe, overrides=args.overrides, steps=args.steps, warmup=args.warmup)
    print(json.dumps(dataclasses.asdict(result), indent=2) if args.json else describe(result))
    sys.stdout.flush()
    return 0
