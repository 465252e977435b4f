"""The fault suite: kills, corrupted checkpoints and hostile input, with real processes.

1. Kills: for a GPT and an LSTM, a straight run, then the same run killed with SIGKILL at
   --kills random steps (each resumed with `lmforge train --resume`). Counted: runs that
   completed, steps lost beyond the last checkpoint (a resume must start at the newest
   checkpoint written before the kill), and whether every per-step loss equals the straight
   run's bit for bit.
2. Corruption: a byte flipped in the newest checkpoint's weights; the resume must detect it
   and fall back to the previous checkpoint.
3. Hostile input (benchmarks/hostile.py): every numeric config field at its extremes,
   damaged and hostile corpora, datasets, run directories, checkpoints and model
   directories (one with a pickle that would run code), out-of-range arguments, markup
   names, two writers on one run or dataset, a full disk while training and preparing, a
   run stopped during start-up. Each must end in exit 0 or in exit 2 with one error line,
   never a traceback; no user file may be lost, no payload may run.
4. Checkpoint overhead: the time of one save over the training time between two saves at
   the default interval (checkpoint.every of the default recipe), measured in-process on
   the default recipe's model (4 x 256) over a small character-level corpus.

    python benchmarks/faults.py [--kills 3] [--seed 0]

Ends with: RESULT kills=… completed=… steps_lost=… bit_exact=… corrupt_detected=… inputs=…
one_line_errors=… accepted=… tracebacks=… data_lost=… code_executed=… checkpoint_overhead=…
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from hostile import hostile_suite

STDLIB = Path(sysconfig.get_paths()["stdlib"])
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--model.n_layer=2", "--model.n_embd=32", "--model.block_size=32", "--train.batch_size=4",
        "--train.log_every=1", "--train.progress=false", "--eval.every=40", "--eval.batches=2",
        "--eval.samples=0", "--eval.samples_at_eval=0", "--checkpoint.every=20",
        "--checkpoint.keep_last=10", "--optim.warmup_steps=10", "--model.dropout=0.1",
        "--data.path=data", "--data.source=", "--train.report=false",
        "--log.to=none", "--train.threads=1"]
MODELS = {"gpt": ["--model.n_head=2"], "lstm": ["--model.arch=lstm"]}
STEPS = 120


def lmforge(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lmforge", *args], cwd=cwd, text=True,
                          capture_output=True, env=ENV, timeout=600)
    if check and proc.returncode:
        sys.exit(f"lmforge {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines[-3:] if x.endswith("}")]
    return max(steps, default=0)


def latest_step(run: Path) -> int:
    """The step of the checkpoint `latest` points at (what a resume must start from)."""
    pointer = run / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[1]) if pointer.is_file() else 0


def killed_run(work: Path, name: str, args: list[str], kill_at: list[int]) -> tuple[bool, int]:
    """Train, SIGKILL at each step of kill_at (resuming after each), finish; (completed,
    steps lost beyond the last checkpoint)."""
    run, lost, saved = work / "runs" / name, 0, None
    cmd = ["train", *args, f"--run.dir=runs/{name}"]
    for attempt in range(len(kill_at) + 1):
        log = work / f"{name}-{attempt}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "lmforge", *cmd], cwd=work, env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=err)
            if attempt < len(kill_at):
                while logged_step(run) < kill_at[attempt] and proc.poll() is None:
                    time.sleep(0.002)
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if saved is not None:  # this attempt resumed: from the newest checkpoint?
            said = re.search(r"resumed from .* at step (\d+)", log.read_text())
            start = int(said.group(1)) if said else 0
            lost += max(0, saved - start)
        saved = latest_step(run)
        cmd = ["train", "--resume", f"runs/{name}"]
    return proc.returncode == 0 and logged_step(run) == STEPS, lost


def corruption_detected(work: Path) -> bool:
    """Flip a byte in the newest checkpoint's weights; the resume must say so and start
    from the checkpoint before it."""
    lmforge("train", *TINY, *MODELS["gpt"], "--train.max_steps=40", "--run.dir=runs/corrupt",
            cwd=work)
    weights = work / "runs" / "corrupt" / "checkpoints" / "step_00000040" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = lmforge("train", "--resume", "runs/corrupt", "--train.max_steps=60", cwd=work,
                   check=False)
    return proc.returncode == 0 and "step_00000020" in proc.stderr


def checkpoint_overhead() -> float:
    """One save's time over the training time between two saves, default recipe and model."""
    from lmforge.config import TokenizerConfig, load_config
    from lmforge.data.prepare import prepare
    from lmforge.plan import local_plan
    from lmforge.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare([str(STDLIB / "json" / "*.py")], data, tokenizer=TokenizerConfig("char"),
                log=lambda _: None)
        cfg = load_config("default", {"data.path": str(data), "log.to": "none"})
        trainer = Trainer(local_plan(cfg, Path(tmp) / "run"))
        for _ in range(3):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(10):
            trainer.train_step()
        step_s = (time.perf_counter() - start) / 10
        start = time.perf_counter()
        for _ in range(3):
            trainer.counters.step += 1
            trainer.save()
        save_s = (time.perf_counter() - start) / 3
    print(f"checkpoint: {save_s:.2f} s per save, {step_s * 1e3:.0f} ms per step, a save every "
          f"{cfg.checkpoint.every} steps")
    return save_s / (save_s + cfg.checkpoint.every * step_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per killed run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="lmforge-faults-") as tmp:
        work = Path(tmp)
        lmforge("prepare", "--data", str(STDLIB / "json" / "*.py"), "--tokenizer", "char",
                "--out", "data", cwd=work)
        kills = completed = lost = exact = 0
        for name, extra in MODELS.items():
            run_args = [*TINY, *extra, f"--train.max_steps={STEPS}"]
            lmforge("train", *run_args, f"--run.dir=runs/{name}-straight", cwd=work)
            kill_at = sorted(rng.sample(range(25, STEPS - 5), args.kills))
            done, steps_lost = killed_run(work, f"{name}-killed", run_args, kill_at)
            same = losses(work / "runs" / f"{name}-killed") == losses(work / "runs" / f"{name}-straight")
            kills, completed = kills + len(kill_at), completed + done
            lost, exact = lost + steps_lost, exact + same
            print(f"{name}: killed at steps {kill_at}; completed {done}; steps lost beyond the "
                  f"last checkpoint {steps_lost}; losses bit-identical to the straight run: {same}")
        corrupt = corruption_detected(work)
        print(f"corrupted checkpoint detected and the previous one used: {corrupt}")
        tally = hostile_suite(work, [*TINY, *MODELS["gpt"]])
        for failure in tally.failures:
            print(f"  FAILED: {failure}")
        print(f"hostile suite: {tally.result()}")
    overhead = checkpoint_overhead()
    print(f"RESULT kills={kills} completed={completed}/{len(MODELS)} steps_lost={lost} "
          f"bit_exact={exact}/{len(MODELS)} corrupt_detected={int(corrupt)} {tally.result()} "
          f"checkpoint_overhead={overhead:.4f}")


if __name__ == "__main__":
    main()
