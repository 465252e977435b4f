"""The values each config field may take, and the sizes a config may describe.

config.py declares the fields; this module gives every number among them the range in
which it means something (BOUNDS, with the reason for each limit), and checks what no
single field can: that the model and the tensors of one step have a size that can exist.
Everything here is arithmetic on Python integers (which cannot overflow), done before a
model, a tokenizer trainer or a tensor is built.

The size limits are fixed rather than this machine's free memory: a config is checked
where it is loaded, which need not be where it trains (a GPU, several ranks, another
machine), and a recipe must be valid or invalid everywhere alike. They refuse what no
device can hold; `lmforge generate` and `lmforge eval`, which know their device, also
check what they allocate against its free memory (generate.available_memory).

This module imports nothing from lmforge.config (which imports it): the model's shape
comes in as any object with ModelConfig's fields (ModelShape), so there is no cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The values a numeric field may take: low..high, each end open or closed. `zero` is
    what 0 means where it means something (said when a value is below it), `why` the
    reason for the upper limit, `low_why` for the lower one."""

    low: float
    high: float = math.inf
    zero: str = ""
    why: str = ""
    low_why: str = ""
    open_low: bool = False
    open_high: bool = False


MAX_STEPS = 99_999_999  # checkpoint names are step_NNNNNNNN and sort by name: 8 digits
MAX_VOCAB = 2**21  # every Unicode code point (1,114,112) is a char token below it
MAX_PARAMS = 10**12
MAX_DEVICE_BYTES = 2**40  # 1 TiB: what one device may need for one batch
MAX_WINDOWS = 2**24  # windows drawn for one optimizer step, or in the validation subset
MAX_COUNT = 2**40  # characters, tokens or documents: more than any corpus holds
FLOAT = 4  # bytes per value: models train, evaluate and sample in float32 (or less)
# Sampling: below this a temperature overflows float32 logits to infinity (|logit| / T >
# 3.4e38 for logits of 3.4e32); 0 is greedy, and 1e-6 all but greedy.
MIN_TEMPERATURE = 1e-6

_STEPS = "checkpoint names have 8 digits; 10^8 steps is 3 years at one step a second"
_PER_STEP = f"{MAX_WINDOWS:,} windows, 8 bytes each, are drawn per step; use train.grad_accum"
_BATCH = Range(1, 2**20, why="sequences of one micro-batch on one device; the size check "
                             "below refines it")

