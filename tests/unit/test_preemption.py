"""SIGTERM and SIGINT while training: real signals sent to this very process."""

import os
import signal

import pytest
from helpers import sigterm_once_training, tiny_config, trainer

from lmforge.distributed.env import SINGLE
from lmforge.train.preemption import Preemption, exit_code


def test_first_signal_is_a_request_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with Preemption(repeat_after_s=0) as p:
        assert p.stop_signal(SINGLE, device=None) == 0
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test run without the handler
        assert p.stop_signal(SINGLE, device=None) == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_quick_repeat_is_the_same_request():
    """Under torchrun the terminal's SIGINT and torchrun's forwarded SIGTERM arrive together."""
    with Preemption(repeat_after_s=60) as p:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # no KeyboardInterrupt
        assert p.received == signal.SIGINT


def test_exit_codes_follow_the_shell_convention():
    assert exit_code(signal.SIGTERM) == 143 and exit_code(signal.SIGINT) == 130


def test_fit_stops_after_the_step_with_a_checkpoint(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "run", {
        "model.n_layer": "1", "model.n_embd": "16", "train.batch_size": "2",
        "train.max_steps": "1000000", "train.threads": "1", "eval.every": "0",
        "eval.batches": "1", "eval.samples_at_eval": "0", "train.peak_tflops": "1"})
    run = trainer(cfg)
    before = signal.getsignal(signal.SIGTERM)
    sender = sigterm_once_training(after=0.2)  # once the training loop has started
    result = run.fit()
    sender.join()
    assert result.stopped == "signal" and result.signal == signal.SIGTERM
    assert 0 < result.step < 1000000
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{result.step:08d}"
    # no evaluation was added at the stop (the resumed run must find the record unchanged)
    assert "eval" not in (tmp_path / "run" / "metrics.jsonl").read_text()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the loop's alone
