"""`lmforge train --init-from DIR`: a new run that starts from weights trained elsewhere.

DIR is a Hugging Face GPT-2 or Llama-style model directory (`hf_import.import_hf`) or the
output of `lmforge export --format safetensors` (`hf_import.import_safetensors`), for continued
pre-training or fine-tuning on the user's corpus. A dataset the run prepares (data.path not
there yet) is tokenized with DIR's own tokenizer when it has one (data/prepare.ensure_dataset);
a dataset prepared with another tokenizer is allowed, with a note (`check_tokenizer`).

The architecture comes from DIR, since the weights only fit the model they were trained
in: a recipe's [model] values are replaced (and said so), and a `--model.X` on the
command line that disagrees with DIR is an error. Two fields are the run's own choice:
model.dropout (a training setting, not part of the function the weights compute) and a
model.block_size shorter than DIR's (a shorter context; the learned position table is cut
to its first rows). Rank 0 alone reads DIR: it resolves the config (`resolve_config`) and
loads the weights (`load_state`) into its model before it is parallelized; the other ranks
receive them from it (DDP's first broadcast, or the materialization of a sharded model),
so DIR needs to be on rank 0's machine only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lmforge.config import Config, ModelConfig
from lmforge.data import shards
from lmforge.errors import CheckpointError, ConfigError, LmforgeError
from lmforge.interop.hf_import import load_weights_into, read_model_config, sliding_window
from lmforge.interop.hf_tokenizer import import_hf_tokenizer
from lmforge.interop.hf_weights import WeightSource, copy_into, own_tensors
from lmforge.rundir import RunDir, read_run_config

RUN_OWN = ("dropout", "block_size")  # fields the new run may choose; see the module docstring


_WHAT = "give an lmforge run, a Hugging Face model directory or the output of `lmforge export`"


def _directory(path: str) -> Path:
    directory = Path(path)
    try:
        is_dir = directory.is_dir()
        has_config = is_dir and ((directory / "config.json").is_file()
                                 or RunDir(directory).config.is_file())
    except OSError as err:  # a name too long, a directory that cannot be entered
        raise ConfigError(f"--init-from {path}: {err.strerror or err}; {_WHAT}") from None
    if not is_dir:
        raise ConfigError(f"--init-from {path}: no such directory; {_WHAT}")
    if not has_config:
        raise ConfigError(f"--init-from {path} has no config.json (nor a run's config.toml); "
                          f"{_WHAT}")
    return directory


def run_weights(directory: Path) -> Path | None:
    """For an lmforge run directory, the weights --init-from takes: model.safetensors of its
    best checkpoint, else of its latest; None for a model directory (it has config.json)."""
    run = RunDir(directory)
    if (directory / "config.json").is_file() or not run.config.is_file():
        return None
    name = run.pointer("best") or run.pointer("latest")
    weights = run.checkpoints / name / "model.safetensors" if name else None
    if weights is None or not weights.is_file():
        raise CheckpointError(f"--init-from {directory} is a run without a complete checkpoint; "
                              f"train it first (lmforge train --resume {directory})")
    return weights


def _imported(directory: Path) -> ModelConfig:
    """The model `directory` holds: a run's [model], or a model directory's config.json."""
    if run_weights(directory) is not None:
        return read_run_config(RunDir(directory)).model
    return read_model_config(directory)


def _context_limit(imported: ModelConfig, directory: Path) -> tuple[int | None, str]:
    """The longest context the run may choose, and why: learned positions stop at DIR's
    table, a sliding window bounds what full attention computes alike; rope tables are
    computed, so otherwise any context works."""
    window = None if run_weights(directory) else sliding_window(directory)
    if window is not None:
        return window, "(the model attends within a sliding window of that many tokens)"
    if imported.pos == "learned":
        return imported.block_size, "with learned positions"
    return None, ""


def _block_size_ok(imported: ModelConfig, block_size: int, directory: Path) -> bool:
    limit, _ = _context_limit(imported, directory)
    return limit is None or block_size <= limit


def resolve_config(cfg: Config, *, explicit: Iterable[str]) -> str:
    """Set cfg.model to the model in cfg.run.init_from (made absolute), keeping the run's
    own dropout and a shorter block_size. `explicit` are the keys set on the command line:
    those must agree with DIR. Returns a line that says what was taken from DIR."""
    directory = _directory(cfg.run.init_from)
    imported = _imported(directory)
    explicit = set(explicit)
    replaced = []
    for f in dataclasses.fields(ModelConfig):
        ours, theirs, key = getattr(cfg.model, f.name), getattr(imported, f.name), f"model.{f.name}"
        if f.name == "dropout" or ours == theirs:
            continue
        if f.name == "block_size" and _block_size_ok(imported, ours, directory) and key in explicit:
            continue
        if key in explicit:
            limit, why = _context_limit(imported, directory)
            hint = f"; at most {limit} {why}" if f.name == "block_size" and limit else ""
            raise ConfigError(f"--{key}={ours} conflicts with the model in {directory} "
                              f"({f.name}={theirs}); drop it, the architecture comes from "
                              f"--init-from{hint}")
        if ours != getattr(ModelConfig(), f.name):  # a value someone chose, not a default
            replaced.append(f"{f.name}={ours}")
        setattr(cfg.model, f.name, theirs)
    cfg.run.init_from = str(directory.resolve())
    m = cfg.model
    heads = f"{m.n_head} heads" + (f" over {m.kv_heads} key/value heads"
                                   if m.kv_heads != m.n_head else "")
    shorter = ("; --model.block_size=N trains on a shorter context"
               if "model.block_size" not in explicit and m.block_size > 2048 else "")
    return (f"model from {directory}: {m.arch}, {m.n_layer} layers, {heads}, width "
            f"{m.n_embd}, context {m.block_size}, vocabulary {m.vocab_size}"
            + (f" (in place of the config's {', '.join(replaced)})" if replaced else "")
            + shorter)


def check_tokenizer(cfg: Config) -> str:
    """The dataset's tokenizer must fit the imported embedding (vocab_size at least its
    vocabulary). A tokenizer other than DIR's is allowed, since the imported embeddings
    are then relearned, but worth a note: returned, or "" for DIR's own tokenizer (which
    a dataset that `lmforge train --init-from DIR` prepares has)."""
    from lmforge.data.tokenizer import HfTokenizer, load_tokenizer, tokenizer_digest

    data = Path(cfg.data.path)
    manifest = shards.read_manifest(data)
    vocab = int(manifest["tokenizer"]["vocab_size"])
    if cfg.model.vocab_size < vocab:
        raise ConfigError(f"the dataset {data} has a tokenizer of {vocab} tokens, more than the "
                          f"{cfg.model.vocab_size} the model in {cfg.run.init_from} has "
                          "embeddings for; prepare the data with a tokenizer of at most "
                          f"{cfg.model.vocab_size} tokens")
    try:
        directory = Path(cfg.run.init_from)
        theirs = (load_tokenizer(RunDir(directory).tokenizer) if run_weights(directory)
                  else import_hf_tokenizer(directory))
    except LmforgeError:
        theirs = None
    ours = load_tokenizer(data / manifest["tokenizer"]["dir"])
    # a model's own tokenizer: the same files; else the same vocabulary (every id decodes to
    # the same text), which a tokenizer of another kind can have too
    same = theirs is not None and (
        (isinstance(theirs, HfTokenizer)
         and theirs.digest() == tokenizer_digest(data / manifest["tokenizer"]["dir"]))
        or (theirs.vocab_size == ours.vocab_size
            and all(theirs.decode([i]) == ours.decode([i]) for i in range(ours.vocab_size))))
    if same:
        return ""
    return (f"note: the dataset's {ours.kind} tokenizer ({ours.vocab_size} tokens) is not the "
            f"one {cfg.run.init_from} was trained with; its embeddings start out meaning other "
            "tokens")


@dataclass(frozen=True)
class PretrainedWeights:
    """The --init-from weights a run starts from, checked against the run's model but not
    read yet: `load_into` streams them into the model one tensor at a time, so memory never
    holds the weights twice."""

    directory: Path
    run_weights: Path | None = None  # an lmforge run's checkpoint weights, under its own names


def load_state(cfg: Config) -> PretrainedWeights:
    """The weights of cfg.run.init_from, once its config still describes cfg.model."""
    directory = _directory(cfg.run.init_from)
    imported = _imported(directory)
    differ = [f"{f.name}: {getattr(imported, f.name)} there, {getattr(cfg.model, f.name)} here"
              for f in dataclasses.fields(ModelConfig)
              if f.name not in RUN_OWN and getattr(imported, f.name) != getattr(cfg.model, f.name)]
    if differ or not _block_size_ok(imported, cfg.model.block_size, directory):
        raise CheckpointError(f"{directory} changed since this run was set up "
                              f"({'; '.join(differ) or 'block_size'}); start a new run")
    return PretrainedWeights(directory, run_weights(directory))


def load_into(model: nn.Module, weights: PretrainedWeights) -> None:
    """Fill a freshly built (not yet parallelized) model with the weights, in its own dtype;
    a learned position table longer than the run's context is cut to block_size."""
    if weights.run_weights is None:
        load_weights_into(model, weights.directory)
        return
    source = WeightSource(weights.run_weights.parent, files=[weights.run_weights])
    copy_into(model, own_tensors(source, model), weights.run_weights)
