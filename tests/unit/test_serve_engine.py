"""The serving engine: continuous batching gives every request the tokens it would get alone
(and that `generate_tokens` gives one sequence), whoever joins or leaves beside it; cancel,
the queue limit, drain and stop; chunked prefill. Real tiny models in float64 (so that a
batched and a lone matrix product cannot round to different tokens); the engine is driven
step by step, and no test depends on how long anything takes."""

from __future__ import annotations

import asyncio

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.generate import generate_tokens
from lmforge.models import build_model
from lmforge.serve.engine import (
    Engine,
    EngineStopped,
    QueueFull,
    RequestHandle,
    SamplingParams,
    TokenEvent,
)

VOCAB = 31
EOT = VOCAB - 1  # never in a prompt; a random model seldom draws it
STYLES = {
    "gpt2": dict(arch="gpt", pos="learned", norm="layernorm", mlp="gelu", bias=True),
    "llama": dict(arch="gpt", pos="rope", norm="rmsnorm", mlp="swiglu", n_head=4, n_kv_head=2),
    "lstm": dict(arch="lstm"),
}


SHARP = {"gpt2": 0.5, "llama": 1.0, "lstm": 1.0}


def tiny(style: str, *, seed: int = 0, block_size: int = 64):
    """A tiny model with sharp random matrices (std 0.5 or 1, not the init's 0.02): its
    greedy tokens vary with the position and the whole context (the init's repeat one token),
    so a wrong position or a row that sees another row's keys shows in the tokens."""
    cfg = ModelConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": block_size,
                         "vocab_size": VOCAB, **STYLES[style]})
    torch.manual_seed(seed)
    model = build_model(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, SHARP[style])
    return model


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, EOT, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def expected(model, ids: list[int], params: SamplingParams) -> tuple[list[int], str]:
    """What `generate_tokens` gives the one sequence: its tokens up to the end-of-text token,
    and how it ends."""
    gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    out = []
    for step in generate_tokens(model, torch.tensor([ids]), max_new_tokens=params.max_tokens,
                                temperature=params.temperature, top_k=params.top_k,
                                top_p=params.top_p, generator=gen):
        token = int(step[0])
        if token == EOT:
            return out, "stop"
        out.append(token)
    return out, "length"


def result(handle: RequestHandle) -> tuple[list[int], str]:
    """The tokens and the finish reason of a finished request (its events are all there:
    iterating does not block)."""
    events = list(handle)
    assert all(e.finish_reason is None for e in events[:-1])
    final = events[-1]
    tokens = [e.token_id for e in events if e.token_id is not None]
    assert final.finish_reason is not None and handle.finish_reason == final.finish_reason
    assert handle.completion_tokens == len(tokens)
    return tokens, final.finish_reason


def run_schedule(engine: Engine, schedule: dict[int, list[tuple[list[int], SamplingParams]]]
                 ) -> list[RequestHandle]:
    """Submit each request at its step (before that step runs) and step until all are done."""
    schedule = dict(schedule)
    handles, step = [], 0
    while True:
        handles += [engine.submit(ids, params) for ids, params in schedule.pop(step, [])]
        busy = engine.step()
        step += 1
        if not busy and not schedule:
            return handles


# ---------------------------------------------------------------------------- the model side

@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_a_row_cache_runs_each_row_as_if_alone(style):
    """Rows at different lengths in one RowCache, one forward of a token each: the logits of
    every row are those of its sequence run alone with a KVCache."""
    model = tiny(style)
    seqs = [prompt(n, seed=n) for n in (5, 1, 12, 8)]
    rows = model.new_row_cache(6)
    with torch.no_grad():
        for i, ids in enumerate(seqs):  # prefill alone, then load into row i
            cache = model.new_cache(1)
            model(torch.tensor([ids[:-1] or ids]), cache)
            rows.load(i, cache)
        rows.move(3, 1)  # row 1 leaves; the last row takes its place
        order = [0, 3, 2]
        step = torch.tensor([[seqs[i][-1]] for i in order])
        batched, _ = model(step, rows)  # (3, 1, V)
        for b, i in enumerate(order):
            ids = seqs[i] if len(seqs[i]) > 1 else seqs[i] * 2
            alone, _ = model(torch.tensor([ids]))
            assert torch.allclose(batched[b, 0], alone[0, -1], atol=1e-10), (style, i)
    assert rows.lengths[:3] == [len(seqs[i]) for i in order]


