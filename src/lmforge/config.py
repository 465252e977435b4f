"""The typed config tree, TOML recipes and dotted command-line overrides.

A run is described by one `Config`: a tree of small dataclasses whose fields carry their
own help text. Recipes in `configs/*.toml` set some fields; `--section.field=value` on the
command line sets others; everything else keeps the defaults below. Every key and value
is checked: an unknown key or a wrong type is a `ConfigError` that names the key and
suggests the nearest valid one, and a number outside its field's range
(`config_checks.BOUNDS`) or a model too large to exist is one that names the limit.

This module imports nothing heavy, so `lmforge --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from lmforge.config_checks import (
    BOUNDS,
    Range,
    check_near_dedup,
    check_sizes,
    check_value,
    check_windows,
)
from lmforge.errors import ConfigError
from lmforge.recipes import read_toml, recipe_path


def option(default: Any, doc: str, *, choices: tuple[str, ...] | None = None,
           prepare: str | None = None, refused: dict[str, str] | None = None) -> Any:
    """A config field with its help text (and, for strings, the values it accepts).
    `prepare` is the option that sets it on `lmforge prepare` (e.g. --val-fraction), for the
    fields that say how a corpus is prepared; `refused` the values people ask for that
    lmforge will not take, each with the reason."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "prepare": prepare,
                                            "refused": refused or {}})


@dataclass
class RunConfig:
    dir: str = option("", "Where the run keeps checkpoints, metrics and its resolved config. "
                          "Empty: runs/<recipe name>, numbered -2, -3, … if that is taken.")
    seed: int = option(1337, "Seed for initialization, data order, dropout and sampling.")
    init_from: str = option("", "Start a new run from these weights (--init-from): a Hugging "
                                "Face GPT-2 or Llama-style model directory, or the output of "
                                "`lmforge export --format safetensors`. The model's "
                                "architecture comes from there; model.dropout and a shorter "
                                "model.block_size still apply.")


@dataclass
class DataConfig:
    path: str = option("data/stdlib", "The prepared dataset (a directory made by `lmforge prepare`).")
    source: str = option("stdlib", "What to prepare into data.path when it does not exist yet: "
                                   "'stdlib', a file, a directory or a glob. Empty: never prepare.")
    val_fraction: float = option(0.1, "Share of the corpus held out for validation when preparing.",
                                 prepare="--val-fraction")
    text_field: str = option("text", "JSONL field, Parquet column or dataset column that holds "
                                     "the text (other fields are kept as metadata).",
                             prepare="--text-field")
    split: str = option("", "A corpus's own standard split instead of a hash split, e.g. "
                            "'modapte' for Reuters-21578 (its train part trains, its test part "
                            "validates).", prepare="--split")
    workers: int = option(0, "Worker processes for cleaning and tokenizing (0: one per CPU "
                             "core; none for inputs under 4 MB).", prepare="--workers")
    shard_tokens: int = option(100_000_000, "Tokens per shard file at most.",
                               prepare="--shard-tokens")


@dataclass
class CleanConfig:
    normalize: str = option("NFC", "Unicode normalization: NFC; NFKC also folds full-width forms "
                                   "and compatibility characters; none leaves text as it is.",
                            choices=("NFC", "NFKC", "none"))
    fold_fullwidth: bool = option(True, "With NFC: fold full-width Latin letters and digits, "
                                        "which CJK text mixes in (ＧＰＴ２ → GPT2); full-width "
                                        "punctuation (，。！) stays, as Chinese writes it.")
    control_chars: bool = option(True, "Remove control characters (newlines and tabs stay).")
    whitespace: bool = option(True, "Normalize line ends to \\n, drop trailing spaces on lines and "
                                    "runs of more than two blank lines; indentation stays.")
    markup: bool = option(False, "Strip HTML/XML tags and decode character entities.")
    mask_pii: bool = option(False, "Replace e-mail addresses, phone numbers and IP addresses "
                                   "with <EMAIL>, <PHONE> and <IP>.")
    lowercase: bool = option(False, "Lower-case all text (hurts a generative model; off by default).")
    strip_punct: bool = option(False, "Remove punctuation (hurts a generative model; off by default).")
    min_chars: int = option(1, "Drop documents shorter than this many characters after cleaning.")
    max_chars: int = option(0, "Drop documents longer than this many characters (0: no bound).")
    max_dup_line_frac: float = option(0.0, "Drop documents whose share of duplicated lines exceeds "
                                           "this (0: off; 0.3 is Gopher's rule).")
    max_dup_ngram_frac: float = option(0.0, "Drop documents whose most frequent word 5-gram covers "
                                            "more than this share of the words (0: off).")
    dedup_exact: bool = option(True, "Drop exact duplicates (same text after normalization).")
    dedup_near: bool = option(False, "Drop near duplicates found by MinHash LSH.")
    near_threshold: float = option(0.8, "Jaccard similarity above which two documents are near duplicates.")
    near_num_perm: int = option(128, "MinHash permutations (more: more precise, slower).")
    segment_chinese: bool = option(False, "Insert spaces between Chinese words (jieba) before "
                                          "tokenizing, for word-like BPE tokens.")
    pos_sample: int = option(0, "Tag this many documents with NLTK's part-of-speech tagger and "
                                "report tag frequencies (0: off); with clean.segment_chinese, "
                                "Chinese documents are tagged by jieba's.")


