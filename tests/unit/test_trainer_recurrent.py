"""Truncated BPTT in the one training loop: the hidden state is carried from step to step,
cut from the graph, zeroed where a stream starts again, and saved so that resume is exact."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import load_config
from lmforge.data.prepare import prepare
from lmforge.errors import DataError
from lmforge.train.trainer import Trainer

TEXT = "".join(f"{i} little pigs went to market and {i * 7 % 11} came home.\n" for i in range(40))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("rnn-data")
    (work / "pigs.txt").write_text(TEXT)
    prepare([str(work / "pigs.txt")], work / "data", tokenizer="char", log=lambda _: None)
    return work / "data"


def tiny_config(dataset, run_dir, **extra):
    # 8 streams of 16-token chunks through ~2,000 training tokens: a pass every 16 steps
    overrides = {"data.path": str(dataset), "run.dir": str(run_dir), "model.arch": "lstm",
                 "model.n_layer": "2", "model.n_embd": "16", "model.block_size": "16",
                 "train.batch_size": "8", "train.max_steps": "40", "train.log_every": "1",
                 "train.progress": "false", "eval.every": "10", "eval.batches": "2",
                 "eval.samples": "0", "checkpoint.every": "0", "model.dropout": "0.1",
                 "optim.warmup_steps": "5", "train.tensorboard": "false",
                 "train.precision": "fp32",  # compared at tight tolerances
                 **extra}
    return load_config("default", overrides)


def losses(run_dir):
    records = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def states(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_state_is_carried_detached_and_reset_at_each_pass(dataset, tmp_path, arch):
    trainer = Trainer(tiny_config(dataset, tmp_path, **{"model.arch": arch}), tmp_path)
    chunks = trainer.train_data.chunks
    seen = []  # (incoming state, outgoing state) of every training forward

    def hook(module, args, output):
        if module.training:
            seen.append((args[1], output[1]))

    trainer.raw_model.register_forward_hook(hook)
    for _ in range(2 * chunks + 2):
        trainer.train_step()
    assert len(seen) == 2 * chunks + 2
    for step, (incoming, _) in enumerate(seen):
        for s in states(incoming):
            assert not s.requires_grad  # truncated: no graph into the previous step
            if step % chunks == 0:  # every stream starts again: zero state
                assert torch.count_nonzero(s) == 0, step
            else:  # the state the same streams ended the previous step with
                previous = states(seen[step - 1][1])
                assert any(torch.equal(s, p) for p in previous)
                assert torch.count_nonzero(s) > 0


def test_resume_across_a_pass_is_bit_identical(dataset, tmp_path):
    extra = {"train.grad_accum": "2", "train.batch_size": "4"}  # two micro-batches of streams
    Trainer(tiny_config(dataset, tmp_path / "full", **extra), tmp_path / "full").fit()
    cut = {**extra, "checkpoint.every": "13", "checkpoint.keep_last": "9"}
    Trainer(tiny_config(dataset, tmp_path / "cut", **cut), tmp_path / "cut").fit()
    # Go back to step 13 as if the run had died there, and continue past the next pass.
    (tmp_path / "cut" / "checkpoints" / "latest").write_text("step_00000013\n")
    second = Trainer(tiny_config(dataset, tmp_path / "cut", **cut), tmp_path / "cut")
    assert second.restore().name == "step_00000013" and second.train_data.step == 13
    second.fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert len(losses(tmp_path / "full")) == 40


def test_evaluation_streams_the_validation_split(dataset, tmp_path):
    trainer = Trainer(tiny_config(dataset, tmp_path, **{"eval.batches": "0"}), tmp_path)
    from lmforge.evaluate import mean_loss, stream_loss

    model, val = trainer.raw_model, trainer.val_tokens
    streamed = stream_loss(model, val, block_size=16, lanes=8)
    # one stream read in a single call covers the same tokens as 1 lane in many chunks
    assert stream_loss(model, val, block_size=16, lanes=1) == pytest.approx(
        stream_loss(model, val, block_size=len(val), lanes=1), rel=1e-6)
    assert trainer.evaluate() == pytest.approx(streamed, rel=1e-9)
    assert streamed != pytest.approx(mean_loss(model, val, block_size=16, batch_size=8), rel=1e-6)


def test_stream_resume_needs_the_same_number_of_streams(dataset, tmp_path):
    Trainer(tiny_config(dataset, tmp_path, **{"train.max_steps": "3"}), tmp_path).fit()
    other = Trainer(tiny_config(dataset, tmp_path, **{"train.batch_size": "4"}), tmp_path)
    with pytest.raises(DataError, match="streamed 8 lanes in parallel, this run has 4"):
        other.restore()