# ---------------------------------------------------------------------------- same tokens

@pytest.mark.parametrize("style", ["gpt2", "llama", "lstm"])
def test_greedy_tokens_are_the_same_alone_batched_and_from_generate(style):
    model = tiny(style)
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    target = prompt(9, seed=1)
    reference = expected(model, target, greedy)
    assert len(reference[0]) >= 4  # a test that sees a few tokens at least

    alone = run_schedule(Engine(model, eot_id=EOT, prefill_chunk=4), {0: [(target, greedy)]})
    assert result(alone[0]) == reference

    # four others of different lengths and settings join at different steps, some leave early
    others = {0: [(prompt(3, 2), greedy), (prompt(20, 3), SamplingParams(max_tokens=5, temperature=0.0))],
              2: [(target, greedy), (prompt(1, 4), SamplingParams(max_tokens=30, temperature=0.0))],
              5: [(prompt(11, 5), SamplingParams(max_tokens=3, temperature=0.7, seed=9))]}
    engine = Engine(model, eot_id=EOT, max_batch=8, prefill_chunk=4)
    results = [result(handle) for handle in run_schedule(engine, others)]
    assert results[2] == reference
    submitted = [item for step in sorted(others) for item in others[step]]
    assert results == [expected(model, ids, params) for ids, params in submitted]
    assert engine.running == 0 and engine.waiting == 0


@pytest.mark.parametrize("style", ["gpt2", "lstm"])
def test_seeded_sampling_is_the_same_alone_batched_and_from_generate(style):
    model = tiny(style)
    params = SamplingParams(max_tokens=15, temperature=0.9, top_k=8, top_p=0.9, seed=1234)
    target = prompt(6, seed=7)
    reference = expected(model, target, params)
    alone = run_schedule(Engine(model, eot_id=EOT), {0: [(target, params)]})
    assert result(alone[0]) == reference
    schedule = {0: [(prompt(4, 8), SamplingParams(max_tokens=20, temperature=1.0, seed=1))],
                1: [(prompt(2, 9), SamplingParams(max_tokens=20, temperature=0.0))],
                3: [(target, params), (prompt(13, 10), SamplingParams(max_tokens=6, seed=1234))]}
    handles = run_schedule(Engine(model, eot_id=EOT, prefill_chunk=5), schedule)
    assert result(handles[2]) == reference
    assert result(handles[0]) == expected(model, prompt(4, 8), schedule[0][0][1])
    # the same seed with other settings draws other tokens; no seed: one drawn and reported
    drawn = run_schedule(Engine(model, eot_id=EOT, seed=5), {0: [(target, SamplingParams(max_tokens=15))]})
    assert drawn[0].seed is not None and 0 <= drawn[0].seed < 2**63


def test_logprobs_are_the_models_own_log_probabilities():
    model = tiny("gpt2")
    ids = prompt(5, seed=11)
    handle = run_schedule(Engine(model, eot_id=EOT),
                          {0: [(ids, SamplingParams(max_tokens=6, temperature=0.0, logprobs=True))]})[0]
    events = list(handle)
    tokens = [e.token_id for e in events]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids + tokens]))
    logp = logits[0].log_softmax(dim=-1)
    for j, event in enumerate(events):  # computed in float32
        assert event.logprob == pytest.approx(float(logp[len(ids) - 1 + j, event.token_id]), abs=1e-6)
    plain = run_schedule(Engine(model, eot_id=EOT), {0: [(ids, SamplingParams(max_tokens=2))]})[0]
    assert all(e.logprob is None for e in plain)


