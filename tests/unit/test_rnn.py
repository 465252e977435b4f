"""The recurrent language models against plain references: a step-by-step loop over
nn.*Cell with the same weights, carried state against one call, stateful generation
against recomputing, and hand-counted parameters."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_meta_build_equals_direct
from torch import nn

from lmforge.config import ModelConfig
from lmforge.generate import generate_tokens
from lmforge.models import MODELS, build_model
from lmforge.models.rnn import RecurrentLM

ARCHS = ("rnn", "lstm", "gru")
CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def tiny(arch: str, **overrides) -> ModelConfig:
    # dropout > 0 so that the tests in eval mode show it is off there
    base = dict(arch=arch, n_layer=2, n_embd=8, vocab_size=11, dropout=0.2)
    return ModelConfig(**{**base, **overrides})


def model64(cfg: ModelConfig, *, seed: int = 0) -> RecurrentLM:
    """float64, eval mode, every parameter perturbed so that zero biases hide no mistake."""
    torch.manual_seed(seed)
    model = RecurrentLM(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def tokens(B: int, T: int, *, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_states_close(a, b) -> None:
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,),
                    strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- forward

@torch.no_grad()
def reference(model: RecurrentLM, toks: torch.Tensor):
    """Logits and final state from one nn.*Cell per layer, stepped token by token."""
    cfg = model.cfg
    cells = []
    for k in range(cfg.n_layer):
        cell = CELLS[cfg.arch](cfg.n_embd, cfg.n_embd).double()
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(model.rnn, f"{name}_l{k}"))
        cells.append(cell)
    B, T = toks.shape
    h = [torch.zeros(B, cfg.n_embd, dtype=torch.float64) for _ in cells]
    c = [torch.zeros(B, cfg.n_embd, dtype=torch.float64) for _ in cells]
    x = model.wte(toks)  # (B, T, C)
    outs = []
    for t in range(T):
        inp = x[:, t]
        for k, cell in enumerate(cells):
            if cfg.arch == "lstm":
                h[k], c[k] = cell(inp, (h[k], c[k]))
            else:
                h[k] = cell(inp, h[k])
            inp = h[k]
        outs.append(inp)
    logits = model.lm_head(torch.stack(outs, dim=1))  # (B, T, V)
    state = torch.stack(h) if cfg.arch != "lstm" else (torch.stack(h), torch.stack(c))
    return logits, state


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tie", [True, False])
def test_forward_equals_cell_by_cell_reference(arch, tie):
    model = model64(tiny(arch, tie_embeddings=tie, bias=True))
    toks = tokens(3, 7)
    with torch.no_grad():
        logits, state = model(toks)
    ref_logits, ref_state = reference(model, toks)
    assert logits.shape == (3, 7, 11)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-12)
    assert_states_close(state, ref_state)


@pytest.mark.parametrize("arch", ARCHS)
def test_carried_state_equals_one_call(arch):
    model = model64(tiny(arch))
    toks = tokens(2, 10)
    with torch.no_grad():
        whole, whole_state = model(toks)
        first, state = model(toks[:, :4])
        second, state = model(toks[:, 4:], state)
        zeros, _ = model(toks, model.new_state(2))
    torch.testing.assert_close(torch.cat((first, second), dim=1), whole, rtol=0, atol=1e-12)
    assert_states_close(state, whole_state)
    assert torch.equal(zeros, whole)  # new_state is what None means


# ---------------------------------------------------------------------------- generation

@torch.no_grad()
def stateful_greedy(model: nn.Module, prompt: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The last-position logits of each step: the prompt once, then one token at a time
    with the carried state, no window."""
    logits, state = model(prompt)
    out = [logits[:, -1]]
    for _ in range(steps - 1):
        logits, state = model(out[-1].argmax(dim=-1)[:, None], state)
        out.append(logits[:, -1])
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_stateful_generation_equals_recompute(arch):
    # block_size 4 < the 25 tokens generated: a recurrent model has no context limit
    model = model64(tiny(arch, block_size=4))
    seq = tokens(2, 5)
    with torch.no_grad():
        for step_logits in stateful_greedy(model, seq, 20):
            full, _ = model(seq)  # the whole sequence from scratch
            torch.testing.assert_close(step_logits, full[:, -1], rtol=0, atol=1e-12)
            seq = torch.cat((seq, step_logits.argmax(dim=-1)[:, None]), dim=1)


def assert_greedy_generation_is_stateful(*, block_size: int, prompt_len: int) -> None:
    """generate_tokens at temperature 0 picks what stateful_greedy's logits say, 20 tokens."""
    model = model64(tiny("lstm", block_size=block_size))
    prompt = tokens(2, prompt_len)
    got = torch.stack(list(generate_tokens(model, prompt, max_new_tokens=20, temperature=0.0)),
                      dim=1)
    want = torch.stack([step.argmax(dim=-1) for step in stateful_greedy(model, prompt, 20)], dim=1)
    assert torch.equal(got, want)


