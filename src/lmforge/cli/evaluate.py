"""`lmforge eval`: loss, perplexity and bits per byte of a trained run's checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lmforge.config_checks import BOUNDS, MAX_WINDOWS
from lmforge.errors import LmforgeError

HELP = "loss, perplexity and bits per byte of a trained run"
OVERRIDES = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--split", default="val", help="split of the dataset to evaluate (default: val)")
    p.add_argument("--data", type=Path,
                   help="another prepared dataset with the run's tokenizer (default: the run's own)")
    p.add_argument("--batches", type=int, default=0,
                   help="evaluate this many batches (0: the whole split); a recurrent model "
                        f"reads this many chunks of each stream (batches x batch size: at most "
                        f"{MAX_WINDOWS:,})")
    p.add_argument("--batch-size", type=int, default=16,
                   help="sequences per batch; a recurrent model reads the split as this many "
                        "contiguous streams, carrying its state (default: 16, at most "
                        f"{int(BOUNDS['eval.batch_size'].high):,})")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default), best (when the run kept one: "
                        "checkpoint.keep_best) or a step_NNNNNNNN name")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.batches < 0:
        raise LmforgeError(f"need --batch-size >= 1 and --batches >= 0 (0: the whole split); got "
                           f"--batch-size {args.batch_size} --batches {args.batches}")
    most = int(BOUNDS["eval.batch_size"].high)
    if args.batch_size > most:
        raise LmforgeError(f"--batch-size must be at most {most:,}, got {args.batch_size} "
                           "(sequences of one batch on one device)")
    if args.batches * args.batch_size > MAX_WINDOWS:
        raise LmforgeError(f"--batches {args.batches} of --batch-size {args.batch_size} make "
                           f"{args.batches * args.batch_size:,} windows; at most {MAX_WINDOWS:,} "
                           "(their start offsets are drawn as one array); use --batches 0 to "
                           "evaluate the whole split")
    if _is_classifier(args.run):  # a task run is measured on its task's test examples
        from lmforge.runs.classifier import measure_run

        report = measure_run(args.run)
        print(json.dumps({"all": report.metrics.as_dict(), "top10": report.top.as_dict()})
              if args.json else report.text)
        return 0
    from lmforge.runs.evaluation import evaluate_run

    result = evaluate_run(args.run, which=args.checkpoint, data=args.data, split=args.split,
                          batches=args.batches, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        print(f"{result.run} @ step {result.step}, {result.data} [{result.split}]: loss "
              f"{result.loss:.4f}  perplexity {result.perplexity:.2f}  bits/byte "
              f"{result.bits_per_byte:.4f}")
    return 0


def _is_classifier(run: Path) -> bool:
    from lmforge.rundir import RunDir

    return (RunDir(run).path / "labels.json").is_file()