BOUNDS: dict[str, Range] = {
    "run.seed": Range(0, 2**62, why="seed + rank must stay within torch's 64-bit seeds"),
    "data.val_fraction": Range(0.0, 1.0, open_low=True, open_high=True,
                               why="the training split would be empty"),
    "data.workers": Range(0, 1024, zero="one per core",
                          why="more processes than any machine has cores; each costs memory"),
    "data.shard_tokens": Range(1, MAX_COUNT, why="more tokens than any corpus has"),
    "clean.min_chars": Range(0, MAX_COUNT, why="longer than any document can be"),
    "clean.max_chars": Range(0, MAX_COUNT, zero="no bound", why="longer than any document"),
    "clean.max_dup_line_frac": Range(0.0, 1.0, zero="off", why="a share of lines"),
    "clean.max_dup_ngram_frac": Range(0.0, 1.0, zero="off", why="a share of words"),
    "clean.near_threshold": Range(0.0, 1.0, open_low=True,
                                  why="a Jaccard similarity, at most 1",
                                  low_why="at 0 every document would be a near duplicate"),
    "clean.near_num_perm": Range(2, 1024, low_why="MinHash LSH needs two permutations or more",
                                 why="a signature of 8 bytes per permutation is kept for every "
                                     "document; 128 to 256 is usual"),
    "clean.pos_sample": Range(0, MAX_COUNT, zero="off", why="more documents than any corpus",
                              low_why="it is the number of documents to tag"),
    "tokenizer.vocab_size": Range(1, MAX_VOCAB, why="the BPE trainer reserves about 66 bytes "
                                                    "per entry up front; the largest BPE "
                                                    "vocabularies in use have 262,144"),
    "model.n_layer": Range(1, 1024, why="8 times the deepest large models, 96 to 126 layers"),
    "model.n_head": Range(1, 1024, why="8 times the most heads of large models, 128"),
    "model.n_embd": Range(1, 2**16, why="4 times the widest large models, 12,288 to 18,432"),
    "model.block_size": Range(1, 2**20, why="a context of a million tokens"),
    "model.dropout": Range(0.0, 1.0, open_high=True, why="a dropout of 1 drops everything"),
    "model.mlp_ratio": Range(0.0, 1024.0, open_low=True, why="use a ratio such as 4"),
    "model.rope_theta": Range(1.0, 1e12, open_low=True,
                              low_why="the rotary frequencies are theta^(-2i/d): at or below "
                                      "1 they stop falling with i; GPT-NeoX and Llama use "
                                      "10000 or 500000",
                              why="far past any model's; long-context ones use up to 1e8"),
    "model.mlp_hidden": Range(0, 2**20, zero="from model.mlp_ratio",
                              why="16 times the widest large models' feed-forward blocks"),
    "model.n_kv_head": Range(0, 1024, zero="model.n_head", why="it is at most model.n_head"),
    "model.head_dim": Range(0, 2**12, zero="n_embd / n_head",
                            why="16 times the widest heads of large models, 256"),
    "model.norm_eps": Range(0.0, 1.0, open_low=True, low_why="a norm without epsilon divides "
                            "by zero on a zero vector", why="an epsilon this large swamps the norm"),
    "model.rope_factor": Range(1.0, 1e6, why="far past any model's; Llama 3.2 uses 32"),
    "model.rope_low_freq_factor": Range(0.0, 1e6, open_low=True),
    "model.rope_high_freq_factor": Range(0.0, 1e6, open_low=True),
    "model.rope_original_context": Range(1, 2**24, why="more positions than any model was "
                                                       "pre-trained at"),
    "model.logit_softcap": Range(0.0, zero="off",
                                 low_why="it is the size of the cap (15 or 30 in the speedrun)"),
    "model.vocab_size": Range(0, MAX_VOCAB, zero="take it from the dataset's tokenizer",
                              why="more than every Unicode code point"),
    "optim.lr": Range(0.0, open_low=True, low_why="a learning rate of 0 never trains"),
    "optim.min_lr": Range(0.0),
    "optim.weight_decay": Range(0.0),
    "optim.beta1": Range(0.0, 1.0, open_high=True, why="AdamW's averages need beta < 1"),
    "optim.beta2": Range(0.0, 1.0, open_high=True, why="AdamW's averages need beta < 1"),
    "optim.eps": Range(0.0),
    "optim.muon_lr": Range(0.0, 1e3, open_low=True, low_why="a learning rate of 0 never trains",
                           why="far past any useful rate (the reference's is 0.02); torch's "
                               "Muon step fails where a rate overflows float32"),
    "optim.muon_momentum": Range(0.0, 1.0, open_high=True,
                                 why="a momentum of 1 never forgets a gradient"),
    "optim.muon_weight_decay": Range(0.0),
    "optim.grad_clip": Range(0.0, zero="no clipping",
                             low_why="a negative norm would turn the gradients around"),
    "optim.warmup_steps": Range(0, MAX_STEPS, why=_STEPS),
    "optim.decay_steps": Range(0, MAX_STEPS, zero="from train.max_steps", why=_STEPS),
    "optim.max_nonfinite": Range(0, MAX_STEPS, why=_STEPS),
    "train.batch_size": _BATCH,
    "train.grad_accum": Range(1, 2**20, why=_PER_STEP),
    "train.max_steps": Range(1, MAX_STEPS, why=_STEPS),
    "train.max_minutes": Range(0.0, 1e7, zero="no limit", why="19 years; 0 is no limit"),
    "train.log_every": Range(1, MAX_STEPS, why=_STEPS),
    "train.batch_warmup_steps": Range(0, MAX_STEPS, zero="off", why=_STEPS),
    "train.batch_warmup_start": Range(0, _BATCH.high, zero="a quarter of train.batch_size",
                                      why=_BATCH.why),
    "train.seq_warmup_steps": Range(0, MAX_STEPS, zero="off", why=_STEPS),
    "train.seq_warmup_start": Range(0, 2**20, zero="a quarter of model.block_size",
                                    why="a context of a million tokens"),
    "train.threads": Range(0, 4096, zero="torch's default",
                           why="more threads than any machine has cores"),
    "train.peak_tflops": Range(0.0, 1e6, zero="measured or looked up",
                               why="a thousand times the fastest chips"),
    "train.profile": Range(0, 1000, zero="off", why="the trace of each profiled step is held "
                                                    "in memory; 10 to 20 steps show the pattern"),
    "eval.every": Range(0, MAX_STEPS, zero="only at the end", why=_STEPS),
    "eval.batches": Range(0, MAX_WINDOWS, zero="the whole split",
                          why="use eval.batches=0 for the whole split"),
    "eval.batch_size": Range(0, _BATCH.high, zero="train.batch_size", why=_BATCH.why),
    "eval.early_stop_patience": Range(0, MAX_STEPS, zero="never", why=_STEPS),
    "eval.samples": Range(0, 1000, why="past that, sampling would run for days"),
    "eval.sample_tokens": Range(0, 1_000_000, why="past that, sampling would run for days"),
    "eval.samples_at_eval": Range(0, 1000, zero="none",
                                  why="past that, sampling would run for days"),
    "checkpoint.every": Range(0, MAX_STEPS, zero="only at the end", why=_STEPS),
    "checkpoint.keep_last": Range(0, MAX_STEPS, zero="the newest is kept all the same",
                                  why=_STEPS),
    "parallel.tp": Range(0, 1024, zero="every rank for tp, 2 for fsdp+tp",
                         why="it splits heads, and model.n_head is at most 1024"),
    "parallel.timeout_s": Range(0.0, 7 * 24 * 3600.0, open_low=True,
                                why="a peer silent for a week is dead"),
    "task.body_words": Range(0, 1_000_000, zero="the whole story", why="no story is longer"),
    "task.val_fraction": Range(0.0, 1.0, open_low=True, open_high=True,
                               why="the training part would be empty"),
    "lora.r": Range(0, 4096, zero="off: every weight trains",
                    why="an adapter of that rank is as large as the widest layers it adapts"),
    "lora.alpha": Range(0.0, 1e6, open_low=True, low_why="a scale of 0 switches the adapters off",
                        why="r to 2 r is usual"),
    "lora.dropout": Range(0.0, 1.0, open_high=True, why="a dropout of 1 drops everything"),
}


