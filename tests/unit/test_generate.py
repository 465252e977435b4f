"""Sampling: the filters against their definitions, and generation with a KV cache or a
carried hidden state against recomputing the whole context."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.generate import draw, generate_tokens, sample_next
from lmforge.models.gpt import GPT


def model64(*, pos: str = "learned", block_size: int = 64, seed: int = 0) -> GPT:
    # float64 so that cached and recomputed logits cannot round to different tokens
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=13,
                      pos=pos, norm="rmsnorm" if pos == "rope" else "layernorm",
                      mlp="swiglu" if pos == "rope" else "gelu")
    torch.manual_seed(seed)
    return GPT(cfg).double()


def run(model, prompt, **kwargs) -> torch.Tensor:
    return torch.stack(list(generate_tokens(model, prompt, **kwargs)), dim=1)  # (B, new)


def seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- sample_next

def test_greedy_equivalents():
    logits = torch.randn(6, 50, generator=seeded(0))
    greedy = logits.argmax(dim=-1)
    t0 = sample_next(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None)
    k1 = sample_next(logits, temperature=1.0, top_k=1, top_p=1.0, generator=seeded())
    p0 = sample_next(logits, temperature=1.0, top_k=0, top_p=1e-6, generator=seeded())
    for got in (t0, k1, p0):
        assert got.dtype == torch.long and torch.equal(got, greedy)


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(4, 50, generator=seeded(0))

    def draws(seed: int) -> torch.Tensor:
        g = seeded(seed)
        return torch.stack([sample_next(logits, temperature=0.8, top_k=10, top_p=0.9, generator=g)
                            for _ in range(5)])

    assert torch.equal(draws(3), draws(3))
    assert not torch.equal(draws(3), draws(4))


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # order by likelihood: 1, 3, 2, 0
    logits = probs.log().expand(4000, 4)
    g = seeded()
    k2 = sample_next(logits, temperature=1.0, top_k=2, top_p=1.0, generator=g)
    assert set(k2.tolist()) == {1, 3}
    # mass before token 3 is 0.5 < 0.75, before token 2 is 0.8 >= 0.75: keep {1, 3}
    p75 = sample_next(logits, temperature=1.0, top_k=0, top_p=0.75, generator=g)
    assert set(p75.tolist()) == {1, 3}
    assert abs((p75 == 1).float().mean().item() - 0.5 / 0.8) < 0.04  # renormalized mass
    p85 = sample_next(logits, temperature=1.0, top_k=0, top_p=0.85, generator=g)
    assert set(p85.tolist()) == {1, 2, 3}
    full = sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=g)
    assert abs((full == 0).float().mean().item() - 0.05) < 0.02


def test_draw_follows_the_probabilities_and_never_picks_an_impossible_token():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]]).expand(20000, 5)
    tokens = draw(probs, torch.rand(20000, generator=seeded()))
    counts = torch.bincount(tokens, minlength=5).float() / 20000
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(counts, probs[0], atol=0.015)
    # the ends of [0, 1): the first possible token, and the last one (not a zero after it)
    edges = torch.tensor([0.0, 1.0 - 2.0 ** -24])
    assert draw(probs[:2], edges).tolist() == [0, 3]
    # unnormalized rows are drawn from as if normalized; each row by its own number
    rows = torch.tensor([[2.0, 2.0], [0.0, 5.0]])
    assert draw(rows, torch.tensor([0.49, 0.0])).tolist() == [0, 1]
    assert draw(rows, torch.tensor([0.51, 0.99])).tolist() == [1, 1]


def test_temperature_sharpens():
    logits = torch.tensor([[0.0, 1.0]]).expand(4000, 2)
    cold = sample_next(logits, temperature=0.25, top_k=0, top_p=1.0, generator=seeded())
    hot = sample_next(logits, temperature=4.0, top_k=0, top_p=1.0, generator=seeded())
    # p(1) = sigmoid(1 / T): 0.982 at T=0.25, 0.562 at T=4
    assert abs(cold.float().mean().item() - 0.982) < 0.02
    assert abs(hot.float().mean().item() - 0.562) < 0.03


def test_bad_settings_fail_before_generation():
    with pytest.raises(ValueError, match="top_p"):
        generate_tokens(model64(), torch.zeros(1, 1, dtype=torch.long), max_new_tokens=3, top_p=1.5)
    with pytest.raises(ValueError, match="at least one token"):
        generate_tokens(model64(), torch.zeros(2, 0, dtype=torch.long), max_new_tokens=3)


# ---------------------------------------------------------------------------- generation

@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("block_size,prompt_len,new", [(64, 5, 40), (16, 10, 6)])
def test_cache_equals_recompute(pos, block_size, prompt_len, new):
    model = model64(pos=pos, block_size=block_size)
    prompt = torch.randint(0, 13, (2, prompt_len), generator=seeded(1))
    greedy = run(model, prompt, max_new_tokens=new, temperature=0.0)
    assert greedy.shape == (2, new)
    assert torch.equal(greedy, run(model, prompt, max_new_tokens=new, temperature=0.0,
                                   use_cache=False))
    sampled = run(model, prompt, max_new_tokens=new, top_k=8, top_p=0.95, generator=seeded())
    assert torch.equal(sampled, run(model, prompt, max_new_tokens=new, top_k=8, top_p=0.95,
                                    generator=seeded(), use_cache=False))
    assert not torch.equal(sampled, greedy)


def windowed_greedy(model, prompt, *, new, block_size):
    """Greedy decoding by full recomputation, with the windows a KV cache sees past
    block_size: when the cache is full, it restarts from the last block_size // 2 tokens."""
    seq, start, seen = prompt, max(0, prompt.size(1) - block_size), None
    out = []
    for _ in range(new):
        if seen is None:
            seen = seq.size(1) - start
        elif seen < block_size:
            seen += 1
        else:
            start, seen = seq.size(1) - block_size // 2, block_size // 2
        logits, _ = model(seq[:, start:])
        token = logits[:, -1].argmax(dim=-1)
        out.append(token)
        seq = torch.cat((seq, token[:, None]), dim=1)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_past_the_block_a_full_cache_restarts_from_half_a_block(pos):
    model = model64(pos=pos, block_size=16).eval()
    prompt = torch.randint(0, 13, (2, 10), generator=seeded(1))
    cached = run(model, prompt, max_new_tokens=40, temperature=0.0)
    with torch.no_grad():
        assert torch.equal(cached, windowed_greedy(model, prompt, new=40, block_size=16))
    # recomputation keeps a full window at every step
    plain = run(model, prompt, max_new_tokens=40, temperature=0.0, use_cache=False)
    assert torch.equal(plain[:, :6], cached[:, :6])


