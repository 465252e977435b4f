"""Hugging Face model directories as lmforge sees them: which HF architecture computes the
same function as an lmforge model, and the name of each tensor on either side.

    hf_export.py     lmforge GPT → GPT2LMHeadModel or LlamaForCausalLM directory, and
                     lmforge's own safetensors export for any architecture
    hf_classifier_export.py  a classifier → *ForSequenceClassification directory
    hf_import.py     either kind of directory → (ModelConfig, state_dict) for lmforge
    hf_tokenizer.py  lmforge tokenizers as HF `tokenizers`, and back
    init_from.py     `lmforge train --init-from DIR`

Only `safetensors`, `tokenizers` and the standard library are needed here: `transformers`
is what the files are *for*, not what writes them, so exporting works without it.

Two lmforge layouts have an exact Hugging Face twin. GPT-2: layernorm + GELU (exact, HF's
"gelu", or GPT-2's tanh approximation, "gelu_new") + learned positions; HF's Conv1D stores
weights as (in, out), the transpose of nn.Linear, and always has biases (zeros when lmforge
has none). Llama: rmsnorm + swiglu + rope. lmforge's rope pairs dimension i with i + hs/2,
which is HF's rotate_half convention, so q and k need no permutation; lmforge's separate
q/k/v projections map one to one onto Llama's and are fused into GPT-2's c_attn. Anything
else has no HF class that computes the same function, so it is refused.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from torch import Tensor

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError

WEIGHTS = "model.safetensors"
FAMILIES: dict[str, dict[str, str | tuple[str, ...]]] = {  # HF model_type → the lmforge options that compute the same function
    "gpt2": {"norm": "layernorm", "mlp": ("gelu", "gelu_tanh"), "pos": "learned"},
    "llama": {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope"},
}
# HF model_type → its class. Qwen2 and Mistral lay their tensors out as Llama does; Qwen2 adds
# q/k/v biases, Mistral a sliding window (hf_import reads both).
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "mistral": "MistralForCausalLM"}
# HF model_type → its class with a classification head (`score`, no bias) on the last real token
SEQUENCE_CLASSES = {"gpt2": "GPT2ForSequenceClassification",
                    "llama": "LlamaForSequenceClassification",
                    "qwen2": "Qwen2ForSequenceClassification"}
LLAMA_LAYOUT = ("llama", "qwen2", "mistral")
# HF's names of GELU's tanh approximation (lmforge's model.mlp=gelu_tanh); "gelu" is exact.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
GELUS = {"gelu": "gelu", **{name: "gelu_tanh" for name in TANH_GELUS}}  # HF → model.mlp
# Buffers older transformers versions saved with the weights; they hold no parameters.
BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; anything else (no file, not JSON, a list, nesting too deep
    for Python, an integer of 4,300+ digits) is one ConfigError."""
    try:
        value = json.loads(path.read_bytes())
    except OSError:
        raise ConfigError(f"{path} is missing or unreadable; give a model directory") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise ConfigError(f"{path} is missing or not valid JSON; give a model directory") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a JSON {type(value).__name__}, not an object; the file "
                          "is damaged or not a model's")
    return value


def weight_files(directory: Path) -> list[Path]:
    """The files that hold a model directory's weights: model.safetensors, else the shards
    its index names (each checked to lie inside `directory` before anything is opened), else
    pytorch_model.bin. CheckpointError when there are none."""
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    index = directory / f"{WEIGHTS}.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map naming the shards; the index is "
                                  "damaged: re-download it")
        if not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map holds values that are not file names; "
                                  "the index is damaged: re-download it")
        names = sorted(set(weight_map.values()))
        for name in names:
            parts = PurePosixPath(name).parts
            if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\0" in name:
                raise CheckpointError(f"{index} names the shard {name!r}, outside {directory}; "
                                      "the index is damaged or hostile, and nothing was loaded")
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{directory} lacks the shard {missing[0]} that {index.name} "
                                  "names; the download is incomplete")
        return [directory / n for n in names]
    if (directory / "pytorch_model.bin").is_file():
        return [directory / "pytorch_model.bin"]
    raise CheckpointError(f"{directory} has no {WEIGHTS} or pytorch_model.bin")


def _speedrun_option(cfg: ModelConfig) -> str | None:
    """The first option set that changes what the model computes beyond every family lmforge
    writes (GPT-2, Llama, Qwen2 and GGUF's llama), as `key=value (what it is)`; None if none."""
    for on, option in ((cfg.qk_norm, "model.qk_norm=true (RMSNorm on queries and keys)"),
                       (cfg.mlp == "relu2", "model.mlp=relu2 (ReLU squared)"),
                       (cfg.logit_softcap > 0, f"model.logit_softcap={cfg.logit_softcap:g} "
                                               "(tanh-capped logits)")):
        if on:
            return option
    return None


