"""Carry-over: whether the fast recipes beat nanoGPT's recipe on corpora other than
tinyshakespeare, which they were tuned on.

Three character-level corpora of about tinyshakespeare's size (1,115,394 characters), each
built deterministically, written to OUT/corpora/NAME.txt and prepared with `lmforge prepare
--tokenizer char` (one file: split by position, first 90% train, as nanoGPT does):

- shakespeare: tinyshakespeare.txt as is;
- reuters: the bodies of the Reuters-21578 stories that have a title and a body, read with
  lmforge's own reader (lmforge.data.reuters: files in name order, stories in file order),
  joined with blank lines and cut at the story boundary nearest the size;
- python: the .py files at the top of the running interpreter's standard library, in name
  order (any that is not UTF-8 left out), joined and cut at the file boundary nearest the
  size.

On each, every recipe is trained by a real `lmforge train RECIPE` subprocess, and its wall
time is the whole command's. The yardstick is nanoGPT's CPU recipe (`shakespeare_char`,
2,000 steps in float32; its bits per byte on the whole validation split are measured
afterwards with `lmforge eval`, not timed). The fast recipes are every configs/*_fast.toml,
unchanged but for their data and run directory: each keeps its own max_steps on every
corpus, and a step costs about the same on each (only the vocabulary differs: 65, 83 and 96
characters here), so the wall times printed beside the figures show that each kept the budget it
has on tinyshakespeare. Their figure is the one their final evaluation records, on the whole
validation split (the recipes set eval.batches=0). Bits per byte, not loss per character,
so that the figures compare across corpora whatever their bytes per character (all three
are ASCII with Python 3.11's standard library, where the two agree but for a factor ln 2).

    python benchmarks/carry_over.py [--corpora shakespeare,reuters,python] [--recipes NAME,...]
        [--data PATH] [--reuters PATH] [--no-yardstick] [--yardstick-steps 2000] [--out DIR]

Ends with one line, per corpus C its yardstick's and best fast recipe's bits per byte and
which recipe that was, then whether every fast recipe beat the yardstick on every corpus
and the smallest margin by which one did (negative: the worst miss), and where:
RESULT C_nanogpt_bpb=… C_best_bpb=… C_best_recipe=… … beats_all=1|0 worst_margin_bpb=…
worst=RECIPE@CORPUS
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from common import DEFAULT_DATA, ROOT, lmforge, prepare_char_text
from time_to_loss import YARDSTICK, fast_recipes, records, train

from lmforge.data import reuters
from lmforge.data.formats import SourceStats, open_stream

CORPORA = ("shakespeare", "reuters", "python")
TARGET_CHARS = 1_115_394  # tinyshakespeare's length
DEFAULT_REUTERS = ROOT.parent / "shared" / "data" / "reuters21578.tar.gz"
YARDSTICK_ROW = f"{YARDSTICK} (fp32)"


class Result(NamedTuple):
    bpb: float  # bits per byte on the whole validation split
    wall_s: float  # the whole `lmforge train` command


# --- the corpora ----------------------------------------------------------------------------


def cut_near(pieces: Iterable[str], sep: str, target: int = TARGET_CHARS) -> str:
    """The pieces joined by `sep`, up to the boundary between two nearest to `target`
    characters (reads no further than the piece that crosses it)."""
    kept: list[str] = []
    size = 0
    for piece in pieces:
        grown = size + (len(sep) if kept else 0) + len(piece)
        if grown > target:
            if not kept or grown - target < target - size:
                kept.append(piece)
            break
        kept.append(piece)
        size = grown
    return sep.join(kept)


def reuters_bodies(tarball: Path) -> Iterator[str]:
    """The body of each story with a title and a body (a BRIEF story is a title alone, an
    UNPROC one a raw table), in the corpus's order; lmforge's reader gives a story's text
    as its title, a blank line and its body."""
    with open_stream(tarball) as stream:
        files = reuters.members(stream, str(tarball))
    stats = SourceStats()
    for name, data in files:
        for doc in reuters.parse(data, source=name, split="", stats=stats):
            title = doc.meta["title"]
            if title and doc.text.startswith(title + "\n\n"):
                yield doc.text[len(title) + 2:]


def python_sources(stdlib: Path) -> Iterator[str]:
    """The text of each .py file at the top of `stdlib`, in name order, but those not UTF-8."""
    for path in sorted(p for p in stdlib.glob("*.py") if p.is_file()):
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def reuters_corpus(tarball: Path, target: int = TARGET_CHARS) -> str:
    return cut_near(reuters_bodies(tarball), "\n\n", target)


def python_corpus(stdlib: Path | None = None, target: int = TARGET_CHARS) -> str:
    stdlib = stdlib or Path(sysconfig.get_paths()["stdlib"])
    return cut_near(python_sources(stdlib), "\n", target)


def corpus_text(name: str, args: argparse.Namespace) -> str:
    if name == "shakespeare":
        return args.data.read_text(encoding="utf-8")
    return reuters_corpus(args.reuters) if name == "reuters" else python_corpus()


def check_data(corpora: list[str], args: argparse.Namespace) -> None:
    """Stop before any training when a corpus's source is missing."""
    if "shakespeare" in corpora and not args.data.is_file():
        sys.exit(f"tinyshakespeare.txt not found at {args.data}; pass --data PATH")
    if "reuters" in corpora and not args.reuters.is_file():
        sys.exit(f"reuters21578.tar.gz not found at {args.reuters}; pass --reuters PATH")