def test_long_prompt_is_cropped_to_block_size():
    model = model64(block_size=16)
    prompt = torch.randint(0, 13, (2, 40), generator=seeded(2))
    a = run(model, prompt, max_new_tokens=5, temperature=0.0)
    b = run(model, prompt[:, -16:], max_new_tokens=5, temperature=0.0)
    assert torch.equal(a, b)


def test_streams_and_restores_training_mode():
    model = model64().train()
    stream = generate_tokens(model, torch.zeros(3, 1, dtype=torch.long), max_new_tokens=4)
    first = next(stream)
    assert first.shape == (3,) and not model.training
    assert not torch.is_inference_mode_enabled()  # the caller's code between steps
    assert len(list(stream)) == 3
    assert model.training


def test_few_new_tokens_decode_on_one_thread_and_the_setting_comes_back():
    """A step of one token per sequence is bound by memory reads, which a second CPU thread
    does not speed up (threads.py); the prompt's step uses every thread, and the process's
    setting is restored when the stream ends, even part way."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model, seen = model64(), []
        model.register_forward_pre_hook(lambda m, args: seen.append(
            (args[0].numel(), torch.get_num_threads())))
        prompt = torch.zeros(1, 8, dtype=torch.long)
        stream = generate_tokens(model, prompt, max_new_tokens=3)
        next(stream), next(stream)
        stream.close()
        assert seen == [(8, 2), (1, 1)] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


class TinyGRU(nn.Module):
    """A recurrent model that carries its hidden state, with no cache and no block size."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(13, 8)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.head = nn.Linear(8, 13)

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.emb(tokens), state)
        return self.head(out), state


