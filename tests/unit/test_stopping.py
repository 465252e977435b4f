"""A run stopped between two log_every steps (time limit, signal) still records the last step
it made: metrics.jsonl, the report and loss.png show every step, not "steps 0"."""

import os
import signal
import threading
import time

from helpers import records, tiny_config, trainer

from lmforge.plan import local_plan
from lmforge.runs.report import load_run_data
from lmforge.train.session import train_run

RARE_LOGS = {"train.log_every": "1000", "train.max_steps": "1000000", "eval.every": "0",
             "eval.samples_at_eval": "0", "train.threads": "1"}


def test_a_time_limit_before_the_first_log_step_still_records_the_last_step(dataset, tmp_path):
    # 0.06 ms: over after the first step, whatever the machine's load
    cfg = tiny_config(dataset, tmp_path / "run", RARE_LOGS, {"train.max_minutes": "1e-6"})
    outcome = train_run(local_plan(cfg, tmp_path / "run"))  # as `lmforge train` runs it
    result = outcome.fit
    assert outcome.exit_code == 0 and result is not None
    assert result.stopped == "max_minutes" and result.step >= 1
    train = records(tmp_path / "run", "train")
    assert [r["step"] for r in train] == [result.step]
    assert train[0]["startup_s"] > 0 and "precision" in train[0]  # the first record's fields
    assert load_run_data(tmp_path / "run").train[-1]["step"] == result.step  # the report's count
    assert (tmp_path / "run" / "loss.png").is_file()


def test_a_signal_before_the_first_log_step_still_records_the_last_step(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "run", RARE_LOGS)
    run = trainer(cfg)
    before = signal.getsignal(signal.SIGTERM)

    def preempt():  # once the training loop has installed its handler
        while signal.getsignal(signal.SIGTERM) == before:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=preempt, daemon=True)
    sender.start()
    result = run.fit()
    sender.join()
    assert result.stopped == "signal" and 1 <= result.step < 1000
    assert records(tmp_path / "run", "train")[-1]["step"] == result.step
