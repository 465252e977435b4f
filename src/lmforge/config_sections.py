"""The sections of the config tree: one small dataclass per section, each field with its
default and help text (`option`). Reading, overriding and checking them is config.py's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
                              "tanh approximation (HF's gelu_new), SwiGLU (Llama), or ReLU "
                              "squared (relu2: c_proj(relu(c_fc x)^2), the NanoGPT speedrun's).",
                      choices=("gelu", "gelu_tanh", "swiglu", "relu2"))
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
    qk_norm: bool = option(False, "RMSNorm on each head's queries and keys (with a learned gain "
                                  "of head_size, shared by the heads) before the rotary "
                                  "embedding, as OLMo 2, Qwen3 and the NanoGPT speedrun do: "
                                  "attention logits cannot blow up, so higher learning rates "
                                  "stay stable.")
    zero_init_proj: bool = option(False, "Start the projections that write into the residual "
                                         "stream (attention's and the MLP's c_proj) at zero, so "
                                         "each block starts as the identity (the NanoGPT "
                                         "speedrun's initialization).")
    logit_softcap: float = option(0.0, "Cap the output logits smoothly at +-this: cap * "
                                       "tanh(logits / cap) (Gemma 2; the NanoGPT speedrun uses "
                                       "15 or 30). 0: off.")
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
    name: str = option("adamw", "The optimizer: AdamW for every weight, or Muon "
                                "(torch.optim.Muon: momentum orthogonalized by Newton-Schulz) for "
                                "the hidden layers' weight matrices with AdamW (the settings "
                                "below) for the embeddings, the output layer, norms and biases.",
                       choices=("adamw", "muon"))
    lr: float = option(1e-3, "Peak learning rate of AdamW.")
    min_lr: float = option(1e-4, "Learning rate at the end of the decay.")
    weight_decay: float = option(0.1, "AdamW weight decay, applied to matrices only.")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.99, "AdamW beta2.")
    eps: float = option(1e-8, "AdamW epsilon.")
    muon_lr: float = option(0.02, "optim.name=muon: Muon's peak learning rate (Keller Jordan's "
                                  "reference uses 0.02); warm-up and decay scale it by the same "
                                  "factor as optim.lr.")
    muon_momentum: float = option(0.95, "optim.name=muon: Muon's (Nesterov) momentum.")
    muon_weight_decay: float = option(0.0, "optim.name=muon: decoupled weight decay of the Muon "
                                           "matrices, its own because torch multiplies it by "
                                           "optim.muon_lr (0.1 at 0.02 shrinks them 0.2% a "
                                           "step, 20 times AdamW's at 1e-3); 0 as in the "
                                           "reference.")
    muon_adjust_lr: str = option("original", "optim.name=muon: how each matrix's step is scaled "
                                             "by its shape: original (Keller Jordan's, sqrt(max(1, "
                                             "out/in)), for optim.muon_lr near 0.02) or "
                                             "match_rms_adamw (Moonshot's, 0.2 sqrt(max(out, in)): "
                                             "updates the size of AdamW's, so optim.muon_lr near "
                                             "optim.lr).", choices=("original", "match_rms_adamw"))
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
                                "checkpoints) and RUN/loss.png when training ends; `lmforge "
                                "report RUN` makes the report afterwards.")
    batch_warmup_steps: int = option(0, "Grow the batch linearly from train.batch_warmup_start "
                                        "sequences to train.batch_size over this many steps "
                                        "(0: the full batch from the start).")
    batch_warmup_start: int = option(0, "First batch of that warm-up (0: a quarter of "
                                        "train.batch_size).")
    seq_warmup_steps: int = option(0, "Grow the training sequence length linearly from "
                                      "train.seq_warmup_start tokens to model.block_size over "
                                      "this many steps (0: full windows from the start).")
    seq_warmup_start: int = option(0, "First sequence length of that warm-up (0: a quarter of "
                                      "model.block_size).")
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
