"""nanoGPT's CPU recipe on character-level tinyshakespeare, through the lmforge CLI.

Runs `lmforge prepare` and then `lmforge train shakespeare_char` twice as real subprocesses,
side by side: in float32 as nanoGPT computes on CPU (`--train.precision=fp32`), and with
the recipe's own precision ('auto': bf16 autocast where the CPU computes in bf16 natively,
float32 elsewhere). For each it reports the wall time of the training command (start to
finish, as nanoGPT's 67 s in REFERENCE.md is measured), training throughput (over the
whole run), peak resident memory, the final validation loss on 20 batches
(nanoGPT's estimate) and on the full split.

    python benchmarks/shakespeare_char.py [--data PATH] [--steps N]

Ends with one line: RESULT wall_s=… tokens_per_s=… val_loss=… val_loss_full=… peak_rss_mb=…
precision=… fp32_tokens_per_s=… fp32_val_loss_full=… speedup_vs_fp32=… speedup_vs_nanogpt=…
(the last against nanoGPT's ~25,000 tokens/s on this kind of machine, REFERENCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_DATA, ROOT, lmforge, prepare_char

NANOGPT_TOKENS_PER_S = 25_000  # ../shared/REFERENCE.md, the same recipe on a 2-core CPU


def train(data_dir: Path, out: Path, steps: int, *overrides: str) -> dict:
    """One `lmforge train shakespeare_char` subprocess: its figures."""
    run_dir = out / f"shakespeare_char-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cmd = [sys.executable, "-m", "lmforge", "train", "shakespeare_char", f"--data.path={data_dir}",
           f"--run.dir={run_dir}", f"--train.max_steps={steps}", "--train.progress=false",
           *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(cmd)} failed")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    full = json.loads(lmforge("eval", str(run_dir), "--json", "--batch-size", "64",
                              capture=True).stdout)
    return {"wall_s": wall, "tokens_per_s": train_records[-1]["tokens_per_s"],  # whole-run mean
            "precision": train_records[0]["precision"],
            "val_loss": last_eval["val_loss"], "val_loss_full": full["loss"],
            "bits_per_byte": full["bits_per_byte"], "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (recipe: 2000)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    data_dir = prepare_char(args.data, args.out)
    fp32 = train(data_dir, args.out, args.steps, "--train.precision=fp32")
    run = train(data_dir, args.out, args.steps)
    for name, r in (("fp32 (as nanoGPT)", fp32), (f"recipe ({run['precision']})", run)):
        print(f"{name:>22}: {r['wall_s']:5.1f} s start to finish, {r['tokens_per_s']:,.0f} "
              f"tokens/s, val loss {r['val_loss']:.4f} (20 batches), {r['val_loss_full']:.4f} "
              f"(full split, {r['bits_per_byte']:.4f} bits/byte), peak RSS "
              f"{r['peak_rss_mb']:.0f} MiB")
    print(f"RESULT wall_s={run['wall_s']:.1f} tokens_per_s={run['tokens_per_s']:.0f} "
          f"val_loss={run['val_loss']:.4f} val_loss_full={run['val_loss_full']:.4f} "
          f"peak_rss_mb={run['peak_rss_mb']:.0f} precision={run['precision']} "
          f"fp32_tokens_per_s={fp32['tokens_per_s']:.0f} "
          f"fp32_val_loss_full={fp32['val_loss_full']:.4f} "
          f"speedup_vs_fp32={run['tokens_per_s'] / fp32['tokens_per_s']:.2f} "
          f"speedup_vs_nanogpt={run['tokens_per_s'] / NANOGPT_TOKENS_PER_S:.2f}")


if __name__ == "__main__":
    main()
