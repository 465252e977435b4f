"""Llama-style lmforge models as GGUF, the file llama.cpp (and Ollama, LM Studio, …) runs,
written with llama.cpp's own `gguf` package (`pip install gguf`).

What llama.cpp's `llama` architecture computes is what lmforge computes for rmsnorm +
swiglu + rope without biases (grouped-query attention, a head_dim of its own, and linear or
Llama 3 rope scaling included), so those models are written; anything else is refused with
the reason. The tokenizer must be lmforge's byte-level BPE, which is GPT-2's scheme
(tokenizer.ggml.model = gpt2, pre-tokenizer gpt-2); end-of-text is both BOS and EOS, and
llama.cpp puts it before a prompt as lmforge's generate does.

Two layouts differ. Rope: lmforge rotates dimension i with i + head_size/2 (Hugging Face's
rotate_half), llama.cpp's llama rotates neighbours 2i and 2i+1, so the rows of each q and k
head are interleaved here, as llama.cpp's convert_hf_to_gguf.py does for HF Llama models.
Shapes: GGUF lists dimensions innermost first; the gguf writer reverses numpy's for us.
Weights are written in float32: exact, and `llama-quantize` makes smaller files from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.config_checks import mlp_hidden
from lmforge.data.tokenizer import BpeTokenizer, Tokenizer
from lmforge.errors import ConfigError
from lmforge.interop.hf_layout import hf_family
from lmforge.interop.hf_tokenizer import hf_tokenizer

GGUF_FILE = "model.gguf"
INSTALL = "pip install gguf (or 'lmforge[gguf]')"
# lmforge's name inside block i → GGUF's inside blk.i
_BLOCK = {"norm1.weight": "attn_norm.weight", "attn.q_proj.weight": "attn_q.weight",
          "attn.k_proj.weight": "attn_k.weight", "attn.v_proj.weight": "attn_v.weight",
          "attn.c_proj.weight": "attn_output.weight", "norm2.weight": "ffn_norm.weight",
          "mlp.w1.weight": "ffn_gate.weight", "mlp.w3.weight": "ffn_up.weight",
          "mlp.c_proj.weight": "ffn_down.weight"}
_TOP = {"wte.weight": "token_embd.weight", "norm_f.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_NORMAL, _CONTROL, _UNUSED = 1, 3, 5  # gguf.TokenType


def check_exportable(cfg: ModelConfig, tokenizer: Tokenizer | None) -> None:
    """ConfigError, before anything is written, for what llama.cpp's llama cannot take."""
    if cfg.arch != "gpt" or hf_family(cfg) != "llama" or cfg.bias:
        raise ConfigError("--format gguf writes Llama-style models (model.norm=rmsnorm, "
                          "model.mlp=swiglu, model.pos=rope, no biases); this one is not: "
                          "use --format safetensors")
    if not isinstance(tokenizer, BpeTokenizer):
        kind = tokenizer.kind if tokenizer is not None else "none"
        other = ("; for a Hugging Face model's own tokenizer, export --format hf and convert "
                 "that with llama.cpp's convert_hf_to_gguf.py, which knows its pre-tokenizer"
                 if kind == "hf" else "; use --format hf or safetensors")
        raise ConfigError(f"--format gguf needs the run's tokenizer to be lmforge's bpe "
                          f"(byte-level, as llama.cpp's gpt2 tokenizer reads it), not {kind}"
                          + other)


def _interleave_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from rotate_half order (i pairs with i + d/2) to llama.cpp's
    (2i pairs with 2i+1): convert_hf_to_gguf.py's LlamaModel.permute."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _gguf_name(name: str) -> str | None:
    """GGUF's name of lmforge's tensor `name`; None for buffers (the rotary tables), which
    llama.cpp computes itself."""
    if name.startswith("blocks."):
        _, i, rest = name.split(".", 2)
        return f"blk.{i}.{_BLOCK[rest]}" if rest in _BLOCK else None
    return _TOP.get(name)


def gguf_tensors(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """GGUF name → float32 array, in llama.cpp's layout."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in sd.items():
        target = _gguf_name(name)
        if target is None:
            continue
        t = tensor.detach().to("cpu", torch.float32)
        if target.endswith(".attn_q.weight"):
            t = _interleave_rope(t, cfg.n_head)
        elif target.endswith(".attn_k.weight"):
            t = _interleave_rope(t, cfg.kv_heads)
        out[target] = t.contiguous().numpy()
    if cfg.tie_embeddings:  # llama.cpp reads the output layer from token_embd when absent
        out.pop("output.weight", None)
    if cfg.rope_scaling == "llama3":
        out["rope_freqs.weight"] = _llama3_factors(cfg)
    return out


def _llama3_factors(cfg: ModelConfig) -> np.ndarray:
    """Llama 3.1's per-frequency rope scaling as llama.cpp takes it: one divisor per
    frequency (convert_hf_to_gguf.py's rope_freqs), not a rule in the metadata."""
    d, factor = cfg.head_size, cfg.rope_factor
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    context = cfg.rope_original_context
    factors = []
    for i in range(0, d, 2):
        wavelength = 2 * math.pi * cfg.rope_theta ** (i / d)
        if wavelength < context / high:
            factors.append(1.0)
        elif wavelength > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _vocabulary(tokenizer: BpeTokenizer, vocab_size: int) -> dict[str, Any]:
    """tokens (by id, padded to the model's rows), their types and the merges, as GGUF's
    tokenizer.ggml.* keys hold them."""
    raw = json.loads(hf_tokenizer(tokenizer).to_str())
    by_id = {i: t for t, i in raw["model"]["vocab"].items()}
    special = {a["id"]: a["content"] for a in raw.get("added_tokens", [])}
    by_id.update(special)
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(_CONTROL if i in special else _NORMAL if i in by_id else _UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges}


def _write_hparams(writer: Any, cfg: ModelConfig, *, name: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(mlp_hidden(cfg))
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_key_length(cfg.head_size)
    writer.add_value_length(cfg.head_size)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_size)
    if cfg.rope_scaling == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_factor)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _write_tokenizer(writer: Any, tokenizer: BpeTokenizer, vocab_size: int) -> None:
    vocab = _vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # ByteLevel's split: GPT-2's regular expression
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(True)  # lmforge's documents, and its prompts, follow an eot


def export_gguf(model: nn.Module, model_cfg: ModelConfig, tokenizer: Tokenizer | None,
                out_dir: Path, *, name: str | None = None) -> str:
    """Write out_dir/model.gguf (general.name: `name`, or out_dir's); ConfigError, before
    writing anything, for a model or a tokenizer llama.cpp's llama cannot take, or when
    `gguf` is not installed."""
    check_exportable(model_cfg, tokenizer)
    assert isinstance(tokenizer, BpeTokenizer)  # check_exportable made sure
    try:
        import gguf
    except ImportError:
        raise ConfigError(f"--format gguf needs the gguf package: {INSTALL}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / GGUF_FILE
    writer = gguf.GGUFWriter(str(path), "llama")
    _write_hparams(writer, model_cfg, name=name or out_dir.resolve().name)
    _write_tokenizer(writer, tokenizer, model_cfg.vocab_size)
    tensors = gguf_tensors(model.state_dict(), model_cfg)
    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return (f"wrote {path} (llama, {len(tensors)} float32 tensors, {tokenizer.vocab_size:,}-token "
            f"BPE tokenizer); llama.cpp runs it: llama-cli -m {path}")
