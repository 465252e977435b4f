"""Shared Transformer blocks: norms, rotary embeddings, causal self-attention with a KV
cache, and the feed-forward blocks (GPT-2's GELU MLP, also with ReLU squared, and Llama's
SwiGLU).

Shapes: B batch, T new tokens, C n_embd, nh heads, hs head size, L cache length.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.parallel_plan import TPStyle


def make_norm(kind: str, dim: int, *, bias: bool, eps: float) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm (which has no bias). The epsilon is always
    explicit: RMSNorm's own default takes finfo(dtype).eps, which would make bf16 and fp32
    runs normalize differently."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm '{kind}': use layernorm or rmsnorm (batch normalization "
                     "would let a causal model see future tokens)")


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm computed in float32 when the input is bfloat16 or float16 (under autocast),
    then cast back: the same values as torch's own mixed-dtype path, which a float32 gain on a
    bfloat16 input sends to an unfused kernel about 9x slower (forward and backward) on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.bfloat16, torch.float16) and self.weight is not None \
                and self.weight.dtype == torch.float32:
            return F.rms_norm(x.float(), self.normalized_shape, self.weight, self.eps).to(x.dtype)
        return super().forward(x)


# ---------------------------------------------------------------------------- rotary

def scaled_frequencies(inv_freq: Tensor, cfg: ModelConfig) -> Tensor:
    """The rotary frequencies stretched for long contexts as cfg.rope_scaling says.

    linear: every frequency divided by the factor (positions compressed). llama3 (Llama 3.1):
    wavelengths longer than original_context / low_freq_factor are stretched by the factor,
    those shorter than original_context / high_freq_factor are kept, and the band between
    blends the two, so local order stays sharp while distant positions fit the longer context.
    """
    factor = cfg.rope_factor
    if cfg.rope_scaling == "linear":
        return inv_freq / factor
    if cfg.rope_scaling != "llama3":
        return inv_freq
    context, low, high = cfg.rope_original_context, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    smooth = ((context / wavelength - low) / (high - low)).clamp(0.0, 1.0)  # 0: stretch, 1: keep
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(wavelength > context / low, inv_freq / factor,
                       torch.where(wavelength < context / high, inv_freq, blended))


def rope_tables(cfg: ModelConfig, length: int, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles, (length, head_size // 2) each."""
    head_dim = cfg.head_size
    # float64 for the angles: position * frequency loses digits in float32 at long contexts
    inv_freq = cfg.rope_theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64,
                                                device=device) / head_dim)
    inv_freq = scaled_frequencies(inv_freq, cfg)
    angles = torch.outer(torch.arange(length, dtype=torch.float64, device=device), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, nh, T, hs) by the angles of its positions, cos/sin (T, hs/2), or
    (B, 1, T, hs/2) where each row has positions of its own (a RowCache).

    The half-split layout (GPT-NeoX, Hugging Face Llama): dimension i pairs with i + hs/2.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # no-op unless running in bf16
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ---------------------------------------------------------------------------- KV cache

