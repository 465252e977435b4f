"""The training loop in-process, on a small real corpus."""

import pytest
import torch
from helpers import losses, records, resumed_at
from helpers import tiny_config as shared_config
from helpers import trainer as make_trainer

# compared at tight tolerances, so fp32 (bf16 has a test of its own below)
SETTINGS = {"train.log_every": "1", "eval.every": "10", "model.dropout": "0.1",
            "train.precision": "fp32"}


def tiny_config(dataset, run_dir, **extra):
    return shared_config(dataset, run_dir, SETTINGS, extra)


def test_two_identical_runs_are_bit_identical(dataset, tmp_path):
    for name in ("a", "b"):
        make_trainer(tiny_config(dataset, tmp_path / name)).fit()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert len(losses(tmp_path / "a")) == 30
    assert losses(tmp_path / "a")[-1] < losses(tmp_path / "a")[0]


def test_resume_in_process_continues_the_same_run(dataset, tmp_path):
    make_trainer(tiny_config(dataset, tmp_path / "full")).fit()
    cut = {"checkpoint.every": "13", "checkpoint.keep_last": "9"}
    # Go back to step 13 as if the run had died there, and continue.
    second = resumed_at(tiny_config(dataset, tmp_path / "cut", **cut), 13)
    assert second.counters.step == 13
    second.fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_bf16_autocast_follows_the_fp32_losses(dataset, tmp_path):
    # The bf16 path (autocast, attention in float32 on CPU) is the faster one where the CPU
    # or GPU computes in bf16 natively; it must train as fp32 does, within what bf16's
    # rounding of the activations allows.
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(dataset, tmp_path / precision, **{
            "train.precision": precision, "model.dropout": "0.0", "train.max_steps": "60",
            "eval.every": "0"})
        make_trainer(cfg).fit()
        runs[precision] = losses(tmp_path / precision)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert len(fp32) == len(bf16) == 60 and fp32 != bf16  # really another path
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < 0.05
    assert abs(sum(fp32[-10:]) - sum(bf16[-10:])) / 10 < 0.02
    assert bf16[-1] < bf16[0] - 0.5


def test_auto_precision_is_bf16_exactly_where_the_hardware_has_it():
    from lmforge.distributed.device import cpu_has_native_bf16, uses_bf16

    cpu = torch.device("cpu")
    assert uses_bf16("auto", cpu) == cpu_has_native_bf16()
    assert uses_bf16("bf16", cpu) and not uses_bf16("fp32", cpu)


def test_gradient_accumulation_averages_micro_batches(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path, **{"train.grad_accum": "3", "train.max_steps": "1",
                                            "model.dropout": "0.0", "optim.grad_clip": "0"})
    trainer = make_trainer(cfg)
    reference = make_trainer(cfg)
    reference.model.load_state_dict(trainer.model.state_dict())
    trainer.train_step()
    # By hand: the mean of three micro-batch losses, one backward.
    total = 0
    for _ in range(3):
        x, y = reference.train_data.next_batch()
        logits, _ = reference.model(x)
        total = total + torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                          y.reshape(-1)) / 3
    total.backward()
    assert all(q.grad is not None for q in reference.model.parameters())
    reference.optimizer.param_groups[0]["lr"] = trainer.optimizer.param_groups[0]["lr"]
    reference.optimizer.param_groups[1]["lr"] = trainer.optimizer.param_groups[1]["lr"]
    reference.optimizer.step()
    for p, q in zip(trainer.model.parameters(), reference.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_early_stopping_and_best_checkpoint(dataset, tmp_path):
    # A learning rate this high makes validation loss stop improving quickly.
    cfg = tiny_config(dataset, tmp_path, **{"train.max_steps": "400", "eval.every": "5",
                                            "eval.early_stop_patience": "2", "optim.lr": "0.5",
                                            "optim.warmup_steps": "0", "optim.schedule": "constant"})
    result = make_trainer(cfg).fit()
    assert result.stopped == "early_stop" and result.step < 400
    best = (tmp_path / "checkpoints" / "best").read_text().strip()
    best_record = min(records(tmp_path, "eval"), key=lambda r: r["val_loss"])
    assert best == f"step_{best_record['step']:08d}"
    assert (tmp_path / "checkpoints" / best).is_dir()


def test_minutes_bound_stops_the_run(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path, **{"train.max_steps": "1000000",
                                            "train.max_minutes": "0.02"})
    result = make_trainer(cfg).fit()
    assert result.stopped == "max_minutes" and 0 < result.step < 1000000
    assert (tmp_path / "checkpoints" / f"step_{result.step:08d}").is_dir()
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_a_model_too_large_for_memory_is_one_clear_error(dataset, tmp_path):
    from lmforge.errors import ConfigError

    # 4 x 10^11 weights: within what a config may ask for, far beyond this machine's memory
    cfg = tiny_config(dataset, tmp_path / "huge", **{"model.n_embd": "65536", "model.n_head": "1",
                                                      "model.n_layer": "8"})
    with pytest.raises(ConfigError, match="does not fit in memory on cpu: .* need about 6.6"):
        make_trainer(cfg)  # refused before allocating (else the test would take the machine)
    with pytest.raises(ConfigError, match="model.n_embd must be between 1 and 65,536"):
        tiny_config(dataset, tmp_path / "huge", **{"model.n_embd": "1048576"})
