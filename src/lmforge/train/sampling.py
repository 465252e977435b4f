"""Samples a run draws while it trains: at each evaluation and at the end."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.data.tokenizer import Tokenizer
from lmforge.distributed.env import DistInfo
from lmforge.distributed.parallelize import TENSOR_PARALLEL, unwrap
from lmforge.generate import generate_tokens


def draw_samples(model: nn.Module, *, strategy: str, info: DistInfo, tokenizer: Tokenizer,
                 seed: int, device: torch.device, count: int, max_new_tokens: int) -> list[str]:
    """Texts generated from an end-of-text token (bos where the model's tokenizer starts a text
    with one: Tokenizer.encode_prompt), with a generator of their own seeded by
    the run's seed, so sampling never moves the training RNG and every call starts from the
    same random draws. Under FSDP every rank takes part (the forward gathers parameters);
    under tensor parallelism the heads are split, which the KV cache does not follow, so
    there are no samples. Rank 0 gets the texts; the model is left in training mode."""
    if count <= 0 or max_new_tokens <= 0 or strategy in TENSOR_PARALLEL:
        return []
    if strategy == "ddp" and not info.is_main:
        return []
    sampler = model if strategy == "fsdp" else unwrap(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.tensor([tokenizer.encode_prompt("")] * count, dtype=torch.long, device=device)
    steps = list(generate_tokens(sampler, prompt, max_new_tokens=max_new_tokens,
                                 temperature=0.8, top_k=50, generator=gen))
    ids = torch.stack(steps, dim=1).tolist()
    model.train()
    return [tokenizer.decode(row) for row in ids] if info.is_main else []