def _num(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _allowed(value: float, r: Range) -> tuple[bool, bool]:
    """(not below the range, not above it)."""
    low_ok = value > r.low if r.open_low else value >= r.low
    high_ok = value < r.high if r.open_high else value <= r.high
    return low_ok, high_ok


def range_error(key: str, value: float, r: Range) -> str | None:
    """The one-line message for `value` outside `r`, or None when it is inside."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key} must be a finite number, got {value}"
    low_ok, high_ok = _allowed(value, r)
    if low_ok and high_ok:
        return None
    if isinstance(value, float) and math.isfinite(r.high):
        ends = ("(" if r.open_low else "[", ")" if r.open_high else "]")
        text = f"in {ends[0]}{_num(r.low)}, {_num(r.high)}{ends[1]}"
    elif not low_ok:
        zero = f" ({r.zero})" if r.zero else ""
        text = (f"above {_num(r.low)}" if r.open_low else
                f"0{zero} or more" if r.low == 0 else f"at least {_num(r.low)}")
    else:
        text = f"between {_num(r.low)} and {_num(r.high)}"
    why = r.low_why if not low_ok else r.why if not high_ok else ""
    return f"{key} must be {text}, got {value}" + (f" ({why})" if why else "")


def check_value(key: str, value: object) -> None:
    """A ConfigError when the number `value` of field `key` is outside its BOUNDS."""
    r = BOUNDS.get(key)
    if r is None or not isinstance(value, int | float) or isinstance(value, bool):
        return
    message = range_error(key, value, r)
    if message:
        raise ConfigError(message)


# ---------------------------------------------------------------------------- sizes

class ModelShape(Protocol):
    """What the size estimates read of a model: lmforge.config.ModelConfig's fields."""

    arch: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    mlp: str
    mlp_ratio: float
    mlp_hidden: int
    qkv_bias: bool
    qk_norm: bool
    bidirectional: bool

    @property
    def kv_heads(self) -> int: ...

    @property
    def head_size(self) -> int: ...
    pos: str
    norm: str
    bias: bool
    tie_embeddings: bool


_GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight matrices per recurrent layer


def mlp_hidden(m: ModelShape) -> int:
    """The feed-forward block's hidden width (models/layers.py: MLP and SwiGLU)."""
    if m.mlp_hidden:
        return m.mlp_hidden
    if m.mlp == "swiglu":
        return 8 * math.ceil(int(m.mlp_ratio * m.n_embd * 2 / 3) / 8)
    return int(m.mlp_ratio * m.n_embd)


def model_params(m: ModelShape, vocab: int | None = None) -> int:
    """The parameter count of the model `m` describes (tied weights once), computed from its
    shape alone; `vocab` stands in for m.vocab_size (0 until the dataset's tokenizer sets it)."""
    c, layers, bias = m.n_embd, m.n_layer, int(m.bias)
    v = m.vocab_size if vocab is None else vocab
    head = 0 if m.tie_embeddings else v * c
    if m.arch in _GATES:
        return v * c + _recurrent_layers(m) + head + v * bias
    h = mlp_hidden(m)
    norm = c * (2 if m.norm == "layernorm" and bias else 1)
    mlp = 3 * c * h + (2 * h + c) * bias if m.mlp == "swiglu" else 2 * c * h + (h + c) * bias
    q = m.n_head * m.head_size  # query and output width; keys and values have kv_heads
    kv = m.kv_heads * m.head_size
    attn = 2 * c * q + 2 * c * kv + (q + 2 * kv) * int(bias or m.qkv_bias) + c * bias
    qk_norm = 2 * m.head_size if m.qk_norm else 0  # one gain for the queries, one for the keys
    block = attn + mlp + 2 * norm + qk_norm
    positions = m.block_size * c if m.pos == "learned" else 0
    return v * c + positions + layers * block + norm + head


def _recurrent_layers(m: ModelShape) -> int:
    """The recurrent layers' weights: per direction, input and hidden matrices and two biases
    for each gate; a bidirectional model's layers above the first read both directions (2C
    wide), and a projection brings the top layer's 2C back to C (models/rnn.py)."""
    c, gates = m.n_embd, _GATES[m.arch]
    if not m.bidirectional:
        return m.n_layer * gates * (2 * c * c + 2 * c)
    first = 2 * gates * (2 * c * c + 2 * c)
    above = 2 * gates * (3 * c * c + 2 * c)
    return first + (m.n_layer - 1) * above + 2 * c * c + c * int(m.bias)


def _per_token(m: ModelShape) -> int:
    """Values one layer keeps per token for the backward pass, roughly."""
    if m.arch in _GATES:
        return (_GATES[m.arch] + 2) * m.n_embd
    return 12 * m.n_embd + 3 * mlp_hidden(m)


def train_batch_bytes(m: ModelShape, vocab: int, batch: int) -> int:
    """About what one training micro-batch of `batch` sequences needs besides the weights:
    the activations kept for the backward pass and the logits (with their fp32 copy and
    gradient)."""
    return FLOAT * batch * m.block_size * (m.n_layer * _per_token(m) + 3 * vocab)


def eval_batch_bytes(m: ModelShape, vocab: int, batch: int) -> int:
    """About what a forward pass without gradients over `batch` sequences needs."""
    return FLOAT * batch * m.block_size * (_per_token(m) + 2 * vocab)


def sampling_bytes(m: ModelShape, vocab: int, samples: int, prompt: int = 1) -> int:
    """About what drawing `samples` samples at once needs: a Transformer's KV cache of
    block_size positions (keys and values of every layer) and a forward over a full window;
    a recurrent model's hidden state and a forward over the `prompt` tokens."""
    if m.arch in _GATES:
        return FLOAT * samples * (2 * m.n_layer * m.n_embd + prompt * (_per_token(m) + vocab))
    kv = m.kv_heads * m.head_size  # per layer and position: grouped-query attention caches less
    return FLOAT * samples * m.block_size * (2 * m.n_layer * kv + _per_token(m) + vocab)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.3g} {unit}"
        n /= 1000
    return ""  # not reached