def prepare(name: str, args: argparse.Namespace) -> Path:
    """The corpus written to OUT/corpora/NAME.txt and prepared into OUT/NAME_char."""
    text_file = args.out / "corpora" / f"{name}.txt"
    text_file.parent.mkdir(parents=True, exist_ok=True)
    text = corpus_text(name, args)
    text_file.write_text(text, encoding="utf-8", newline="")
    print(f"{name}: {len(text):,} characters, {len(text.encode()):,} bytes in {text_file}")
    return prepare_char_text(text_file, args.out, f"{name}_char")


# --- the runs -------------------------------------------------------------------------------


def yardstick(data: Path, out: Path, steps: int | None) -> Result:
    """nanoGPT's recipe in float32; bits per byte of its last checkpoint, whole split."""
    fewer = [f"--train.max_steps={steps}", f"--optim.decay_steps={steps}"] if steps else []
    wall, run = train(YARDSTICK, "--train.precision=fp32", *fewer, data=data, out=out)
    full = json.loads(lmforge("eval", str(run), "--json", "--batch-size", "64",
                              capture=True).stdout)
    return Result(full["bits_per_byte"], wall)


def fast(recipe: str, data: Path, out: Path, steps: int | None) -> Result:
    """A fast recipe as shipped; bits per byte of its final evaluation, whole split."""
    fewer = [f"--train.max_steps={steps}"] if steps else []
    wall, run = train(recipe, *fewer, data=data, out=out)
    config = (run / "config.toml").read_text()
    assert "batches = 0" in config, f"{recipe} must evaluate on the whole validation split"
    return Result(records(run, "eval")[-1]["val_bpb"], wall)


def run_corpus(name: str, recipes: list[str], args: argparse.Namespace) -> dict[str, Result]:
    """Each recipe's result on one corpus, the yardstick's (unless left out) first."""
    data, out = prepare(name, args), args.out / "runs" / name
    results = {}
    if not args.no_yardstick:
        results[YARDSTICK_ROW] = yardstick(data, out, args.yardstick_steps)
    for recipe in recipes:
        results[recipe] = fast(recipe, data, out, args.max_steps)
    for row, result in results.items():
        print(f"  {row:24s} {result.bpb:.4f} bits/byte  {result.wall_s:6.1f} s")
    return results


# --- the report -----------------------------------------------------------------------------


