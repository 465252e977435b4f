"""Time to quality: how long the fast recipes take to reach nanoGPT's validation loss.

On character-level tinyshakespeare split by position as nanoGPT does (first 90% train),
each recipe is trained by a real `lmforge train RECIPE` subprocess, and its wall time is the
whole command's, start to finish (imports, data checks, training, the final evaluation,
saving, the sample). The validation loss is the one that command reports at its end, on the
whole validation split (the recipes set eval.batches=0), not a sample of it.

Recipes: shakespeare_char_fast (the GPT) and every other *_fast recipe shipped in configs/;
the best is the fastest one at or under the target loss.

    python benchmarks/time_to_loss.py [--data PATH] [--target 1.886]

Ends with: RESULT gpt_wall_s=… gpt_val_loss=… best_recipe=… best_wall_s=… best_val_loss=…
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import DEFAULT_DATA, ROOT, lmforge, prepare_char

GPT = "shakespeare_char_fast"


def train(recipe: str, *, data: Path, out: Path) -> tuple[float, float]:
    """(wall seconds of `lmforge train`, its final validation loss on the whole split)."""
    run = out / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    lmforge("train", recipe, f"--data.path={data}", f"--run.dir={run}", "--train.progress=false",
            capture=True)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = (run / "config.toml").read_text()
    assert "batches = 0" in config, f"{recipe} must evaluate on the whole validation split"
    return wall, [r for r in records if r["kind"] == "eval"][-1]["val_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--target", type=float, default=1.886, help="validation loss to reach")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "time_to_loss")
    args = parser.parse_args()
    data = prepare_char(args.data, args.out)
    recipes = [GPT] + sorted(p.stem for p in (ROOT / "configs").glob("*_fast.toml")
                             if p.stem != GPT)
    results = {}
    for recipe in recipes:
        wall, loss = train(recipe, data=data, out=args.out)
        results[recipe] = (wall, loss)
        mark = "reached" if loss <= args.target else "MISSED"
        print(f"{recipe:24s} {wall:6.1f} s  full validation loss {loss:.4f}  ({mark} {args.target})")
    reached = {r: v for r, v in results.items() if v[1] <= args.target} or results
    best = min(reached, key=lambda r: reached[r][0])
    gpt_wall, gpt_loss = results[GPT]
    print(f"RESULT gpt_wall_s={gpt_wall:.1f} gpt_val_loss={gpt_loss:.4f} best_recipe={best} "
          f"best_wall_s={results[best][0]:.1f} best_val_loss={results[best][1]:.4f}")


if __name__ == "__main__":
    main()
