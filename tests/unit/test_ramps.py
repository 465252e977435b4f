"""The batch and sequence-length warm-ups: their ramps, and a real run that uses them."""

import pytest
import torch
from helpers import losses, records, resumed_at
from helpers import tiny_config as shared_config
from helpers import trainer as make_trainer

from lmforge.train.ramps import Ramp, Warmup, steps_for_tokens

SETTINGS = {"train.log_every": "1", "eval.every": "0", "train.precision": "fp32",
            "model.dropout": "0.0", "train.batch_size": "16", "model.block_size": "32"}


def test_a_ramp_grows_linearly_to_the_full_size():
    ramp = Ramp(start=16, full=64, steps=60, multiple=8)
    sizes = [ramp.at(step) for step in range(70)]
    assert sizes[0] == 16 and sizes[59] == 64 and sizes[60:] == [64] * 10
    assert sizes == sorted(sizes) and all(s % 8 == 0 for s in sizes)
    assert ramp.at(30) == 40  # halfway: 16 + 48 / 2
    assert Ramp(start=3, full=5, steps=10, multiple=8).at(0) == 5  # never past the full size
    assert Ramp(start=16, full=64, steps=0).at(0) == 64  # off
    assert [Ramp(start=2, full=8, steps=6).at(s) for s in range(7)] == [2, 3, 4, 5, 6, 7, 8]


def test_a_warmup_cuts_the_first_rows_and_positions_of_the_same_windows():
    x, y = torch.arange(8 * 32).view(8, 32), torch.arange(8 * 32).view(8, 32) + 1
    warmup = Warmup.of(batch_size=8, block_size=32, batch_steps=10, batch_start=0,
                       length_steps=10, length_start=0)  # starts: a quarter of each
    cx, cy = warmup.cut(x, y, 0)
    assert cx.shape == (2, 8) and torch.equal(cx, x[:2, :8]) and torch.equal(cy, y[:2, :8])
    assert warmup.cut(x, y, 10)[0] is x  # past the warm-up: the windows as read
    assert not Warmup.of(batch_size=8, block_size=32, batch_steps=0, batch_start=0,
                         length_steps=0, length_start=0).active


def tiny_config(dataset, run_dir, **extra):
    return shared_config(dataset, run_dir, SETTINGS, extra)


def test_a_run_with_both_warmups_trains_fewer_tokens_early_and_resumes_exactly(dataset, tmp_path):
    ramps = {"train.seq_warmup_steps": "12", "train.batch_warmup_steps": "12"}
    make_trainer(tiny_config(dataset, tmp_path / "plain")).fit()
    make_trainer(tiny_config(dataset, tmp_path / "full", **ramps)).fit()
    plain, warm = records(tmp_path / "plain", "train"), records(tmp_path / "full", "train")
    # step 1 trained 4 rows x 8 positions, not 16 x 32; from step 12 on, full batches
    assert warm[0]["tokens"] == 4 * 8 and plain[0]["tokens"] == 16 * 32
    assert warm[-1]["tokens"] - warm[-2]["tokens"] == 16 * 32
    assert plain[-1]["tokens"] - warm[-1]["tokens"] > 16 * 32 * 4
    assert losses(tmp_path / "full") != losses(tmp_path / "plain")
    assert losses(tmp_path / "full")[-1] < losses(tmp_path / "full")[0]
    # died at step 6, inside the warm-up: the resumed run trains what the straight one did
    cut = {**ramps, "checkpoint.every": "6", "checkpoint.keep_last": "9"}
    second = resumed_at(tiny_config(dataset, tmp_path / "cut", **cut), 6)
    second.fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


@pytest.mark.parametrize("overrides, message", [
    ({"model.arch": "gru", "train.seq_warmup_steps": "10"},
     "train.seq_warmup_steps=10 with model.arch=gru: a recurrent model's streams"),
    ({"train.batch_warmup_steps": "10", "train.batch_warmup_start": "17"},
     "train.batch_warmup_start=17 is above train.batch_size=16"),
    ({"train.seq_warmup_steps": "10", "train.seq_warmup_start": "33"},
     "train.seq_warmup_start=33 is above model.block_size=32"),
    ({"train.seq_warmup_steps": "-1"}, "train.seq_warmup_steps must be"),
])
def test_warmups_that_cannot_apply_are_refused(dataset, tmp_path, overrides, message):
    from lmforge.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_config(dataset, tmp_path / "r", **overrides)


def test_steps_for_a_token_budget_count_the_warmup_shorter():
    plain = Warmup.of(batch_size=32, block_size=64, batch_steps=0, batch_start=0,
                      length_steps=0, length_start=0)
    warm = Warmup.of(batch_size=32, block_size=64, batch_steps=0, batch_start=0,
                     length_steps=60, length_start=16)
    assert steps_for_tokens(plain, 150 * 32 * 64) == 150
    assert steps_for_tokens(plain, 150 * 32 * 64, grad_accum=2) == 75
    warm_tokens = sum(32 * Ramp(16, 64, 60, multiple=8).at(s) for s in range(150))
    assert steps_for_tokens(warm, warm_tokens) == 150
    assert steps_for_tokens(warm, warm_tokens + 1) == 151
    assert steps_for_tokens(warm, 1) == 1