@dataclass
class TokenizerConfig:
    kind: str = option("bpe", "Tokenizer to train: byte-level BPE (HF tokenizers), the "
                              "characters of the corpus, or raw UTF-8 bytes.",
                       choices=("bpe", "char", "byte"), prepare="--tokenizer")
    vocab_size: int = option(8192, "Vocabulary size of a bpe tokenizer (char and byte ignore "
                                   "it; at least 257).", prepare="--vocab-size")


@dataclass
class ModelConfig:
    arch: str = option("gpt", "Model family: a Transformer or a recurrent network (tanh RNN, "
                                  "LSTM, GRU).", choices=("gpt", "rnn", "lstm", "gru"))
    n_layer: int = option(4, "Number of Transformer blocks.")
    n_head: int = option(4, "Attention heads per block; must divide model.n_embd.")
    n_embd: int = option(256, "Width of the residual stream.")
    block_size: int = option(128, "Context length in tokens.")
    dropout: float = option(0.0, "Dropout on attention weights, residual branches and embeddings.")
    bias: bool = option(False, "Biases in linear layers and norms.")
    norm: str = option("layernorm", "Normalization layer (batch normalization would let a causal "
                                     "model see future tokens, so there is none).",
                       choices=("layernorm", "rmsnorm"),
                       refused={"batchnorm": "batch normalization pools statistics across "
                                             "positions, which lets a causal language model "
                                             "see future tokens"})
    mlp: str = option("gelu", "Feed-forward block: GELU (exact, as PyTorch's nn.GELU and "
                              "nanoGPT; on CPUs 5x cheaper than the tanh form), GELU with GPT-2's "
                              "tanh approximation (HF's gelu_new), or SwiGLU (Llama).",
                      choices=("gelu", "gelu_tanh", "swiglu"))
    mlp_ratio: float = option(4.0, "Hidden width of the feed-forward block, as a multiple of n_embd.")
    mlp_hidden: int = option(0, "Hidden width of the feed-forward block in units (Hugging Face's "
                                "intermediate_size); 0: from model.mlp_ratio (for SwiGLU 2/3 of "
                                "it, rounded up to a multiple of 8).")
    n_kv_head: int = option(0, "Key/value heads (grouped-query attention: each serves "
                               "n_head / n_kv_head query heads; 1 is multi-query); must divide "
                               "model.n_head. 0: model.n_head.")
    head_dim: int = option(0, "Width of each attention head; 0: n_embd / n_head.")
    qkv_bias: bool = option(False, "Biases on the query, key and value projections, whatever "
                                   "model.bias says (Qwen2).")
    norm_eps: float = option(1e-5, "Epsilon of the norms (Llama 2 uses 1e-5, Llama 3 and Qwen2 "
                                   "1e-6, SmolLM2 1e-5).")
    pos: str = option("learned", "Position encoding: learned embeddings (GPT-2) or rotary (Llama).",
                      choices=("learned", "rope"))
    rope_theta: float = option(10000.0, "Base of the rotary frequencies (model.pos=rope).")
    rope_scaling: str = option("none", "How the rotary frequencies are stretched for long "
                                       "contexts: none, linear (positions divided by "
                                       "model.rope_factor) or llama3 (Llama 3.1's per-frequency "
                                       "scaling).", choices=("none", "linear", "llama3"))
    rope_factor: float = option(1.0, "The stretch of model.rope_scaling (8 for Llama 3.1, 32 for "
                                     "Llama 3.2).")
    rope_low_freq_factor: float = option(1.0, "llama3 scaling: wavelengths beyond "
                                              "original_context / this are scaled fully.")
    rope_high_freq_factor: float = option(4.0, "llama3 scaling: wavelengths below "
                                               "original_context / this are kept.")
    rope_original_context: int = option(8192, "llama3 scaling: the context the model was "
                                              "pre-trained at.")
    tie_embeddings: bool = option(True, "Share the token embedding with the output layer.")
    bidirectional: bool = option(False, "Recurrent models (rnn, lstm, gru) only: read each "
                                        "sequence in both directions, for tagging (lmforge "
                                        "finetune tag), where a word's tag depends on what "
                                        "follows it. Such a model sees the tokens it would "
                                        "predict, so it cannot be trained as a language model.")
    vocab_size: int = option(0, "Vocabulary size; 0 takes it from the dataset's tokenizer.")

    @property
    def kv_heads(self) -> int:
        """Key/value heads: model.n_kv_head, or one per query head."""
        return self.n_kv_head or self.n_head

    @property
    def head_size(self) -> int:
        """Width of one attention head: model.head_dim, or n_embd / n_head."""
        return self.head_dim or self.n_embd // self.n_head


