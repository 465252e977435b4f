"""The GPT model against plain references: float64 attention, causality, the KV cache,
GPT-2 initialization and hand-counted parameters."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from helpers import assert_meta_build_equals_direct

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models import MODELS, build_model
from lmforge.models.decode_layout import use_decode_layout
from lmforge.models.gpt import GPT
from lmforge.models.layers import CausalSelfAttention, KVCache, attention, cache_mask, swiglu_hidden


def tiny(**overrides) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, n_embd=16, block_size=12, vocab_size=11)
    return ModelConfig(**{**base, **overrides})


def gpt(cfg: ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).to(dtype).eval()


# ---------------------------------------------------------------------------- attention

def reference_attention(attn: CausalSelfAttention, x: torch.Tensor, *, rope_theta: float | None):
    """softmax(Q K^T / sqrt(d) + causal mask) V, written out in float64 (with model.qk_norm,
    each head's q and k divided by their root mean square and scaled by the gains first)."""
    x = x.double()
    B, T, C = x.shape
    hs = attn.head_dim
    nh = C // hs
    q, k, v = (x @ p.weight.double().T + p.bias.double() for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k, v = (t.reshape(B, T, nh, hs).permute(0, 2, 1, 3) for t in (q, k, v))
    if attn.q_norm is not None and attn.k_norm is not None:
        def rms(t, norm):
            return t / (t.square().mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight.double()

        q, k = rms(q, attn.q_norm), rms(k, attn.k_norm)
    if rope_theta is not None:
        # the same rotation as complex numbers: (x_i + j x_{i+hs/2}) * e^{j pos theta^(-2i/hs)}
        freqs = rope_theta ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        rot = torch.polar(torch.ones(T, hs // 2, dtype=torch.float64),
                          torch.arange(T, dtype=torch.float64)[:, None] * freqs)

        def rotate(t):
            z = torch.complex(t[..., : hs // 2], t[..., hs // 2:]) * rot
            return torch.cat((z.real, z.imag), dim=-1)

        q, k = rotate(q), rotate(k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    y = y.permute(0, 2, 1, 3).reshape(B, T, C)
    return y @ attn.c_proj.weight.double().T + attn.c_proj.bias.double()


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_matches_float64_reference(pos, qk_norm):
    from lmforge.models.layers import rope_tables

    cfg = tiny(n_embd=32, n_head=4, bias=True, qk_norm=qk_norm)
    torch.manual_seed(0)
    attn = CausalSelfAttention(cfg).eval()
    if qk_norm:  # gains other than the init's ones, so that using them is tested
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 2.0)
            attn.k_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 9, 32)
    theta = 10000.0 if pos == "rope" else None
    rope = rope_tables(cfg, 9) if theta else None
    ref = reference_attention(attn, x, rope_theta=theta)

    out32 = attn(x, rope=rope)
    assert (out32.double() - ref).abs().max() < 1e-5
    attn64 = attn.double()
    rope64 = rope_tables(cfg, 9, dtype=torch.float64) if theta else None
    out64 = attn64(x.double(), rope=rope64)
    torch.testing.assert_close(out64, ref, rtol=0, atol=1e-12)


def test_bf16_attention_on_cpu_runs_in_float32_and_matches_it():
    # Under autocast the projections hand attention bf16; on CPU it is computed in float32
    # (the bf16 kernel's backward is ~6x slower) and handed back as bf16.
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 16, 8, dtype=torch.float64) for _ in range(3))
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(*low, mask=None, dropout_p=0.0, causal=True)
    assert y.dtype == torch.bfloat16
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.detach().double() for t in low), is_causal=True)
    # float32 inside: only the final rounding to bf16 (8-bit mantissa) is left
    assert torch.allclose(y.double(), ref, atol=1e-2, rtol=1e-2)
    y.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.isfinite().all()
               for t in low)


def _casts_in_attention(tensors: list[torch.Tensor], *, grad: bool) -> int:
    """How many dtype conversions attention() makes on these inputs (profiled)."""
    with torch.set_grad_enabled(grad), torch.profiler.profile() as prof:
        attention(*tensors, mask=None, dropout_p=0.0, causal=True)
    return sum(e.name == "aten::_to_copy" for e in prof.events())


