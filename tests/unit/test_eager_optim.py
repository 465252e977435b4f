"""torch.optim's optimizers without the torch.compile guards: the same updates and state,
and a training step, save and sample that never import torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lmforge.train.eager_optim import EagerAdamW


def _trained(optimizer_class, steps: int = 3, **options) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = optimizer_class([weight], lr=0.1, weight_decay=0.1, **options)
    for _ in range(steps):
        (weight ** 3).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return weight.detach(), optimizer.state_dict()


@pytest.mark.parametrize("kernel", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_eager_adamw_updates_as_torchs_adamw(kernel):
    ours, our_state = _trained(EagerAdamW, **kernel)
    theirs, their_state = _trained(torch.optim.AdamW, **kernel)
    assert torch.equal(ours, theirs)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(our_state["state"][0][key], their_state["state"][0][key])
    assert our_state["param_groups"] == their_state["param_groups"]


def test_the_step_runs_without_gradients_and_keeps_the_callers_mode():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = EagerAdamW([weight], lr=0.1)
    weight.sum().backward()
    with torch.enable_grad():
        optimizer.step()
        assert torch.is_grad_enabled()
    assert weight.grad_fn is None and not torch.equal(weight.detach(), torch.ones(2))


SCRIPT = """
import sys, tempfile, pathlib
import torch
from lmforge import checkpoint
from lmforge.config import ModelConfig, OptimConfig
from lmforge.models import build_model
from lmforge.rundir import RunDir
from lmforge.train.optim import build_optimizer

for name in ("adamw", "muon"):
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    optimizer = build_optimizer(model, OptimConfig(name=name), device_type="cpu")
    x = torch.randint(0, 32, (2, 8))
    logits = model(x)[0]
    logits.float().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    optimizer.load_state_dict(optimizer.state_dict())
    with tempfile.TemporaryDirectory() as run:
        checkpoint.save_checkpoint(RunDir(pathlib.Path(run)), step=1, model=model,
                                   optimizer=optimizer, trainer_state={}, model_config={},
                                   keep_last=1)
print("torch._dynamo" in sys.modules)
"""


def test_training_and_saving_never_import_dynamo():
    """The guards' import of torch._dynamo took 1.2 s of a small run's 2.8 s start-up."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr
