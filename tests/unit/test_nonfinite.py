"""NaN and Inf in training: the step is skipped, too many in a row stop the run, and no
checkpoint ever holds a non-finite weight. Real NaNs, made by a real model."""

import math

import pytest
import torch
from helpers import records
from helpers import tiny_config as shared_config
from helpers import trainer as make_trainer
from safetensors.torch import load_file

from lmforge.errors import CheckpointError, LmforgeError

SETTINGS = {"train.log_every": "5", "train.threads": "1", "eval.every": "0",
            "eval.samples_at_eval": "0", "optim.warmup_steps": "0"}


def tiny_config(dataset, run_dir, **extra):
    return shared_config(dataset, run_dir, SETTINGS, extra)


def test_a_nonfinite_step_is_skipped_and_leaves_everything_as_it_was(dataset, tmp_path):
    trainer = make_trainer(tiny_config(dataset, tmp_path))
    trainer.model.train()
    trainer.train_step()  # the optimizer has state now
    norm_f = trainer.raw_model.norm_f.weight
    with torch.no_grad():
        norm_f[0] = math.inf  # every forward goes through the final norm: the loss is NaN
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    optim_before = {k: v.clone() for s in trainer.optimizer.state.values() for k, v in s.items()
                    if k == "step"}
    data_step = trainer.train_data.step

    loss, norm = trainer.train_step()

    assert not math.isfinite(loss.item()) or not math.isfinite(norm.item())
    c = trainer.counters
    assert (c.step, c.nonfinite_in_a_row, c.skipped_steps) == (2, 1, 1)
    assert trainer.train_data.step == data_step + 1  # its data is consumed all the same
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]), name  # no update (the inf is the one we set)
        assert p.grad is None
    assert all(torch.equal(v, optim_before["step"]) for s in trainer.optimizer.state.values()
               for k, v in s.items() if k == "step")

    with torch.no_grad():
        norm_f[0] = 1.0  # finite again: the next step trains, and the run of skips ends
    loss, _ = trainer.train_step()
    assert math.isfinite(loss.item())
    assert (c.step, c.nonfinite_in_a_row, c.skipped_steps) == (3, 0, 1)
    assert not torch.equal(norm_f, before["norm_f.weight"])


def test_too_many_in_a_row_stop_the_run_and_no_checkpoint_is_nonfinite(dataset, tmp_path):
    # A learning rate of 1e6 makes the second step's loss NaN, and every one after it.
    cfg = tiny_config(dataset, tmp_path, **{"optim.lr": "1e6", "optim.max_nonfinite": "3",
                                            "checkpoint.every": "1", "checkpoint.keep_last": "50"})
    trainer = make_trainer(cfg)
    with pytest.raises(LmforgeError) as err:
        trainer.fit()
    message = str(err.value)
    assert message.startswith("step 5: 4 non-finite losses or gradient norms in a row")
    assert "--optim.lr" in message and "optim.grad_clip" in message and "\n" not in message
    assert f"--resume {tmp_path}" in message
    train = records(tmp_path, "train")
    skipped = [r["step"] for r in train if r["skipped"]]
    assert skipped == [2, 3, 4, 5] and train[-1]["skipped_steps"] == 4
    # every checkpoint (one per step, skipped ones too) holds finite weights only
    saved = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert [p.name for p in saved] == [f"step_{s:08d}" for s in range(1, 5)]
    for path in saved:
        for name, t in load_file(path / "model.safetensors").items():
            assert torch.isfinite(t).all(), (path.name, name)


def test_zero_tolerance_stops_at_the_first(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path, **{"optim.lr": "1e6", "optim.max_nonfinite": "0"})
    with pytest.raises(LmforgeError, match="^step 2: 1 non-finite"):
        make_trainer(cfg).fit()


def test_save_refuses_nonfinite_weights_and_keeps_the_last_checkpoint(dataset, tmp_path):
    trainer = make_trainer(tiny_config(dataset, tmp_path))
    trainer.train_step()
    good = trainer.save()
    trainer.train_step()
    with torch.no_grad():
        trainer.raw_model.wpe.weight[3, 1] = math.nan
    with pytest.raises(CheckpointError, match="refusing to save step 2: weight 'wpe.weight'"):
        trainer.save()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", good.name]
    assert (root / "latest").read_text().strip() == good.name


def test_the_skip_counters_are_checkpointed(dataset, tmp_path):
    trainer = make_trainer(tiny_config(dataset, tmp_path))
    trainer.train_step()
    trainer.counters.nonfinite_in_a_row, trainer.counters.skipped_steps = 2, 7
    trainer.save()
    again = make_trainer(tiny_config(dataset, tmp_path), resume=True)
    assert (again.counters.nonfinite_in_a_row, again.counters.skipped_steps) == (2, 7)


def test_max_nonfinite_must_not_be_negative(dataset, tmp_path):
    with pytest.raises(LmforgeError, match="optim.max_nonfinite must be 0 or more"):
        tiny_config(dataset, tmp_path, **{"optim.max_nonfinite": "-1"})
