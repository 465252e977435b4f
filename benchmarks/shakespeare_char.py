"""nanoGPT's CPU recipe on character-level tinyshakespeare, through the lmforge CLI.

Runs `lmforge prepare` and `lmforge train configs/shakespeare_char.toml` as real
subprocesses and reports the wall time of the training command (start to finish, as
nanoGPT's 67 s in REFERENCE.md is measured), training throughput, peak resident memory,
the final validation loss on 20 batches (nanoGPT's estimate) and on the full split.

    python benchmarks/shakespeare_char.py [--data PATH] [--steps N]

Ends with one line: RESULT wall_s=… tokens_per_s=… val_loss=… val_loss_full=… peak_rss_mb=…
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def lmforge(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lmforge", *args]
    return subprocess.run(cmd, check=True, text=True, capture_output=capture, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (recipe: 2000)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"tinyshakespeare.txt not found at {args.data}; pass --data PATH")

    data_dir = args.out / "shakespeare_char"
    lmforge("prepare", "--data", str(args.data), "--tokenizer", "char", "--out", str(data_dir))
    run_dir = args.out / f"shakespeare_char-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    start = time.perf_counter()
    lmforge("train", "shakespeare_char", f"--data.path={data_dir}", f"--run.dir={run_dir}",
            f"--train.max_steps={args.steps}", "--train.progress=false")
    wall = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in records if r["kind"] == "train"][-1]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    full = json.loads(lmforge("eval", str(run_dir), "--json", "--batch-size", "64",
                              capture=True).stdout)

    print(f"wall time of `lmforge train` (start to finish): {wall:.1f} s")
    print(f"training throughput: {last_train['tokens_per_s']:,.0f} tokens/s")
    print(f"final val loss, 20 batches (nanoGPT's estimate): {last_eval['val_loss']:.4f}")
    print(f"final val loss, full validation split: {full['loss']:.4f} ({full['bits_per_byte']:.4f} bits/byte)")
    print(f"peak resident memory: {peak_rss_mb:.0f} MiB")
    print(f"RESULT wall_s={wall:.1f} tokens_per_s={last_train['tokens_per_s']:.0f} "
          f"val_loss={last_eval['val_loss']:.4f} val_loss_full={full['loss']:.4f} "
          f"peak_rss_mb={peak_rss_mb:.0f}")


if __name__ == "__main__":
    main()
