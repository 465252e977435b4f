"""The optimizers (AdamW with decoupled weight decay on matrices only, or Muon for the hidden
layers' matrices beside it) and learning-rate schedules.

The schedules are pure functions of the step, so they need no state of their own in a
checkpoint: the step counter is enough to resume them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.config import OptimConfig
from lmforge.errors import ConfigError
from lmforge.train.eager_optim import EagerAdamW
from lmforge.train.muon import StackedMuon

# Layers that read tokens in or write scores out, by their attribute name (GPT's and the
# recurrent models' lm_head, a task's head); with nn.Embedding, the layers Muon leaves to
# AdamW: Muon is for the hidden layers between them (Keller Jordan's recipe).
OUTPUT_LAYERS = ("lm_head", "head")


def lr_at(step: int, *, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warm-up and cosine follow nanoGPT's formulas exactly, so its recipes reproduce.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay = cfg.decay_steps or max(1, int(0.2 * max_steps))
        decay_start = max(cfg.warmup_steps, max_steps - decay)
        if step < decay_start:
            return cfg.lr
        frac = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        return cfg.lr + frac * (cfg.min_lr - cfg.lr)
    decay_end = cfg.decay_steps or max_steps
    if step > decay_end:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, decay_end - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Put every parameter group at the schedule's `lr` (lr_at); a MuonAdamW's Muon groups at
    their own peak scaled by the same factor."""
    if isinstance(optimizer, MuonAdamW):
        optimizer.set_lr(lr)
        return
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, device_type: str,
                    fused: bool = True) -> torch.optim.Optimizer:
    """AdamW (optim.name=adamw), or Muon for the hidden layers' matrices with AdamW for the
    rest (muon). fused=False where the fused CPU kernel cannot take the parameters (sharded
    DTensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adamw":
        return _adamw(params, cfg, device_type=device_type, fused=fused)
    hidden = {id(p) for p in hidden_matrices(model)}
    if not any(id(p) in hidden for p in params):
        raise ConfigError("optim.name=muon: this model trains no hidden weight matrices for "
                          "Muon to take; use optim.name=adamw")
    muon = StackedMuon([p for p in params if id(p) in hidden], lr=cfg.muon_lr,
                       momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
                       nesterov=True, adjust_lr_fn=cfg.muon_adjust_lr)
    rest = _adamw([p for p in params if id(p) not in hidden], cfg, device_type=device_type,
                  fused=fused)
    return MuonAdamW(rest, muon, peak_lr=cfg.lr, muon_lr=cfg.muon_lr)


def _adamw(params: list[nn.Parameter], cfg: OptimConfig, *, device_type: str,
           fused: bool) -> EagerAdamW:
    """AdamW; weight decay on tensors of two or more dimensions (matrices and embeddings)."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg.name == "muon":  # beside Muon a group may be empty, which DCP cannot resume
        groups = [g for g in groups if g["params"]]
    # The fused kernel is the fastest on GPUs and on CPUs alike (about 10% of a small
    # model's step on a 2-core CPU, against the for-each and for-loop kernels).
    fused = device_type == "cuda" or (fused and device_type == "cpu")
    return EagerAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                      fused=fused or None)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of the hidden layers, which Muon trains: every 2-D parameter
    (attention and MLP projections, a recurrent layer's input and hidden weights) except
    the embeddings' and the output layers' (tied or not). Norms' gains and biases are 1-D."""
    outer: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1] in OUTPUT_LAYERS:
            outer.update(id(p) for p in module.parameters())
    return [p for p in model.parameters() if p.dim() == 2 and id(p) not in outer]


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the hidden matrices and AdamW for everything else, as the one optimizer the
    trainer, the checkpoints (DCP's get/set_optimizer_state_dict) and the gradient clipping
    see: its param_groups are AdamW's then Muon's (the same dicts), its state both states,
    and its state_dict numbers the parameters in that order, as torch.optim does.

    It keeps no parameters of its own: Optimizer.__init__ would register them a second time,
    so only the attributes the base class's methods read are set here.
    """

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Muon, *, peak_lr: float,
                 muon_lr: float) -> None:
        self.adamw, self.muon = adamw, muon
        self.peak_lr, self.muon_lr = peak_lr, muon_lr  # optim.lr and optim.muon_lr
        self.defaults: dict[str, Any] = {}
        for hooks in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
                      "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                      "_optimizer_load_state_dict_pre_hooks",
                      "_optimizer_load_state_dict_post_hooks"):
            setattr(self, hooks, {})

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return self.adamw, self.muon

    # read fresh each time: load_state_dict gives the inner optimizers new group dicts
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.adamw.param_groups, *self.muon.param_groups]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        raise AttributeError("MuonAdamW's parameter groups are its two optimizers'")

    @property  # type: ignore[override]
    def state(self) -> dict[Tensor, Any]:
        return {**self.adamw.state, **self.muon.state}

    @state.setter
    def state(self, value: dict[Tensor, Any]) -> None:
        raise AttributeError("MuonAdamW's state is its two optimizers'")

    def set_lr(self, lr: float) -> None:
        """AdamW's groups at `lr`, Muon's at optim.muon_lr times lr / optim.lr: the
        schedule's warm-up and decay scale both alike."""
        factor = lr / self.peak_lr  # in [0, 1] (a ratio of the two rates could overflow)
        for group in self.adamw.param_groups:
            group["lr"] = lr
        for group in self.muon.param_groups:
            group["lr"] = self.muon_lr * factor

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' state dicts as one: Muon's parameters numbered after AdamW's."""
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for optimizer in self.optimizers:
            own = optimizer.state_dict()
            state.update({offset + i: v for i, v in own["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]}
                       for g in own["param_groups"]]
            offset += sum(len(g["params"]) for g in own["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Split a state_dict of this shape (its keys ints, or DCP's parameter names) back
        into AdamW's groups and Muon's, in order."""
        groups = list(state_dict["param_groups"])
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the saved optimizer has {len(groups)} parameter groups, this one "
                             f"{len(self.param_groups)}: it was saved with other optimizer "
                             "settings (optim.name)")
        for optimizer in self.optimizers:
            own, groups = groups[:len(optimizer.param_groups)], groups[len(optimizer.param_groups):]
            keys = {k for g in own for k in g["params"]}
            optimizer.load_state_dict({
                "state": {k: v for k, v in state_dict["state"].items() if k in keys},
                "param_groups": own})

