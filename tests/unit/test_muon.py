"""StackedMuon against torch.optim.Muon: the same updates, bit for bit, and the same state."""

import pytest
import torch

from lmforge.train.muon import StackedMuon, adjusted_lr

# square, wide and tall matrices, two of each shape so that stacking has something to stack
SHAPES = [(16, 16), (16, 16), (8, 24), (8, 24), (24, 8), (24, 8), (12, 20)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]


def _train(optimizer_class, steps: int, **options) -> tuple[list[torch.Tensor], dict]:
    params = _params()
    optimizer = optimizer_class(params, lr=0.02, weight_decay=0.01, **options)
    for step in range(steps):
        torch.manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer.state_dict()


@pytest.mark.parametrize("options", [{}, {"nesterov": False, "momentum": 0.9},
                                     {"adjust_lr_fn": "match_rms_adamw"}])
def test_stacked_muon_matches_torch_muon_exactly(options):
    ours, our_state = _train(StackedMuon, 4, **options)
    theirs, their_state = _train(torch.optim.Muon, 4, **options)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert our_state["param_groups"] == their_state["param_groups"]
    for i, state in their_state["state"].items():
        assert torch.equal(our_state["state"][i]["momentum_buffer"], state["momentum_buffer"])


def test_a_checkpoint_of_either_resumes_in_the_other():
    params = _params()
    torch_muon = torch.optim.Muon(params, lr=0.02)
    for p in params:
        p.grad = torch.ones_like(p)
    torch_muon.step()
    ours = StackedMuon(params, lr=0.02)
    ours.load_state_dict(torch_muon.state_dict())
    ours.step()  # the loaded momentum is used, not a fresh zero buffer
    torch_muon.step()
    assert all(torch.equal(ours.state[p]["momentum_buffer"], torch_muon.state[p]["momentum_buffer"])
               for p in params)


def test_parameters_without_a_gradient_are_left_alone():
    params = _params()
    before = params[1].detach().clone()
    optimizer = StackedMuon(params, lr=0.02)
    for p in params[:1] + params[2:]:
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert torch.equal(params[1], before) and params[1] not in optimizer.state
    assert not torch.equal(params[0], _params()[0])


def test_adjusted_lr_follows_torch_muons_rules():
    assert adjusted_lr(0.02, None, torch.Size([32, 8])) == pytest.approx(0.04)
    assert adjusted_lr(0.02, "original", torch.Size([8, 32])) == pytest.approx(0.02)
    assert adjusted_lr(0.02, "match_rms_adamw", torch.Size([8, 32])) == pytest.approx(
        0.02 * 0.2 * 32 ** 0.5)
