"""Model directories read into lmforge: a Hugging Face directory of GPT-2 or the Llama
family (Llama, Qwen2, Mistral: `import_hf`), or lmforge's own safetensors export
(`import_safetensors`), as a ModelConfig and a state_dict that lmforge's GPT loads strictly
and that computes the same logits; or, without a second copy of the weights in memory,
straight into a model (`load_weights_into`, `load_pretrained`). Weights are read by
hf_weights.py, from safetensors or from pytorch_model.bin with weights_only=True, so
loading a directory never runs code from it.

A directory may be damaged or hostile, so every value of its config.json is checked for its
type as it is read, and the model it describes is bounded before anything is allocated: at
most _MAX_CONTEXT positions, and no more weights than its weight files can hold (half a byte
each, the smallest any format stores). A failure is one ConfigError or CheckpointError."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.config import Config, ModelConfig, coerce, validate
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.hf_layout import (
    CLASSES,
    GELUS,
    LLAMA_LAYOUT,
    WEIGHTS,
    read_json,
    weight_files,
)
from lmforge.interop.hf_weights import WeightSource, copy_into, hf_prefix, hf_tensors, own_tensors
from lmforge.models import LanguageModel, build_model
from lmforge.models.layers import swiglu_hidden

_MAX_SIZE = 2**31 - 1  # layers, heads, width, vocabulary: beyond, torch's indices overflow
_MAX_CONTEXT = 2**22  # positions: rope tables for more take gigabytes before any weight loads


def _short(value: Any) -> str:
    """A value for a one-line message: a printable string as it is, anything else as repr."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fields:
    """The values of a Hugging Face config.json, each checked for its type as it is read."""

    def __init__(self, raw: dict[str, Any], path: Path) -> None:
        self.raw, self.path = raw, path

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def _bad(self, key: str, want: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}={_short(self.raw[key])} is not {want}; the "
                           "file is damaged or not a model's config")

    def size(self, key: str, default: int, most: int = _MAX_SIZE) -> int:
        value = self.raw.get(key)
        if value is None:  # absent or null: the default of the HF class
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise self._bad(key, f"a size from 1 to {most:,}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.raw.get(key, default)
        try:
            ok = not isinstance(value, bool) and math.isfinite(value)
        except (TypeError, OverflowError):  # a string, a list; an int beyond float
            ok = False
        if not ok:
            raise self._bad(key, "a finite number")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value


def _lmforge_config(raw: dict[str, Any], directory: Path) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{directory}/config.json has keys lmforge's ModelConfig lacks "
                          f"({', '.join(unknown)[:200]}); is it an lmforge safetensors export?")
    try:
        return ModelConfig(**{k: coerce(f"model.{k}", v, from_text=False) for k, v in raw.items()})
    except ConfigError as err:
        raise ConfigError(f"{directory}/config.json: {err}; the file is damaged or not a "
                          "model's") from None


def _checked(cfg: ModelConfig, directory: Path) -> ModelConfig:
    """`cfg`, if lmforge can build it and the directory's weight files can hold it: checked
    by arithmetic alone, before anything is allocated."""
    for name in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size"):
        most = _MAX_CONTEXT if name == "block_size" else _MAX_SIZE
        if not 1 <= getattr(cfg, name) <= most:
            raise ConfigError(f"{directory}/config.json: {name}={getattr(cfg, name)} is not a "
                              f"size from 1 to {most:,}; the file is damaged or not a model's")
    try:
        validate(Config(model=cfg))
    except ConfigError as err:
        raise ConfigError(f"{directory}/config.json describes no model lmforge can build "
                          f"({err}); the file is damaged or not a model's") from None
    # At least the embedding, n_embd² per layer (attention holds 4 n_embd², a recurrent
    # layer 2) and a learned position table.
    learned = cfg.block_size if cfg.arch == "gpt" and cfg.pos == "learned" else 0
    least = cfg.n_embd * (cfg.vocab_size + cfg.n_layer * cfg.n_embd + learned)
    stored = sum(path.stat().st_size for path in weight_files(directory))
    if least > 2 * stored:
        raise CheckpointError(f"{directory}/config.json describes a model of at least "
                              f"{least:,} weights, more than its weight files ({stored:,} "
                              "bytes) can hold; the config is damaged or is another model's")
    return cfg