@dataclass
class OptimConfig:
    lr: float = option(1e-3, "Peak learning rate of AdamW.")
    min_lr: float = option(1e-4, "Learning rate at the end of the decay.")
    weight_decay: float = option(0.1, "AdamW weight decay, applied to matrices only.")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.99, "AdamW beta2.")
    eps: float = option(1e-8, "AdamW epsilon.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this; 0 disables clipping.")
    schedule: str = option("cosine", "Learning-rate schedule after warm-up: cosine decay, "
                                     "warm-up-stable-decay, or constant.",
                           choices=("cosine", "wsd", "constant"))
    warmup_steps: int = option(100, "Steps of linear warm-up from 0 to optim.lr.")
    decay_steps: int = option(0, "cosine: step at which min_lr is reached (0: train.max_steps). "
                                 "wsd: length of the final linear decay (0: 20% of train.max_steps).")
    max_nonfinite: int = option(5, "A NaN or Inf loss or gradient norm skips its optimizer step "
                                   "(the step still counts and uses its data); more than this "
                                   "many in a row stop the run with an error (0: the first does).")


@dataclass
class TrainConfig:
    batch_size: int = option(16, "Sequences per micro-batch, per data-parallel rank. The global "
                                 "batch is batch_size x grad_accum x data-parallel ranks.")
    grad_accum: int = option(1, "Micro-batches accumulated per optimizer step.")
    max_steps: int = option(2000, "Optimizer steps to train for; also the horizon of the schedule.")
    max_minutes: float = option(0.0, "Stop after this many minutes of training (0: no limit).")
    log_every: int = option(10, "Write train metrics every N steps.")
    precision: str = option("auto", "Compute precision: auto is bf16 autocast where the hardware "
                                    "computes in bf16 natively (recent GPUs; CPUs with "
                                    "AVX512-BF16 or AMX) and fp32 elsewhere.", choices=("auto", "fp32", "bf16"))
    device: str = option("auto", "Device: auto, cpu, cuda, cuda:N or mps.")
    threads: int = option(0, "CPU threads for torch (0: torch's default).")
    progress: bool = option(True, "Show a progress bar on the terminal.")
    record_samples: bool = option(False, "Write the start of every window each rank trains on "
                                         "to samples-rankN.jsonl in the run directory, to audit "
                                         "data order.")
    report: bool = option(True, "Write RUN/report.html (figures, config, data, samples, "
                                "checkpoints) when training ends; `lmforge report RUN` redoes it.")
    peak_tflops: float = option(0.0, "Peak TFLOP/s of one device, for model FLOPs utilization "
                                     "(MFU); 0: the datasheet figure of known GPUs, else a "
                                     "matrix-multiply probe measured once and cached.")
    profile: int = option(0, "Profile this many training steps (after 5 of warm-up) with "
                             "torch.profiler: RUN/profile/trace-rankN.json (Perfetto, "
                             "chrome://tracing) and a table of the top operators.")


