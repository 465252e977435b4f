"""`lmforge verify-resume [RECIPE]`: does a killed and resumed run of this config train exactly
as one that never stopped?

It trains --steps steps of the user's own config (recipe and overrides) twice, in a
temporary directory, each time as real `python -m lmforge train` subprocesses, the code
path users run:

- straight: all the steps in one go;
- killed: the same run, killed with SIGKILL as soon as its checkpoint in the middle is
  complete, then continued with `lmforge train --resume`.

Then it compares the per-step train losses (train.log_every=1) and the validation losses
bit for bit. Exit code 0 when every one matches; 1 when one differs (the first step that
does, and by how much) or a run failed; 2 for bad input, as every lmforge error.

Only what makes the check quick and comparable is changed in the config: the number of
steps, checkpoints in the middle, a loss every step, no samples, report or TensorBoard,
no time limit. Everything else (model, data, optimizer, schedule shape, precision, dropout,
evaluation) is the user's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmforge.config import load_config
from lmforge.console import log
from lmforge.data.prepare import ensure_dataset
from lmforge.errors import LmforgeError
from lmforge.recipes import recipe_path
from lmforge.rundir import RunDir, checkpoint_name

# Settings that make the two runs quick and comparable, whatever the recipe says.
FORCED = {"train.log_every": "1", "train.progress": "false", "log.to": "none",
          "train.report": "false", "train.max_minutes": "0", "eval.samples": "0",
          "eval.samples_at_eval": "0",
          # keep the middle checkpoint whatever else is saved (best checkpoints, the last one)
          "checkpoint.keep_last": "1000"}


class RunFailed(Exception):
    """A training subprocess ended with an error; the message says which and why."""


def _train(args: list[str], log_file: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmforge", "train", *args]
    with open(log_file, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, name: str, log_file: Path) -> None:
    code = proc.wait()
    if code == 0:
        return
    lines = [x for x in log_file.read_text(errors="replace").splitlines() if x.strip()]
    if code == 2 and lines:  # the run's own one-line error: bad input, the user's to fix
        raise LmforgeError(f"the {name} run failed: {lines[-1].split(': error: ', 1)[-1]}")
    tail = "\n".join(lines[-20:])
    raise RunFailed(f"{tail}\nthe {name} run failed (exit code {code}); its output ends above")


def _losses(run: RunDir, kind: str, field: str) -> dict[int, float]:
    records = [json.loads(x) for x in run.metrics.read_text().splitlines() if x.strip()]
    return {r["step"]: r[field] for r in records if r["kind"] == kind}


def first_difference(straight: dict[int, float],
                     resumed: dict[int, float]) -> tuple[int, float | None, float | None] | None:
    """The first step whose value differs in any bit (or is missing from one run), with both
    values; None when all are identical."""
    for step in sorted(set(straight) | set(resumed)):
        a, b = straight.get(step), resumed.get(step)
        if a is None or b is None or float(a).hex() != float(b).hex():
            return step, a, b
    return None


def _describe(what: str, diff: tuple[int, float | None, float | None],
              straight: dict[int, float], resumed: dict[int, float]) -> str:
    step, a, b = diff
    if a is None or b is None:
        return f"{what}: step {step} is missing from the {'straight' if a is None else 'resumed'} run"
    differ = sum(1 for s in straight if s in resumed and float(straight[s]).hex()
                 != float(resumed[s]).hex())
    return (f"{what} differ from step {step}: straight {a!r}, resumed {b!r} (by {abs(a - b):.3g}); "
            f"{differ} of {len(straight)} steps differ")


def verify_resume(recipe: str | None, *, overrides: dict[str, str], steps: int) -> int:
    if steps < 2:
        raise LmforgeError(f"--steps must be at least 2 (the run is killed after a checkpoint "
                           f"in the middle), got {steps}")
    middle = steps // 2
    settings = {**overrides, **FORCED, "train.max_steps": str(steps),
                "checkpoint.every": str(middle)}
    cfg = load_config(recipe, settings)  # bad keys, values and recipes fail here, in one line
    ensure_dataset(cfg, log=log)  # prepared once here, as `lmforge train` would, not in each run
    name = recipe_path(recipe or "default").stem
    base = [recipe] if recipe else []
    args = [*base, *(f"--{k}={v}" for k, v in settings.items() if k != "run.dir")]
    log(f"verify-resume {name}: {steps} steps straight, then again killed (SIGKILL) after the "
        f"checkpoint at step {middle} and resumed")
    with tempfile.TemporaryDirectory(prefix="lmforge-verify-resume-") as tmp:
        straight, killed = RunDir(Path(tmp) / "straight"), RunDir(Path(tmp) / "killed")
        t0 = time.perf_counter()
        _finish(_train([*args, f"--run.dir={straight}"], Path(tmp) / "straight.log"),
                "straight", Path(tmp) / "straight.log")
        log(f"straight run: {steps} steps in {time.perf_counter() - t0:.1f}s")
        killed_log = Path(tmp) / "killed.log"
        how = _killed_after(_train([*args, f"--run.dir={killed}"], killed_log), killed,
                            middle=middle, log_file=killed_log)
        _finish(_train(["--resume", str(killed)], killed_log), "resumed", killed_log)
        log(f"killed run: {how}, resumed from step {middle} to {steps}")
        result = _compare(straight, killed)
    print("resume is exact" if result == 0 else
          "resume is NOT exact: the resumed run differs from the one that never stopped")
    sys.stdout.flush()
    return result


def _killed_after(proc: subprocess.Popen, run: RunDir, *, middle: int, log_file: Path) -> str:
    """SIGKILL the run as soon as its checkpoint at step `middle` is complete; how it went."""
    mark = checkpoint_name(middle)
    # `latest` names a checkpoint only once it is complete: kill right after that
    while proc.poll() is None and run.pointer("latest") != mark:
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"killed at step {max(_losses(run, 'train', 'loss'), default=0)}"
    # it ended before the kill landed (a very short run): go back to the middle
    _finish(proc, "killed", log_file)
    if not run.checkpoint(middle).is_dir():
        raise RunFailed(f"the run stopped before its checkpoint at step {middle} (early "
                        "stopping?); give more --steps or drop --eval.early_stop_patience")
    run.point("latest", mark)
    return "finished before the kill could land; restarted"


def _compare(straight: RunDir, killed: RunDir) -> int:
    """Print whether the train and validation losses match bit for bit: 0 if they do."""
    result = 0
    for what, kind, field in (("train losses", "train", "loss"),
                              ("validation losses", "eval", "val_loss")):
        a, b = _losses(straight, kind, field), _losses(killed, kind, field)
        diff = first_difference(a, b)
        if diff is None:
            print(f"{what}: " + (f"all {len(a)} bit-identical" if len(a) > 1 else "bit-identical"))
        else:
            print(_describe(what, diff, a, b))
            result = 1
    return result
