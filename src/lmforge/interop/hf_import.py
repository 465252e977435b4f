"""Model directories read into lmforge: a Hugging Face GPT-2 or Llama directory
(`import_hf`), or lmforge's own safetensors export (`import_safetensors`), as a ModelConfig
and a state_dict that lmforge's GPT loads strictly and that computes the same logits.
Weights are read from safetensors, or from pytorch_model.bin with weights_only=True, so
loading a directory never runs code from it.

A directory may be damaged or hostile, so every value of its config.json is checked for its
type as it is read, and the model it describes is bounded before anything is allocated: at
most _MAX_CONTEXT positions, and no more weights than its weight files can hold (half a byte
each, the smallest any format stores). A failure is one ConfigError or CheckpointError."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from lmforge.config import Config, ModelConfig, coerce, validate
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.hf_layout import (
    BUFFERS,
    CLASSES,
    GELUS,
    LLAMA_LAYOUT,
    WEIGHTS,
    is_conv1d,
    pairs,
    qkv,
    read_json,
    weight_files,
)
from lmforge.models.layers import swiglu_hidden

_MAX_SIZE = 2**31 - 1  # layers, heads, width, vocabulary: beyond, torch's indices overflow
_MAX_CONTEXT = 2**22  # positions: rope tables for more take gigabytes before any weight loads
# What loading a damaged file can raise (safetensors' own error, or torch on odd dtypes)
_LOAD_ERRORS = (SafetensorError, OSError, RuntimeError, ValueError, TypeError, KeyError,
                EOFError, pickle.UnpicklingError)


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


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except _LOAD_ERRORS as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason}); "
                              "re-download or re-export it") from None


def import_safetensors(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The ModelConfig and state_dict of a directory written by `export_safetensors`."""
    directory = Path(directory)
    cfg = _lmforge_config(read_json(directory / "config.json"), directory)
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS}; the export is incomplete")
    cfg = _checked(cfg, directory)
    sd = _load_safetensors(directory / WEIGHTS)
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


def _biases(c: _Fields, family: str) -> dict[str, bool]:
    """model.bias and model.qkv_bias. Qwen2 always has q/k/v biases and no others; Llama's
    attention_bias puts one on q, k, v and o, its mlp_bias on the MLP."""
    if family == "qwen2":
        return {"bias": False, "qkv_bias": True}
    attn_bias, mlp_bias = c.flag("attention_bias", False), c.flag("mlp_bias", False)
    if attn_bias != mlp_bias:
        raise _refuse(f"attention_bias={attn_bias} but mlp_bias={mlp_bias}; lmforge's "
                      "model.bias is one switch for both")
    return {"bias": attn_bias, "qkv_bias": False}


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
    return ModelConfig(
        arch="gpt", n_layer=c.size("num_hidden_layers", 32), n_head=n_head, n_embd=n_embd,
        n_kv_head=0 if kv == n_head else kv, head_dim=0 if head_dim == default_head else head_dim,
        block_size=_context(c, family), norm="rmsnorm", mlp="swiglu", pos="rope",
        norm_eps=_norm_eps(c, "rms_norm_eps", 1e-6),
        **_swiglu_width(c.size("intermediate_size", 11008), n_embd), **_biases(c, family),
        **_rope_fields(c), tie_embeddings=c.flag("tie_word_embeddings", False),
        vocab_size=c.size("vocab_size", 32000))


