"""The `lmforge` command: parse the verb and its arguments, call the library.

Heavy imports (torch, tokenizers) happen inside the verbs, so `lmforge --help` is instant.
Any LmforgeError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from lmforge import __version__
from lmforge.config import SECTIONS, coerce, field_infos, parse_overrides
from lmforge.errors import LmforgeError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, like every other lmforge error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _add_config_options(parser: argparse.ArgumentParser, sections: list[str] = SECTIONS) -> None:
    """Every config field as --section.name, so `lmforge train --help` documents them all."""
    groups = {s: parser.add_argument_group(f"[{s}] options") for s in sections}
    for info in field_infos():
        section = info.key.split(".")[0]
        if section not in groups:
            continue
        choices = f" One of: {', '.join(info.choices)}." if info.choices else ""
        default = f"{info.default!r}" if info.type is str else f"{info.default}"
        groups[section].add_argument(
            f"--{info.key}", dest=info.key, metavar=info.type.__name__.upper(),
            default=argparse.SUPPRESS,
            help=f"{info.doc}{choices} (default: {default})".replace("%", "%%"))


def build_parser() -> Parser:
    parser = Parser(prog="lmforge", allow_abbrev=False,
                    description="From raw text to a trained language model and back to text.")
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    p = verbs.add_parser("prepare", help="clean, split and tokenize a corpus into verified shards",
                         allow_abbrev=False)
    p.add_argument("--data", nargs="+", action="extend", required=True, metavar="SOURCE",
                   help="files, directories or globs of text (also .gz .bz2 .xz .zst), JSONL, "
                        "Parquet, Reuters-21578 (reuters21578.tar.gz or its .sgm files), "
                        "'stdlib' (the Python standard library), nltk:NAME, hf:NAME[:CONFIG], "
                        "a URL, or 'tinyshakespeare'")
    p.add_argument("--out", required=True, type=Path, help="directory for the prepared dataset")
    p.add_argument("--tokenizer", default=None, choices=("bpe", "char", "byte"),
                   help="tokenizer to train (default: bpe)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="bpe vocabulary size (default: 8192)")
    p.add_argument("--tokenizer-from", type=Path, metavar="PATH",
                   help="use the tokenizer of a prepared dataset, a run or a tokenizer directory "
                        "instead of training one (to evaluate or fine-tune a model on new text)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the corpus held out for validation (default: 0.1)")
    p.add_argument("--text-field", default="text",
                   help="JSONL field, Parquet column or dataset column with the text (default: text)")
    p.add_argument("--split", default="",
                   help="use the corpus's own standard split, e.g. modapte for Reuters-21578")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes for cleaning and tokenizing (default: one per core)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000,
                   help="tokens per shard file at most (default: 100,000,000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_options(p, ["clean"])

    p = verbs.add_parser("train", help="train a model (no arguments: the default job)",
                         allow_abbrev=False,
                         usage="lmforge train [RECIPE] [--resume RUN | --init-from DIR] "
                               "[--SECTION.FIELD=VALUE ...]",
                         description="Train from a recipe (a TOML file or the name of a shipped "
                                     "recipe) with --section.field=value overrides.")
    p.add_argument("recipe", nargs="?", help="TOML recipe or a shipped recipe name (default: default)")
    p.add_argument("--resume", metavar="RUN", type=Path,
                   help="continue the run in this directory from its latest complete checkpoint")
    p.add_argument("--init-from", metavar="DIR", type=Path,
                   help="start from the weights in DIR: a Hugging Face GPT-2 or Llama-style "
                        "model directory, or `lmforge export` output; the architecture comes "
                        "from DIR (sets --run.init_from)")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train with N processes on this machine: hands the command to "
                        "`torchrun --standalone --nproc-per-node N` (see --parallel.strategy)")
    _add_config_options(p)

    p = verbs.add_parser("bench", help="time training steps of a recipe: tokens/s, MFU, memory",
                         allow_abbrev=False,
                         usage="lmforge bench [RECIPE] [--steps N] [--warmup N] [--json] "
                               "[--SECTION.FIELD=VALUE ...]",
                         description="Build the recipe's model, optimizer and data as `lmforge "
                                     "train` does, run --warmup steps, time --steps steps and "
                                     "print tokens/s, time per step, MFU against the device's "
                                     "peak (re-measured by a matmul probe; the best figure is "
                                     "cached) and peak memory. Nothing is saved.")
    p.add_argument("recipe", nargs="?", help="TOML recipe or a shipped recipe name (default: default)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_config_options(p)

    p = verbs.add_parser("verify-resume", help="check that a killed and resumed run of a recipe "
                         "trains exactly as one that never stopped", allow_abbrev=False,
                         usage="lmforge verify-resume [RECIPE] [--steps N] [--SECTION.FIELD=VALUE ...]",
                         description="Train --steps steps of the recipe (with the usual "
                                     "--section.field overrides) twice in a temporary directory, "
                                     "as `lmforge train` subprocesses: straight, and killed with "
                                     "SIGKILL after a checkpoint in the middle, then resumed. "
                                     "Compare the per-step losses bit for bit. Exit code 0 when "
                                     "they match, 1 when not (the first step that differs and by "
                                     "how much are printed) or a run failed. Nothing is kept.")
    p.add_argument("recipe", nargs="?", help="TOML recipe or a shipped recipe name (default: default)")
    p.add_argument("--steps", type=int, default=40,
                   help="steps of each run; the kill comes after the checkpoint at half of them "
                        "(default: 40)")
    _add_config_options(p)

    p = verbs.add_parser("compare", help="train several recipes on the same data for the same "
                         "budget; print a table and plot validation bits per byte",
                         allow_abbrev=False,
                         usage="lmforge compare [RECIPE ...] --data DATA [--minutes M | --tokens N] "
                               "[--out DIR] [--SECTION.FIELD=VALUE ...]",
                         description="Train each recipe (default: shakespeare_char and lstm_char) "
                                     "in its own run directory OUT/RECIPE on the same data and "
                                     "budget, evaluate each best checkpoint on the whole "
                                     "validation split, print a table and save OUT/compare.png "
                                     "and OUT/compare.json. --SECTION.FIELD overrides apply to "
                                     "every recipe.")
    p.add_argument("recipes", nargs="*", metavar="RECIPE",
                   help="TOML recipes or shipped recipe names (default: shakespeare_char lstm_char)")
    p.add_argument("--data", required=True,
                   help="a prepared dataset directory, or a corpus to prepare into OUT/data "
                        "(anything `lmforge prepare --data` takes)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget: each recipe trains until its own train.max_steps or "
                        "for this many minutes, whichever comes first (default: 5)")
    p.add_argument("--tokens", type=int, default=None,
                   help="token budget: each recipe trains for as many steps as read this many "
                        "tokens, its learning-rate schedule fitted to them")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the runs, the table and the plot (default: runs/compare, "
                        "numbered if taken)")
    p.add_argument("--tokenizer", default="char", choices=("bpe", "char", "byte"),
                   help="tokenizer when --data must be prepared first (default: char)")

    p = verbs.add_parser("eval", help="loss, perplexity and bits per byte of a trained run",
                         allow_abbrev=False)
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--split", default="val", help="split of the dataset to evaluate (default: val)")
    p.add_argument("--data", type=Path, help="another prepared dataset with the same tokenizer")
    p.add_argument("--batches", type=int, default=0,
                   help="evaluate this many batches (0: the whole split); a recurrent model "
                        "reads this many chunks of each stream")
    p.add_argument("--batch-size", type=int, default=16,
                   help="sequences per batch; a recurrent model reads the split as this many "
                        "contiguous streams, carrying its state (default: 16)")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step_NNNNNNNN name")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")

    p = verbs.add_parser("generate", help="sample text from a trained run", allow_abbrev=False)
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens; 0 is off (default: 50)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 is off (default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples (default: 1)")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step_NNNNNNNN name")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, … (default: auto)")

    p = verbs.add_parser("export", help="write a run's model for other tools: a Hugging Face "
                                        "model directory or plain safetensors", allow_abbrev=False)
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--format", default="hf", choices=("hf", "safetensors"),
                   help="hf: a transformers directory (GPT2LMHeadModel or LlamaForCausalLM) with "
                        "tokenizer.json; safetensors: lmforge's own names and config.json, for "
                        "any architecture (default: hf)")
    p.add_argument("--out", required=True, type=Path, help="a new or empty directory")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step_NNNNNNNN name")

    p = verbs.add_parser("report", help="an HTML report of one run, or of several overlaid",
                         allow_abbrev=False)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for report.html and its figures/ (default: the run itself; "
                        "for several runs, compare-A-B-… beside the first one)")
    return parser


def _hand_to_torchrun(nproc: int, argv: list[str]) -> int:
    """Replace this process with torchrun running the same command on `nproc` processes."""
    if nproc < 1:
        raise LmforgeError(f"--nproc must be 1 or more, got {nproc}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise LmforgeError("--nproc starts torchrun, but this process was already started by "
                           "torchrun; drop --nproc")
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "lmforge", *rest]
    from lmforge.distributed.elastic import NO_SHARED_STORE  # restarts must not read stale keys

    os.environ.setdefault(NO_SHARED_STORE, "1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.verb is None:
            parser.print_help()
            return 0
        if rest and args.verb not in ("train", "prepare", "compare", "bench", "verify-resume"):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        known = {k: v for k, v in vars(args).items() if "." in k}
        for key, value in known.items():
            coerce(key, value)  # a bad value fails now, before torch is even imported
        overrides = {**known, **parse_overrides(rest)}
        if args.verb == "train" and args.init_from is not None:
            overrides["run.init_from"] = str(args.init_from)
        if args.verb == "train" and args.nproc is not None:
            return _hand_to_torchrun(args.nproc, sys.argv[1:] if argv is None else argv)
        if args.verb == "train":
            from lmforge.commands import train_command
            return train_command(recipe=args.recipe, resume=args.resume, overrides=overrides)
        if args.verb == "prepare":
            from lmforge.data.command import prepare_command
            return prepare_command(args, overrides=overrides)
        if args.verb == "bench":
            from lmforge.bench import bench_command
            return bench_command(args, overrides=overrides)
        if args.verb == "verify-resume":
            from lmforge.verify_resume import verify_resume_command
            return verify_resume_command(args, overrides=overrides)
        if args.verb == "compare":  # checks its inputs before it imports torch
            from lmforge.compare import compare_command
            return compare_command(args, overrides=overrides)
        from lmforge import commands
        return getattr(commands, f"{args.verb}_command")(args)
    except LmforgeError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
            print(f"lmforge {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130

