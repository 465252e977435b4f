"""Time to quality: how long the fast recipes take to reach nanoGPT's validation loss.

On character-level tinyshakespeare split by position as nanoGPT does (first 90% train),
each recipe is trained by a real `lmforge train RECIPE` subprocess, and its wall time is the
whole command's, start to finish (imports, data checks, training, the final evaluation,
saving, the sample). The validation loss is the one that command reports at its end, on the
whole validation split (the recipes set eval.batches=0), not a sample of it.

Recipes: shakespeare_char_fast (the GPT) and every other *_fast recipe shipped in configs/;
the best is the fastest one at or under the target loss. Beside them, in the same run, the
yardstick: nanoGPT's CPU recipe (`shakespeare_char`, 2,000 steps in float32, as nanoGPT
computes; its full validation loss is measured afterwards with `lmforge eval`, not timed).
Each ratio is a recipe's wall time over the yardstick's; startup_s is the GPT recipe's time
from process start to the end of its first step, as its metrics.jsonl records it.

    python benchmarks/time_to_loss.py [--data PATH] [--target 1.886] [--no-yardstick]

Ends with: RESULT gpt_ratio=… best_ratio=… startup_s=… nanogpt_wall_s=… nanogpt_val_loss=…
gpt_wall_s=… gpt_val_loss=… best_recipe=… best_wall_s=… best_val_loss=…
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from common import DEFAULT_DATA, ROOT, lmforge, prepare_char

GPT = "shakespeare_char_fast"
YARDSTICK = "shakespeare_char"  # nanoGPT's CPU recipe


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


def fast(recipe: str, *, data: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, the final validation loss on the whole split) of a fast recipe."""
    wall, run = train(recipe, data=data, out=out)
    config = (run / "config.toml").read_text()
    assert "batches = 0" in config, f"{recipe} must evaluate on the whole validation split"
    return wall, records(run, "eval")[-1]["val_loss"]


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
    recipes = [GPT] + sorted(p.stem for p in (ROOT / "configs").glob("*_fast.toml")
                             if p.stem != GPT)
    results = {}
    for recipe in recipes:
        wall, loss = fast(recipe, data=data, out=args.out)
        results[recipe] = (wall, loss)
        mark = "reached" if loss <= args.target else "MISSED"
        print(f"{recipe:24s} {wall:6.1f} s  full validation loss {loss:.4f}  ({mark} {args.target})")
    startup = records(sorted(args.out.glob(f"{GPT}-*"))[-1], "train")[0]["startup_s"]
    base_wall, base_loss = (math.nan, math.nan) if args.no_yardstick else yardstick(
        data=data, out=args.out)
    print(f"{YARDSTICK + ' (fp32)':24s} {base_wall:6.1f} s  full validation loss {base_loss:.4f}"
          "  (nanoGPT's recipe)")
    reached = {r: v for r, v in results.items() if v[1] <= args.target} or results
    best = min(reached, key=lambda r: reached[r][0])
    gpt_wall, gpt_loss = results[GPT]
    print(f"ratios to nanoGPT's recipe: {GPT} {gpt_wall / base_wall:.2f}, best ({best}) "
          f"{results[best][0] / base_wall:.2f}; {GPT} first step {startup:.1f} s after start")
    print(f"RESULT gpt_ratio={gpt_wall / base_wall:.3f} best_ratio={results[best][0] / base_wall:.3f} "
          f"startup_s={startup:.2f} nanogpt_wall_s={base_wall:.1f} nanogpt_val_loss={base_loss:.4f} "
          f"gpt_wall_s={gpt_wall:.1f} gpt_val_loss={gpt_loss:.4f} best_recipe={best} "
          f"best_wall_s={results[best][0]:.1f} best_val_loss={results[best][1]:.4f}")


if __name__ == "__main__":
    main()
