"""lmforge models written for the rest of the ecosystem: a Hugging Face model directory
(GPT2LMHeadModel or LlamaForCausalLM, with the tokenizer as tokenizer.json) that
`transformers` loads offline, or plain safetensors under lmforge's own names for any
architecture. The names and families are hf_layout.py's; a classifier's export
(hf_classifier_export.py) shares the config, weights and directory code here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.config_checks import mlp_hidden
from lmforge.data.tokenizer import Tokenizer
from lmforge.interop.hf_layout import (
    CLASSES,
    WEIGHTS,
    hf_family,
    is_conv1d,
    pairs,
    qkv,
    write_json,
)
from lmforge.interop.hf_tokenizer import write_hf_tokenizer


def _rope_config(cfg: ModelConfig) -> dict | None:
    """rope_scaling as transformers reads it (both its 4 and 5 readers take this form)."""
    if cfg.rope_scaling == "none":
        return None
    scaling = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor}
    if cfg.rope_scaling == "llama3":
        scaling.update(low_freq_factor=cfg.rope_low_freq_factor,
                       high_freq_factor=cfg.rope_high_freq_factor,
                       original_max_position_embeddings=cfg.rope_original_context)
    return scaling


def hf_config(cfg: ModelConfig, family: str, *, eot_id: int | None, bos_id: int | None,
              dtype: torch.dtype) -> dict:
    """config.json of the HF model that computes what `cfg` does (its causal-LM class)."""
    common = {"architectures": [CLASSES[family]], "model_type": family,
              "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "bos_token_id": bos_id, "eos_token_id": eot_id,
              "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True}
    if family == "gpt2":
        return {**common, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                "n_positions": cfg.block_size, "n_inner": mlp_hidden(cfg),
                "activation_function": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
                "layer_norm_epsilon": cfg.norm_eps,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    llama = {**common, "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
             "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads,
             "head_dim": cfg.head_size, "intermediate_size": mlp_hidden(cfg),
             "max_position_embeddings": cfg.block_size, "hidden_act": "silu",
             "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
             "rope_scaling": _rope_config(cfg), "attention_dropout": cfg.dropout}
    if family == "qwen2":  # q/k/v biases are built in; no sliding window
        return {**llama, "use_sliding_window": False, "sliding_window": None,
                "max_window_layers": cfg.n_layer}
    return {**llama, "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "pretraining_tp": 1}


def to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig, family: str, *,
                     lm_head: bool = True) -> dict[str, Tensor]:
    """lmforge's GPT state_dict under HF names and layouts (fresh CPU tensors); without the
    output layer for lm_head=False (a task head's backbone has none)."""
    out: dict[str, Tensor] = {}
    for ours, theirs in pairs(cfg, family):
        if not lm_head and ours == "lm_head.weight":
            continue
        if ours in sd:
            t = sd[ours].detach().cpu()
        else:  # a bias lmforge has none of, that GPT-2 always has
            t = torch.zeros(sd[ours.replace(".bias", ".weight")].size(0), dtype=sd["wte.weight"].dtype)
        out[theirs] = (t.t() if is_conv1d(theirs, t) else t).contiguous().clone()
    if family == "gpt2":  # c_attn is q, k and v side by side, stored (in, 3 out) as Conv1D
        for i in range(cfg.n_layer):
            q, k, v = (sd[f"{n}.weight"].detach().cpu() for n in qkv(i))
            out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([q, k, v]).t().contiguous()
            biases = [sd[f"{n}.bias"].detach().cpu() for n in qkv(i) if f"{n}.bias" in sd]
            out[f"transformer.h.{i}.attn.c_attn.bias"] = (
                torch.cat(biases) if biases else torch.zeros(3 * cfg.n_embd, dtype=q.dtype))
    return out


def export_hf(model: nn.Module, model_cfg: ModelConfig, tokenizer: Tokenizer | None,
              out_dir: Path) -> str:
    """Write `out_dir` so `AutoModelForCausalLM.from_pretrained(out_dir)` (and, where the
    tokenizer can be expressed in HF `tokenizers`, `AutoTokenizer`) loads it offline.

    Raises ConfigError, before writing anything, for a model no HF class reproduces.
    Returns a one-line summary of what was written.
    """
    family = hf_family(model_cfg)
    weights = to_hf_state_dict(model.state_dict(), model_cfg, family)
    eot, bos = special_ids(tokenizer)
    config = hf_config(model_cfg, family, eot_id=eot, bos_id=bos,
                       dtype=next(iter(weights.values())).dtype)
    note = write_hf_model(Path(out_dir), weights, config, tokenizer,
                          model_max_length=model_cfg.block_size)
    write_json(Path(out_dir) / "generation_config.json",
               {"bos_token_id": bos, "eos_token_id": eot})
    return f"wrote {CLASSES[family]} ({family}) to {out_dir}; {note}"


def special_ids(tokenizer: Tokenizer | None) -> tuple[int | None, int | None]:
    """(eot, bos) for config.json: bos is what the model's tokenizer starts a text with
    (Llama's), else eot as in GPT-2."""
    eot = tokenizer.eot_id if tokenizer is not None else None
    bos = tokenizer.bos_id if tokenizer is not None and tokenizer.bos_id is not None else eot
    return eot, bos


def write_hf_model(out_dir: Path, weights: dict[str, Tensor], config: dict,
                   tokenizer: Tokenizer | None, *, model_max_length: int) -> str:
    """An HF model directory: the weights as model.safetensors, config.json and the
    tokenizer's files; what became of the tokenizer, in words."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    write_json(out_dir / "config.json", config)
    return write_hf_tokenizer(tokenizer, out_dir, model_max_length=model_max_length)


def export_safetensors(model: nn.Module, model_cfg: ModelConfig, tokenizer: Tokenizer | None,
                       out_dir: Path) -> str:
    """Any lmforge model as plain safetensors under lmforge's own names, its ModelConfig as
    config.json and the tokenizer's files: nothing lost, for any architecture."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_model, not save_file: it stores a tied weight once instead of refusing it
    save_model(model, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    write_json(out_dir / "config.json", dataclasses.asdict(model_cfg))
    if tokenizer is None:
        return f"wrote {WEIGHTS} and config.json to {out_dir}; no tokenizer given"
    tokenizer.save(out_dir)
    return f"wrote {WEIGHTS}, config.json and the {tokenizer.kind} tokenizer to {out_dir}"
