"""Parallel strategies side by side on this machine's CPUs, in one run.

A GPT of about 11M parameters (6 layers, 384 wide, context 256) on character-level
tinyshakespeare, trained for a fixed number of steps with the same global batch by:
  - one process with 2 threads,
  - DDP, FSDP2 ZeRO-2, FSDP2 ZeRO-3 and tensor parallel, at 2 ranks x 1 thread each,
each a real `lmforge train` (through torchrun for the parallel ones). For each: tokens/s
(training steps only, from the run's metrics), the peak resident memory of the largest
rank, and the bytes of parameters + gradients + optimizer state one rank holds (both from
the record the trainer writes at the end of a run).

    python benchmarks/parallel.py [--steps 30] [--data PATH]

Ends with: RESULT ddp_vs_single=… fsdp3_state_vs_ddp=… fsdp2_state_vs_ddp=… tp_vs_single=…
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL = ["--model.n_layer=6", "--model.n_head=6", "--model.n_embd=384", "--model.block_size=256",
         "--model.dropout=0.0"]
COMMON = ["--train.progress=false", "--train.log_every=1", "--eval.every=0", "--eval.batches=1",
          "--eval.samples=0", "--checkpoint.every=0", "--checkpoint.keep_best=false",
          "--optim.warmup_steps=5", "--log.to=none"]
GLOBAL_BATCH = 8


def train(name: str, out: Path, data: Path, *, steps: int, nproc: int, dp: int,
          extra: list[str]) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    if nproc == 1:
        launch = [sys.executable, "-m", "lmforge", "train", "--train.threads=2"]
        env = dict(os.environ)
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc-per-node={nproc}", "-m", "lmforge", "train", "--train.threads=1"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launch, *MODEL, *COMMON, f"--data.path={data}", "--data.source=",
           f"--train.max_steps={steps}", f"--train.batch_size={GLOBAL_BATCH // dp}",
           f"--run.dir={run_dir}", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=True, env=env)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    state = next(r for r in records if r["kind"] == "state")
    return {"tokens_per_s": train_records[-1]["tokens_per_s"], "loss": train_records[-1]["loss"],
            "state_mb": state["state_bytes_per_rank"] / 2**20,
            "peak_rss_mb": max(state["peak_rss_mb_per_rank"]), "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "parallel")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found; pass --data PATH to a text file")
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = args.out / "data"
    if not (dataset / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "lmforge", "prepare", "--data", str(args.data),
                        "--tokenizer", "char", "--out", str(dataset), "--no-progress"], check=True)

    # (name, processes, data-parallel ranks among them, options); the global batch is the same
    cases = [("single", 1, 1, []), ("ddp", 2, 2, ["--parallel.strategy=ddp"]),
             ("fsdp_zero2", 2, 2, ["--parallel.strategy=fsdp",
                                   "--parallel.reshard_after_forward=false"]),
             ("fsdp_zero3", 2, 2, ["--parallel.strategy=fsdp"]),
             ("tp", 2, 1, ["--parallel.strategy=tp"])]
    results = {}
    for name, nproc, dp, extra in cases:
        r = results[name] = train(name, args.out, dataset, steps=args.steps, nproc=nproc, dp=dp,
                                  extra=extra)
        print(f"{name:>11}: {nproc} process{'es' * (nproc > 1)}, {r['tokens_per_s']:8,.0f} tokens/s, "
              f"model state {r['state_mb']:6.1f} MiB per rank, peak RSS {r['peak_rss_mb']:6.0f} MiB, "
              f"final loss {r['loss']:.4f}, {r['wall_s']:.0f} s", flush=True)
    single, ddp = results["single"], results["ddp"]
    print(f"RESULT ddp_vs_single={ddp['tokens_per_s'] / single['tokens_per_s']:.2f} "
          f"fsdp3_state_vs_ddp={results['fsdp_zero3']['state_mb'] / ddp['state_mb']:.2f} "
          f"fsdp2_state_vs_ddp={results['fsdp_zero2']['state_mb'] / ddp['state_mb']:.2f} "
          f"tp_vs_single={results['tp']['tokens_per_s'] / single['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