@dataclass
class EvalConfig:
    every: int = option(250, "Evaluate on the validation subset every N steps (0: only at the end).")
    batches: int = option(20, "Batches in the fixed validation subset (0: the whole split).")
    batch_size: int = option(0, "Sequences per validation batch (0: train.batch_size).")
    early_stop_patience: int = option(0, "Stop after this many evaluations without a new best "
                                         "validation loss (0: never).")
    samples: int = option(2, "Samples printed at the end of training.")
    sample_tokens: int = option(200, "Length of those samples in tokens.")
    samples_at_eval: int = option(1, "Samples drawn at each evaluation, eval.sample_tokens long "
                                     "(RUN/samples.jsonl, the report and TensorBoard; 0: none).")


@dataclass
class CheckpointConfig:
    every: int = option(500, "Save a checkpoint every N steps (0: only at the end).")
    keep_last: int = option(2, "Keep the newest K checkpoints (the best one is kept as well).")
    keep_best: bool = option(True, "Save a checkpoint at each new best validation loss and keep it.")


@dataclass
class ParallelConfig:
    strategy: str = option("auto", "How several processes (started by torchrun or --nproc) share "
                                   "the work: ddp replicates the model, fsdp shards it (FSDP2), tp "
                                   "splits each layer (tensor parallel), fsdp+tp does both on a 2-D "
                                   "mesh; auto is ddp on several processes, single on one.",
                           choices=("auto", "single", "ddp", "fsdp", "tp", "fsdp+tp"))
    tp: int = option(0, "Tensor-parallel degree (0: every rank for tp, 2 for fsdp+tp).")
    reshard_after_forward: bool = option(True, "fsdp: free gathered parameters after each block's "
                                               "forward (ZeRO-3); false keeps them for the backward "
                                               "(ZeRO-2: more memory, less communication).")
    activation_checkpointing: bool = option(False, "Recompute each block's activations in the "
                                                   "backward pass to save memory.")
    compile: bool = option(False, "torch.compile each block.")
    timeout_s: float = option(600.0, "Seconds a collective may wait for a peer before the run "
                                     "stops with an error (a dead or stuck process).")


# The modules of a Transformer block that LoRA may adapt: attention's projections, the GELU
# MLP's (c_fc, c_proj) and SwiGLU's (w1, w3, c_proj), as models/layers.py names them.
LORA_TARGETS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj", "mlp.c_fc",
                "mlp.w1", "mlp.w3", "mlp.c_proj")


@dataclass
class LoraConfig:
    r: int = option(0, "Rank of the LoRA adapters (low-rank updates trained on a frozen base, "
                       "through peft); 0: off, every weight trains.")
    alpha: float = option(16.0, "LoRA scaling: an adapter's update is multiplied by alpha / r.")
    dropout: float = option(0.0, "Dropout on the input of each adapter.")
    targets: str = option(",".join(LORA_TARGETS), "Comma-separated modules of each block that "
                          "get adapters; names this model lacks (mlp.w1 in a GELU MLP) are "
                          f"skipped. Any of {', '.join(LORA_TARGETS)}.")

    @property
    def target_list(self) -> list[str]:
        """lora.targets as names, in the order given, without blanks or repeats."""
        names = [t.strip() for t in self.targets.split(",") if t.strip()]
        return list(dict.fromkeys(names))


# The experiment trackers log.to may name → the pip command that installs each.
TRACKERS = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb",
            "mlflow": "pip install mlflow-skinny"}
_TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


@dataclass
class LogConfig:
    to: str = option("tensorboard", "Comma-separated experiment trackers that get the config "
                     "and the run's scalars (rank 0 only): tensorboard (RUN/tb/), wandb "
                     "(offline unless WANDB_MODE says otherwise), mlflow (RUN/mlruns unless "
                     "MLFLOW_TRACKING_URI is set); empty or none: no tracker.")

    @property
    def trackers(self) -> tuple[str, ...]:
        """log.to as names, in the order given, without blanks, repeats or 'none'."""
        names = [t.strip() for t in self.to.split(",") if t.strip() not in ("", "none")]
        return tuple(dict.fromkeys(names))


