"""Recurrent language models: a stack of tanh RNN, LSTM or GRU layers between an embedding
and an output layer, the classic word-level LM (Zaremba et al. 2014; PyTorch's
word_language_model).

Contract (DESIGN.md): `forward(tokens, state=None) -> (logits, state)`. The state is the
hidden state after the last token, (n_layer, B, n_embd), or the (h, c) pair of such tensors
for an LSTM; None means zeros. Feeding it back in continues the sequence: the trainer
carries it from one chunk to the next (truncated BPTT, after `detach_state`) and generation
feeds one token at a time. Sizes come from ModelConfig: n_embd is both the embedding width
and the hidden size (so the output layer can always be tied), n_layer the depth, dropout
the rate on the embedding, between layers and before the output layer; n_head, block_size,
norm, mlp and pos do not apply.

With model.bidirectional the layers read each sequence both ways (for tagging, where a
word's tag depends on what follows it): each layer's output is 2 n_embd wide, and a linear
projection brings the top one back to n_embd, so a task's head reads the same width as from
a one-way model. Such a model has seen token t+1 when it predicts it, so it is never a
language model: `forward` (the LM logits) refuses it, and tasks read `hidden`, which takes
the sequences' lengths so that right padding never reaches a real position backwards.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models.parallel_plan import ParallelPlan

State = Tensor | tuple[Tensor, Tensor]

CELLS: dict[str, type[nn.RNN] | type[nn.LSTM] | type[nn.GRU]] = {
    "rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentLM(nn.Module):
    """Embedding → n_layer recurrent layers (the cell is cfg.arch) → linear output layer."""

    recurrent = True  # callers branch on getattr(model, "recurrent", False)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch not in CELLS:
            raise ValueError(f"RecurrentLM builds {', '.join(CELLS)}; got model.arch='{cfg.arch}'")
        if cfg.vocab_size <= 0:
            raise ValueError(f"model.vocab_size must be set (> 0), got {cfg.vocab_size}; "
                             "take it from the tokenizer before building the model")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        # torch applies this dropout between layers only, and warns if there is one layer
        between = cfg.dropout if cfg.n_layer > 1 else 0.0
        self.directions = 2 if cfg.bidirectional else 1
        self.rnn = CELLS[cfg.arch](cfg.n_embd, cfg.n_embd, num_layers=cfg.n_layer,
                                   dropout=between, batch_first=True,
                                   bidirectional=cfg.bidirectional)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one tensor: input and output embedding
        # only when bidirectional, so a one-way model's weights and random draws stay as they were
        self.proj = (nn.Linear(2 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
                     if cfg.bidirectional else None)
        self.init_weights()

    def tie_weights(self) -> None:
        """With tie_embeddings, one tensor is both the input embedding and the output layer."""
        if self.cfg.tie_embeddings and self.lm_head.weight is not self.wte.weight:
            self.lm_head.weight = self.wte.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialization for recurrent nets, gate by gate: orthogonal recurrent weights keep
        the hidden state's norm through many steps, Xavier input weights keep the activations'
        scale between layers, biases are zero except the LSTM forget gate's, set to 1 so that
        the cell remembers by default early in training (Jozefowicz et al. 2015).

        Called by the constructor. A model built on the meta device gets its weights from
        rank 0 instead (distributed/parallelize.py); the tie is made again here in case a
        copy broke it.
        """
        self.tie_weights()
        # small uniform embeddings, as in word_language_model; the tied output layer shares them
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        if not self.cfg.tie_embeddings:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)
        if self.lm_head.bias is not None:
            nn.init.zeros_(self.lm_head.bias)
        hidden = self.cfg.n_embd
        for name, p in self.rnn.named_parameters():
            # weights and biases stack the gates along dim 0, each `hidden` rows
            for gate in p.split(hidden):
                if name.startswith("weight_hh"):
                    nn.init.orthogonal_(gate)
                elif name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(gate)
                else:
                    nn.init.zeros_(gate)
            if self.cfg.arch == "lstm" and name.startswith("bias_ih"):
                p[hidden:2 * hidden].fill_(1.0)  # gate order i, f, g, o; bias_hh adds 0
        if self.proj is not None:
            nn.init.xavier_uniform_(self.proj.weight)
            if self.proj.bias is not None:
                nn.init.zeros_(self.proj.bias)

    def parallel_plan(self) -> ParallelPlan:
        """No repeated blocks to shard, recompute or compile one by one: FSDP shards the whole
        model as one unit, and tensor parallelism has nothing it can split."""
        return ParallelPlan(no_tp_reason=f"model.arch={self.cfg.arch} has neither")

    def reset_buffers(self) -> None:
        """No buffers: everything a recurrent model computes with is a weight."""

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits (B, T, vocab) for every position of tokens (B, T), and the state after the
        last one; state None starts from zeros."""
        if self.cfg.bidirectional:
            raise ConfigError("model.bidirectional=true: a model that reads backwards sees the "
                              "next token, so it cannot be trained as a language model; use it "
                              "for tagging (lmforge.tasks.tag)")
        x, state = self._run(tokens, state)
        return self.lm_head(x), state  # (B, T, vocab)

    def hidden(self, tokens: Tensor, state: State | None = None, *,
               lengths: Tensor | None = None) -> Tensor:
        """The last layer's outputs (B, T, C), what the output layer reads: at position t the
        state after token t, so a task's head (lmforge.tasks) reads the last one. `lengths`
        (B,) of right-padded sequences: a bidirectional model then starts each backward pass
        at the sequence's own last token, not at the padding (a one-way model needs no
        lengths: padding comes after every real position)."""
        return self._run(tokens, state, lengths=lengths)[0]

    def _run(self, tokens: Tensor, state: State | None, *,
             lengths: Tensor | None = None) -> tuple[Tensor, State]:
        x = self.drop(self.wte(tokens))  # (B, T, C)
        if self.proj is None:
            x, state = self.rnn(x, state)  # (B, T, C); state (L, B, C), or a pair of them
            return self.drop(x), state
        if lengths is None:
            x, state = self.rnn(x, state)  # (B, T, 2C); state (2L, B, C), or a pair
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, state = self.rnn(packed, state)
            x, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.size(1))
        return self.drop(self.proj(x)), state  # (B, T, C)

    def new_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        """The zero state, the same as passing None, for callers that keep one per stream;
        on the model's device and in its dtype unless given a device."""
        weight = self.wte.weight
        shape = (self.directions * self.cfg.n_layer, batch_size, self.cfg.n_embd)
        h = torch.zeros(shape, device=device or weight.device, dtype=weight.dtype)
        return (h, torch.zeros_like(h)) if self.cfg.arch == "lstm" else h

    @staticmethod
    def detach_state(state: State | None) -> State | None:
        """The same values cut from the graph that made them: truncated BPTT carries the state
        into the next chunk without backpropagating into the previous one."""
        if state is None:
            return None
        if isinstance(state, tuple):
            return state[0].detach(), state[1].detach()
        return state.detach()

    @staticmethod
    def reset_state(state: State | None, mask: Tensor) -> State | None:
        """The state with the rows where mask (B,) is True set to zero, for streams that start a
        new document. Not in place, so a state saved for backward stays intact."""
        if state is None:
            return None
        rows = mask.to(torch.bool)[None, :, None]  # (1, B, 1) against (L, B, C)
        if isinstance(state, tuple):
            return state[0].masked_fill(rows, 0.0), state[1].masked_fill(rows, 0.0)
        return state.masked_fill(rows, 0.0)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count, tied weights once. non_embedding means what it means for GPT,
        leaving out position embeddings; a recurrent net has none, so the count is the same."""
        del non_embedding  # accepted so callers can treat every model alike
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token, forward and backward: 6 N, where N counts the weights used
        in matmuls (2 FLOPs each forward, 4 backward): the recurrent layers' input and hidden
        weights and the output layer, biases included as GPT includes them. An untied token
        embedding is a lookup, so it is left out; gate nonlinearities are not counted.
        There is no attention term: a step costs the same at any position.
        """
        n = self.num_params()
        if not self.cfg.tie_embeddings:
            n -= self.wte.weight.numel()
        return 6 * n