class Stateless(nn.Module):
    """A GPT seen through the contract alone: no new_cache, state always None."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.cfg = gpt.cfg

    def forward(self, tokens, state=None):
        return self.gpt(tokens)


def test_carried_state_equals_recompute():
    torch.manual_seed(0)
    rnn = TinyGRU().double()
    prompt = torch.randint(0, 13, (2, 6), generator=seeded(3))
    greedy = run(rnn, prompt, max_new_tokens=30, temperature=0.0)
    assert torch.equal(greedy, run(rnn, prompt, max_new_tokens=30, temperature=0.0,
                                   use_cache=False))
    sampled = run(rnn, prompt, max_new_tokens=30, generator=seeded())
    assert torch.equal(sampled, run(rnn, prompt, max_new_tokens=30, generator=seeded(),
                                    use_cache=False))


def test_model_without_state_is_recomputed():
    # 10 + 20 tokens fit the context: past it the cached path refills from half a window
    # while recomputation sees a whole one, and the two may sample differently
    gpt = model64(block_size=32)
    prompt = torch.randint(0, 13, (2, 10), generator=seeded(4))
    plain = run(Stateless(gpt), prompt, max_new_tokens=20, generator=seeded())
    assert torch.equal(plain, run(gpt, prompt, max_new_tokens=20, generator=seeded()))


# ---------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("settings", [
    {"temperature": float("nan")}, {"temperature": float("inf")}, {"temperature": -float("inf")},
    {"temperature": 1e-320}, {"temperature": 1e-9}, {"top_p": float("nan")},
])
def test_sampling_settings_are_checked_as_inputs(settings):
    """A NaN or infinite temperature, or one so small that the logits divided by it overflow,
    is the caller's input, not a model with weights that are not finite."""
    kwargs = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **settings}
    with pytest.raises(ValueError, match="temperature|top_p"):
        sample_next(torch.randn(2, 13, generator=seeded(0)), generator=seeded(), **kwargs)
    with pytest.raises(ValueError, match="temperature|top_p"):
        generate_tokens(model64(), torch.zeros(1, 1, dtype=torch.long), max_new_tokens=3, **kwargs)


def test_the_smallest_temperature_samples_all_but_greedily():
    logits = torch.randn(6, 50, generator=seeded(0)) * 1e3
    got = sample_next(logits, temperature=1e-6, top_k=0, top_p=1.0, generator=seeded())
    assert torch.equal(got, logits.argmax(dim=-1))


def cli_error(capsys, *argv) -> str:
    """`lmforge generate ARGV` in this process: exit 2 and one line; that line."""
    from lmforge.cli.main import main

    capsys.readouterr()
    assert main(["generate", *map(str, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lmforge generate: error: "), err
    return err


@pytest.mark.parametrize("args, message", [
    (["--num-samples", "100000000"], "--num-samples must be at most 10,000, got 100000000"),
    (["--max-new-tokens", "1000000000000"], "--max-new-tokens must be at most 1,000,000"),
    (["--seed", "-1"], "--seed must be between 0 and 2**64 - 1"),
    (["--seed", str(2**64)], "--seed must be between 0 and 2**64 - 1"),
    (["--temperature", "nan"], "--temperature must be a finite number, got nan"),
    (["--temperature", "inf"], "--temperature must be a finite number, got inf"),
    (["--top-p", "nan"], "--top-p must be a finite number, got nan"),
    (["--temperature", "1e-320"], "use 0 for greedy decoding or at least 1e-06"),
    (["--num-samples", "0"], "--max-new-tokens and --num-samples must be at least 1"),
])
def test_generate_checks_its_numbers_before_reading_the_run(tmp_path, capsys, args, message):
    # the run does not exist: the error names the number, so it came first
    assert message in cli_error(capsys, tmp_path / "no-run", *args)


def run_config(path, **model) -> None:
    """A run directory holding only the resolved config of a run with this model."""
    from lmforge.config import load_config
    from lmforge.rundir import RunDir, write_config

    cfg = load_config("default", {**{f"model.{k}": str(v) for k, v in model.items()},
                                  "train.batch_size": "1", "eval.samples": "1"})
    write_config(cfg, RunDir(path))


def test_the_samples_must_fit_free_memory_before_the_model_is_built(tmp_path, capsys,
                                                                    monkeypatch):
    import lmforge.generate

    run_config(tmp_path, n_layer=2, n_embd=64, block_size=1024, vocab_size=300)
    monkeypatch.setattr(lmforge.generate, "available_memory", lambda device: 10**9)
    err = cli_error(capsys, tmp_path, "--num-samples", "10000", "--device", "cpu")
    assert "--num-samples 10000 with --max-new-tokens 200 need about" in err
    assert "1 GB is free; lower --num-samples (about " in err  # not: the checkpoint is missing


def test_a_model_larger_than_this_machine_is_refused_before_it_is_built(tmp_path, capsys):
    from lmforge.config_checks import model_params
    from lmforge.generate import available_memory

    free = available_memory(torch.device("cpu"))
    cfg = ModelConfig(n_layer=96, n_head=96, n_embd=12288, block_size=8192, vocab_size=50304)
    if free is None or free > 4 * model_params(cfg):
        pytest.skip("this machine's free memory is unknown or holds the model")
    run_config(tmp_path, n_layer=96, n_head=96, n_embd=12288, block_size=8192,
               vocab_size=50304)
    err = cli_error(capsys, tmp_path, "--device", "cpu")
    assert "even one sample does not fit" in err
