"""`lmforge train`: train a model from a recipe, or continue a run (`--resume`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lmforge import collector
from lmforge.cli.options import add_config_options, add_recipe_argument
from lmforge.console import log
from lmforge.errors import LmforgeError
from lmforge.rundir import RunDir

HELP = "train a model (no arguments: the default job)"
USAGE = "lmforge train [RECIPE] [--resume RUN | --init-from DIR] [--SECTION.FIELD=VALUE ...]"
DESCRIPTION = ("Train from a recipe (a TOML file or the name of a shipped recipe) with "
               "--section.field=value overrides, or continue a run with --resume RUN.")
OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_argument(p)
    p.add_argument("--resume", metavar="RUN", type=Path,
                   help="continue the run in this directory from its latest complete "
                        "checkpoint (a finished run continues if --train.max_steps is raised)")
    p.add_argument("--init-from", metavar="DIR", type=Path,
                   help="start from the weights in DIR: a Hugging Face GPT-2 or Llama-style "
                        "model directory, or `lmforge export` output; the architecture comes "
                        "from DIR (sets --run.init_from)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train with N processes on this machine: hands the command to "
                        "`torchrun --standalone --nproc-per-node N` (see --parallel.strategy)")
    add_config_options(p)


def run(args: argparse.Namespace) -> int:
    overrides = dict(args.overrides)
    if args.init_from is not None:
        overrides["run.init_from"] = str(args.init_from)
    if args.nproc is not None:
        return _hand_to_torchrun(args.nproc, args.argv)
    collector.pause()  # until the run is built (collector.py); train_run resumes it
    try:
        from lmforge.plan import TrainRequest, planned_run
        from lmforge.train.session import train_run

        with planned_run(TrainRequest(args.recipe, args.resume, overrides)) as plan:
            task = None
            if plan.cfg.task.kind != "lm":  # a task run (lmforge finetune) continues as one;
                from lmforge.tasks.setup import task_for  # tasks' readers load only for one

                task = task_for(plan.cfg)
            outcome = (train_run(plan) if task is None
                       else train_run(plan, wrap=task.wrap, objective=task.objective))
    finally:
        collector.resume()
    if outcome.trained and plan.is_main and plan.cfg.task.kind == "classify":  # test figures
        from lmforge.runs.classifier import measure_run

        print(measure_run(plan.run.path).text)
    if outcome.trained and plan.is_main and plan.cfg.train.report:
        write_run_report(plan.run)
    return outcome.exit_code


def write_run_report(run: RunDir) -> None:
    """The report at the end of training; a failure to draw it must not fail the run."""
    from lmforge.runs.report import write_report

    try:
        log(f"report: {write_report([run.path])}")
    except Exception as err:  # noqa: BLE001 - the run itself is saved; say why and move on
        log(f"report not written ({type(err).__name__}: {err}); retry with `lmforge report {run}`")


def _hand_to_torchrun(nproc: int, argv: list[str]) -> int:
    """Replace this process with torchrun running the same command on `nproc` processes."""
    if nproc < 1:
        raise LmforgeError(f"--nproc must be 1 or more, got {nproc}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise LmforgeError("--nproc starts torchrun, but this process was already started by "
                           "torchrun; drop --nproc")
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "lmforge", *rest]
    from lmforge.distributed.elastic import NO_SHARED_STORE  # restarts must not read stale keys

    os.environ.setdefault(NO_SHARED_STORE, "1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
    return 0  # not reached
