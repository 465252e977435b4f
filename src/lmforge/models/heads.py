"""Task heads on a language model: what a pretrained GPT or recurrent net becomes when it is
fine-tuned to classify text instead of continuing it.

`SequenceClassifier` reads the backbone's final hidden states (`hidden`, the input of its
output layer) and maps one vector per sequence to a score per label. The vector is the mean
over its tokens (`pooling="mean"`, the default) or the state at its last token
(`pooling="last"`: in a causal model the only position that has seen the whole text, and for
a recurrent net its final state). Sequences are right-padded, and a causal model's positions
never see what comes after them, so padding changes neither.

`TokenTagger` maps the hidden state at every position to a score per tag (POS, NER): a
causal GPT's state at token t has seen tokens up to t only, a bidirectional recurrent
backbone's (model.bidirectional) the whole sequence.

The backbone's output layer is dropped: a task never reads it, and a weight that gets no
gradient stops DDP. Everything else a model offers the loop (its parallel plan, parameter
and FLOP counts, buffers) is the backbone's, so the same trainer, parallelization and
checkpoints serve a classifier as they serve a language model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.models.gpt import GPT
from lmforge.models.parallel_plan import ParallelPlan
from lmforge.models.rnn import RecurrentLM

POOLINGS = ("last", "mean")


def hidden_states(backbone: GPT | RecurrentLM, tokens: Tensor, lengths: Tensor) -> Tensor:
    """The backbone's hidden states (B, T, C) of right-padded tokens: a causal model's real
    positions never see the padding after them; a bidirectional recurrent one is told the
    lengths, so its backward pass starts at each sequence's own last token."""
    if isinstance(backbone, RecurrentLM):
        return backbone.hidden(tokens, lengths=lengths)
    return backbone.hidden(tokens)


class TaskHead(nn.Module):
    """A linear head of `n_out` scores on a backbone whose output layer is gone; what the loop
    asks of any model is answered by the backbone."""

    def __init__(self, backbone: GPT | RecurrentLM, n_out: int, *, bias: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = backbone.cfg
        # never read (see above); its type is the backbone's, the layer is gone
        backbone.lm_head = nn.Identity()  # type: ignore[assignment]
        self.head = nn.Linear(backbone.cfg.n_embd, n_out, bias=bias)
        self.init_head()

    @torch.no_grad()
    def init_head(self) -> None:
        """Small random weights and zero biases: every label starts near even odds."""
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

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
        """The backbone's training FLOPs per token without its output layer (a head on one
        vector per sequence adds a negligible amount; TokenTagger adds its own)."""
        out = self.cfg.vocab_size * self.cfg.n_embd if self.cfg.tie_embeddings else 0
        return max(0, self.backbone.flops_per_token() - 6 * out)


class SequenceClassifier(TaskHead):
    def __init__(self, backbone: GPT | RecurrentLM, n_labels: int, *,
                 pooling: str = "mean") -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}': use {' or '.join(POOLINGS)}")
        # No bias, as in transformers' *ForSequenceClassification `score` layer, so that a
        # classifier exports to it exactly; a label's base rate is left to its decision
        # threshold (several labels) or to the hidden state.
        super().__init__(backbone, n_labels, bias=False)
        self.pooling, self.n_labels = pooling, n_labels

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Scores (B, n_labels) of tokens (B, T), right-padded; lengths (B,) >= 1."""
        h = hidden_states(self.backbone, tokens, lengths)  # (B, T, C)
        if self.pooling == "last":
            pooled = h[torch.arange(h.size(0), device=h.device), lengths - 1]  # (B, C)
        else:
            mask = torch.arange(h.size(1), device=h.device)[None, :] < lengths[:, None]
            pooled = (h * mask[..., None]).sum(1) / lengths[:, None].to(h.dtype)
        return self.head(pooled)  # (B, n_labels)


class TokenTagger(TaskHead):
    """Scores (B, T, n_tags) at every position: a tag per token."""

    def __init__(self, backbone: GPT | RecurrentLM, n_tags: int) -> None:
        super().__init__(backbone, n_tags)
        self.n_tags = n_tags

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Scores (B, T, n_tags) of tokens (B, T), right-padded; lengths (B,) >= 1. Positions
        past a sequence's length score padding, which the loss ignores."""
        return self.head(hidden_states(self.backbone, tokens, lengths))  # (B, T, n_tags)

    def flops_per_token(self) -> int:
        return super().flops_per_token() + 6 * self.cfg.n_embd * self.n_tags
