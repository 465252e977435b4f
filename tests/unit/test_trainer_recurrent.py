"""Truncated BPTT in the one training loop: the hidden state is carried from step to step,
cut from the graph, zeroed where a stream starts again, and saved so that resume is exact."""

import pytest
import torch
from helpers import losses, resumed_at
from helpers import tiny_config as shared_config
from helpers import trainer as make_trainer

from lmforge.config import TokenizerConfig
from lmforge.data.prepare import prepare
from lmforge.errors import DataError

TEXT = "".join(f"{i} little pigs went to market and {i * 7 % 11} came home.\n" for i in range(40))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("rnn-data")
    (work / "pigs.txt").write_text(TEXT)
    prepare([str(work / "pigs.txt")], work / "data", tokenizer=TokenizerConfig("char"), log=lambda _: None)
    return work / "data"


# 8 streams of 16-token chunks through ~2,000 training tokens: a pass every 16 steps
SETTINGS = {"model.arch": "lstm", "model.n_embd": "16", "train.batch_size": "8",
            "train.max_steps": "40", "train.log_every": "1", "eval.every": "10",
            "model.dropout": "0.1", "optim.warmup_steps": "5",
            "train.precision": "fp32"}  # compared at tight tolerances


def tiny_config(dataset, run_dir, **extra):
    return shared_config(dataset, run_dir, SETTINGS, extra)


def states(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_state_is_carried_detached_and_reset_at_each_pass(dataset, tmp_path, arch):
    trainer = make_trainer(tiny_config(dataset, tmp_path, **{"model.arch": arch}))
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
    make_trainer(tiny_config(dataset, tmp_path / "full", **extra)).fit()
    cut = {**extra, "checkpoint.every": "13", "checkpoint.keep_last": "9"}
    # Go back to step 13 as if the run had died there, and continue past the next pass.
    second = resumed_at(tiny_config(dataset, tmp_path / "cut", **cut), 13)
    assert second.train_data.step == 13
    second.fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert len(losses(tmp_path / "full")) == 40


def test_evaluation_streams_the_validation_split(dataset, tmp_path):
    trainer = make_trainer(tiny_config(dataset, tmp_path, **{"eval.batches": "0"}))
    from lmforge.evaluate import mean_loss, stream_loss

    model, val = trainer.raw_model, trainer.val_tokens
    streamed = stream_loss(model, val, block_size=16, lanes=8)
    # one stream read in a single call covers the same tokens as 1 lane in many chunks
    assert stream_loss(model, val, block_size=16, lanes=1) == pytest.approx(
        stream_loss(model, val, block_size=len(val), lanes=1), rel=1e-6)
    assert trainer.evaluate().loss == pytest.approx(streamed, rel=1e-9)
    assert streamed != pytest.approx(mean_loss(model, val, block_size=16, batch_size=8), rel=1e-6)


def test_stream_resume_needs_the_same_number_of_streams(dataset, tmp_path):
    make_trainer(tiny_config(dataset, tmp_path, **{"train.max_steps": "3"})).fit()
    with pytest.raises(DataError, match="streamed 8 lanes in parallel, this run has 4"):
        make_trainer(tiny_config(dataset, tmp_path, **{"train.batch_size": "4"}), resume=True)