class _KeyValues:
    """Preallocated keys and values (n_layer, batch, n_kv_head, max_len, head_dim)."""

    def __init__(self, *, n_layer: int, batch_size: int, n_head: int, max_len: int,
                 head_dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def max_len(self) -> int:
        return self.k.size(3)


class KVCache(_KeyValues):
    """Keys and values of every layer for the tokens seen so far.

    Preallocated to `max_len` positions so decoding never reallocates; `pos` counts the
    positions filled. With grouped-query attention it holds the key/value heads only, which
    is where that design saves its memory. Attention layers write through `update`; the model advances `pos`
    once per forward, after all layers have written.
    """

    def __init__(self, *, n_layer: int, batch_size: int, n_head: int, max_len: int,
                 head_dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(n_layer=n_layer, batch_size=batch_size, n_head=n_head,
                         max_len=max_len, head_dim=head_dim, device=device, dtype=dtype)
        self.pos = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs) at positions pos..pos+T; return all keys and values so far."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nh, pos+T, hs)


class RowCache(_KeyValues):
    """Keys and values of up to `batch_size` independent sequences, each at its own length:
    the cache of continuous batching (lmforge.serve), where requests join and leave a running
    batch at any step.

    A forward of B rows (tokens (B, T)) uses cache rows 0..B-1: the caller keeps the rows in
    use at the front, filling a row from a prefilled one-row KVCache (`load`) and moving the
    last row into a freed one (`move`). `lengths` counts each row's filled positions (Python
    ints, so no step waits on the device to learn them). `start` gives the new tokens their
    own positions, lengths[b] + 0..T-1, which the model turns into position embeddings or
    rotary angles per row, and builds the one mask (B, 1, T, L) that every layer reads: a row
    sees its own keys up to its query's position and nothing past its length (those slots
    hold another sequence's stale keys, or zeros).
    """

    def __init__(self, *, n_layer: int, batch_size: int, n_head: int, max_len: int,
                 head_dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(n_layer=n_layer, batch_size=batch_size, n_head=n_head,
                         max_len=max_len, head_dim=head_dim, device=device, dtype=dtype)
        self.lengths = [0] * batch_size
        self._keys = torch.arange(max_len, device=device)
        # the flat slot (row, head, position) of a (n_layer, ...) layer's keys viewed as rows
        self._row_head = (torch.arange(batch_size, device=device)[:, None, None] * n_head
                          + torch.arange(n_head, device=device)[None, :, None]) * max_len
        self.mask: Tensor | None = None  # (B, 1, T, L), set by start for the layers
        self._slots = self._keys[:0]  # (B * nh * T,), set by start
        self._end = 0


    def start(self, batch: int, t: int) -> Tensor:
        """The positions (B, T) of the next T tokens of rows 0..B-1, and the mask the
        attention layers read for them."""
        lengths = self.lengths[:batch]
        self._end = max(lengths) + t
        if self._end > self.max_len:
            raise ValueError(f"cannot run {t} tokens after {max(lengths)} cached tokens: the "
                             f"cache holds {self.max_len} positions")
        first = torch.tensor(lengths, device=self.k.device)  # (B,)
        positions = first[:, None] + self._keys[:t]  # (B, T)
        keys = self._keys[:self._end]  # (L,)
        self.mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, L)
        self._slots = (self._row_head[:batch] + positions[:, None, :]).reshape(-1)  # (B*nh*T,)
        return positions

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs) at each row's own positions; return the keys and values
        of rows 0..B-1 up to the longest row, (B, nh, L, hs)."""
        B, hs = k.size(0), k.size(-1)
        # one index_copy_ of the (B * nh * T) vectors into their slots
        self.k[layer].view(-1, hs).index_copy_(0, self._slots, k.reshape(-1, hs))
        self.v[layer].view(-1, hs).index_copy_(0, self._slots, v.reshape(-1, hs))
        return self.k[layer, :B, :, :self._end], self.v[layer, :B, :, :self._end]

    def advance(self, batch: int, t: int) -> None:
        """Count the T tokens that rows 0..B-1 have just written (the model, after its layers)."""
        for b in range(batch):
            self.lengths[b] += t

    def load(self, row: int, cache: KVCache, index: int = 0) -> None:
        """Fill `row` with row `index` of a KVCache (a prompt prefilled alone)."""
        n = cache.pos
        self.k[:, row, :, :n] = cache.k[:, index, :, :n]
        self.v[:, row, :, :n] = cache.v[:, index, :, :n]
        self.lengths[row] = n

    def move(self, src: int, dst: int) -> None:
        """Copy row src into row dst (to keep the rows in use at the front)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n


def cache_mask(p0: int, t: int, *, device: torch.device) -> Tensor:
    """(t, p0+t) boolean mask: query i, at absolute position p0+i, sees keys 0..p0+i."""
    keys = torch.arange(p0 + t, device=device)
    queries = torch.arange(p0, p0 + t, device=device)
    return keys[None, :] <= queries[:, None]


