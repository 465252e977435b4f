"""Generation speed: KV-cache decoding against full recomputation, and batched sampling.

The default recipe's model (configs/default.toml: 4 layers x 256, context 128, BPE 8192),
freshly initialized unless --run gives a trained run (speed does not depend on the weights),
samples --tokens new tokens (default 512) with temperature 1 and top-k 50, one sequence with
and without the KV cache side by side in this process, then 8 sequences at once with it.
The weights are stored for decoding as `lmforge generate` and `lmforge serve` store them
(models/decode_layout.py); one sequence with the KV cache is also timed with the weights as
training leaves them, to show what that layout gives. Each figure is the best of --repeats
runs.

    python benchmarks/generate.py [--run runs/default] [--tokens 512] [--repeats 3]

Ends with: RESULT kv_speedup=… tokens_per_s_1=… tokens_per_s_8=… layout_gain=…
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from lmforge.config import load_config
from lmforge.generate import generate_tokens
from lmforge.models import build_model
from lmforge.models.decode_layout import use_decode_layout


def tokens_per_s(model, *, batch: int, new: int, use_cache: bool, repeats: int) -> float:
    best = 0.0
    for seed in range(repeats):
        prompt = torch.zeros((batch, 1), dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        for _ in generate_tokens(model, prompt, max_new_tokens=new, temperature=1.0, top_k=50,
                                 generator=gen, use_cache=use_cache):
            pass
        best = max(best, batch * new / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="a trained run (default: fresh weights)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.run is not None:
        from lmforge.runs.load import load_run

        run = load_run(args.run, which="latest", device="cpu")
        model, cfg = run.model, run.cfg
    else:
        cfg = load_config("default", {"model.vocab_size": "8192"})
        torch.manual_seed(0)
        model = build_model(cfg.model)
    as_trained = copy.deepcopy(model).eval()
    model = use_decode_layout(model.eval())
    c = cfg.model
    print(f"model: {c.arch}, {c.n_layer} layers x {c.n_embd}, context {c.block_size}, "
          f"vocabulary {c.vocab_size}; {args.tokens} new tokens, {torch.get_num_threads()} threads")
    cached = tokens_per_s(model, batch=1, new=args.tokens, use_cache=True, repeats=args.repeats)
    plain = tokens_per_s(model, batch=1, new=args.tokens, use_cache=False, repeats=args.repeats)
    batched = tokens_per_s(model, batch=8, new=args.tokens, use_cache=True, repeats=args.repeats)
    trained = tokens_per_s(as_trained, batch=1, new=args.tokens, use_cache=True,
                           repeats=args.repeats)
    print(f"1 sequence:  KV cache {cached:,.0f} tokens/s, full recomputation {plain:,.0f} tokens/s "
          f"({cached / plain:.1f}x)")
    print(f"8 sequences: KV cache {batched:,.0f} tokens/s in all ({batched / cached:.1f}x one)")
    print(f"1 sequence, weights as training stores them: {trained:,.0f} tokens/s "
          f"(decode layout {cached / trained:.2f}x that)")
    print(f"RESULT kv_speedup={cached / plain:.1f} tokens_per_s_1={cached:.0f} "
          f"tokens_per_s_8={batched:.0f} layout_gain={cached / trained:.2f}")


if __name__ == "__main__":
    main()
