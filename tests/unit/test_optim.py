import math

import pytest
import torch

from lmforge.config import OptimConfig
from lmforge.train.optim import build_optimizer, lr_at


def nanogpt_lr(it, *, lr=1e-3, min_lr=1e-4, warmup=100, decay=2000):
    """nanoGPT's get_lr, written out independently."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_cosine_matches_nanogpt_at_known_steps():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000)
    assert lr_at(0, cfg=cfg, max_steps=2000) == pytest.approx(1e-3 / 101)
    assert lr_at(100, cfg=cfg, max_steps=2000) == pytest.approx(1e-3)
    assert lr_at(1050, cfg=cfg, max_steps=2000) == pytest.approx(5.5e-4)
    assert lr_at(2000, cfg=cfg, max_steps=2000) == pytest.approx(1e-4)
    assert lr_at(5000, cfg=cfg, max_steps=2000) == pytest.approx(1e-4)
    for step in range(0, 2100, 37):
        assert lr_at(step, cfg=cfg, max_steps=2000) == pytest.approx(nanogpt_lr(step))


def test_cosine_horizon_defaults_to_max_steps():
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=0)
    assert lr_at(50, cfg=cfg, max_steps=100) == pytest.approx(0.5)
    assert lr_at(100, cfg=cfg, max_steps=100) == pytest.approx(0.0)


def test_warmup_stable_decay():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, schedule="wsd", decay_steps=20)
    assert lr_at(5, cfg=cfg, max_steps=100) == pytest.approx(6 / 11)
    assert lr_at(10, cfg=cfg, max_steps=100) == 1.0
    assert lr_at(79, cfg=cfg, max_steps=100) == 1.0
    assert lr_at(90, cfg=cfg, max_steps=100) == pytest.approx(0.55)
    assert lr_at(100, cfg=cfg, max_steps=100) == pytest.approx(0.1)


def test_constant_after_warmup():
    cfg = OptimConfig(lr=0.5, warmup_steps=4, schedule="constant")
    assert [lr_at(s, cfg=cfg, max_steps=10) for s in (0, 3, 4, 9)] == pytest.approx([0.1, 0.4, 0.5, 0.5])


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1), device_type="cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) == 2 and len(plain["params"]) == 3