def test_generate_tokens_within_block_size():
    assert_greedy_generation_is_stateful(block_size=64, prompt_len=5)


def test_generate_tokens_past_block_size():
    assert_greedy_generation_is_stateful(block_size=4, prompt_len=6)


# ---------------------------------------------------------------------------- state helpers

@pytest.mark.parametrize("arch", ARCHS)
def test_reset_state_zeroes_exactly_the_masked_rows(arch):
    model = model64(tiny(arch))
    toks = tokens(3, 6)
    mask = torch.tensor([True, False, True])
    with torch.no_grad():
        _, state = model(toks)
        reset = RecurrentLM.reset_state(state, mask)
        for before, after in zip(*(s if isinstance(s, tuple) else (s,) for s in (state, reset)),
                                 strict=True):
            assert torch.all(after[:, mask] == 0)
            assert torch.equal(after[:, ~mask], before[:, ~mask])
            assert torch.all(before[:, mask] != 0)  # the test would notice a no-op
        # a reset row continues as a fresh start, the others as carried
        cont, _ = model(toks, reset)
        fresh, _ = model(toks)
        carried, _ = model(toks, state)
    torch.testing.assert_close(cont[mask], fresh[mask], rtol=0, atol=0)
    torch.testing.assert_close(cont[~mask], carried[~mask], rtol=0, atol=0)
    assert RecurrentLM.reset_state(None, mask) is None


@pytest.mark.parametrize("arch", ARCHS)
def test_detach_state_cuts_the_graph_for_tbptt(arch):
    model = RecurrentLM(tiny(arch)).train()
    toks = tokens(2, 12)
    state = None
    for chunk in toks.split(4, dim=1):
        logits, state = model(chunk[:, :-1], state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        loss.backward()  # a second backward through an earlier chunk's freed graph would raise
        detached = model.detach_state(state)
        for s, d in zip(state if isinstance(state, tuple) else (state,),
                        detached if isinstance(detached, tuple) else (detached,), strict=True):
            assert s.grad_fn is not None
            assert d.grad_fn is None and not d.requires_grad and torch.equal(d, s)
        state = detached
    assert RecurrentLM.detach_state(None) is None


# ---------------------------------------------------------------------------- parameters

def test_tying_and_hand_counted_params():
    cfg = tiny("lstm", n_layer=1, n_embd=4, vocab_size=10, tie_embeddings=True)
    tied = RecurrentLM(cfg)
    assert tied.lm_head.weight is tied.wte.weight
    # embedding 10*4; LSTM 4 gates * (ih 4*4 + hh 4*4 + two biases of 4); head tied
    assert tied.num_params() == tied.num_params(non_embedding=True) == 40 + 160 == 200
    assert tied.flops_per_token() == 6 * 200

    untied = RecurrentLM(tiny("lstm", n_layer=1, n_embd=4, vocab_size=10, tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert untied.num_params() == 240
    assert untied.flops_per_token() == 6 * (240 - 40)  # the untied embedding is a lookup


@pytest.mark.parametrize("arch", ARCHS)
def test_recurrent_init(arch):
    model = RecurrentLM(tiny(arch))
    C = model.cfg.n_embd
    for name, p in model.rnn.named_parameters():
        assert p.size(0) == GATES[arch] * C
        for g, gate in enumerate(p.detach().split(C)):
            if name.startswith("weight_hh"):
                torch.testing.assert_close(gate @ gate.T, torch.eye(C))  # orthogonal
            elif name.startswith("bias"):
                forget = arch == "lstm" and name.startswith("bias_ih") and g == 1
                assert torch.all(gate == (1.0 if forget else 0.0)), (name, g)


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_build_then_init_equals_direct_build(arch):
    assert_meta_build_equals_direct(RecurrentLM, tiny(arch))


def test_registry_builds_each_cell():
    for arch, cls in (("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU)):
        model = build_model(tiny(arch))
        assert MODELS[arch] is RecurrentLM and type(model.rnn) is cls
        assert model.rnn.num_layers == 2 and model.rnn.batch_first and model.rnn.dropout == 0.2
        assert getattr(model, "recurrent", False)
    assert RecurrentLM(tiny("rnn")).rnn.nonlinearity == "tanh"
    assert RecurrentLM(tiny("gru", n_layer=1)).rnn.dropout == 0.0  # torch warns otherwise
    with pytest.raises(ValueError, match="model.arch='gpt'"):
        RecurrentLM(tiny("gpt"))
    with pytest.raises(ValueError, match="vocab_size"):
        RecurrentLM(tiny("lstm", vocab_size=0))


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_gives_finite_gradients_everywhere(arch):
    model = RecurrentLM(tiny(arch)).train()
    toks = tokens(4, 9)
    logits, _ = model(toks[:, :-1])
    nn.functional.cross_entropy(logits.flatten(0, 1), toks[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
