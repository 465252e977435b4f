"""Weights for the rest of the ecosystem: Hugging Face model directories and plain safetensors.

    export_hf            lmforge GPT → GPT2LMHeadModel or LlamaForCausalLM directory
    import_hf            GPT-2 or Llama directory → (ModelConfig, state_dict) for lmforge's GPT
    export_safetensors   any lmforge model → lmforge names + ModelConfig as config.json
    import_safetensors   the reverse of export_safetensors
    import_any           import_hf or import_safetensors, whichever wrote the directory
    read_model_config    the ModelConfig of either kind of directory, without the weights
    import_hf_tokenizer  a directory's tokenizer.json → an lmforge tokenizer

Only `safetensors`, `tokenizers` and the standard library are needed here: `transformers`
is what the files are *for*, not what writes them, so exporting works without it.

Two lmforge layouts have an exact Hugging Face twin. GPT-2: layernorm + GELU (exact,
HF's "gelu", or GPT-2's tanh approximation, "gelu_new") + learned positions; HF's Conv1D stores weights as
(in, out), the transpose of nn.Linear, and always has biases (zeros when lmforge has none).
Llama: rmsnorm + swiglu + rope. lmforge's rope pairs dimension i with i + hs/2, which is
HF's rotate_half convention, so q and k need no permutation; lmforge's separate q/k/v
projections map one to one onto Llama's and are fused into GPT-2's c_attn. Anything else has no HF class that computes the same function, so it is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

from lmforge.config import ModelConfig, coerce
from lmforge.data.tokenizer import (
    BPE_FILE,
    EOT_TOKEN,
    META_FILE,
    BpeTokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
)
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.models.layers import NORM_EPS, swiglu_hidden

WEIGHTS = "model.safetensors"
FAMILIES = {  # HF model_type → the lmforge options that compute the same function
    "gpt2": {"norm": "layernorm", "mlp": ("gelu", "gelu_tanh"), "pos": "learned"},
    "llama": {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope"},
}
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
# HF's names of GELU's tanh approximation (lmforge's model.mlp=gelu_tanh); "gelu" is exact.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_GELUS = {"gelu": "gelu", **{name: "gelu_tanh" for name in _TANH_GELUS}}  # HF → model.mlp
# Buffers older transformers versions saved with the weights; they hold no parameters.
_BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------------- names

def hf_family(cfg: ModelConfig) -> str:
    """'gpt2' or 'llama': the HF architecture that computes exactly what `cfg` does."""
    if cfg.arch != "gpt":
        raise ConfigError(f"model.arch={cfg.arch} has no Hugging Face equivalent that lmforge "
                          "can write; use --format safetensors")
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
    return name


# (lmforge module, HF module) inside block i
_GPT2_BLOCK = [("norm1", "ln_1"), ("attn.c_proj", "attn.c_proj"),
               ("norm2", "ln_2"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")]
_LLAMA_NORMS = [("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")]
_LLAMA_LINEARS = [("attn.q_proj", "self_attn.q_proj"), ("attn.k_proj", "self_attn.k_proj"),
                  ("attn.v_proj", "self_attn.v_proj"), ("attn.c_proj", "self_attn.o_proj"), ("mlp.w1", "mlp.gate_proj"),
                  ("mlp.w3", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")]


def _pairs(cfg: ModelConfig, family: str) -> list[tuple[str, str]]:
    """(lmforge name, HF name) of every tensor that maps one to one. GPT-2's c_attn is left
    out: it fuses lmforge's q/k/v projections."""
    w, wb = ("weight",), ("weight", "bias")
    if family == "gpt2":  # GPT-2 always has biases, in its norms and linears alike
        modules = [("wte", "transformer.wte", w), ("wpe", "transformer.wpe", w)]
        for i in range(cfg.n_layer):
            modules += [(f"blocks.{i}.{a}", f"transformer.h.{i}.{b}", wb) for a, b in _GPT2_BLOCK]
        modules.append(("norm_f", "transformer.ln_f", wb))
    else:  # RMSNorm has no bias; the linears have one when cfg.bias
        linear = wb if cfg.bias else w
        modules = [("wte", "model.embed_tokens", w)]
        for i in range(cfg.n_layer):
            modules += [(f"blocks.{i}.{a}", f"model.layers.{i}.{b}", w) for a, b in _LLAMA_NORMS]
            modules += [(f"blocks.{i}.{a}", f"model.layers.{i}.{b}", linear) for a, b in _LLAMA_LINEARS]
        modules.append(("norm_f", "model.norm", w))
    if not cfg.tie_embeddings:
        modules.append(("lm_head", "lm_head", w))
    return [(f"{a}.{p}", f"{b}.{p}") for a, b, params in modules for p in params]