def test_bf16_attention_without_backward_stays_in_bf16():
    # Evaluation and generation need no backward, and the bf16 forward is the faster one:
    # no casts to float32 and back, and the values still those of float64 to bf16's precision
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 16, 8, dtype=torch.float64) for _ in range(3))
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    assert _casts_in_attention(low, grad=False) == 0
    assert _casts_in_attention(low, grad=True) == 4  # q, k, v up and the output down
    with torch.no_grad():
        y = attention(*low, mask=None, dropout_p=0.0, causal=True)
    assert y.dtype == torch.bfloat16
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.detach().double() for t in low), is_causal=True)
    assert torch.allclose(y.double(), ref, atol=2e-2, rtol=2e-2)


def test_cache_mask_lets_each_query_see_its_past():
    mask = cache_mask(2, 3, device=torch.device("cpu"))
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


# ---------------------------------------------------------------------------- causality

VARIANTS = list(itertools.product(["layernorm", "rmsnorm"], ["gelu", "swiglu"],
                                  ["learned", "rope"], [True, False], [True, False]))


@pytest.mark.parametrize("norm,mlp,pos,bias,tie", VARIANTS)
def test_future_tokens_do_not_change_past_logits(norm, mlp, pos, bias, tie):
    model = gpt(tiny(norm=norm, mlp=mlp, pos=pos, bias=bias, tie_embeddings=tie))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (2, 12), generator=g)
    t = 7
    changed = tokens.clone()
    changed[:, t] = (tokens[:, t] + 1) % 11
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4  # and the change is seen where it happens


# ---------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_cache_steps_match_full_forward(pos, chunk, qk_norm):
    model = gpt(tiny(pos=pos, norm="rmsnorm" if pos == "rope" else "layernorm", qk_norm=qk_norm))
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, state = model(tokens)
        assert state is None
        cache = model.new_cache(2)
        pieces = []
        for i in range(0, 12, chunk):
            logits, returned = model(tokens[:, i:i + chunk], cache)
            assert returned is cache
            pieces.append(logits)
    assert cache.pos == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_cache_is_preallocated_to_block_size():
    model = gpt(tiny())
    cache = model.new_cache(3)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 3, 2, 12, 8) and cache.max_len == 12 and cache.pos == 0
    assert cache.k.dtype == torch.float32