def check_sizes(m: ModelShape, *, vocab: int, train_batch: int, eval_batch: int,
                samples: int) -> None:
    """Refuse a model of more than MAX_PARAMS parameters, or a training micro-batch, a
    validation batch or a batch of samples that needs more than MAX_DEVICE_BYTES."""
    shape = (f"model.n_layer={m.n_layer}, model.n_embd={m.n_embd}, model.mlp_ratio="
             f"{m.mlp_ratio:g}, model.block_size={m.block_size} and a vocabulary of {vocab:,} "
             "(model.vocab_size, or the tokenizer's)")
    params = model_params(m, vocab)
    if params > MAX_PARAMS:
        raise ConfigError(f"{shape} make a model of {params:.3g} parameters; lmforge builds at "
                          "most 1e12 (16 TB for the fp32 weights, gradients and AdamW state); "
                          "make it smaller")
    for need, what, fix in (
            (train_batch_bytes(m, vocab, train_batch), f"one training micro-batch of "
             f"train.batch_size={train_batch} sequences", "lower train.batch_size "
             "(train.grad_accum keeps the batch)"),
            (eval_batch_bytes(m, vocab, eval_batch), f"one validation batch of eval.batch_size="
             f"{eval_batch} sequences (train.batch_size when 0)", "lower eval.batch_size"),
            (sampling_bytes(m, vocab, samples), f"drawing {samples} samples at once "
             "(eval.samples, eval.samples_at_eval)", "draw fewer samples")):
        if need > MAX_DEVICE_BYTES:
            raise ConfigError(f"{what} with {shape} needs about {human_bytes(need)} of "
                              f"activations and logits, more than the "
                              f"{human_bytes(MAX_DEVICE_BYTES)} any device holds; {fix} or "
                              "make the model smaller")