def test_the_end_of_text_token_ends_a_request_without_a_token():
    model = tiny("gpt2")
    ids = prompt(9, seed=1)
    tokens, _ = expected(model, ids, SamplingParams(max_tokens=8, temperature=0.0))
    k = next(k for k in range(2, len(tokens)) if tokens[k] not in tokens[:k])  # a new token
    handle = run_schedule(Engine(model, eot_id=tokens[k]),
                          {0: [(ids, SamplingParams(max_tokens=8, temperature=0.0))]})[0]
    events = list(handle)
    assert [e.token_id for e in events] == [*tokens[:k], None]
    assert events[-1] == TokenEvent(None, None, "stop") and handle.completion_tokens == k
    # ignore_eos: the same token is one of the answer's, and the request runs to max_tokens
    past = run_schedule(Engine(model, eot_id=tokens[k]),
                        {0: [(ids, SamplingParams(max_tokens=8, temperature=0.0,
                                                  ignore_eos=True))]})[0]
    assert result(past) == (tokens, "length") and past.completion_tokens == 8
    # max_tokens reached: the last token's event carries "length"; 0 tokens: no token at all
    short = run_schedule(Engine(model, eot_id=EOT), {0: [(ids, SamplingParams(max_tokens=2, temperature=0.0)),
                                                        (ids, SamplingParams(max_tokens=0))]})
    assert list(short[0]) == [TokenEvent(tokens[0], None, None), TokenEvent(tokens[1], None, "length")]
    assert list(short[1]) == [TokenEvent(None, None, "length")]


# ---------------------------------------------------------------------------- scheduling

def test_a_long_prompt_is_prefilled_in_chunks_while_another_request_keeps_decoding():
    model = tiny("llama")
    engine = Engine(model, eot_id=EOT, prefill_chunk=4)
    greedy = SamplingParams(max_tokens=40, temperature=0.0)
    talker = engine.submit(prompt(2, 13), greedy)
    engine.step()  # prefilled, its first token, then its first decode step
    assert talker.completion_tokens == 2
    long_prompt = prompt(38, 14)
    reader = engine.submit(long_prompt, SamplingParams(max_tokens=5, temperature=0.0))
    steps = 0
    while reader.completion_tokens == 0:
        engine.step()
        steps += 1
    assert steps == 10  # ceil(38 / 4) chunks, one a step
    assert talker.completion_tokens == 2 + steps  # a token at every one of those steps
    engine.drain()
    assert result(reader) == expected(model, long_prompt, SamplingParams(max_tokens=5, temperature=0.0))
    assert result(talker) == expected(model, prompt(2, 13), greedy)


def test_cancel_frees_the_slot_for_a_waiting_request():
    model = tiny("gpt2")
    engine = Engine(model, eot_id=EOT, max_batch=1)
    first = engine.submit(prompt(3, 15), SamplingParams(max_tokens=50, temperature=0.0))
    second = engine.submit(prompt(3, 16), SamplingParams(max_tokens=50, temperature=0.0))
    engine.step()
    assert (engine.running, engine.waiting) == (1, 1)
    assert first.completion_tokens == 2 and second.completion_tokens == 0
    first.cancel()
    engine.step()
    events = list(first)
    assert [e.finish_reason for e in events] == [None, None, "cancelled"]
    assert events[-1].token_id is None and first.finish_reason == "cancelled"
    assert first.completion_tokens == 2  # no token after the cancel
    assert second.completion_tokens == 2 and (engine.running, engine.waiting) == (1, 0)
    # a request cancelled while it waits never runs
    third = engine.submit(prompt(3, 17), SamplingParams(max_tokens=5))
    third.cancel()
    engine.step()
    assert list(third) == [TokenEvent(None, None, "cancelled")] and engine.waiting == 0
    second.cancel()
    assert not engine.step() and second.finish_reason == "cancelled"


