"""A decoder-only Transformer: GPT-2 by default, Llama-style with rmsnorm + swiglu + rope.

Contract (DESIGN.md): `forward(tokens, state=None) -> (logits, state)`. Here the state is
an optional KVCache for generation; training calls `forward(tokens)` and gets `None` back.
The model knows nothing of losses, optimizers, devices or processes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.layers import (
    CausalSelfAttention,
    KVCache,
    RowCache,
    make_mlp,
    make_norm,
    rope_tables,
)
from lmforge.models.parallel_plan import ParallelPlan, TPStyle


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.n_embd, bias=cfg.bias, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg.norm, cfg.n_embd, bias=cfg.bias, eps=cfg.norm_eps)
        self.mlp = make_mlp(cfg)

    def tp_plan(self) -> dict[str, TPStyle]:
        """How tensor parallelism splits this block: its attention's and its MLP's own plans,
        under the names this block gives them."""
        return {**{f"attn.{k}": v for k, v in self.attn.TP_PLAN.items()},
                **{f"mlp.{k}": v for k, v in self.mlp.TP_PLAN.items()}}

    def forward(self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | RowCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.norm1(x), rope=rope, cache=cache, layer=layer)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    rope_cos: Tensor  # (block_size, hs/2) buffers, with model.pos=rope
    rope_sin: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError(f"model.vocab_size must be set (> 0), got {cfg.vocab_size}; "
                             "take it from the tokenizer before building the model")
        if cfg.pos not in ("learned", "rope"):
            raise ValueError(f"unknown position encoding '{cfg.pos}': use learned or rope")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.norm, cfg.n_embd, bias=cfg.bias, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one tensor: input and output embedding
        if cfg.pos == "rope":
            # derived from the config, so not saved: non-persistent buffers
            cos, sin = rope_tables(cfg, cfg.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def tie_weights(self) -> None:
        """With tie_embeddings, one tensor is both the input embedding and the output layer."""
        if self.cfg.tie_embeddings and self.lm_head.weight is not self.wte.weight:
            self.lm_head.weight = self.wte.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialization (model.zero_init_proj: the residual projections at zero), and
        the rotary tables.

        Called by the constructor. A model built on the meta device and materialized with
        `to_empty` has no values yet: distributed/parallelize.py gives it rank 0's weights
        and calls `reset_buffers`; the tie is made again here in case a copy broke it.
        """
        self.tie_weights()
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
                module.reset_parameters()
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 n_layer):
        # each block adds two of them, and the stream's variance grows with their count
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
                if self.cfg.zero_init_proj:  # the speedrun's: each block starts as the identity
                    nn.init.zeros_(p)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """The buffers computed from the config (the rotary tables), which no checkpoint holds."""
        if self.cfg.pos == "rope":
            cos, sin = rope_tables(self.cfg, self.cfg.block_size, device=self.rope_cos.device,
                                   dtype=self.rope_cos.dtype)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def parallel_plan(self) -> ParallelPlan:
        """The blocks are the units of sharding, recomputation and compilation; tensor
        parallelism splits each block's attention heads and MLP (embeddings, norms and the
        output layer stay whole), so the heads, and the key/value heads of grouped-query
        attention, must divide among the ranks."""
        first = next(iter(self.blocks), None)
        return ParallelPlan(blocks=self.blocks,
                            block_tp=first.tp_plan() if isinstance(first, Block) else {},
                            tp_divisible={"model.n_head": self.cfg.n_head,
                                          "model.n_kv_head": self.cfg.kv_heads})

    def forward(self, tokens: Tensor, state: KVCache | RowCache | None = None
                ) -> tuple[Tensor, KVCache | RowCache | None]:
        """Logits (B, T, vocab) for every position of tokens (B, T), and the cache, if given,
        now holding these T positions as well. A RowCache (serving) holds sequences at
        lengths of their own: row b's tokens then continue row b of the cache."""
        return self.logits(self.hidden(tokens, state)), state  # (B, T, vocab)

    def logits(self, hidden: Tensor) -> Tensor:
        """The output layer on final hidden states (..., C): logits (..., vocab), capped at
        +-model.logit_softcap when it is set (in float32: tanh in bfloat16 would round the
        capped logits to 8 bits). Every caller that wants logits goes through here."""
        logits = self.lm_head(hidden)
        cap = self.cfg.logit_softcap
        if not cap:
            return logits
        return cap * torch.tanh(logits.float() / cap)

    def hidden(self, tokens: Tensor, state: KVCache | RowCache | None = None) -> Tensor:
        """The final hidden states (B, T, C), after the last norm: what the output layer
        reads, and what a task's head (lmforge.tasks) reads instead."""
        B, T = tokens.size()
        if isinstance(state, RowCache):
            p0 = max(state.lengths[:B])
        else:
            p0 = 0 if state is None else state.pos
        if p0 + T > self.cfg.block_size:
            where = f" after {p0} cached tokens" if p0 else ""
            raise ValueError(f"cannot run {T} tokens{where}: the context is limited to "
                             f"block_size={self.cfg.block_size} tokens; crop the input")
        x = self.wte(tokens)  # (B, T, C)
        rope = None
        if isinstance(state, RowCache):  # every row at its own positions
            positions = state.start(B, T)  # (B, T)
            if self.wpe is not None:
                x = x + self.wpe(positions)  # (B, T, C)
            else:  # (B, 1, T, hs/2) each: broadcast over the heads
                rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        elif self.wpe is not None:
            x = x + self.wpe(torch.arange(p0, p0 + T, device=tokens.device))  # (T, C) broadcast
        else:
            rope = (self.rope_cos[p0:p0 + T], self.rope_sin[p0:p0 + T])  # (T, hs/2) each
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, cache=state, layer=i)
        if isinstance(state, RowCache):
            state.advance(B, T)
        elif state is not None:
            state.pos += T
        return self.norm_f(x)  # (B, T, C)

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for block_size positions, on the model's device and dtype by default."""
        weight = self.wte.weight
        return KVCache(n_layer=self.cfg.n_layer, batch_size=batch_size, n_head=self.cfg.kv_heads,
                       max_len=self.cfg.block_size, head_dim=self.cfg.head_size,
                       device=device or weight.device, dtype=dtype or weight.dtype)

    def new_row_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> RowCache:
        """An empty RowCache of batch_size sequences at lengths of their own (serving)."""
        weight = self.wte.weight
        return RowCache(n_layer=self.cfg.n_layer, batch_size=batch_size,
                        n_head=self.cfg.kv_heads, max_len=self.cfg.block_size,
                        head_dim=self.cfg.head_size, device=device or weight.device,
                        dtype=dtype or weight.dtype)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count, tied weights once; non_embedding leaves out the position
        embeddings (as nanoGPT does: the token embedding doubles as the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token, forward and backward: 6 N + 12 n_layer n_embd block_size
        (PaLM appendix B; nanoGPT's estimate_mfu), attention at full context.

        N counts the weights used in matmuls: an untied token embedding is a lookup, so it
        is left out as well as the position embeddings (with tying this is nanoGPT's N).
        """
        n = self.num_params(non_embedding=True)
        if not self.cfg.tie_embeddings:
            n -= self.wte.weight.numel()
        c = self.cfg
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