def test_too_long_input_is_a_clear_error():
    model = gpt(tiny())
    with pytest.raises(ValueError, match="block_size=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    cache = model.new_cache(1)
    model(torch.zeros(1, 10, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="after 10 cached tokens"):
        model(torch.zeros(1, 3, dtype=torch.long), cache)


# ---------------------------------------------------------------------------- init, size

def test_gpt2_init():
    cfg = tiny(n_layer=4, n_embd=256, n_head=4, vocab_size=512, bias=True)
    model = gpt(cfg)
    want = 0.02 / math.sqrt(2 * 4)
    for name in ("blocks.1.mlp.c_proj.weight", "blocks.2.attn.c_proj.weight"):
        std = model.get_parameter(name).std().item()
        assert abs(std - want) / want < 0.1, (name, std, want)
    std = model.blocks[0].mlp.c_fc.weight.std().item()
    assert abs(std - 0.02) / 0.02 < 0.1
    assert abs(model.wte.weight.std().item() - 0.02) / 0.02 < 0.1
    assert torch.count_nonzero(model.blocks[0].attn.q_proj.bias) == 0
    assert torch.equal(model.blocks[0].norm1.weight, torch.ones(256))


def test_tied_embeddings_share_storage():
    tied = gpt(tiny(tie_embeddings=True))
    assert tied.lm_head.weight is tied.wte.weight
    assert tied.lm_head.weight.data_ptr() == tied.wte.weight.data_ptr()
    untied = gpt(tiny(tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()


@pytest.mark.parametrize("tie, style", [(True, {}), (False, {"bias": True}),
                                         (True, {"pos": "rope", "n_kv_head": 1})])
def test_decode_layout_keeps_the_values_and_the_tie(tie, style):
    model = gpt(tiny(tie_embeddings=tie, **style)).eval()
    tokens = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(1))
    before = model(tokens)[0]
    params = {name: p for name, p in model.named_parameters()}
    assert use_decode_layout(model) is model
    assert {name: p for name, p in model.named_parameters()} == params  # the same objects
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj")):
            continue  # below
        if isinstance(module, torch.nn.Linear):  # more outputs than inputs: column by column
            wide = module.out_features > module.in_features
            assert module.weight.t().is_contiguous() == wide, name
            assert module.weight.is_contiguous() == (not wide), name
    for block in model.blocks:  # q, k and v: views into one stacked weight, column by column
        attn = block.attn
        assert attn.qkv is not None and attn.qkv[0].t().is_contiguous()
        fused = attn.qkv[0].untyped_storage().data_ptr()
        assert all(p.weight.untyped_storage().data_ptr() == fused
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    assert (model.lm_head.weight is model.wte.weight) == tie
    assert torch.allclose(model(tokens)[0], before, atol=1e-5)
    cache = model.new_cache(3)  # and decoding with the cache
    steps = [model(tokens[:, i:i + 1], cache)[0] for i in range(12)]
    assert torch.allclose(torch.cat(steps, dim=1), before, atol=1e-5)


def test_num_params_equals_hand_count():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=10, bias=True)
    # wte 10*8 + wpe 8*8 + block (ln 16, q/k/v 3*(8*8+8), c_proj 64+8, ln 16,
    # c_fc 8*32+32, c_proj 32*8+8) + ln_f 16; lm_head tied
    block = 16 + 216 + 72 + 16 + 288 + 264
    model = GPT(cfg)
    assert model.num_params() == 80 + 64 + block + 16 == 1032
    assert model.num_params(non_embedding=True) == 1032 - 64
    assert model.flops_per_token() == 6 * 968 + 12 * 1 * 8 * 8

    llama = dataclasses.replace(cfg, bias=False, norm="rmsnorm", mlp="swiglu", pos="rope",
                                tie_embeddings=False)
    assert swiglu_hidden(8, 4.0) == 24  # int(21.33) = 21, rounded up to 24
    # wte 80 + block (rms 8, q/k/v 192, c_proj 64, rms 8, w1 192, w3 192, c_proj 192)
    # + rms_f 8 + lm_head 80
    model = GPT(llama)
    assert model.num_params() == 80 + 848 + 8 + 80 == 1016
    assert model.num_params(non_embedding=True) == 1016
    assert model.flops_per_token() == 6 * (1016 - 80) + 12 * 8 * 8


def test_meta_build_then_init_equals_direct_build():
    meta, direct = assert_meta_build_equals_direct(GPT, tiny(pos="rope", tie_embeddings=True))
    assert torch.equal(meta.rope_cos, direct.rope_cos) and torch.equal(meta.rope_sin, direct.rope_sin)


def test_registry_and_errors():
    assert MODELS["gpt"] is GPT and {"rnn", "lstm", "gru"} <= MODELS.keys()
    assert isinstance(build_model(tiny()), GPT)
    with pytest.raises(ConfigError, match="known: gpt"):
        build_model(tiny(arch="mamba"))
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(tiny(vocab_size=0))


def test_training_step_reduces_loss():
    # dropout on, gradients flow through every parameter (tied ones included)
    model = gpt(tiny(dropout=0.1)).train()
    tokens = torch.randint(0, 11, (4, 12), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


# ---------------------------------------------------------------------------- speedrun options

def test_qk_norm_adds_per_head_gains_and_changes_the_computation():
    from lmforge.config_checks import model_params

    cfg = tiny(pos="rope", norm="rmsnorm", qk_norm=True)
    normed, plain = gpt(cfg), gpt(dataclasses.replace(cfg, qk_norm=False))
    extra = {n for n in dict(normed.named_parameters())} - set(dict(plain.named_parameters()))
    assert extra == {f"blocks.{i}.attn.{w}_norm.weight" for i in range(2) for w in "qk"}
    assert normed.get_parameter("blocks.0.attn.q_norm.weight").shape == (8,)  # head_size
    assert model_params(cfg) == normed.num_params() == plain.num_params() + 2 * 2 * 8
    plain.load_state_dict({k: v for k, v in normed.state_dict().items() if "_norm." not in k})
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = normed(tokens)[0], plain(tokens)[0]
    assert a.shape == b.shape == (2, 12, 11)
    assert (a - b).abs().max() > 1e-3  # the same weights compute something else


def test_relu2_mlp_is_relu_squared():
    from lmforge.config_checks import model_params
    from lmforge.models.layers import MLP

    cfg = tiny(mlp="relu2", bias=True)
    torch.manual_seed(0)
    mlp = MLP(cfg)
    x = torch.randn(3, 5, 16)
    by_hand = torch.relu(x @ mlp.c_fc.weight.T + mlp.c_fc.bias) ** 2 @ mlp.c_proj.weight.T
    torch.testing.assert_close(mlp(x), by_hand + mlp.c_proj.bias)
    model = gpt(cfg)
    assert isinstance(model.blocks[0].mlp, MLP) and model.blocks[0].mlp.c_fc.out_features == 64
    assert model_params(cfg) == model.num_params()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_squared_gives_autograds_bits_forward_and_backward(dtype):
    from lmforge.models.layers import _ReLUSquared

    x = torch.randn(4, 7, 33).mul(3).to(dtype)
    x[0, 0, :5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 2.0**70])  # zeros, tiny, past bf16's max
    grad = torch.randn_like(x)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, autograd = _ReLUSquared.apply(a), torch.relu(b).square()
    ours.backward(grad)
    autograd.backward(grad)
    assert torch.equal(ours, autograd) and torch.equal(a.grad, b.grad)


def test_zero_init_proj_starts_the_residual_projections_at_zero_and_trains():
    cfg = tiny(zero_init_proj=True, tie_embeddings=False)
    model = gpt(cfg).train()
    projections = [n for n, _ in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 4  # attention's and the MLP's, in each of the two blocks
    for name, p in model.named_parameters():
        assert (torch.count_nonzero(p) == 0) == (name in projections), name
    # the meta-device path (materialized, then init_weights) zeroes them too
    meta, _ = assert_meta_build_equals_direct(GPT, dataclasses.replace(cfg, tie_embeddings=True))
    assert torch.count_nonzero(meta.get_parameter(projections[0])) == 0
    tokens = torch.randint(0, 11, (4, 12), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        if not losses:  # a zero matrix still gets a gradient: its input is not zero
            assert all(model.get_parameter(n).grad.abs().max() > 0 for n in projections)
        opt.step()
        losses.append(loss.item())
    assert all(torch.count_nonzero(model.get_parameter(n)) > 0 for n in projections)
    assert losses[-1] < losses[0] - 0.5


def test_logit_softcap_caps_the_logits_with_tanh():
    capped = gpt(tiny(logit_softcap=2.0, tie_embeddings=False))
    plain = gpt(tiny(tie_embeddings=False))
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():  # logits large enough for the cap to matter
        for m in (capped, plain):
            m.lm_head.weight.mul_(100)
    tokens = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = capped(tokens)[0], plain(tokens)[0]
        assert b.abs().max() > 4 and a.abs().max() <= 2
        torch.testing.assert_close(a, 2.0 * torch.tanh(b / 2.0))
        torch.testing.assert_close(capped.logits(capped.hidden(tokens)), a)


def test_the_serving_engine_caps_the_first_token_too():
    """The engine's prefill runs the output layer itself (on the last position only): the
    log-probability of every token it reports is that of the capped forward pass."""
    from lmforge.serve.engine import Engine, SamplingParams

    model = gpt(tiny(logit_softcap=1.0, block_size=16), dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
    prompt = [1, 4, 2, 7]
    engine = Engine(model, eot_id=10, max_batch=1)
    handle = engine.submit(prompt, SamplingParams(max_tokens=3, temperature=0.0, logprobs=True))
    while engine.step():
        pass
    events = [e for e in handle if e.token_id is not None]
    assert len(events) == 3
    ids = prompt + [e.token_id for e in events]
    with torch.no_grad():
        logprobs = model(torch.tensor([ids]))[0][0].log_softmax(-1)
    for i, event in enumerate(events):
        assert event.logprob == pytest.approx(float(logprobs[len(prompt) - 1 + i, event.token_id]),
                                              abs=1e-9)


@pytest.mark.parametrize("option, message", [
    ({"qk_norm": True}, "model.qk_norm=true"), ({"mlp": "relu2"}, "model.mlp=relu2"),
    ({"logit_softcap": 15.0}, "model.logit_softcap=15")])
def test_options_no_export_format_computes_are_refused_by_name(option, message):
    from lmforge.interop.gguf_export import check_exportable
    from lmforge.interop.hf_layout import hf_family

    llama = dict(norm="rmsnorm", mlp="swiglu", pos="rope")
    cfg = tiny(**{**llama, **option})
    assert hf_family(tiny(**llama, zero_init_proj=True)) == "llama"  # only the init differs
    for check in (hf_family, lambda c: check_exportable(c, None)):
        with pytest.raises(ConfigError, match=f"cannot export a model trained with {message}"):
            check(cfg)
