"""Elastic restarts: when torchrun (--max-restarts) restarts a failed group, the new
workers must find the run the old ones were writing, and continue it.

A run with an explicit run.dir is simply that directory. A run numbered under runs/ is
recorded by rank 0 at its first start in runs/.elastic/<key>, where the key is torchrun's
run id (with the launching agent's process id when the id is torchrun's default 'none',
which every job shares).

One torch default works against restarts: torchrun shares its rendezvous store with the
workers, and a restarted group can read the addresses the last group published there and
fail to connect ("Connection refused", torch issue 135712; here, one SIGKILL in each of
9 runs: 4 of 8 restarts failed so with sharing on, none of 5 with it off).
`lmforge train --nproc` turns sharing off; a torchrun started by hand is warned.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.config import Config

RECORDS = Path("runs") / ".elastic"


def _key() -> str:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return run_id if run_id != "none" else f"none-{os.getppid()}"


def record_run(run_dir: Path) -> None:
    """Remember which directory this torchrun job trains into (rank 0, at its first start)."""
    from lmforge.distributed.env import launched_by_torchrun  # torch: not for the CLI's import

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


# Read by torchrun (the agent) itself: set it in torchrun's environment, not the workers'.
NO_SHARED_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def shared_store_warning(environ: dict[str, str]) -> str | None:
    """A warning when torchrun may restart this group while sharing its store with it."""
    restarts = int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if restarts > 0 and environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return (f"warning: torchrun --max-restarts={restarts} shares its rendezvous store with "
                "the workers, so a restarted group can read the last group's addresses and "
                "fail to connect; start torchrun with "
                f"{NO_SHARED_STORE}=1 in its environment (lmforge train --nproc does)")
    return None
