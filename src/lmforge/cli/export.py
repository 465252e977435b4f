"""`lmforge export`: a run's model for other tools, as a Hugging Face model directory, plain
safetensors or GGUF, with a model card (README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.console import log
from lmforge.errors import LmforgeError

HELP = ("write a run's model for other tools, with a model card: a Hugging Face model "
        "directory, plain safetensors or GGUF")
OVERRIDES = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--format", default="hf", choices=("hf", "safetensors", "gguf", "peft"),
                   help="hf: a transformers directory (GPT2LMHeadModel or LlamaForCausalLM) with "
                        "tokenizer.json; safetensors: lmforge's own names and config.json, for "
                        "any architecture; gguf: model.gguf for llama.cpp, for Llama-style models "
                        "with a bpe tokenizer (pip install gguf); all three merge a LoRA run's "
                        "adapters into the weights. "
                        "peft: a LoRA run's adapters as a peft adapter directory for its "
                        "--init-from model (default: hf)")
    p.add_argument("--out", required=True, type=Path, help="a new or empty directory")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default), best (when the run kept one) or a step_NNNNNNNN name")
    p.add_argument("--license", default="unknown",
                   help="the license the model card's front matter names, e.g. apache-2.0 "
                        "(default: unknown)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmforgeError(f"--out {out} already exists and is not empty; give a new or empty "
                           "directory (nothing was written)")
    from lmforge.interop.gguf_export import export_gguf
    from lmforge.interop.hf_export import export_hf, export_safetensors
    from lmforge.runs.card_facts import write_model_card
    from lmforge.runs.load import load_run

    loaded = load_run(args.run, which=args.checkpoint, device="cpu")
    if args.format == "peft":
        from lmforge.interop.peft_export import export_peft

        log(export_peft(loaded.model, loaded.cfg, loaded.tokenizer, out))
        return 0
    if loaded.cfg.lora.r:  # the adapters folded into the weights: a plain model
        from lmforge.interop.lora import merge_adapters

        merge_adapters(loaded.model)
    write = {"hf": export_hf, "safetensors": export_safetensors, "gguf": export_gguf}[args.format]
    log(write(loaded.model, loaded.cfg.model, loaded.tokenizer, out))
    log(write_model_card(loaded, out, export_format=args.format, license=args.license))
    return 0
