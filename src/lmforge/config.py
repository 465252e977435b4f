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
from dataclasses import dataclass
from typing import Any

from lmforge.config_checks import (
    BOUNDS,
    Range,
    check_near_dedup,
    check_sizes,
    check_value,
    check_windows,
)
from lmforge.config_sections import (
    LORA_TARGETS,
    TRACKERS,
    CheckpointConfig,
    CleanConfig,
    Config,
    DataConfig,
    EvalConfig,
    LogConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    TaskConfig,
    TokenizerConfig,
    TrainConfig,
    option,
)
from lmforge.errors import ConfigError
from lmforge.recipes import read_toml, recipe_path

_TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

# the sections live in config_sections.py; they are imported from here
__all__ = ["LORA_TARGETS", "TRACKERS", "CheckpointConfig", "CleanConfig", "Config", "DataConfig", "EvalConfig", "LogConfig", "LoraConfig", "ModelConfig", "OptimConfig", "ParallelConfig", "RunConfig", "TaskConfig", "TokenizerConfig", "TrainConfig", "option"]


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
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(info.choices)}{hint}")
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
    validate_speedrun(cfg)
    _validate_warmups(cfg)
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


def validate_speedrun(cfg: Config) -> None:
    """model.qk_norm, model.zero_init_proj, model.logit_softcap and optim.name=muon only
    where lmforge implements them (each is off by default)."""
    m, strategy = cfg.model, cfg.parallel.strategy
    if m.arch != "gpt":
        asked = [key for key, on in (("model.qk_norm", m.qk_norm),
                                     ("model.zero_init_proj", m.zero_init_proj),
                                     ("model.logit_softcap", m.logit_softcap > 0)) if on]
        if asked:
            raise ConfigError(f"{asked[0]} is a Transformer option, and model.arch={m.arch} "
                              "does not implement it; leave it at its default")
    if m.qk_norm and strategy in ("tp", "fsdp+tp"):
        # the gains are shared by the heads, which tensor parallelism splits across ranks:
        # each rank's gradient would cover its own heads only
        raise ConfigError(f"model.qk_norm=true with parallel.strategy={strategy}: its gains are "
                          "shared by heads that tensor parallelism splits across ranks; use ddp "
                          "or fsdp")
    if cfg.optim.name == "muon" and cfg.lora.r:
        raise ConfigError(f"optim.name=muon with lora.r={cfg.lora.r}: LoRA's adapters train "
                          "with AdamW in lmforge; use optim.name=adamw")


def _validate_warmups(cfg: Config) -> None:
    """train.batch_warmup_* and train.seq_warmup_*: language modeling with a Transformer,
    starting below the full size."""
    t = cfg.train
    asked = [(key, steps) for key, steps in (("train.batch_warmup_steps", t.batch_warmup_steps),
                                             ("train.seq_warmup_steps", t.seq_warmup_steps))
             if steps]
    if not asked:
        return
    key, steps = asked[0]
    if cfg.model.arch != "gpt":
        raise ConfigError(f"{key}={steps} with model.arch={cfg.model.arch}: a recurrent "
                          "model's streams go on from step to step at a fixed batch and chunk "
                          "length; set it to 0")
    if cfg.task.kind != "lm":
        raise ConfigError(f"{key} warms up language modeling, not task.kind={cfg.task.kind}; "
                          "set it to 0")
    for key, start, full, name in (
            ("train.batch_warmup_start", t.batch_warmup_start, t.batch_size, "train.batch_size"),
            ("train.seq_warmup_start", t.seq_warmup_start, cfg.model.block_size,
             "model.block_size")):
        if start > full:
            raise ConfigError(f"{key}={start} is above {name}={full}, where the warm-up ends; "
                              f"start at or below it (0: a quarter of it)")


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
