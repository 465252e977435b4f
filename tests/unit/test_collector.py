"""`lmforge train` pauses Python's cyclic collector while it starts (imports, building the
run) and resumes it, past the objects of its start-up, before the first step."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import QUIET, TINY_MODEL, options

# Records each full collection (generation 2) and whether torch was imported by then, runs
# `lmforge train` in this process, then reports what the collector saw and its state.
CHILD = """
import gc, json, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2
                    and full.append("torch" in sys.modules))
from lmforge.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "full": full, "enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count()}))
"""


def test_train_starts_without_full_collections_and_collects_again(dataset, tmp_path):
    args = ["train", "default", *options(TINY_MODEL, QUIET, {
        "train.max_steps": "3", "eval.batches": "1", "log.to": "none", "train.report": "false",
        "data.path": str(dataset), "data.source": "", "run.dir": str(tmp_path / "run")})]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          timeout=300, check=True)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and seen["enabled"]
    assert seen["frozen"] > 100_000  # torch's and the run's objects, exempt from later passes
    # importing torch alone runs three or more full collections when nothing pauses them
    assert sum(seen["full"]) <= 1, seen["full"]


def test_pause_and_resume(tmp_path):
    code = ("import gc; from lmforge import collector; collector.pause(); a = gc.isenabled(); "
            "collector.resume(); collector.resume(); print(a, gc.isenabled(), gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]