def test_a_full_queue_refuses_and_bad_requests_are_refused_at_submit():
    model = tiny("gpt2", block_size=16)
    engine = Engine(model, eot_id=EOT, max_batch=2, max_queue=2)
    ok = SamplingParams(max_tokens=4)
    engine.submit([1], ok)
    engine.submit([2], ok)
    with pytest.raises(QueueFull):
        engine.submit([3], ok)
    engine.step()  # both admitted: the queue has room again
    engine.submit([3], ok)
    for ids, params in [([], ok), ([VOCAB], ok), ([-1], ok), ([1], SamplingParams(temperature=-1.0)),
                        ([1], SamplingParams(top_p=1.5)), ([1], SamplingParams(max_tokens=17)),
                        ([1], SamplingParams(seed=-1))]:
        with pytest.raises(ValueError):
            engine.submit(ids, params)


def test_a_prompt_too_long_for_the_context_keeps_its_last_tokens():
    model = tiny("gpt2", block_size=16)
    engine = Engine(model, eot_id=EOT)
    params = SamplingParams(max_tokens=6, temperature=0.0)
    ids = prompt(30, seed=18)
    assert engine.prompt_limit(6) == 11
    handle = run_schedule(engine, {0: [(ids, params)]})[0]
    assert handle.prompt_tokens == 11
    assert result(handle) == expected(model, ids[-11:], params)
    assert Engine(tiny("lstm"), eot_id=EOT).prompt_limit(6) is None


def test_drain_finishes_what_is_in_flight_and_refuses_new_requests():
    model = tiny("gpt2")
    engine = Engine(model, eot_id=EOT, max_batch=2)
    params = SamplingParams(max_tokens=7, temperature=0.0)
    handles = [engine.submit(prompt(4, seed), params) for seed in (19, 20, 21)]
    engine.step()
    engine.drain()
    for handle, seed in zip(handles, (19, 20, 21), strict=True):
        assert result(handle) == expected(model, prompt(4, seed), params)
    with pytest.raises(EngineStopped):
        engine.submit([1], params)


def test_the_thread_serves_blocking_and_asyncio_consumers_and_stop_cancels():
    model = tiny("lstm")
    engine = Engine(model, eot_id=EOT, max_batch=4)
    engine.start()
    params = SamplingParams(max_tokens=10, temperature=0.0)
    a, b = engine.submit(prompt(5, 22), params), engine.submit(prompt(8, 23), params)

    async def collect(handle: RequestHandle) -> list[TokenEvent]:
        return [event async for event in handle.events()]

    events_a = list(a)
    events_b = asyncio.run(collect(b))
    assert [e.token_id for e in events_a if e.token_id is not None] == expected(model, prompt(5, 22), params)[0]
    assert [e.token_id for e in events_b if e.token_id is not None] == expected(model, prompt(8, 23), params)[0]
    endless = engine.submit(prompt(3, 24), SamplingParams(max_tokens=10**9, temperature=0.0))
    next(iter(endless))  # running
    engine.stop()
    assert endless.finish_reason == "cancelled" and list(endless)[-1].finish_reason == "cancelled"
    with pytest.raises(EngineStopped):
        engine.submit([1], params)


def test_drain_with_the_thread_running():
    model = tiny("llama")
    engine = Engine(model, eot_id=EOT, max_batch=2)
    engine.start()
    params = SamplingParams(max_tokens=9, temperature=0.0)
    handles = [engine.submit(prompt(n, n), params) for n in (2, 7, 12, 3)]
    engine.drain()
    for handle, n in zip(handles, (2, 7, 12, 3), strict=True):
        assert result(handle) == expected(model, prompt(n, n), params)


def test_a_request_whose_sampling_fails_ends_with_an_error_and_the_engine_goes_on():
    broken = tiny("gpt2")
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    engine = Engine(broken, eot_id=EOT)
    handle = run_schedule(engine, {0: [(prompt(3, 25), SamplingParams(max_tokens=4, temperature=1.0, seed=0))]})[0]
    assert list(handle) == [TokenEvent(None, None, "error")]
    assert handle.error and "NaN" in handle.error
    assert engine.running == 0 and engine.last_error == handle.error
    greedy = engine.submit(prompt(3, 26), SamplingParams(max_tokens=3, temperature=0.0))
    engine.drain()
    assert greedy.finish_reason == "length"  # argmax over NaN still picks a token