@dataclass
class TaskConfig:
    kind: str = option("lm", "What the run trains the model to do: lm (language modeling on "
                             "data.path) or a task `lmforge finetune` sets up: classify, tag "
                             "or sft (instruction tuning).",
                       choices=("lm", "classify", "tag", "sft"))
    source: str = option("", "The task's examples: for classify JSONL, CSV or Parquet (text "
                             "and label or labels); for sft JSONL (prompt and completion, or "
                             "messages); or the Reuters-21578 distribution (its topics, or "
                             "for sft its headlines).")
    eval_source: str = option("", "tag: the sentences to evaluate on (a CoNLL or CoNLL-U "
                                  "file); empty: a part of task.source held out by hash.")
    tag_field: str = option("upos", "tag, CoNLL-U: the column of tags (upos or xpos).",
                            choices=("upos", "xpos"))
    body_words: int = option(0, "sft on Reuters-21578: keep the first this many words of each "
                                "story (0: all), so a small context keeps its beginning.")
    labels: str = option("topics", "Reuters-21578: which label set (topics, places, people, "
                                   "orgs, exchanges).")
    split: str = option("", "The examples' own split ('modapte' for Reuters-21578); empty: a "
                            "hash split, or the files' own split field.")
    text_field: str = option("text", "Field that holds an example's text.")
    label_field: str = option("label", "Field that holds its label (or 'labels', a list, for "
                                       "several per example).")
    val_fraction: float = option(0.1, "Share of the training examples held out to evaluate "
                                      "during training (and tune multi-label thresholds on).")
    pooling: str = option("mean", "classify: the state the head reads, the mean over the "
                                  "text's tokens (better for what a text is about: Reuters "
                                  "topics) or the last token's (in a causal model the only one "
                                  "that has seen the whole text; what Hugging Face's "
                                  "*ForSequenceClassification reads, so --format hf exports it).",
                          choices=("mean", "last"))


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    log: LogConfig = field(default_factory=LogConfig)
    task: TaskConfig = field(default_factory=TaskConfig)


SECTIONS = [f.name for f in dataclasses.fields(Config)]


@dataclass(frozen=True)
class FieldInfo:
    key: str
    type: type
    default: Any
    doc: str
    choices: tuple[str, ...] | None
    prepare: str | None  # its option on `lmforge prepare`, for the fields prepare takes
    refused: dict[str, str]  # values lmforge will not take → why
    bounds: Range | None = None  # the range of a number (config_checks.BOUNDS)


def field_infos() -> list[FieldInfo]:
    """Every config field, as `section.name`, in declaration order (the --help listing)."""
    infos = []
    root = Config()
    for section in dataclasses.fields(Config):
        obj = getattr(root, section.name)
        for f in dataclasses.fields(obj):
            infos.append(FieldInfo(f"{section.name}.{f.name}", type(getattr(obj, f.name)),
                                   getattr(obj, f.name), f.metadata["doc"], f.metadata["choices"],
                                   f.metadata["prepare"], f.metadata["refused"],
                                   BOUNDS.get(f"{section.name}.{f.name}")))
    return infos


_FIELDS = {info.key: info for info in field_infos()}


def _suggest(key: str) -> str:
    near = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.5)
    if not near:  # a bare field name without its section, e.g. max_steps
        near = [k for k in _FIELDS if k.split(".")[1] == key.split(".")[-1]][:1]
    return f"; did you mean '{near[0]}'?" if near else "; `lmforge train --help` lists every key"


def coerce(key: str, value: Any, *, from_text: bool = True) -> Any:
    """Check `value` for field `key`; strings from the command line are converted
    (`from_text`), values from a TOML file must already have the right type."""
    if key == "train.tensorboard":
        raise ConfigError("train.tensorboard is now log.to: --log.to=tensorboard (the default), "
                          "--log.to=tensorboard,wandb,mlflow, or --log.to=none for no tracker")
    if key not in _FIELDS:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key)}")
    info = _FIELDS[key]
    want = info.type
    try:
        if isinstance(value, str) and want is not str and from_text:
            if want is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            else:
                value = want(value)
        elif want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
        raise ConfigError(f"{key}: expected {names[want]}, got {value!r}") from None
    check_value(key, value)  # before anything uses it: its range (and for floats, finite)
    if value in info.refused:
        raise ConfigError(f"{key}={value}: {info.refused[value]}; use "
                          f"{' or '.join(info.choices or ())}")
    if info.choices and value not in info.choices:
        near = difflib.get_close_matches(str(value), info.choices, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(info.choices)}{hint}")
    return value