def table(results: dict[str, dict[str, Result]]) -> str:
    """Rows: recipes (the yardstick first); columns: corpora; cells: bpb (wall s)."""
    corpora = list(results)
    rows = list(next(iter(results.values())))
    lines = ["bits per byte on the whole validation split (wall time of the whole command)",
             f"{'recipe':24s}" + "".join(f"{c:>20s}" for c in corpora)]
    for row in rows:
        cells = (f"{results[c][row].bpb:.4f} ({results[c][row].wall_s:.1f} s)" for c in corpora)
        lines.append(f"{row:24s}" + "".join(f"{cell:>20s}" for cell in cells))
    return "\n".join(lines)


def margins(results: dict[str, dict[str, Result]]) -> dict[tuple[str, str], float]:
    """(recipe, corpus) -> the yardstick's bpb less the recipe's (above 0: it beat it)."""
    return {(recipe, corpus): runs[YARDSTICK_ROW].bpb - result.bpb
            for corpus, runs in results.items() if YARDSTICK_ROW in runs
            for recipe, result in runs.items() if recipe != YARDSTICK_ROW}


def verdict(corpus: str, runs: dict[str, Result]) -> str:
    base = runs[YARDSTICK_ROW].bpb
    parts = [f"{recipe} {'beats' if base > r.bpb else 'MISSES'} it by {abs(base - r.bpb):.4f}"
             for recipe, r in runs.items() if recipe != YARDSTICK_ROW]
    return f"{corpus}: nanoGPT's recipe {base:.4f}; " + ", ".join(parts)


def result_line(results: dict[str, dict[str, Result]]) -> str:
    fields = []
    for corpus, runs in results.items():
        base = runs.get(YARDSTICK_ROW, Result(math.nan, math.nan)).bpb
        fast_runs = {r: v for r, v in runs.items() if r != YARDSTICK_ROW}
        best = min(fast_runs, key=lambda r: fast_runs[r].bpb) if fast_runs else "none"
        best_bpb = fast_runs[best].bpb if fast_runs else math.nan
        fields += [f"{corpus}_nanogpt_bpb={base:.4f}", f"{corpus}_best_bpb={best_bpb:.4f}",
                   f"{corpus}_best_recipe={best}"]
    found = margins(results)
    if found:
        worst = min(found, key=found.__getitem__)
        fields += [f"beats_all={int(found[worst] > 0)}", f"worst_margin_bpb={found[worst]:.4f}",
                   f"worst={worst[0]}@{worst[1]}"]
    else:
        fields += ["beats_all=nan", "worst_margin_bpb=nan", "worst=none"]
    return "RESULT " + " ".join(fields)


# --- the command line -----------------------------------------------------------------------


def chosen(value: str, known: list[str], option: str) -> list[str]:
    """NAME[,NAME] of an option, in the order of `known`; an unknown name ends the run."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        what = f"no such name: {', '.join(unknown)}" if unknown else "give at least one name"
        sys.exit(f"{option}: {what} (have: {', '.join(known)})")
    return [k for k in known if k in names]


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpora", default=",".join(CORPORA), help="a subset of " + ",".join(CORPORA))
    p.add_argument("--recipes", default=None, help="a subset of the fast recipes (default: all)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    p.add_argument("--reuters", type=Path, default=DEFAULT_REUTERS, help="reuters21578.tar.gz")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "carry_over")
    p.add_argument("--no-yardstick", action="store_true",
                   help="leave out nanoGPT's recipe (about 90 s a corpus; no verdicts then)")
    p.add_argument("--yardstick-steps", type=int, default=None,
                   help="nanoGPT's recipe's steps (default: its own, 2000); for quick checks")
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # smoke runs
    return p.parse_args()


def main() -> None:
    args = arguments()
    corpora = chosen(args.corpora, list(CORPORA), "--corpora")
    recipes = chosen(args.recipes or ",".join(fast_recipes()), fast_recipes(), "--recipes")
    check_data(corpora, args)
    results = {}
    for corpus in corpora:
        results[corpus] = run_corpus(corpus, recipes, args)
    print()
    print(table(results))
    if not args.no_yardstick:
        print("\n".join(verdict(corpus, runs) for corpus, runs in results.items()))
    print(result_line(results))


if __name__ == "__main__":
    main()