def hf_family(cfg: ModelConfig) -> str:
    """'gpt2', 'llama' or 'qwen2': the HF architecture that computes exactly what `cfg` does.
    Biases on q, k and v alone are Qwen2's; Llama's attention_bias puts one on o as well."""
    if cfg.arch != "gpt":
        raise ConfigError(f"model.arch={cfg.arch} has no Hugging Face equivalent that lmforge "
                          "can write; use --format safetensors")
    option = _speedrun_option(cfg)
    if option:
        raise ConfigError(f"cannot export a model trained with {option}: no Hugging Face or "
                          "GGUF model that lmforge writes computes it; use --format safetensors")
    def fits(value: Any, want: Any) -> bool:
        return value in want if isinstance(want, tuple) else value == want

    differ = {name: {k: v for k, v in opts.items() if not fits(getattr(cfg, k), v)}
              for name, opts in FAMILIES.items()}
    name = min(differ, key=lambda n: len(differ[n]))
    if differ[name]:
        ours = ", ".join(f"model.{k}={getattr(cfg, k)}" for k in differ[name])
        want = " + ".join(v if isinstance(v, str) else " or ".join(v)
                          for v in FAMILIES[name].values())
        raise ConfigError(f"cannot export to Hugging Face: {ours}, but the nearest HF model "
                          f"({CLASSES[name]}) is {want}; use --format safetensors")
    if name == "gpt2" and (cfg.n_kv_head not in (0, cfg.n_head) or cfg.head_dim
                           or cfg.qkv_bias):
        raise ConfigError("cannot export to Hugging Face: GPT2LMHeadModel has neither "
                          "grouped-query attention, nor a head_dim of its own, nor q/k/v-only "
                          "biases; use --format safetensors")
    return "qwen2" if name == "llama" and cfg.qkv_bias and not cfg.bias else name


# (lmforge module, HF module) inside block i
_GPT2_BLOCK = [("norm1", "ln_1"), ("attn.c_proj", "attn.c_proj"),
               ("norm2", "ln_2"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")]


_LLAMA_NORMS = [("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")]


_LLAMA_LINEARS = [("attn.q_proj", "self_attn.q_proj"), ("attn.k_proj", "self_attn.k_proj"),
                  ("attn.v_proj", "self_attn.v_proj"), ("attn.c_proj", "self_attn.o_proj"), ("mlp.w1", "mlp.gate_proj"),
                  ("mlp.w3", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")]


_QKV = ("attn.q_proj", "attn.k_proj", "attn.v_proj")


def pairs(cfg: ModelConfig, family: str) -> list[tuple[str, str]]:
    """(lmforge name, HF name) of every tensor that maps one to one. GPT-2's c_attn is left
    out: it fuses lmforge's q/k/v projections."""
    w: tuple[str, ...] = ("weight",)
    wb: tuple[str, ...] = ("weight", "bias")
    if family == "gpt2":  # GPT-2 always has biases, in its norms and linears alike
        modules: list[tuple[str, str, tuple[str, ...]]] = [
            ("wte", "transformer.wte", w), ("wpe", "transformer.wpe", w)]
        for i in range(cfg.n_layer):
            modules += [(f"blocks.{i}.{a}", f"transformer.h.{i}.{b}", wb) for a, b in _GPT2_BLOCK]
        modules.append(("norm_f", "transformer.ln_f", wb))
    else:  # RMSNorm has no bias; the linears have one when cfg.bias, q/k/v also with qkv_bias
        modules = [("wte", "model.embed_tokens", w)]
        for i in range(cfg.n_layer):
            modules += [(f"blocks.{i}.{a}", f"model.layers.{i}.{b}", w) for a, b in _LLAMA_NORMS]
            modules += [(f"blocks.{i}.{a}", f"model.layers.{i}.{b}",
                         wb if cfg.bias or (cfg.qkv_bias and a in _QKV) else w)
                        for a, b in _LLAMA_LINEARS]
        modules.append(("norm_f", "model.norm", w))
    if not cfg.tie_embeddings:
        modules.append(("lm_head", "lm_head", w))
    return [(f"{a}.{p}", f"{b}.{p}") for a, b, params in modules for p in params]


def is_conv1d(hf_name: str, t: Tensor) -> bool:
    """GPT-2's Conv1D weights, stored (in, out): the transpose of nn.Linear's."""
    return t.dim() == 2 and (".attn.c_" in hf_name or ".mlp.c_" in hf_name)


def qkv(i: int) -> list[str]:
    return [f"blocks.{i}.attn.{x}_proj" for x in "qkv"]
