"""Model directories read into lmforge: a Hugging Face GPT-2 or Llama directory
(`import_hf`), or lmforge's own safetensors export (`import_safetensors`), as a ModelConfig
and a state_dict that lmforge's GPT loads strictly and that computes the same logits.
Weights are read from safetensors, or from pytorch_model.bin with weights_only=True, so
loading a directory never runs code from it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from lmforge.config import ModelConfig, coerce
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.hf_layout import (
    BUFFERS,
    GELUS,
    WEIGHTS,
    is_conv1d,
    pairs,
    qkv,
    read_json,
)
from lmforge.models.layers import NORM_EPS, swiglu_hidden


def _lmforge_config(raw: dict[str, Any], directory: Path) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{directory}/config.json has keys lmforge's ModelConfig lacks "
                          f"({', '.join(unknown)}); is it an lmforge safetensors export?")
    return ModelConfig(**{k: coerce(f"model.{k}", v, from_text=False) for k, v in raw.items()})


def import_safetensors(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The ModelConfig and state_dict of a directory written by `export_safetensors`."""
    directory = Path(directory)
    cfg = _lmforge_config(read_json(directory / "config.json"), directory)
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS}; the export is incomplete")
    sd = load_file(str(directory / WEIGHTS))
    if cfg.tie_embeddings:  # save_model kept one of the two names of the shared tensor
        shared = sd.get("wte.weight", sd.get("lm_head.weight"))
        if shared is not None:
            sd.setdefault("wte.weight", shared)
            sd.setdefault("lm_head.weight", shared)
    return cfg, sd


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"cannot import into lmforge's GPT: {what}")


def _eps_ok(value: Any) -> bool:
    return value is not None and math.isclose(float(value), NORM_EPS, rel_tol=1e-6)


def _gpt2_config(c: dict[str, Any]) -> ModelConfig:
    act = c.get("activation_function", "gelu_new")
    if act not in GELUS:
        raise _refuse(f"activation_function={act}, lmforge's MLP computes GELU, exact (gelu) "
                      "or in GPT-2's tanh form (gelu_new)")
    if not _eps_ok(c.get("layer_norm_epsilon", 1e-5)):
        raise _refuse(f"layer_norm_epsilon={c['layer_norm_epsilon']}, lmforge's LayerNorm uses {NORM_EPS}")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if c.get(key, want) != want:
            raise _refuse(f"{key}={c[key]}, lmforge's attention has {key}={want}")
    n_embd = c.get("n_embd", 768)
    n_inner = c.get("n_inner") or 4 * n_embd
    cfg = ModelConfig(arch="gpt", n_layer=c.get("n_layer", 12), n_head=c.get("n_head", 12),
                      n_embd=n_embd, block_size=c.get("n_positions", 1024), bias=True,
                      norm="layernorm", mlp=GELUS[act], pos="learned", mlp_ratio=n_inner / n_embd,
                      tie_embeddings=c.get("tie_word_embeddings", True),
                      vocab_size=c.get("vocab_size", 50257))
    if int(cfg.mlp_ratio * n_embd) != n_inner:
        raise _refuse(f"n_inner={n_inner} is not a width lmforge's mlp_ratio can express")
    return cfg


def _rope_theta(c: dict[str, Any]) -> float:
    """rope_theta from a transformers 4 (rope_theta, rope_scaling) or 5 (rope_parameters) config."""
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise _refuse(f"rope scaling '{kind}' changes the rotary frequencies; lmforge has plain rope only")
    if c.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise _refuse("partial_rotary_factor != 1; lmforge rotates every dimension of a head")
    return float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))


def _swiglu_ratio(hidden: int, n_embd: int) -> float:
    """The simplest mlp_ratio (fewest binary digits) that gives SwiGLU width `hidden`: lmforge
    rounds the width up to a multiple of 8, so several ratios do, and 4.0 reads better than 4.125."""
    exact = hidden * 3 / (2 * n_embd)
    for denominator in (2 ** k for k in range(21)):
        for ratio in (math.floor(exact * denominator) / denominator, math.ceil(exact * denominator) / denominator):
            if ratio > 0 and swiglu_hidden(n_embd, ratio) == hidden:
                return ratio
    return exact  # no ratio fits; the caller reports the width