def set_value(cfg: Config, key: str, value: Any, *, from_text: bool = True) -> None:
    section, name = key.split(".", 1)
    setattr(getattr(cfg, section), name, coerce(key, value, from_text=from_text))


def from_dict(tree: dict[str, Any], *, base: Config | None = None, origin: str = "config") -> Config:
    """Build a Config from a nested dict (a parsed TOML file), checking every key."""
    cfg = base if base is not None else Config()
    for section, values in tree.items():
        if section not in SECTIONS:
            near = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f"; did you mean [{near[0]}]?" if near else f"; sections are {', '.join(SECTIONS)}"
            raise ConfigError(f"{origin}: unknown section [{section}]{hint}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: '{section}' must be a table like [{section}]")
        for name, value in values.items():
            if f"{section}.{name}" == "train.tensorboard":  # a run saved before [log] existed
                _legacy_tensorboard(cfg, value)
                continue
            set_value(cfg, f"{section}.{name}", value, from_text=False)
    return cfg


def _legacy_tensorboard(cfg: Config, value: Any) -> None:
    """train.tensorboard of an old run's config.toml, as log.to: false drops tensorboard, so
    the run resumes (and is evaluated, exported) as it was trained."""
    if value is False:
        cfg.log.to = ",".join(t for t in cfg.log.trackers if t != "tensorboard")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(recipe: str | None, overrides: dict[str, str] | None = None) -> Config:
    """The recipe (default: the 'default' recipe) with the overrides applied on top."""
    path = recipe_path(recipe or "default")
    cfg = from_dict(read_toml(path), origin=str(path))
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    validate(cfg)
    o = cfg.optim  # a new run only: a run trained so is still read (validate) to use it
    if o.schedule != "constant" and o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr={o.min_lr:g} is above optim.lr={o.lr:g}: the "
                          f"{o.schedule} schedule would raise the rate as it decays; lower "
                          "optim.min_lr")
    return cfg


def _check_fields(**sections: Any) -> None:
    """Every number of these sections in its range (a Config built in code skips coerce)."""
    for name, obj in sections.items():
        for f in dataclasses.fields(obj):
            check_value(f"{name}.{f.name}", getattr(obj, f.name))


def validate(cfg: Config) -> None:
    """Every number in its range, then the combinations that no single field can check,
    then the sizes: all arithmetic on the config, before anything is built."""
    data_sections = ("data", "tokenizer", "clean")  # validate_data checks those
    _check_fields(**{s: getattr(cfg, s) for s in SECTIONS if s not in data_sections})
    m = cfg.model
    if m.n_embd % m.n_head and not m.head_dim:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; "
                          "pick sizes where it is, or set model.head_dim")
    if m.n_head % m.kv_heads:
        raise ConfigError(f"model.n_kv_head={m.n_kv_head} does not divide model.n_head="
                          f"{m.n_head}: each key/value head serves the same number of query "
                          "heads; pick a divisor (1 is multi-query attention)")
    if m.pos == "rope" and m.head_size % 2:
        raise ConfigError(f"model.pos=rope needs an even head size, not {m.head_size} "
                          "(model.head_dim, or model.n_embd / model.n_head)")
    if m.rope_scaling == "llama3" and m.rope_low_freq_factor >= m.rope_high_freq_factor:
        raise ConfigError(f"model.rope_low_freq_factor={m.rope_low_freq_factor:g} must be below "
                          f"model.rope_high_freq_factor={m.rope_high_freq_factor:g} (Llama 3 uses "
                          "1 and 4)")
    if m.bidirectional and m.arch == "gpt":
        raise ConfigError("model.bidirectional=true needs model.arch=rnn, lstm or gru: a causal "
                          "Transformer sees only the left context")
    if m.bidirectional and cfg.task.kind in ("lm", "sft"):
        raise ConfigError(f"model.bidirectional=true with task.kind={cfg.task.kind}: a model "
                          "that reads both ways sees the tokens it would predict, so it cannot "
                          "be trained as a language model; use it to tag or classify")
    if not m.mlp_hidden and int(m.n_embd * m.mlp_ratio) < 1:
        raise ConfigError(f"model.mlp_ratio={m.mlp_ratio} gives an MLP of "
                          f"{m.n_embd * m.mlp_ratio:g} units; use a ratio such as 4 "
                          "(above 0, at most 1024)")
    validate_lora(cfg)
    validate_log(cfg.log)
    validate_data(cfg.data, cfg.tokenizer, cfg.clean)
    t, e = cfg.train, cfg.eval
    eval_batch = e.batch_size or t.batch_size
    check_windows(batch_size=t.batch_size, grad_accum=t.grad_accum, eval_batches=e.batches,
                  eval_batch=eval_batch)
    check_sizes(m, vocab=model_vocab(cfg), train_batch=t.batch_size, eval_batch=eval_batch,
                samples=max(e.samples, e.samples_at_eval))


