"""`lmforge export`: a run's model for other tools, as a Hugging Face model directory, plain
safetensors or GGUF, with a model card (README.md); a classify run's classifier as a
*ForSequenceClassification directory or safetensors with its labels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.console import log
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.config import Config

HELP = ("write a run's model for other tools, with a model card: a Hugging Face model "
        "directory, plain safetensors or GGUF")
OVERRIDES = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--format", default="hf", choices=("hf", "safetensors", "gguf", "peft"),
                   help="hf: a transformers directory (GPT2LMHeadModel or LlamaForCausalLM; "
                        "for a classify run *ForSequenceClassification with its labels, "
                        "task.pooling=last only) with tokenizer.json; safetensors: lmforge's own names and "
                        "config.json, for any architecture (a classify run's labels.json too); "
                        "gguf: model.gguf for llama.cpp, for Llama-style models with a bpe "
                        "tokenizer (pip install gguf); all three merge a LoRA run's adapters "
                        "into the weights. peft: a LoRA run's adapters as a peft adapter "
                        "directory for its --init-from model (default: hf)")
    p.add_argument("--out", required=True, type=Path, help="a new or empty directory")
    p.add_argument("--checkpoint", default=None,
                   help="latest, best (when the run kept one) or a step_NNNNNNNN name (default: "
                        "latest; for a classify run best, the one its test figures are of)")
    p.add_argument("--license", default="unknown",
                   help="the license the model card's front matter names, e.g. apache-2.0 "
                        "(default: unknown)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmforgeError(f"--out {out} already exists and is not empty; give a new or empty "
                           "directory (nothing was written)")
    from lmforge.rundir import RunDir, read_run_config

    cfg = read_run_config(RunDir(args.run))
    if cfg.task.kind == "classify":
        return _export_classifier(args, out, cfg)
    from lmforge.interop.gguf_export import export_gguf
    from lmforge.interop.hf_export import export_hf, export_safetensors
    from lmforge.runs.card_facts import write_model_card
    from lmforge.runs.load import load_run

    loaded = load_run(args.run, which=args.checkpoint or "latest", device="cpu")
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


def _export_classifier(args: argparse.Namespace, out: Path, cfg: Config) -> int:
    """A classify run: its SequenceClassifier as an HF *ForSequenceClassification directory
    or lmforge safetensors with labels.json; checked before its weights are read."""
    from lmforge.interop import hf_classifier_export as hfc
    from lmforge.runs.classifier import LABELS_FILE, load_classifier
    from lmforge.runs.classifier_card import write_classifier_card

    if args.format in ("gguf", "peft"):
        what = ("llama.cpp runs language models" if args.format == "gguf"
                else "peft adapters are a LoRA run's")
        raise LmforgeError(f"{args.run} is a classify run and --format {args.format} has no "
                           f"place for its head ({what}); use --format hf or safetensors")
    if args.format == "hf":
        hfc.check_hf_classifier(cfg.model, pooling=cfg.task.pooling)
    loaded = load_classifier(args.run, which=args.checkpoint or "best")
    labels = loaded.labels
    if args.format == "hf":
        log(hfc.export_hf_classifier(
            loaded.model, loaded.cfg.model, loaded.tokenizer, out, labels=labels.names,
            multi_label=labels.multi_label, thresholds=labels.thresholds,
            pooling=loaded.cfg.task.pooling))
    else:
        log(hfc.export_classifier_safetensors(loaded.model, loaded.cfg.model, loaded.tokenizer,
                                              out, labels_file=loaded.run.path / LABELS_FILE))
    log(write_classifier_card(loaded, out, export_format=args.format, license=args.license))
    return 0
