"""The recurrent recipes on character-level tinyshakespeare, through the lmforge CLI.

Prepares tinyshakespeare with the char tokenizer (one file: split by position, the first
90% trains and the last 10% validates), trains configs/lstm_char.toml, gru_char.toml and
rnn_char.toml as real subprocesses, each within its recipe's wall-clock budget
(train.max_minutes; --minutes overrides it), and reports for each the wall time of
`lmforge train` (start to finish), its training throughput and the validation loss of
its final model on the full validation split (`lmforge eval`, 16 streams carrying their
hidden state). The target: lstm_char at or below 1.50 within 5 minutes.

    python benchmarks/recurrent.py [--data PATH] [--minutes M] [--archs lstm,gru,rnn]

Ends with one line:
RESULT lstm_val_loss=… lstm_wall_s=… gru_val_loss=… rnn_val_loss=… lstm_tokens_per_s=…
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import DEFAULT_DATA, ROOT, lmforge, prepare_char


def measure(arch: str, *, data_dir: Path, out: Path, minutes: float | None) -> dict[str, float]:
    run_dir = out / f"{arch}_char-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    budget = [f"--train.max_minutes={minutes}"] if minutes else []
    start = time.perf_counter()
    lmforge("train", f"{arch}_char", f"--data.path={data_dir}", f"--run.dir={run_dir}",
            "--train.progress=false", "--eval.samples=0", *budget)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "train"][-1]
    full = json.loads(lmforge("eval", str(run_dir), "--json", capture=True).stdout)
    result = {"wall_s": wall, "tokens_per_s": last["tokens_per_s"], "steps": full["step"],
              "val_loss": full["loss"], "bits_per_byte": full["bits_per_byte"]}
    print(f"{arch}: {result['steps']} steps, {result['tokens_per_s']:,.0f} tokens/s, wall "
          f"{wall:.1f} s; full validation split: loss {full['loss']:.4f}, "
          f"{full['bits_per_byte']:.4f} bits/byte  ({run_dir})", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock budget of each run (default: each recipe's own)")
    parser.add_argument("--archs", default="lstm,gru,rnn", help="recipes <arch>_char to run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    data_dir = prepare_char(args.data, args.out)
    results = {arch: measure(arch, data_dir=data_dir, out=args.out, minutes=args.minutes)
               for arch in args.archs.split(",")}

    def figure(arch: str, key: str, fmt: str) -> str:
        return format(results[arch][key], fmt) if arch in results else "nan"

    print(f"RESULT lstm_val_loss={figure('lstm', 'val_loss', '.4f')} "
          f"lstm_wall_s={figure('lstm', 'wall_s', '.1f')} "
          f"gru_val_loss={figure('gru', 'val_loss', '.4f')} "
          f"rnn_val_loss={figure('rnn', 'val_loss', '.4f')} "
          f"lstm_tokens_per_s={figure('lstm', 'tokens_per_s', '.0f')}")


if __name__ == "__main__":
    main()
