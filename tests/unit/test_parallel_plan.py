"""Each model family declares how it may be split (models/parallel_plan.py): the names in
its plan are the names of its own modules, so a rename cannot silently break tensor
parallelism."""

import pytest
from torch import nn

from lmforge.config import ModelConfig
from lmforge.models import build_model


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_the_gpt_plan_names_every_linear_layer_of_its_blocks(mlp):
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8,
                                    vocab_size=20, mlp=mlp))
    plan = model.parallel_plan()
    assert plan.blocks is model.blocks and len(plan.blocks) == 2
    for block in plan.blocks:
        linears = {name for name, m in block.named_modules() if isinstance(m, nn.Linear)}
        assert set(plan.block_tp) == linears  # each one split, none left out or misnamed
    outputs = {name for name, style in plan.block_tp.items() if style == "rowwise"}
    assert outputs == {"attn.c_proj", "mlp.c_proj"}  # the two that write to the residual stream
    assert plan.tp_divisible == {"model.n_head": 2, "model.n_kv_head": 2}


def test_tensor_parallelism_must_split_the_key_value_heads_too():
    from lmforge.distributed.parallelize import check_tensor_parallel
    from lmforge.errors import ConfigError

    gqa = build_model(ModelConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=16, block_size=8,
                                  vocab_size=20, norm="rmsnorm", mlp="swiglu", pos="rope"))
    check_tensor_parallel(gqa.parallel_plan(), tp=2, strategy="tp")  # 2 query heads and 1 kv each
    with pytest.raises(ConfigError, match="model.n_kv_head=2 does not split over 4"):
        check_tensor_parallel(gqa.parallel_plan(), tp=4, strategy="tp")


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_recurrent_models_have_no_blocks_and_nothing_to_split(arch):
    plan = build_model(ModelConfig(arch=arch, n_layer=2, n_embd=8, vocab_size=20)).parallel_plan()
    assert plan.blocks is None and not plan.block_tp
    assert f"model.arch={arch} has neither" in plan.no_tp_reason