def _is_conv1d(hf_name: str, t: Tensor) -> bool:
    """GPT-2's Conv1D weights, stored (in, out): the transpose of nn.Linear's."""
    return t.dim() == 2 and (".attn.c_" in hf_name or ".mlp.c_" in hf_name)


def _qkv(i: int) -> list[str]:
    return [f"blocks.{i}.attn.{x}_proj" for x in "qkv"]


# ---------------------------------------------------------------------------- export

def _hf_config(cfg: ModelConfig, family: str, *, eot_id: int | None, dtype: torch.dtype) -> dict:
    common = {"architectures": [CLASSES[family]], "model_type": family,
              "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "bos_token_id": eot_id, "eos_token_id": eot_id,
              "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True}
    if family == "gpt2":
        return {**common, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                "n_positions": cfg.block_size, "n_inner": int(cfg.mlp_ratio * cfg.n_embd),
                "activation_function": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
                "layer_norm_epsilon": NORM_EPS,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    return {**common, "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head,
            "head_dim": cfg.n_embd // cfg.n_head,
            "intermediate_size": swiglu_hidden(cfg.n_embd, cfg.mlp_ratio),
            "max_position_embeddings": cfg.block_size, "hidden_act": "silu",
            "rms_norm_eps": NORM_EPS, "rope_theta": cfg.rope_theta, "rope_scaling": None,
            "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
            "attention_dropout": cfg.dropout, "pretraining_tp": 1}


def to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig, family: str) -> dict[str, Tensor]:
    """lmforge's GPT state_dict under HF names and layouts (fresh CPU tensors)."""
    out: dict[str, Tensor] = {}
    for ours, theirs in _pairs(cfg, family):
        if ours in sd:
            t = sd[ours].detach().cpu()
        else:  # a bias lmforge has none of, that GPT-2 always has
            t = torch.zeros(sd[ours.replace(".bias", ".weight")].size(0), dtype=sd["wte.weight"].dtype)
        out[theirs] = (t.t() if _is_conv1d(theirs, t) else t).contiguous().clone()
    if family == "gpt2":  # c_attn is q, k and v side by side, stored (in, 3 out) as Conv1D
        for i in range(cfg.n_layer):
            q, k, v = (sd[f"{n}.weight"].detach().cpu() for n in _qkv(i))
            out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([q, k, v]).t().contiguous()
            biases = [sd.get(f"{n}.bias") for n in _qkv(i)]
            out[f"transformer.h.{i}.attn.c_attn.bias"] = (
                torch.cat([b.detach().cpu() for b in biases]) if biases[0] is not None
                else torch.zeros(3 * cfg.n_embd, dtype=q.dtype))
    return out


def export_hf(model: nn.Module, model_cfg: ModelConfig, tokenizer: Tokenizer | None,
              out_dir: Path) -> str:
    """Write `out_dir` so `AutoModelForCausalLM.from_pretrained(out_dir)` (and, where the
    tokenizer can be expressed in HF `tokenizers`, `AutoTokenizer`) loads it offline.

    Raises ConfigError, before writing anything, for a model no HF class reproduces.
    Returns a one-line summary of what was written.
    """
    family = hf_family(model_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = to_hf_state_dict(model.state_dict(), model_cfg, family)
    save_file(weights, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    eot = tokenizer.eot_id if tokenizer is not None else None
    dtype = next(iter(weights.values())).dtype
    _json(out_dir / "config.json", _hf_config(model_cfg, family, eot_id=eot, dtype=dtype))
    _json(out_dir / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot})
    note = _write_hf_tokenizer(tokenizer, out_dir, model_max_length=model_cfg.block_size)
    return f"wrote {CLASSES[family]} ({family}) to {out_dir}; {note}"


def export_safetensors(model: nn.Module, model_cfg: ModelConfig, tokenizer: Tokenizer | None,
                       out_dir: Path) -> str:
    """Any lmforge model as plain safetensors under lmforge's own names, its ModelConfig as
    config.json and the tokenizer's files: nothing lost, for any architecture."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_model, not save_file: it stores a tied weight once instead of refusing it
    save_model(model, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    _json(out_dir / "config.json", dataclasses.asdict(model_cfg))
    if tokenizer is None:
        return f"wrote {WEIGHTS} and config.json to {out_dir}; no tokenizer given"
    tokenizer.save(out_dir)
    return f"wrote {WEIGHTS}, config.json and the {tokenizer.kind} tokenizer to {out_dir}"


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
    cfg = _lmforge_config(_read_json(directory / "config.json"), directory)
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS}; the export is incomplete")
    sd = load_file(str(directory / WEIGHTS))
    if cfg.tie_embeddings:  # save_model kept one of the two names of the shared tensor
        shared = sd.get("wte.weight", sd.get("lm_head.weight"))
        if shared is not None:
            sd.setdefault("wte.weight", shared)
            sd.setdefault("lm_head.weight", shared)
    return cfg, sd


# ---------------------------------------------------------------------------- import

def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{path} is missing or not valid JSON; give a model directory") from None


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"cannot import into lmforge's GPT: {what}")


def _eps_ok(value: Any) -> bool:
    return value is not None and math.isclose(float(value), NORM_EPS, rel_tol=1e-6)


def _gpt2_config(c: dict[str, Any]) -> ModelConfig:
    act = c.get("activation_function", "gelu_new")
    if act not in _GELUS:
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
                      norm="layernorm", mlp=_GELUS[act], pos="learned", mlp_ratio=n_inner / n_embd,
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
        files = sorted(set(_read_json(index)["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(str(directory / f)).items()}
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{directory} has no {WEIGHTS} or pytorch_model.bin")


def _hf_names(weights: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """Names as GPT2LMHeadModel / LlamaForCausalLM save them; base-model saves
    (GPT2Model, LlamaModel, the original gpt2 files) lack the prefix."""
    prefix = "transformer." if family == "gpt2" else "model."
    return {k if k.startswith((prefix, "lm_head.")) else prefix + k: v
            for k, v in weights.items() if not k.endswith(_BUFFERS)}


def from_hf_state_dict(weights: dict[str, Tensor], cfg: ModelConfig, family: str) -> dict[str, Tensor]:
    """HF tensors → lmforge's GPT state_dict for `cfg`; every HF tensor must be used."""
    left = _hf_names(weights, family)

    def take(name: str) -> Tensor:
        if name not in left:
            raise CheckpointError(f"the model directory has no tensor '{name}', which its "
                                  "config.json implies; the weights are incomplete")
        return left.pop(name)

    sd: dict[str, Tensor] = {}
    for ours, theirs in _pairs(cfg, family):
        t = take(theirs)
        sd[ours] = t.t().contiguous() if _is_conv1d(theirs, t) else t
    if family == "gpt2":
        for i in range(cfg.n_layer):
            fused = {"weight": take(f"transformer.h.{i}.attn.c_attn.weight").t(),
                     "bias": take(f"transformer.h.{i}.attn.c_attn.bias")}
            for p, t in fused.items():
                for name, part in zip(_qkv(i), t.split(cfg.n_embd, dim=0), strict=True):
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
    c = _read_json(directory / "config.json")
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
    c = _read_json(directory / "config.json")
    if "model_type" not in c:
        return _lmforge_config(c, directory)
    if c["model_type"] == "gpt2":
        return _gpt2_config(c)
    if c["model_type"] == "llama":
        return _llama_config(c)
    raise _refuse(f"model_type={c['model_type']!r}; lmforge imports gpt2 and llama")


def import_any(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """`import_hf` or `import_safetensors`, whichever wrote `directory`."""
    if "model_type" in _read_json(Path(directory) / "config.json"):
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


# ---------------------------------------------------------------------------- tokenizers

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the alphabet of byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def hf_tokenizer(tokenizer: Tokenizer) -> Any:
    """The same tokenizer as an HF `tokenizers.Tokenizer` (ids, decoding and eot id kept), or
    None for a kind it cannot express. Char and byte become BPE models with no merges."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, BpeTokenizer):
        return HFTokenizer.from_str(tokenizer._hf.to_str())  # a copy: ours stays as it is
    if isinstance(tokenizer, ByteTokenizer):
        vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
    elif isinstance(tokenizer, CharTokenizer):
        # no pre-tokenizer: the text is one word that BPE, without merges, splits into chars
        hf = HFTokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(tokenizer.chars)}, merges=[]))
        hf.decoder = decoders.Fuse()  # join the characters without spaces
    else:
        return None
    hf.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
    if hf.token_to_id(EOT_TOKEN) != tokenizer.eot_id:
        return None
    return hf


def _write_hf_tokenizer(tokenizer: Tokenizer | None, out_dir: Path, *, model_max_length: int) -> str:
    if tokenizer is None:
        return "no tokenizer given"
    hf = hf_tokenizer(tokenizer)
    if hf is None:
        return (f"tokenizer skipped: the {tokenizer.kind} tokenizer has no HF `tokenizers` "
                "equivalent; AutoTokenizer will not load this directory")
    tokenizer.save(out_dir)  # lmforge's own files too, so import_hf_tokenizer is exact
    hf.save(str(out_dir / BPE_FILE))
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN}
    # split_special_tokens: a literal "<|endoftext|>" in text is text, as in lmforge
    _json(out_dir / "tokenizer_config.json",
          {"tokenizer_class": "PreTrainedTokenizerFast", **special,
           "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
           "split_special_tokens": True, "add_bos_token": False, "add_eos_token": False})
    _json(out_dir / "special_tokens_map.json", special)
    return f"{tokenizer.kind} tokenizer as tokenizer.json, eos = bos = {EOT_TOKEN}"


def import_hf_tokenizer(directory: Path) -> Tokenizer:
    """An lmforge tokenizer from a model directory: lmforge's own files when present (an
    export_hf directory), else tokenizer.json, else GPT-2's vocab.json + merges.txt.

    lmforge's bpe tokenizer marks documents with <|endoftext|>; a tokenizer without that
    token (Llama's </s>, <|end_of_text|>) cannot be wrapped and raises DataError.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    directory = Path(directory)
    if (directory / META_FILE).is_file():
        return load_tokenizer(directory)
    if (directory / BPE_FILE).is_file():
        hf = HFTokenizer.from_file(str(directory / BPE_FILE))
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        hf = HFTokenizer(models.BPE.from_file(str(directory / "vocab.json"),
                                              str(directory / "merges.txt")))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        if hf.token_to_id(EOT_TOKEN) is not None:
            hf.add_special_tokens([EOT_TOKEN])
    else:
        raise DataError(f"no tokenizer in {directory} (no {BPE_FILE}, nor vocab.json + merges.txt)")
    if hf.token_to_id(EOT_TOKEN) is None:
        config = directory / "tokenizer_config.json"
        eos = json.loads(config.read_text()).get("eos_token") if config.is_file() else None
        raise DataError(f"the tokenizer in {directory} has no {EOT_TOKEN} token (its end of "
                        f"text is {eos!r}); lmforge's bpe tokenizer needs {EOT_TOKEN}")
    return BpeTokenizer(hf)
