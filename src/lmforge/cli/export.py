"""`lmforge export`: a run's model for other tools, as a Hugging Face model directory or as
plain safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.console import log
from lmforge.errors import LmforgeError

HELP = "write a run's model for other tools: a Hugging Face model directory or plain safetensors"
OVERRIDES = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--format", default="hf", choices=("hf", "safetensors"),
                   help="hf: a transformers directory (GPT2LMHeadModel or LlamaForCausalLM) with "
                        "tokenizer.json; safetensors: lmforge's own names and config.json, for "
                        "any architecture (default: hf)")
    p.add_argument("--out", required=True, type=Path, help="a new or empty directory")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default), best (when the run kept one) or a step_NNNNNNNN name")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmforgeError(f"--out {out} already exists and is not empty; give a new or empty "
                           "directory (nothing was written)")
    from lmforge.interop.hf_export import export_hf, export_safetensors
    from lmforge.runs.load import load_run

    loaded = load_run(args.run, which=args.checkpoint, device="cpu")
    write = export_hf if args.format == "hf" else export_safetensors
    log(write(loaded.model, loaded.cfg.model, loaded.tokenizer, out))
    return 0
