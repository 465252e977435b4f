"""Elastic restarts: when torchrun (--max-restarts) restarts a failed group, the new
workers must find the run the old ones were writing, and continue it.

A run with an explicit run.dir is simply that directory. A run numbered under runs/ is
recorded by rank 0 at its first start in runs/.elastic/<key>, where the key is torchrun's
run id (with the launching agent's process id when the id is torchrun's default 'none',
which every job shares).
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.config import Config
from lmforge.distributed.env import launched_by_torchrun

RECORDS = Path("runs") / ".elastic"


def _key() -> str:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return run_id if run_id != "none" else f"none-{os.getppid()}"


def record_run(run_dir: Path) -> None:
    """Remember which directory this torchrun job trains into (rank 0, at its first start)."""
    if not launched_by_torchrun():
        return
    RECORDS.mkdir(parents=True, exist_ok=True)
    tmp = RECORDS / f".{_key()}.tmp"
    tmp.write_text(str(Path(run_dir).resolve()) + "\n")
    tmp.replace(RECORDS / _key())


def find_run(cfg: Config) -> Path | None:
    """The directory the failed group was training into, if it got as far as choosing one."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    record = RECORDS / _key()
    return Path(record.read_text().strip()) if record.is_file() else None
