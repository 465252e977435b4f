"""Time to quality: how long the fast recipes take to reach nanoGPT's validation loss.

On character-level tinyshakespeare split by position as nanoGPT does (first 90% train),
each recipe is trained by a real `lmforge train RECIPE` subprocess, and its wall time is the
whole command's, start to finish (imports, data checks, training, the final evaluation,
saving, the sample). The validation loss is the one that command reports at its end, on the
whole validation split (the recipes set eval.batches=0), not a sample of it.

Recipes: every configs/*_fast.toml (shakespeare_char_fast first, the recipe that copies
nanoGPT's size). Beside them, in the same run, the yardstick: nanoGPT's CPU recipe
(`shakespeare_char`, 2,000 steps in float32, as nanoGPT computes; its full validation loss
is measured afterwards with `lmforge eval`, not timed). Each ratio is a recipe's wall time
over the yardstick's: gpt_ratio the quickest GPT recipe's at or under the target loss,
best_ratio the quickest of any architecture's. startup_s is the slowest fast recipe's time from
process start to the end of its first step, as its metrics.jsonl records it.

    python benchmarks/time_to_loss.py [--data PATH] [--target 1.886] [--no-yardstick]

Ends with: RESULT gpt_ratio=… best_ratio=… startup_s=… nanogpt_wall_s=… nanogpt_val_loss=…
gpt_recipe=… gpt_wall_s=… gpt_val_loss=… best_recipe=… best_wall_s=… best_val_loss=…
"""

from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from pathlib import Path
from typing import NamedTuple

from common import DEFAULT_DATA, ROOT, lmforge, prepare_char

GPT = "shakespeare_char_fast"
YARDSTICK = "shakespeare_char"  # nanoGPT's CPU recipe


def fast_recipes() -> list[str]:
    """shakespeare_char_fast first, then every other configs/*_fast.toml by name."""
    others = sorted(p.stem for p in (ROOT / "configs").glob("*_fast.toml") if p.stem != GPT)
    return [GPT, *others]


def train(recipe: str, *overrides: str, data: Path, out: Path) -> tuple[float, Path]:
    """(wall seconds of `lmforge train RECIPE`, its run directory)."""
    run = out / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    lmforge("train", recipe, f"--data.path={data}", f"--run.dir={run}", "--train.progress=false",
            *overrides, capture=True)
    return time.perf_counter() - start, run


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


class Fast(NamedTuple):
    wall_s: float  # the whole command
    val_loss: float  # its final evaluation, on the whole validation split
    startup_s: float  # from process start to the end of its first step (metrics.jsonl)
    arch: str  # model.arch: gpt, or a recurrent net


def fast(recipe: str, *, data: Path, out: Path) -> Fast:
    """A fast recipe's wall time, final validation loss, start-up and architecture."""
    wall, run = train(recipe, data=data, out=out)
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["eval"]["batches"] == 0, f"{recipe} must evaluate on the whole validation split"
    return Fast(wall, records(run, "eval")[-1]["val_loss"],
                records(run, "train")[0]["startup_s"], config["model"]["arch"])


def yardstick(*, data: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, full validation loss) of nanoGPT's recipe in float32."""
    wall, run = train(YARDSTICK, "--train.precision=fp32", data=data, out=out)
    full = json.loads(lmforge("eval", str(run), "--json", "--batch-size", "64",
                              capture=True).stdout)
    return wall, full["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--target", type=float, default=1.886, help="validation loss to reach")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "time_to_loss")
    parser.add_argument("--no-yardstick", action="store_true",
                        help="leave out nanoGPT's recipe (about 90 s; no ratios then)")
    args = parser.parse_args()
    data = prepare_char(args.data, args.out)
    recipes = fast_recipes()
    results: dict[str, Fast] = {}
    for recipe in recipes:
        results[recipe] = r = fast(recipe, data=data, out=args.out)
        mark = "reached" if r.val_loss <= args.target else "MISSED"
        print(f"{recipe:24s} {r.wall_s:6.1f} s  full validation loss {r.val_loss:.4f}  "
              f"({mark} {args.target}; first step {r.startup_s:.2f} s after start)")
    base_wall, base_loss = (math.nan, math.nan) if args.no_yardstick else yardstick(
        data=data, out=args.out)
    print(f"{YARDSTICK + ' (fp32)':24s} {base_wall:6.1f} s  full validation loss {base_loss:.4f}"
          "  (nanoGPT's recipe)")
    best, gpt = fastest(results, args.target), fastest(results, args.target, arch="gpt")
    startup = max(r.startup_s for r in results.values())
    print(f"ratios to nanoGPT's recipe: GPT ({gpt}) {results[gpt].wall_s / base_wall:.2f}, any "
          f"architecture ({best}) {results[best].wall_s / base_wall:.2f}; the slowest first step "
          f"{startup:.2f} s after start")
    print(f"RESULT gpt_ratio={results[gpt].wall_s / base_wall:.3f} "
          f"best_ratio={results[best].wall_s / base_wall:.3f} startup_s={startup:.2f} "
          f"nanogpt_wall_s={base_wall:.1f} nanogpt_val_loss={base_loss:.4f} gpt_recipe={gpt} "
          f"gpt_wall_s={results[gpt].wall_s:.1f} gpt_val_loss={results[gpt].val_loss:.4f} "
          f"best_recipe={best} best_wall_s={results[best].wall_s:.1f} "
          f"best_val_loss={results[best].val_loss:.4f}")


def fastest(results: dict[str, Fast], target: float, arch: str | None = None) -> str:
    """The quickest recipe (of `arch`, if given) at or under the target loss; if none
    reached it, the quickest of them all, whose loss then shows the miss."""
    mine = {k: r for k, r in results.items() if arch is None or r.arch == arch}
    reached = {k: r for k, r in mine.items() if r.val_loss <= target} or mine
    return min(reached, key=lambda k: reached[k].wall_s)

if __name__ == "__main__":
    main()