def _own_config(directory: Path) -> ModelConfig:
    """The checked ModelConfig of a directory written by `export_safetensors`."""
    cfg = _lmforge_config(read_json(directory / "config.json"), directory)
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS}; the export is incomplete")
    return _checked(cfg, directory)


def import_safetensors(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The ModelConfig and state_dict of a directory written by `export_safetensors`."""
    directory = Path(directory)
    cfg = _own_config(directory)
    model = _meta_model(cfg)
    sd = dict(own_tensors(WeightSource(directory, files=[directory / WEIGHTS]), model))
    if cfg.tie_embeddings:  # save_model kept one of the two names of the shared tensor
        shared = sd.get("wte.weight", sd.get("lm_head.weight"))
        if shared is not None:
            sd.setdefault("wte.weight", shared)
            sd.setdefault("lm_head.weight", shared)
    _check_shapes(cfg, sd, directory)
    return cfg, sd


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"cannot import into lmforge's GPT: {what}")


def _norm_eps(c: _Fields, key: str, default: float) -> float:
    eps = c.number(key, default)
    if not 0 < eps < 1:
        raise _refuse(f"{key}={eps:g} is not an epsilon in (0, 1); the file is damaged")
    return eps


def _gpt2_config(c: _Fields) -> ModelConfig:
    act = c.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in GELUS:
        raise _refuse(f"activation_function={act}, lmforge's MLP computes GELU, exact (gelu) "
                      "or in GPT-2's tanh form (gelu_new)")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if c.get(key, want) != want:
            raise _refuse(f"{key}={_short(c.get(key))}, lmforge's attention has {key}={want}")
    n_embd = c.size("n_embd", 768)
    n_inner = c.size("n_inner", 4 * n_embd)
    cfg = ModelConfig(arch="gpt", n_layer=c.size("n_layer", 12), n_head=c.size("n_head", 12),
                      n_embd=n_embd, block_size=c.size("n_positions", 1024, _MAX_CONTEXT),
                      bias=True, norm="layernorm", mlp=GELUS[act], pos="learned",
                      norm_eps=_norm_eps(c, "layer_norm_epsilon", 1e-5),
                      mlp_ratio=n_inner / n_embd,
                      tie_embeddings=c.flag("tie_word_embeddings", True),
                      vocab_size=c.size("vocab_size", 50257))
    if int(cfg.mlp_ratio * n_embd) != n_inner:
        cfg.mlp_ratio, cfg.mlp_hidden = 4.0, n_inner
    return cfg


# rope_scaling kinds → what each needs from its object (transformers' names)
_ROPE_KINDS = {"default": (), "linear": ("factor",),
               "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings")}


def _rope_fields(c: _Fields) -> dict[str, Any]:
    """model.rope_* from a transformers 4 (rope_theta, rope_scaling) or 5 (rope_parameters)
    config: the base, and the llama3 or linear stretch of the frequencies."""
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise _refuse(f"rope_scaling={_short(rope)} is not an object; the file is damaged")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in _ROPE_KINDS:
        raise _refuse(f"rope scaling {_short(repr(kind))}; lmforge computes the default, linear "
                      "and llama3 kinds")
    if c.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise _refuse("partial_rotary_factor != 1; lmforge rotates every dimension of a head")
    r = _Fields(rope, c.path)
    for key in _ROPE_KINDS[kind]:
        if key not in rope:
            raise _refuse(f"rope scaling '{kind}' without its {key}; the file is damaged")
    fields: dict[str, Any] = {"rope_theta": r.number("rope_theta", c.number("rope_theta", 10000.0))}
    if kind != "default":
        fields.update(rope_scaling=kind, rope_factor=r.number("factor", 1.0))
    if kind == "llama3":
        fields.update(rope_low_freq_factor=r.number("low_freq_factor", 1.0),
                      rope_high_freq_factor=r.number("high_freq_factor", 4.0),
                      rope_original_context=r.size("original_max_position_embeddings", 8192))
    return fields


def _swiglu_width(hidden: int, n_embd: int) -> dict[str, Any]:
    """mlp_ratio 4 when it gives SwiGLU width `hidden` (lmforge's own Llama shape), else the
    width itself as mlp_hidden."""
    return {"mlp_ratio": 4.0} if swiglu_hidden(n_embd, 4.0) == hidden else {"mlp_hidden": hidden}


def _biases(c: _Fields, family: str) -> tuple[bool, bool]:
    """model.bias and model.qkv_bias. Qwen2 always has q/k/v biases and no others; Llama's
    attention_bias puts one on q, k, v and o, its mlp_bias on the MLP."""
    if family == "qwen2":
        return False, True
    attn_bias, mlp_bias = c.flag("attention_bias", False), c.flag("mlp_bias", False)
    if attn_bias != mlp_bias:
        raise _refuse(f"attention_bias={attn_bias} but mlp_bias={mlp_bias}; lmforge's "
                      "model.bias is one switch for both")
    return attn_bias, False


def _context(c: _Fields, family: str) -> int:
    """The context: max_position_embeddings, or for Mistral's sliding-window attention the
    window, within which lmforge's full causal attention computes the same function."""
    context = c.size("max_position_embeddings", 2048, _MAX_CONTEXT)
    window = c.get("sliding_window")
    used = c.flag("use_sliding_window", family == "mistral")
    if window is not None and used:
        window = c.size("sliding_window", context, _MAX_CONTEXT)
        context = min(context, window)
    return context


def sliding_window(directory: Path) -> int | None:
    """The attention window of a Mistral-style directory, or None: within it lmforge's full
    causal attention computes what the model does, beyond it something else."""
    raw = read_json(Path(directory) / "config.json")
    if raw.get("model_type") not in LLAMA_LAYOUT:
        return None
    c = _Fields(raw, Path(directory) / "config.json")
    if c.get("sliding_window") is None or not c.flag("use_sliding_window",
                                                     c.get("model_type") == "mistral"):
        return None
    return c.size("sliding_window", 1, _MAX_CONTEXT)


def _llama_config(c: _Fields, family: str) -> ModelConfig:
    n_embd, n_head = c.size("hidden_size", 4096), c.size("num_attention_heads", 32)
    if c.get("hidden_act", "silu") != "silu":
        raise _refuse(f"hidden_act={_short(c.get('hidden_act'))}, lmforge's SwiGLU uses silu")
    kv = c.size("num_key_value_heads", n_head, n_head)
    if n_head % kv:
        raise _refuse(f"num_key_value_heads={kv} does not divide num_attention_heads={n_head}")
    default_head = n_embd // n_head if n_embd % n_head == 0 else 0
    if not default_head and c.get("head_dim") is None:
        raise _refuse(f"hidden_size={n_embd} is not divisible by num_attention_heads={n_head} "
                      "and there is no head_dim; the file is damaged")
    head_dim = c.size("head_dim", default_head)
    bias, qkv_bias = _biases(c, family)
    return ModelConfig(
        arch="gpt", bias=bias, qkv_bias=qkv_bias, n_layer=c.size("num_hidden_layers", 32), n_head=n_head, n_embd=n_embd,
        n_kv_head=0 if kv == n_head else kv, head_dim=0 if head_dim == default_head else head_dim,
        block_size=_context(c, family), norm="rmsnorm", mlp="swiglu", pos="rope",
        norm_eps=_norm_eps(c, "rms_norm_eps", 1e-6),
        **_swiglu_width(c.size("intermediate_size", 11008), n_embd),
        **_rope_fields(c), tie_embeddings=c.flag("tie_word_embeddings", False),
        vocab_size=c.size("vocab_size", 32000))


def _hf_config(c: _Fields) -> tuple[ModelConfig, str]:
    """The ModelConfig and the HF family ("gpt2", or a Llama-layout one) of a config.json."""
    family = c.get("model_type")
    if family == "gpt2":
        return _gpt2_config(c), family
    if family in LLAMA_LAYOUT:
        return _llama_config(c, family), family
    raise _refuse(f"model_type={_short(repr(family))}; lmforge imports "
                  f"{', '.join(CLASSES.values())}")


def _hf_directory(directory: Path) -> tuple[ModelConfig, str]:
    c = _Fields(read_json(directory / "config.json"), directory / "config.json")
    cfg, family = _hf_config(c)
    return _checked(cfg, directory), family


def import_hf(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The lmforge ModelConfig and GPT state_dict of a Hugging Face directory (GPT-2 or the
    Llama family), such that `build_model(cfg).load_state_dict(sd)` loads strictly and
    computes the same logits.

    Tensors keep their stored dtype (load_state_dict casts); dropout is left at 0.
    """
    directory = Path(directory)
    cfg, family = _hf_directory(directory)
    source = WeightSource(directory, prefix=hf_prefix(family))
    _enough_tensors(cfg, len(source), directory)
    sd = dict(hf_tensors(source, cfg, family))
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["wte.weight"]
    _check_shapes(cfg, sd, directory)
    return cfg, sd


def _meta_model(cfg: ModelConfig) -> LanguageModel:
    with torch.device("meta"):
        return build_model(cfg)


def load_weights_into(model: nn.Module, directory: Path) -> None:
    """Fill `model` (built for read_model_config(directory), on any device, possibly with no
    values yet) from the directory's weight files, one tensor at a time: memory holds the
    model and one tensor, never a second copy of the weights."""
    directory = Path(directory)
    if "model_type" in read_json(directory / "config.json"):
        cfg, family = _hf_directory(directory)
        source = WeightSource(directory, prefix=hf_prefix(family))
        _enough_tensors(cfg, len(source), directory)
        copy_into(model, hf_tensors(source, cfg, family), directory)
    else:
        _own_config(directory)
        copy_into(model, own_tensors(WeightSource(directory, files=[directory / WEIGHTS]), model),
                  directory)


def load_pretrained(directory: Path, *,
                    dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, LanguageModel]:
    """The model of a model directory, in `dtype`: built on the meta device (no memory, no
    random initialization), given storage, and filled tensor by tensor, so loading a bf16
    model into bf16 needs about its own size and no more."""
    cfg = read_model_config(directory)
    model = _meta_model(cfg).to(dtype)  # on the meta device: no memory for fp32 first
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gave the tied layers a tensor each
    load_weights_into(model, directory)
    model.reset_buffers()  # the rotary tables, computed from the config
    return cfg, model.eval()


def read_model_config(directory: Path) -> ModelConfig:
    """The ModelConfig of a Hugging Face GPT-2 / Llama directory (its config.json has a
    model_type) or of an `export_safetensors` directory, without reading any weights."""
    directory = Path(directory)
    c = read_json(directory / "config.json")
    if "model_type" not in c:
        return _checked(_lmforge_config(c, directory), directory)
    return _checked(_hf_config(_Fields(c, directory / "config.json"))[0], directory)


def import_any(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """`import_hf` or `import_safetensors`, whichever wrote `directory`."""
    if "model_type" in read_json(Path(directory) / "config.json"):
        return import_hf(directory)
    return import_safetensors(directory)


def _enough_tensors(cfg: ModelConfig, count: int, directory: Path) -> None:
    """Each layer has tensors of its own, so a file of fewer tensors than layers is refused
    before anything is built."""
    if cfg.n_layer > count:
        raise CheckpointError(f"{directory} holds {count} tensors, too few for the "
                              f"{cfg.n_layer} layers its config.json describes")


def _check_shapes(cfg: ModelConfig, sd: dict[str, Tensor], directory: Path) -> None:
    """Compare with the model built on the meta device (no memory), so a bad file fails here
    with the tensor's name rather than deep inside load_state_dict."""
    _enough_tensors(cfg, len(sd), directory)
    want = _meta_model(cfg).state_dict()
    for name, t in want.items():
        if name not in sd:
            raise CheckpointError(f"{directory} has no tensor '{name}', which its config.json "
                                  "implies; the weights are incomplete")
        if sd[name].shape != t.shape:
            raise CheckpointError(f"{directory}: '{name}' has shape {tuple(sd[name].shape)}, the "
                                  f"config implies {tuple(t.shape)}")
