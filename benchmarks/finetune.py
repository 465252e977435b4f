"""Full fine-tuning against LoRA (through peft) of a 0.5B-shaped Llama-style model on Reuters.

The model has Qwen2.5-0.5B's shape where it matters for cost (24 layers, width 896, 14
heads, SwiGLU of 4,864 units, RMSNorm, rotary positions) with a 32,000-token vocabulary and
a context of 256 tokens, to stay CPU-friendly: 420M parameters, randomly initialized (the
base a LoRA run starts from is then the seeded random model; the cost per step is the same
as from real weights). Reuters-21578 is prepared once with a 32,000-token BPE tokenizer.

Each mode runs `lmforge bench` in a subprocess of its own, so its peak resident memory is
its own: the model, optimizer and loader built exactly as `lmforge train` builds them, a few
untimed warm-up steps, then timed steps. Reported per mode: tokens/s, trained parameters,
optimizer state (AdamW's two moments per trained weight) and peak RSS. Target: LoRA's
optimizer state at most 5% of full fine-tuning's.

    python benchmarks/finetune.py [--reuters PATH] [--steps 5] [--warmup 2] [--batch-size 2]
                                  [--r 16] [--alpha 32]

Ends with one line:
RESULT full_tokens_per_s=… lora_tokens_per_s=… trainable_ratio=… optimizer_bytes_ratio=…
peak_rss_ratio=…
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ROOT, lmforge

DEFAULT_REUTERS = ROOT.parent / "shared" / "data" / "reuters21578.tar.gz"
MODEL = {"model.n_layer": 24, "model.n_embd": 896, "model.n_head": 14, "model.mlp": "swiglu",
         "model.mlp_hidden": 4864, "model.norm": "rmsnorm", "model.pos": "rope",
         "model.vocab_size": 32000, "model.block_size": 256, "model.tie_embeddings": "true"}


def prepare(reuters: Path, out: Path) -> Path:
    if not reuters.is_file():
        sys.exit(f"reuters21578.tar.gz not found at {reuters}; pass --reuters PATH")
    dataset = out / "reuters_bpe32k"
    lmforge("prepare", "--data", str(reuters), "--tokenizer", "bpe", "--vocab-size", "32000",
            "--out", str(dataset), "--no-progress", capture=True)
    return dataset


def measure(mode: str, lora: dict[str, object], *, dataset: Path,
            args: argparse.Namespace) -> dict:
    """`lmforge bench --json` of the model in one mode, in a process of its own."""
    settings = {**MODEL, **lora, "data.path": dataset, "data.source": "",
                "train.batch_size": args.batch_size, "train.peak_tflops": 1}  # 1: no MFU probe
    proc = lmforge("bench", "--steps", str(args.steps), "--warmup", str(args.warmup), "--json",
                   *(f"--{k}={v}" for k, v in settings.items()), capture=True)
    result = json.loads(proc.stdout)
    print(f"{mode:>4}: {result['params']:,} parameters, {result['trainable_params']:,} trained; "
          f"{result['tokens_per_s']:,.0f} tokens/s ({result['step_ms_median']:,.0f} ms per "
          f"step of {result['tokens_per_step']} tokens, {result['precision']}); optimizer "
          f"state {result['optimizer_bytes'] / 2**20:,.1f} MiB; peak RSS "
          f"{result['memory_mb']:,.0f} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuters", type=Path, default=DEFAULT_REUTERS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences per step")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    dataset = prepare(args.reuters, args.out)
    full = measure("full", {}, dataset=dataset, args=args)
    lora = measure("lora", {"lora.r": args.r, "lora.alpha": args.alpha}, dataset=dataset,
                   args=args)
    print(f"RESULT full_tokens_per_s={full['tokens_per_s']:.1f} "
          f"lora_tokens_per_s={lora['tokens_per_s']:.1f} "
          f"trainable_ratio={lora['trainable_params'] / full['trainable_params']:.4f} "
          f"optimizer_bytes_ratio={lora['optimizer_bytes'] / full['optimizer_bytes']:.4f} "
          f"peak_rss_ratio={lora['memory_mb'] / full['memory_mb']:.3f}")


if __name__ == "__main__":
    main()
