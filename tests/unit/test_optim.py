import copy
import math

import pytest
import torch

from lmforge.config import ModelConfig, OptimConfig
from lmforge.train.optim import MuonAdamW, build_optimizer, lr_at, set_lr


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


# ---------------------------------------------------------------------------- Muon

class Tiny(torch.nn.Module):
    """Embedding, one hidden layer, a norm and the output layer (named as GPT names it)."""

    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(10, 8)
        self.hidden = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.lm_head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.lm_head(self.norm(self.hidden(self.wte(x))))


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _muon(model, **fields):
    return build_optimizer(model, OptimConfig(name="muon", **fields), device_type="cpu")


@pytest.mark.parametrize("tie", [True, False])
def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(tie):
    from lmforge.models import build_model

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, bias=True,
                      tie_embeddings=tie, qk_norm=True)
    model = build_model(cfg)
    opt = _muon(model)
    assert isinstance(opt, MuonAdamW)
    hidden = {f"blocks.{i}.{m}.weight" for i in range(2) for m in
              ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert _names(model, (p for g in opt.muon.param_groups for p in g["params"])) == hidden
    decayed, plain = opt.adamw.param_groups
    assert _names(model, decayed["params"]) == {"wte.weight", "wpe.weight"} | (
        set() if tie else {"lm_head.weight"})
    assert all(p.dim() == 1 for p in plain["params"])  # norms, q/k gains, biases
    every = [p for g in opt.param_groups for p in g["params"]]
    assert len(every) == len(set(map(id, every))) == len(list(model.parameters()))


def test_muon_takes_a_recurrent_models_layer_matrices():
    from lmforge.models import build_model

    model = build_model(ModelConfig(arch="lstm", n_layer=2, n_embd=16, vocab_size=11))
    muon = _names(model, (p for g in _muon(model).muon.param_groups for p in g["params"]))
    assert muon == {f"rnn.weight_{w}_l{i}" for w in ("ih", "hh") for i in range(2)}


def test_muon_refuses_a_model_without_hidden_matrices():
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="no hidden weight matrices for Muon"):
        _muon(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4)))


def test_the_schedule_scales_both_learning_rates_alike():
    model = Tiny()
    cfg = OptimConfig(name="muon", lr=2e-3, muon_lr=0.05)
    opt = _muon(model, lr=2e-3, muon_lr=0.05)
    assert _names(model, opt.muon.param_groups[0]["params"]) == {"hidden.weight"}
    for step in (0, 10, 500, 1999):
        lr = lr_at(step, cfg=cfg, max_steps=2000)
        set_lr(opt, lr)
        assert opt.param_groups[0]["lr"] == lr  # what the trainer logs: AdamW's
        assert opt.muon.param_groups[0]["lr"] == pytest.approx(lr / 2e-3 * 0.05)
    adamw = build_optimizer(model, OptimConfig(), device_type="cpu")
    set_lr(adamw, 0.25)
    assert [g["lr"] for g in adamw.param_groups] == [0.25, 0.25]


def _step(model, opt, seed):
    torch.manual_seed(seed)
    x = torch.randint(0, 10, (4, 6))
    opt.zero_grad(set_to_none=True)
    model(x).logsumexp(-1).mean().backward()
    opt.step()


def test_muon_state_dict_round_trips_exactly():
    def make():
        torch.manual_seed(0)
        model = Tiny()
        return model, _muon(model, lr=1e-2, muon_momentum=0.9)

    a, opt_a = make()
    for seed in range(3):
        _step(a, opt_a, seed)
    b, opt_b = make()
    b.load_state_dict(a.state_dict())
    state = copy.deepcopy(opt_a.state_dict())  # its tensors are opt_a's own, which go on
    assert len(state["param_groups"]) == 3 and set(state["state"]) == set(range(7))
    opt_b.load_state_dict(state)
    for seed in (3, 4):
        _step(a, opt_a, seed)
        _step(b, opt_b, seed)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="has 6 parameter groups, this one 3"):
        opt_b.load_state_dict({**state, "param_groups": state["param_groups"] * 2})


# in-process training on the session's small corpus, compared at tight tolerances: fp32
MUON = {"optim.name": "muon", "train.precision": "fp32", "train.log_every": "1",
        "eval.every": "10"}


def test_a_tiny_gpt_learns_with_muon(dataset, tmp_path):
    from helpers import losses, tiny_config, trainer

    runs = {}
    for name in ("adamw", "muon"):
        cfg = tiny_config(dataset, tmp_path / name, {**MUON, "optim.name": name})
        trainer(cfg).fit()
        runs[name] = losses(tmp_path / name)
    muon = runs["muon"]
    assert len(muon) == 30 and muon != runs["adamw"]  # really another optimizer
    assert sum(muon[-5:]) / 5 < muon[0] - 0.5


def test_a_muon_run_resumes_exactly(dataset, tmp_path):
    """Killed after step 13 and resumed from its checkpoint (model and both optimizers'
    state through DCP), the run continues bit for bit."""
    from helpers import losses, resumed_at, tiny_config, trainer

    trainer(tiny_config(dataset, tmp_path / "full", MUON)).fit()
    cut = {**MUON, "checkpoint.every": "13", "checkpoint.keep_last": "9"}
    second = resumed_at(tiny_config(dataset, tmp_path / "cut", cut), 13)
    assert second.counters.step == 13 and isinstance(second.optimizer, MuonAdamW)
    assert second.optimizer.muon.state  # the momentum came back from the checkpoint
    second.fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
