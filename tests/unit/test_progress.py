"""What a run and a prepare show while they work: a bar on a terminal that moves every step
and ends where the run will end, plain lines elsewhere."""

import io

from lmforge.console import Progress, report_error
from lmforge.errors import ConfigError
from lmforge.train.metrics import TrainProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_moves_every_step():
    out = Terminal()
    progress = TrainProgress(max_steps=100, first_step=0, max_minutes=0, log_every=50,
                             enabled=True, stream=out)
    assert progress.bar is not None
    for step in range(1, 8):
        progress.update(step, loss=2.0, elapsed=step * 0.1, tokens_per_s=1000.0, lr=1e-3)
        assert progress.bar.done == step and progress.bar.bar.n == step
    assert "loss 2.0000" in progress.bar.bar.postfix
    progress.close()


def test_the_bar_ends_where_the_time_limit_will_stop_the_run():
    progress = TrainProgress(max_steps=1000, first_step=0, max_minutes=1.0, log_every=10,
                             enabled=True, stream=Terminal())
    # 10 steps in 6 s: 54 s left at 0.6 s a step is 90 more steps, so the run ends near 100
    assert progress.expected_last_step(10, elapsed=6.0) == 100
    progress.update(10, loss=2.0, elapsed=6.0, tokens_per_s=1000.0, lr=1e-3)
    assert progress.bar.total == 100
    assert progress.expected_last_step(10, elapsed=0.06) == 1000  # max_steps comes first
    resumed = TrainProgress(max_steps=1000, first_step=500, max_minutes=1.0, log_every=10,
                            enabled=True, stream=Terminal())
    assert resumed.expected_last_step(510, elapsed=6.0) == 600  # the pace of this run only
    unbounded = TrainProgress(max_steps=1000, first_step=0, max_minutes=0, log_every=10,
                              enabled=True, stream=Terminal())
    assert unbounded.expected_last_step(10, elapsed=6.0) == 1000


def test_without_a_terminal_a_line_every_log_every_steps(capsys):
    progress = TrainProgress(max_steps=30, first_step=0, max_minutes=0, log_every=10,
                             enabled=True, stream=io.StringIO())
    assert progress.bar is None
    for step in range(1, 31):
        progress.update(step, loss=1.5, elapsed=step, tokens_per_s=10.0, lr=1e-3)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["10/30", "20/30", "30/30"]


def test_plain_progress_lines_count_in_one_unit_and_end_at_the_total():
    out = io.StringIO()
    with Progress("read", total=2_000_000, enabled=True, unit="B", unit_scale=True,
                  every_s=0, stream=out) as progress:
        assert progress.plain
        progress.advance(500_000, "1 file")
        progress.advance(1_500_000)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("read: 500,000 B of 2.0 MB (25%)") and lines[0].endswith("; 1 file")
    assert lines[-1].startswith("read: 2.0 MB of 2.0 MB (100%)")


def test_disabled_progress_says_nothing(capsys):
    out = io.StringIO()
    progress = Progress("read", total=10, enabled=False, every_s=0, stream=out)
    progress.advance(10)
    progress.line()
    assert out.getvalue() == "" and not progress.plain


def test_an_error_is_reported_once_and_by_rank_0_alone(capsys, monkeypatch):
    err = ConfigError("model.n_head=3 does not divide n_embd=32; pick a divisor")
    report_error("train", err)  # as planned_run does under torchrun, before leaving the group
    report_error("train", err)  # as the CLI then does for every error
    assert capsys.readouterr().err == ("lmforge train: error: model.n_head=3 does not divide "
                                       "n_embd=32; pick a divisor\n")
    monkeypatch.setenv("RANK", "1")
    report_error("finetune", ConfigError("the same on another rank"))
    assert capsys.readouterr().err == ""


def test_an_error_quoting_line_breaks_is_still_one_line(capsys):
    # what the user typed can hold any character; the error line must stay one line
    report_error("train", ConfigError("parallel.strategy: '\r\nx\x1b[2K\u2028\x85' is wrong"))
    err = capsys.readouterr().err
    assert err == "lmforge train: error: parallel.strategy: '\\r\\nx\\x1b[2K\\u2028\\x85' is wrong\n"
    assert len(err.splitlines()) == 1
