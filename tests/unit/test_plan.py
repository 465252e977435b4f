"""Planning a run: decided once, before a model exists, and never changed afterwards."""

import copy
import dataclasses

import pytest

from lmforge.config import load_config
from lmforge.distributed.env import DistInfo
from lmforge.errors import ConfigError
from lmforge.plan import check_parallel, keep_global_batch, local_plan
from lmforge.rundir import RunDir


def config(**settings):
    return load_config("default", {"data.source": "", **settings})


def test_a_plan_resolves_a_copy_and_leaves_the_callers_config_alone(dataset, tmp_path):
    cfg = config(**{"data.path": str(dataset)})
    before = copy.deepcopy(cfg)
    plan = local_plan(cfg, tmp_path / "run")
    assert cfg == before and cfg.model.vocab_size == 0  # the caller's config is untouched
    assert plan.cfg.model.vocab_size > 0  # the plan's is sized to the dataset's tokenizer
    assert plan.run == RunDir(tmp_path / "run") and plan.strategy == "single"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.strategy = "ddp"  # type: ignore[misc]


def test_a_vocabulary_smaller_than_the_datasets_is_refused(dataset, tmp_path):
    with pytest.raises(ConfigError, match="model.vocab_size=5 is smaller than the dataset's"):
        local_plan(config(**{"data.path": str(dataset), "model.vocab_size": "5"}), tmp_path)


def test_resuming_on_other_ranks_keeps_the_global_batch_by_accumulating():
    saved = config(**{"train.batch_size": "4", "train.grad_accum": "1"})  # on 2 ranks: 8
    cfg = copy.deepcopy(saved)
    keep_global_batch(cfg, saved, 8, dp_size=1)
    assert cfg.train.grad_accum == 2
    assert cfg.eval.batch_size == 8  # validation keeps its windows: 4 per rank on 2 ranks
    four = config(**{"train.batch_size": "2"})
    keep_global_batch(four, saved, 8, dp_size=4)  # 2 x 4 ranks is the global batch already
    assert four.train.grad_accum == 1 and four.eval.batch_size == 0


def test_a_global_batch_no_accumulation_gives_back_is_refused():
    saved = config(**{"train.batch_size": "4"})
    cfg = config(**{"train.batch_size": "3"})
    with pytest.raises(ConfigError, match="global batch of 8 sequences, and "
                                          "train.batch_size=3 on 1 data-parallel rank"):
        keep_global_batch(cfg, saved, 8, dp_size=1)


def test_rank_0_refuses_a_model_tensor_parallelism_cannot_split_before_the_others_build():
    # Decided with the run, so that one rank says it before any rank exits (torchrun ends
    # the rest as soon as one has); the model is asked on the meta device.
    two = DistInfo(rank=0, world_size=2, tp_size=2)
    lstm = config(**{"model.arch": "lstm", "model.vocab_size": "65", "parallel.strategy": "tp"})
    with pytest.raises(ConfigError, match="tensor parallelism splits attention heads and MLPs, "
                                          "and model.arch=lstm has neither"):
        check_parallel(lstm, two)
    odd_heads = config(**{"model.n_head": "3", "model.n_embd": "96", "model.vocab_size": "65",
                          "parallel.strategy": "tp"})
    with pytest.raises(ConfigError, match="model.n_head=3 does not split over 2"):
        check_parallel(odd_heads, two)
    gpt = config(**{"model.vocab_size": "65", "parallel.strategy": "tp"})
    check_parallel(gpt, two)  # 4 heads split 2 ways
    ddp = dataclasses.replace(lstm, parallel=dataclasses.replace(lstm.parallel, strategy="ddp"))
    check_parallel(ddp, two)  # no tensor parallelism asked: nothing to check
    single = dataclasses.replace(lstm, parallel=dataclasses.replace(lstm.parallel,
                                                                    strategy="single"))
    with pytest.raises(ConfigError, match="parallel.strategy=single, but 2 processes"):
        check_parallel(single, two)