# ---------------------------------------------------------------------------- attention

def _needs_backward(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, dropout_p: float,
              causal: bool) -> Tensor:
    """Scaled dot-product attention, in float32 on CPU when autocast hands it bfloat16.

    On CPU the bf16 flash-attention backward is about 6x slower than the float32 one (3.1 ms
    against 0.5 ms per call for nanoGPT's 12x4x64x32 shapes), while the matrix products
    around it are where bf16 pays (3.5x); attention is a small share of the FLOPs, so it
    runs in float32 and its output goes back to bf16 for the projection that follows.
    Causal attention over a whole window without a backward (evaluation, a prompt) stays in
    bf16, whose forward alone is there ~2.5x faster than float32's with its casts; not so for
    one new token against a cache (~4x slower than float32 at GPT-2's shapes).
    """
    bf16_pays = causal and mask is None and not _needs_backward(q, k, v)
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and not bf16_pays:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                               dropout_p=dropout_p, is_causal=causal)
        return y.to(torch.bfloat16)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=causal)


class CausalSelfAttention(nn.Module):
    # Tensor parallelism: q, k and v split by output features, so each rank holds whole
    # heads (and, with grouped-query attention, whole groups); the output projection by input
    # features, summed across ranks.
    TP_PLAN: dict[str, TPStyle] = {"q_proj": "colwise", "k_proj": "colwise",
                                   "v_proj": "colwise", "c_proj": "rowwise"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.n_embd % cfg.n_head and not cfg.head_dim:
            raise ValueError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
        if cfg.n_head % cfg.kv_heads:
            raise ValueError(f"n_kv_head={cfg.kv_heads} does not divide n_head={cfg.n_head}")
        self.head_dim = cfg.head_size
        self.dropout = cfg.dropout
        q_width, kv_width = cfg.n_head * cfg.head_size, cfg.kv_heads * cfg.head_size
        qkv_bias = cfg.bias or cfg.qkv_bias
        # Separate q, k and v projections (not GPT-2's fused c_attn) so that tensor parallelism
        # can give each rank whole heads by splitting each one's output features.
        self.q_proj = nn.Linear(cfg.n_embd, q_width, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, kv_width, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, kv_width, bias=qkv_bias)
        self.c_proj = nn.Linear(q_width, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        # model.qk_norm: one gain over a head's width, shared by every head (Qwen3's q_norm)
        self.q_norm = RMSNorm(cfg.head_size, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_size, eps=cfg.norm_eps) if cfg.qk_norm else None
        # (weight, bias, widths) of q, k and v as one product, once fuse_qkv ran (decoding)
        self.qkv: tuple[Tensor, Tensor | None, list[int]] | None = None

    @torch.no_grad()
    def fuse_qkv(self) -> bool:
        """For a model that only decodes from now on (models/decode_layout.py): q, k and v
        computed by one product, whose weight is the three stacked and stored column by
        column (for one token, three reads of small matrices cost ~1.8x one read of the
        stack); the projections' weights and biases become views into it, so nothing is
        held twice. False, and nothing changed, where a projection is not a plain nn.Linear
        (LoRA's adapters wrap them), its weight is not an ordinary tensor, or only some of
        the three have a bias."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        biases = [p.bias for p in projections]
        if (not all(type(p) is nn.Linear and type(p.weight.data) is torch.Tensor
                    for p in projections)
                or len({b is None for b in biases}) > 1):
            return False
        widths = [p.out_features for p in projections]
        starts = [sum(widths[:i]) for i in range(3)]
        weight = torch.cat([p.weight for p in projections]).t().contiguous().t()  # (q+2kv, C)
        bias = None if biases[0] is None else torch.cat([b for b in biases if b is not None])
        for p, start, width in zip(projections, starts, widths, strict=True):
            p.weight.data = weight.narrow(0, start, width)
            if p.bias is not None and bias is not None:
                p.bias.data = bias.narrow(0, start, width)
        self.qkv = (weight, bias, widths)
        return True

    def forward(self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | RowCache | None = None, layer: int = 0) -> Tensor:
        B, T, _ = x.size()
        hs = self.head_dim
        if self.qkv is not None and not self.training:  # one product for the three
            weight, bias, widths = self.qkv
            q, k, v = F.linear(x, weight, bias).split(widths, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # -1 heads: all of them, or this rank's share under tensor parallelism
        q = q.view(B, T, -1, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, -1, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, -1, hs).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            # before the rotation (which keeps norms): the cache holds normalized keys
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout_p = self.dropout if self.training else 0.0

        mask, causal = None, True  # training path: SDPA's own causal mask, nothing built here
        if isinstance(cache, RowCache):  # rows at their own lengths: the cache's own mask
            k, v = cache.update(layer, k, v)  # (B, nkv, L, hs)
            mask, causal = cache.mask, False
        elif cache is not None:
            p0 = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nkv, p0+T, hs)
            if p0 > 0:
                # is_causal aligns the mask top-left, wrong once keys outnumber queries;
                # one new token sees every cached key and needs no mask at all
                causal = False
                mask = cache_mask(p0, T, device=x.device) if T > 1 else None
        if k.size(1) != q.size(1):  # grouped-query: query head i reads key/value head i // group
            group = q.size(1) // k.size(1)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = attention(q, k, v, mask=mask, dropout_p=dropout_p, causal=causal)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # heads side by side again
        return self.resid_drop(self.c_proj(y))


# ---------------------------------------------------------------------------- MLPs

class _ReLUSquared(torch.autograd.Function):
    """relu(x) squared, whose backward is grad * 2 relu(x) from the saved relu(x): the same
    values as F.relu(x).square() in two passes over the hidden activations instead of four
    (autograd's pow backward and threshold backward), ~30% less of that work on a CPU."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2)  # doubling is exact: the same bits as grad * (2 * r)


class MLP(nn.Module):
    """GPT-2's feed-forward block: exact GELU (model.mlp=gelu) or GPT-2's tanh approximation
    of it (gelu_tanh, HF's gelu_new); or ReLU squared (relu2, the NanoGPT speedrun's)."""

    TP_PLAN: dict[str, TPStyle] = {"c_fc": "colwise", "c_proj": "rowwise"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.mlp_hidden or int(cfg.mlp_ratio * cfg.n_embd)
        self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.mlp == "gelu_tanh" else "none"
        self.relu2 = cfg.mlp == "relu2"

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        h = _ReLUSquared.apply(h) if self.relu2 else F.gelu(h, approximate=self.approximate)
        return self.drop(self.c_proj(h))


def swiglu_hidden(n_embd: int, mlp_ratio: float) -> int:
    """Hidden width of SwiGLU: 2/3 of the GELU MLP's, so the three matrices hold about as
    many parameters as the GELU MLP's two, rounded up to a multiple of 8 for the kernels."""
    return 8 * math.ceil(int(mlp_ratio * n_embd * 2 / 3) / 8)


class SwiGLU(nn.Module):
    """Llama's feed-forward block: c_proj(silu(w1 x) * w3 x)."""

    TP_PLAN: dict[str, TPStyle] = {"w1": "colwise", "w3": "colwise", "c_proj": "rowwise"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.mlp_hidden or swiglu_hidden(cfg.n_embd, cfg.mlp_ratio)
        self.w1 = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)  # gate
        self.w3 = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)  # up
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)  # w2, down
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.c_proj(F.silu(self.w1(x)) * self.w3(x)))


def make_mlp(cfg: ModelConfig) -> MLP | SwiGLU:
    if cfg.mlp in ("gelu", "gelu_tanh", "relu2"):
        return MLP(cfg)
    if cfg.mlp == "swiglu":
        return SwiGLU(cfg)
    raise ValueError(f"unknown mlp '{cfg.mlp}': use gelu, gelu_tanh, swiglu or relu2")
