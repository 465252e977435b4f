"""torch.optim's optimizers without their guards against torch.compile.

torch.optim wraps add_param_group, zero_grad, state_dict, load_state_dict and each step in
guards that keep torch.compile from tracing into them. The guards import torch._dynamo the
first time they run: 1.2 s on a 2-core CPU, a third of a small run's start-up, and another
half second when the process exits. lmforge compiles models, never an optimizer, so the
guards have nothing to guard here; EagerOptimizer calls the methods underneath them (the
functions the guards wrap, as functools.wraps records them). A torch whose methods carry no
such record keeps its guarded methods, correct and only slower to start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

_F = TypeVar("_F", bound=Callable[..., Any])


def unguarded(method: _F) -> _F:
    """The function a torch.compile guard wraps (the method itself if it wraps none)."""
    return getattr(method, "__wrapped__", method)


class EagerOptimizer(torch.optim.Optimizer):
    """Put before a torch.optim optimizer in the bases: its bookkeeping methods unguarded."""

    add_param_group = unguarded(torch.optim.Optimizer.add_param_group)
    zero_grad = unguarded(torch.optim.Optimizer.zero_grad)
    state_dict = unguarded(torch.optim.Optimizer.state_dict)
    load_state_dict = unguarded(torch.optim.Optimizer.load_state_dict)


class EagerAdamW(EagerOptimizer, torch.optim.AdamW):
    """torch.optim.AdamW (any of its kernels), its step run without the guard."""

    _step = unguarded(torch.optim.AdamW.step)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        # what the guard does besides importing torch._dynamo: gradients off for the update
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return self._step(closure)
