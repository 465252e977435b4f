"""Task heads on a language model: what a pretrained GPT or recurrent net becomes when it is
fine-tuned to classify text instead of continuing it.

`SequenceClassifier` reads the backbone's final hidden states (`hidden`, the input of its
output layer) and maps one vector per sequence to a score per label. The vector is the
state at the sequence's last token (`pooling="last"`: in a causal model the only position
that has seen the whole text, and for a recurrent net its final state) or the mean over
its tokens (`pooling="mean"`). Sequences are right-padded, and a causal model's positions
never see what comes after them, so padding changes neither.

The backbone's output layer is dropped: a task never reads it, and a weight that gets no
gradient stops DDP. Everything else a model offers the loop (its parallel plan, parameter
and FLOP counts, buffers) is the backbone's, so the same trainer, parallelization and
checkpoints serve a classifier as they serve a language model.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lmforge.models.gpt import GPT
from lmforge.models.parallel_plan import ParallelPlan
from lmforge.models.rnn import RecurrentLM

Pooling = Literal["last", "mean"]
POOLINGS = ("last", "mean")


class SequenceClassifier(nn.Module):
    def __init__(self, backbone: GPT | RecurrentLM, n_labels: int, *,
                 pooling: Pooling = "last") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}': use {' or '.join(POOLINGS)}")
        self.backbone, self.pooling, self.n_labels = backbone, pooling, n_labels
        self.cfg = backbone.cfg
        # never read (see above); its type is the backbone's, the layer is gone
        backbone.lm_head = nn.Identity()  # type: ignore[assignment]
        self.head = nn.Linear(backbone.cfg.n_embd, n_labels)
        self.init_head()

    @torch.no_grad()
    def init_head(self) -> None:
        """Small random weights and zero biases: every label starts near even odds."""
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Scores (B, n_labels) of tokens (B, T), right-padded; lengths (B,) >= 1."""
        h = self.backbone.hidden(tokens)  # (B, T, C)
        if self.pooling == "last":
            pooled = h[torch.arange(h.size(0), device=h.device), lengths - 1]  # (B, C)
        else:
            mask = torch.arange(h.size(1), device=h.device)[None, :] < lengths[:, None]
            pooled = (h * mask[..., None]).sum(1) / lengths[:, None].to(h.dtype)
        return self.head(pooled)  # (B, n_labels)

    # what the loop asks of any model, answered by the backbone
    def parallel_plan(self) -> ParallelPlan:
        return self.backbone.parallel_plan()

    def tie_weights(self) -> None:
        """Nothing to tie: the output layer the backbone tied its embedding to is gone."""

    def reset_buffers(self) -> None:
        self.backbone.reset_buffers()

    def num_params(self, *, non_embedding: bool = False) -> int:
        del non_embedding
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """The backbone's training FLOPs per token without its output layer; the head acts on
        one vector per sequence, which is negligible."""
        out = self.cfg.vocab_size * self.cfg.n_embd if self.cfg.tie_embeddings else 0
        return max(0, self.backbone.flops_per_token() - 6 * out)
