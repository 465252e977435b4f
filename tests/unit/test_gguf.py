"""GGUF export: the file read back with llama.cpp's own reader (gguf.GGUFReader) holds the
tensors and metadata llama.cpp's llama needs, and the model computed from that file alone
the way llama.cpp computes it (its rope pairs neighbouring dimensions, and its metadata
gives every size) gives lmforge's logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.tokenizer import EOT_TOKEN, train_tokenizer
from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT

gguf = pytest.importorskip("gguf")
from lmforge.interop.gguf_export import GGUF_FILE, export_gguf  # noqa: E402

TEXT = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 0\n",
        "for i in range(10):\n    print(i * i)\n"] * 20
LLAMA = dict(n_layer=2, n_head=4, n_embd=32, block_size=24, norm="rmsnorm", mlp="swiglu",
             pos="rope", rope_theta=500.0, norm_eps=1e-6, vocab_size=320, tie_embeddings=False)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("bpe", TEXT, vocab_size=300)


def export(tmp_path, tokenizer, **overrides):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**LLAMA, **overrides})
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # away from 1, so that a norm read wrongly shows
                p.uniform_(0.5, 1.5)
            elif "q_proj" in name or "k_proj" in name:  # sharp attention: rope matters
                p.normal_(0.0, 0.5)
    export_gguf(model, cfg, tokenizer, tmp_path, name="tiny llama")
    return model.eval(), cfg, gguf.GGUFReader(str(tmp_path / GGUF_FILE))


def field(reader, key):
    return reader.fields[key].contents()


def tensors(reader) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data, dtype=np.float64) for t in reader.tensors}


# ---------------------------------------------------------------------------- llama.cpp's view

def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_neighbours(x, positions, *, base, dims, factors, scale):
    """llama.cpp's rope for the llama architecture: dimensions 2i and 2i+1 rotate together by
    position * scale * base^(-2i/dims) / factors[i]."""
    i = np.arange(dims // 2)
    theta = positions[:, None] * scale * base ** (-2 * i / dims) / factors  # (T, dims/2)
    cos, sin = np.cos(theta), np.sin(theta)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return out


def attention(h, b, *, meta, pos, factors):
    """One llama.cpp attention block on normed input h (T, C); `b`: the block's tensors."""
    T, (n_head, n_kv, hd) = len(h), meta["heads"]
    q = (h @ b["attn_q"].T).reshape(T, n_head, hd).transpose(1, 0, 2)
    k = (h @ b["attn_k"].T).reshape(T, n_kv, hd).transpose(1, 0, 2)
    v = (h @ b["attn_v"].T).reshape(T, n_kv, hd).transpose(1, 0, 2)
    q, k = (rope_neighbours(x, pos, base=meta["base"], dims=meta["dims"], factors=factors,
                            scale=meta["scale"]) for x in (q, k))
    k, v = np.repeat(k, n_head // n_kv, axis=0), np.repeat(v, n_head // n_kv, axis=0)
    att = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    return (att @ v).transpose(1, 0, 2).reshape(T, n_head * hd) @ b["attn_output"].T


def llama_cpp_logits(reader, ids: list[int]) -> np.ndarray:
    """Logits of `ids` from the GGUF file alone, as llama.cpp's llama graph computes them."""
    w, f = tensors(reader), lambda key: field(reader, f"llama.{key}")  # noqa: E731
    scaled = "llama.rope.scaling.factor" in reader.fields
    meta = {"heads": (f("attention.head_count"), f("attention.head_count_kv"),
                      f("attention.key_length")),
            "base": f("rope.freq_base"), "dims": f("rope.dimension_count"),
            "scale": 1 / f("rope.scaling.factor") if scaled else 1.0}
    eps = f("attention.layer_norm_rms_epsilon")
    factors = w.get("rope_freqs.weight", np.ones(meta["dims"] // 2))
    x, pos = w["token_embd.weight"][ids], np.arange(len(ids), dtype=np.float64)
    for i in range(f("block_count")):
        b = {k[len(f"blk.{i}."):-len(".weight")]: v for k, v in w.items()
             if k.startswith(f"blk.{i}.")}
        x = x + attention(rms_norm(x, b["attn_norm"], eps), b, meta=meta, pos=pos,
                          factors=factors)
        h = rms_norm(x, b["ffn_norm"], eps)
        gate = h @ b["ffn_gate"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ b["ffn_up"].T)) @ b["ffn_down"].T
    out = w.get("output.weight", w["token_embd.weight"])
    return rms_norm(x, w["output_norm.weight"], eps) @ out.T


@pytest.mark.parametrize("overrides", [
    {},
    {"n_kv_head": 2, "tie_embeddings": True},  # grouped-query attention; output from token_embd
    {"head_dim": 12, "rope_scaling": "linear", "rope_factor": 4.0},
    {"rope_scaling": "llama3", "rope_factor": 8.0, "rope_original_context": 16},
], ids=["plain", "gqa-tied", "head_dim-linear", "llama3"])
def test_llama_cpp_computes_lmforges_logits_from_the_file(tmp_path, tokenizer, overrides):
    model, cfg, reader = export(tmp_path, tokenizer, **overrides)
    ids = [tokenizer.eot_id, *tokenizer.encode("def add(a, b):\n    return")][:cfg.block_size]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].double().numpy()
    theirs = llama_cpp_logits(reader, ids)
    assert np.abs(ours - theirs).max() < 1e-4


def test_the_file_holds_llamas_tensors_and_metadata(tmp_path, tokenizer):
    model, cfg, reader = export(tmp_path, tokenizer)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == "tiny llama"
    expect = {"llama.context_length": 24, "llama.embedding_length": 32, "llama.block_count": 2,
              "llama.attention.head_count": 4, "llama.attention.head_count_kv": 4,
              "llama.feed_forward_length": model.blocks[0].mlp.w1.out_features,
              "llama.rope.dimension_count": 8, "llama.vocab_size": 320}
    assert {k: field(reader, k) for k in expect} == expect
    assert field(reader, "llama.rope.freq_base") == pytest.approx(500.0)
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # innermost first
    hidden = expect["llama.feed_forward_length"]
    assert shapes["token_embd.weight"] == (32, 320) and shapes["output.weight"] == (32, 320)
    assert shapes["blk.1.attn_q.weight"] == (32, 32)
    assert shapes["blk.1.ffn_gate.weight"] == (32, hidden)
    assert shapes["blk.1.ffn_down.weight"] == (hidden, 32) and shapes["output_norm.weight"] == (32,)
    assert len(shapes) == 3 + 9 * 2
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    # weights that need no re-layout are lmforge's own, bit for bit
    assert np.array_equal(tensors(reader)["blk.0.ffn_up.weight"],
                          model.blocks[0].mlp.w3.weight.detach().double().numpy())


def test_the_tokenizer_is_gpt2_bpe_with_eot(tmp_path, tokenizer):
    _, _, reader = export(tmp_path, tokenizer)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 320  # the model's rows, past the tokenizer's 300
    eot = tokenizer.eot_id
    assert tokens[eot] == EOT_TOKEN and types[eot] == 3  # control
    assert tokens[300:] == [f"[PAD{i}]" for i in range(300, 320)] and set(types[300:]) == {5}
    assert field(reader, "tokenizer.ggml.bos_token_id") == eot
    assert field(reader, "tokenizer.ggml.eos_token_id") == eot
    merges = field(reader, "tokenizer.ggml.merges")
    assert merges and all(len(m.split(" ")) == 2 for m in merges)
    # tokens are spelled in GPT-2's byte-level alphabet, where ASCII letters stand for themselves
    first = tokenizer.encode("return")
    assert "".join(tokens[i] for i in first) == "return"


@pytest.mark.parametrize("overrides, message", [
    ({"norm": "layernorm", "mlp": "gelu", "pos": "learned"}, "Llama-style"),
    ({"bias": True}, "Llama-style"),
])
def test_models_llama_cpp_cannot_run_are_refused_before_writing(tmp_path, tokenizer, overrides,
                                                                message):
    with pytest.raises(ConfigError, match=message):
        export(tmp_path, tokenizer, **overrides)
    assert not (tmp_path / GGUF_FILE).exists()


def test_a_char_tokenizer_is_refused(tmp_path):
    char = train_tokenizer("char", TEXT, vocab_size=0)
    cfg = ModelConfig(**{**LLAMA, "vocab_size": char.vocab_size})
    with pytest.raises(ConfigError, match="needs the run's tokenizer to be lmforge's bpe"):
        export_gguf(GPT(cfg), cfg, char, tmp_path)
    assert not any(tmp_path.iterdir())
