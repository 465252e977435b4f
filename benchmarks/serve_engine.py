"""Serving engine speed: decode tokens/s of one stream and of 16 concurrent streams through
the continuous-batching engine, against `generate_tokens` for one sequence.

The default recipe's model (configs/default.toml: 4 layers x 256, context 128, BPE 8192),
freshly initialized (speed does not depend on the weights). Every stream starts from a
one-token prompt and samples --tokens new tokens (default 120) with temperature 1 and
top-k 50, each with its own seed; the engine runs on its background thread and the streams'
events are read as they come, as a server would. Each figure is the best of --repeats runs.

    python benchmarks/serve_engine.py [--tokens 120] [--repeats 3]

Ends with: RESULT engine_1=… engine_16=… generate_1=…  (tokens/s; engine_16 in all)
"""

from __future__ import annotations

import argparse
import time

import torch

from lmforge.config import load_config
from lmforge.generate import generate_tokens
from lmforge.models import build_model
from lmforge.serve.engine import Engine, SamplingParams


def engine_tokens_per_s(model, *, streams: int, new: int, repeats: int) -> float:
    best = 0.0
    for r in range(repeats):
        engine = Engine(model, eot_id=-1, max_batch=streams)  # -1: no token ends a stream early
        engine.start()
        start = time.perf_counter()
        handles = [engine.submit([0], SamplingParams(max_tokens=new, temperature=1.0, top_k=50,
                                                     seed=r * streams + i))
                   for i in range(streams)]
        for handle in handles:
            for _ in handle:
                pass
        elapsed = time.perf_counter() - start
        engine.stop()
        best = max(best, sum(h.completion_tokens for h in handles) / elapsed)
    return best


def generate_tokens_per_s(model, *, new: int, repeats: int) -> float:
    best = 0.0
    for seed in range(repeats):
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        for _ in generate_tokens(model, torch.zeros((1, 1), dtype=torch.long), max_new_tokens=new,
                                 temperature=1.0, top_k=50, generator=gen):
            pass
        best = max(best, new / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config("default", {"model.vocab_size": "8192"})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    c = cfg.model
    new = min(args.tokens, c.block_size)
    print(f"model: {c.arch}, {c.n_layer} layers x {c.n_embd}, context {c.block_size}, "
          f"vocabulary {c.vocab_size}; {new} new tokens a stream, {torch.get_num_threads()} threads")
    single = generate_tokens_per_s(model, new=new, repeats=args.repeats)
    one = engine_tokens_per_s(model, streams=1, new=new, repeats=args.repeats)
    many = engine_tokens_per_s(model, streams=16, new=new, repeats=args.repeats)
    print(f"generate_tokens, 1 sequence: {single:,.0f} tokens/s")
    print(f"engine, 1 stream:            {one:,.0f} tokens/s ({one / single:.2f}x generate)")
    print(f"engine, 16 streams:          {many:,.0f} tokens/s in all ({many / one:.1f}x one stream)")
    print(f"RESULT engine_1={one:.0f} engine_16={many:.0f} generate_1={single:.0f}")


if __name__ == "__main__":
    main()