def _llama_config(c: dict[str, Any]) -> ModelConfig:
    n_embd, n_head = c.get("hidden_size", 4096), c.get("num_attention_heads", 32)
    if c.get("hidden_act", "silu") != "silu":
        raise _refuse(f"hidden_act={c['hidden_act']}, lmforge's SwiGLU uses silu")
    kv = c.get("num_key_value_heads") or n_head
    if kv != n_head:
        raise _refuse(f"num_key_value_heads={kv} != num_attention_heads={n_head} "
                      "(grouped-query attention), which lmforge's attention does not support")
    if (c.get("head_dim") or n_embd // n_head) != n_embd // n_head:
        raise _refuse(f"head_dim={c['head_dim']} != hidden_size / num_attention_heads")
    if not _eps_ok(c.get("rms_norm_eps", 1e-6)):
        raise _refuse(f"rms_norm_eps={c.get('rms_norm_eps', 1e-6)}, lmforge's RMSNorm uses {NORM_EPS}")
    attn_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise _refuse(f"attention_bias={attn_bias} but mlp_bias={mlp_bias}; lmforge's "
                      "model.bias is one switch for both")
    hidden = c.get("intermediate_size", 11008)
    cfg = ModelConfig(arch="gpt", n_layer=c.get("num_hidden_layers", 32), n_head=n_head,
                      n_embd=n_embd, block_size=c.get("max_position_embeddings", 2048),
                      bias=attn_bias, norm="rmsnorm", mlp="swiglu", pos="rope",
                      mlp_ratio=_swiglu_ratio(hidden, n_embd), rope_theta=_rope_theta(c),
                      tie_embeddings=c.get("tie_word_embeddings", False),
                      vocab_size=c.get("vocab_size", 32000))
    if swiglu_hidden(n_embd, cfg.mlp_ratio) != hidden:
        raise _refuse(f"intermediate_size={hidden} is not a multiple of 8, which lmforge's "
                      "SwiGLU width always is")
    return cfg


def _load_weights(directory: Path) -> dict[str, Tensor]:
    """model.safetensors (possibly sharded) or pytorch_model.bin, loaded without pickle code."""
    index = directory / f"{WEIGHTS}.index.json"
    if (directory / WEIGHTS).is_file():
        return load_file(str(directory / WEIGHTS))
    if index.is_file():
        files = sorted(set(read_json(index)["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(str(directory / f)).items()}
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{directory} has no {WEIGHTS} or pytorch_model.bin")


def _hf_names(weights: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """Names as GPT2LMHeadModel / LlamaForCausalLM save them; base-model saves
    (GPT2Model, LlamaModel, the original gpt2 files) lack the prefix."""
    prefix = "transformer." if family == "gpt2" else "model."
    return {k if k.startswith((prefix, "lm_head.")) else prefix + k: v
            for k, v in weights.items() if not k.endswith(BUFFERS)}


def from_hf_state_dict(weights: dict[str, Tensor], cfg: ModelConfig, family: str) -> dict[str, Tensor]:
    """HF tensors → lmforge's GPT state_dict for `cfg`; every HF tensor must be used."""
    left = _hf_names(weights, family)

    def take(name: str) -> Tensor:
        if name not in left:
            raise CheckpointError(f"the model directory has no tensor '{name}', which its "
                                  "config.json implies; the weights are incomplete")
        return left.pop(name)

    sd: dict[str, Tensor] = {}
    for ours, theirs in pairs(cfg, family):
        t = take(theirs)
        sd[ours] = t.t().contiguous() if is_conv1d(theirs, t) else t
    if family == "gpt2":
        for i in range(cfg.n_layer):
            fused = {"weight": take(f"transformer.h.{i}.attn.c_attn.weight").t(),
                     "bias": take(f"transformer.h.{i}.attn.c_attn.bias")}
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


def import_hf(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The lmforge ModelConfig and GPT state_dict of a GPT-2 or Llama HF directory, such that
    `build_model(cfg).load_state_dict(sd)` loads strictly and computes the same logits.

    Tensors keep their stored dtype (load_state_dict casts); dropout is left at 0.
    """
    directory = Path(directory)
    c = read_json(directory / "config.json")
    family = c.get("model_type")
    if family == "gpt2":
        cfg = _gpt2_config(c)
    elif family == "llama":
        cfg = _llama_config(c)
    else:
        raise _refuse(f"model_type={family!r}; lmforge imports gpt2 and llama")
    sd = from_hf_state_dict(_load_weights(directory), cfg, family)
    _check_shapes(cfg, sd, directory)
    return cfg, sd


def read_model_config(directory: Path) -> ModelConfig:
    """The ModelConfig of a Hugging Face GPT-2 / Llama directory (its config.json has a
    model_type) or of an `export_safetensors` directory, without reading any weights."""
    directory = Path(directory)
    c = read_json(directory / "config.json")
    if "model_type" not in c:
        return _lmforge_config(c, directory)
    if c["model_type"] == "gpt2":
        return _gpt2_config(c)
    if c["model_type"] == "llama":
        return _llama_config(c)
    raise _refuse(f"model_type={c['model_type']!r}; lmforge imports gpt2 and llama")


def import_any(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """`import_hf` or `import_safetensors`, whichever wrote `directory`."""
    if "model_type" in read_json(Path(directory) / "config.json"):
        return import_hf(directory)
    return import_safetensors(directory)


def _check_shapes(cfg: ModelConfig, sd: dict[str, Tensor], directory: Path) -> None:
    """Compare with a GPT built on the meta device (no memory), so a bad file fails here
    with the tensor's name rather than deep inside load_state_dict."""
    from lmforge.models.gpt import GPT

    with torch.device("meta"):
        want = GPT(cfg).state_dict()
    for name, t in want.items():
        if sd[name].shape != t.shape:
            raise CheckpointError(f"{directory}: '{name}' has shape {tuple(sd[name].shape)}, the "
                                  f"config implies {tuple(t.shape)}")