def _load_bin(path: Path) -> dict[str, Tensor]:
    """pytorch_model.bin with weights_only=True: a pickle that would build anything but
    tensors (run code) is refused, never run."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(f"{path} is not plain tensors ({reason}); the file is damaged or "
                              "may be hostile, and was not loaded. Get a model.safetensors "
                              "from a source you trust") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                           for k, v in sd.items()):
        raise CheckpointError(f"{path} is not a state_dict (names to tensors); the file is "
                              "damaged or not a model's weights")
    return sd


def _load_weights(directory: Path) -> dict[str, Tensor]:
    """model.safetensors (possibly sharded) or pytorch_model.bin, loaded without pickle code."""
    files = weight_files(directory)
    if files[0].name == "pytorch_model.bin":
        return _load_bin(files[0])
    return {k: v for f in files for k, v in _load_safetensors(f).items()}


def _hf_names(weights: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """Names as GPT2LMHeadModel / LlamaForCausalLM save them; base-model saves
    (GPT2Model, LlamaModel, the original gpt2 files) lack the prefix."""
    prefix = "transformer." if family == "gpt2" else "model."
    return {k if k.startswith((prefix, "lm_head.")) else prefix + k: v
            for k, v in weights.items() if not k.endswith(BUFFERS)}


def from_hf_state_dict(weights: dict[str, Tensor], cfg: ModelConfig, family: str) -> dict[str, Tensor]:
    """HF tensors → lmforge's GPT state_dict for `cfg`; every HF tensor must be used."""
    left = _hf_names(weights, family)

    def take(name: str, shape: tuple[int, ...] | None = None) -> Tensor:
        if name not in left:
            raise CheckpointError(f"the model directory has no tensor '{name}', which its "
                                  "config.json implies; the weights are incomplete")
        if shape is not None and tuple(left[name].shape) != shape:
            raise CheckpointError(f"the model directory's '{name}' has shape "
                                  f"{tuple(left[name].shape)}, its config.json implies {shape}")
        return left.pop(name)

    sd: dict[str, Tensor] = {}
    for ours, theirs in pairs(cfg, family):
        t = take(theirs)
        sd[ours] = t.t().contiguous() if is_conv1d(theirs, t) else t
    if family == "gpt2":
        for i in range(cfg.n_layer):
            width = 3 * cfg.n_embd
            fused = {"weight": take(f"transformer.h.{i}.attn.c_attn.weight", (cfg.n_embd, width)).t(),
                     "bias": take(f"transformer.h.{i}.attn.c_attn.bias", (width,))}
            for p, t in fused.items():
                for name, part in zip(qkv(i), t.split(cfg.n_embd, dim=0), strict=True):
                    sd[f"{name}.{p}"] = part.contiguous()
    if cfg.tie_embeddings:
        left.pop("lm_head.weight", None)  # some saves store the tied copy as well
        sd["lm_head.weight"] = sd["wte.weight"]
    if left:
        raise CheckpointError(f"the model directory has tensors lmforge's GPT has no place for: "
                              f"{', '.join(sorted(left)[:3])}")
    return sd


def _hf_config(c: _Fields) -> tuple[ModelConfig, str]:
    """The ModelConfig and the HF family ("gpt2", or a Llama-layout one) of a config.json."""
    family = c.get("model_type")
    if family == "gpt2":
        return _gpt2_config(c), family
    if family in LLAMA_LAYOUT:
        return _llama_config(c, family), family
    raise _refuse(f"model_type={_short(repr(family))}; lmforge imports "
                  f"{', '.join(CLASSES.values())}")


def import_hf(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The lmforge ModelConfig and GPT state_dict of a GPT-2 or Llama HF directory, such that
    `build_model(cfg).load_state_dict(sd)` loads strictly and computes the same logits.

    Tensors keep their stored dtype (load_state_dict casts); dropout is left at 0.
    """
    directory = Path(directory)
    cfg, family = _hf_config(_Fields(read_json(directory / "config.json"), directory / "config.json"))
    cfg = _checked(cfg, directory)
    sd = from_hf_state_dict(_load_weights(directory), cfg, family)
    _check_shapes(cfg, sd, directory)
    return cfg, sd


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


def _check_shapes(cfg: ModelConfig, sd: dict[str, Tensor], directory: Path) -> None:
    """Compare with the model built on the meta device (no memory), so a bad file fails here
    with the tensor's name rather than deep inside load_state_dict. Each layer has a tensor
    of its own, so a file of fewer tensors than layers is refused before building anything."""
    from lmforge.models import build_model

    if cfg.n_layer > len(sd):
        raise CheckpointError(f"{directory} holds {len(sd)} tensors, too few for the "
                              f"{cfg.n_layer} layers its config.json describes")
    with torch.device("meta"):
        want = build_model(cfg).state_dict()
    for name, t in want.items():
        if name not in sd:
            raise CheckpointError(f"{directory} has no tensor '{name}', which its config.json "
                                  "implies; the weights are incomplete")
        if sd[name].shape != t.shape:
            raise CheckpointError(f"{directory}: '{name}' has shape {tuple(sd[name].shape)}, the "
                                  f"config implies {tuple(t.shape)}")