def check_windows(*, batch_size: int, grad_accum: int, eval_batches: int,
                  eval_batch: int) -> None:
    """The windows one optimizer step draws, and those of the validation subset, are drawn
    as arrays of start offsets at once: at most MAX_WINDOWS of each."""
    if batch_size * grad_accum > MAX_WINDOWS:
        raise ConfigError(f"train.batch_size={batch_size} x train.grad_accum={grad_accum} is a "
                          f"global batch of {batch_size * grad_accum:,} windows per step; at most "
                          f"{MAX_WINDOWS:,} (thousands of times the largest models' batches)")
    if eval_batches * eval_batch > MAX_WINDOWS:
        raise ConfigError(f"eval.batches={eval_batches} batches of {eval_batch} make a "
                          f"validation subset of {eval_batches * eval_batch:,} windows; at most "
                          f"{MAX_WINDOWS:,}; use eval.batches=0 to evaluate the whole split")


def check_near_dedup(threshold: float, num_perm: int) -> None:
    """clean.dedup_near: datasketch's LSH must be able to split the num_perm permutations
    into two bands or more at this threshold (a high threshold needs many permutations).
    datasketch decides that itself; asked only when near deduplication is on."""
    try:
        from datasketch import MinHashLSH
    except ImportError:  # lmforge.data.dedup says how to install it
        return

    def bands(perms: int) -> bool:
        try:
            MinHashLSH(threshold=threshold, num_perm=perms)
        except ValueError:
            return False
        return True

    if bands(num_perm):
        return
    enough = next((p for p in (2**k for k in range(1, 11)) if p > num_perm and bands(p)), 0)
    fix = (f"raise clean.near_num_perm to {enough} or more, or lower clean.near_threshold"
           if enough else "lower clean.near_threshold (at 0.95, 64 permutations or more work)")
    raise ConfigError(f"clean.near_threshold={threshold:g} with clean.near_num_perm={num_perm}: "
                      f"MinHash LSH cannot split so few permutations into two bands or more at "
                      f"so high a threshold; {fix}")