def validate_lora(cfg: Config) -> None:
    """lora.targets names modules that exist, and LoRA is asked of a model and a strategy it
    works with (adapters wrap a block's linear layers, which tensor parallelism splits)."""
    lora = cfg.lora
    unknown = [t for t in lora.target_list if t not in LORA_TARGETS]
    if unknown or not lora.target_list:
        what = f"unknown module {unknown[0]!r}" if unknown else "no module named"
        raise ConfigError(f"lora.targets: {what}; choose from {', '.join(LORA_TARGETS)}")
    if not lora.r:
        return
    if cfg.model.arch != "gpt":
        raise ConfigError(f"lora.r={lora.r}: LoRA adapts a Transformer's linear layers, and "
                          f"model.arch={cfg.model.arch} has none; fine-tune it fully (lora.r=0)")
    if cfg.parallel.strategy in ("tp", "fsdp+tp"):
        raise ConfigError(f"lora.r={lora.r} with parallel.strategy={cfg.parallel.strategy}: "
                          "tensor parallelism cannot split the adapters' layers; use ddp or fsdp")


def validate_log(log: LogConfig) -> None:
    """log.to names trackers lmforge knows."""
    for name in log.trackers:
        if name not in TRACKERS:
            near = difflib.get_close_matches(name, list(TRACKERS), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"log.to: {name!r} is not a tracker; choose from "
                              f"{', '.join(TRACKERS)} (comma-separated) or none{hint}")


def require_trackers(log: LogConfig) -> None:
    """Each tracker of log.to importable here: one line with the pip command when not, before
    a run directory is made (find_spec imports nothing)."""
    import importlib.util

    for name in log.trackers:
        if importlib.util.find_spec(_TRACKER_MODULES[name]) is None:
            raise ConfigError(f"log.to names {name}, which is not installed; "
                              f"`{TRACKERS[name]}` (or `pip install 'lmforge[trackers]'`), or "
                              "leave it out of log.to")


def model_vocab(cfg: Config) -> int:
    """model.vocab_size, or until the dataset's tokenizer sets it (0), what the tokenizer
    will have: tokenizer.vocab_size for bpe, 257 for bytes (and as a guess for characters)."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    return cfg.tokenizer.vocab_size if cfg.tokenizer.kind == "bpe" else 257


def validate_data(data: DataConfig, tokenizer: TokenizerConfig, clean: CleanConfig) -> None:
    """How a corpus is to be prepared: checked here for `lmforge prepare` and `lmforge train`
    alike, before anything is read."""
    _check_fields(data=data, tokenizer=tokenizer, clean=clean)
    coerce("tokenizer.kind", tokenizer.kind, from_text=False)
    if tokenizer.kind == "bpe" and tokenizer.vocab_size < 257:
        raise ConfigError(f"tokenizer.vocab_size={tokenizer.vocab_size} is too small for a "
                          "byte-level BPE tokenizer (it needs at least 257: the 256 bytes and "
                          "end-of-text); raise it")
    if clean.max_chars and clean.max_chars < clean.min_chars:
        raise ConfigError(f"clean.max_chars={clean.max_chars} is below clean.min_chars="
                          f"{clean.min_chars}: every document would be dropped; raise "
                          "clean.max_chars (0: no bound)")
    if clean.dedup_near:
        check_near_dedup(clean.near_threshold, clean.near_num_perm)
