"""Hugging Face export and import, checked against transformers itself: the same logits
from lmforge's GPT and from the HF model built from the exported (or imported) files, the
same token ids from lmforge's tokenizer and AutoTokenizer, and the exact error for every
model HF cannot reproduce."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.tokenizer import EOT_TOKEN, train_tokenizer
from lmforge.errors import ConfigError, DataError
from lmforge.interop.hf_export import export_hf, export_safetensors
from lmforge.interop.hf_import import import_hf, import_safetensors
from lmforge.interop.hf_layout import hf_family
from lmforge.interop.hf_tokenizer import import_hf_tokenizer
from lmforge.models.gpt import GPT

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than "
        "to famish?\n\nAll:\nResolved. résolu — 決心した\n") * 4
SAMPLES = ["hear me speak", "  two  spaces\n\nand lines\t", "résolu 決心 ✓ 🙂",
           f"a literal {EOT_TOKEN} is text", ""]
GPT2_STYLE = dict(norm="layernorm", mlp="gelu", pos="learned")
LLAMA_STYLE = dict(norm="rmsnorm", mlp="swiglu", pos="rope", rope_theta=500.0)


def small(**overrides) -> ModelConfig:
    base = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=300, dropout=0.0)
    return ModelConfig(**{**base, **overrides})


def random_gpt(cfg: ModelConfig, *, seed: int = 0) -> GPT:
    """A GPT with every parameter random, norms and biases included, so a tensor mapped
    to the wrong place cannot hide behind an initialization of ones or zeros."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def tokens(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(1))


def hf_logits(transformers, directory, x: torch.Tensor) -> tuple[str, torch.Tensor]:
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return type(hf).__name__, hf(x).logits


# ---------------------------------------------------------------------------- export

@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_exported_model_gives_the_same_logits(transformers, tmp_path, style, bias, tie):
    cfg = small(bias=bias, tie_embeddings=tie, **(GPT2_STYLE if style == "gpt2" else LLAMA_STYLE))
    if style == "gpt2" and not tie:  # and GPT-2's tanh GELU (HF gelu_new)
        cfg = small(bias=bias, tie_embeddings=tie, **{**GPT2_STYLE, "mlp": "gelu_tanh"})
    model = random_gpt(cfg)
    export_hf(model, cfg, None, tmp_path)
    x = tokens(cfg)
    with torch.no_grad():
        ours, _ = model(x)
    name, theirs = hf_logits(transformers, tmp_path, x)
    assert name == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[style]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("change, names", [
    (dict(pos="rope"), "model.pos=rope"),  # gelu + layernorm with rope
    (dict(mlp="swiglu"), "model.mlp=swiglu"),  # swiglu with learned positions
    (dict(norm="rmsnorm"), "model.norm=rmsnorm"),
    (dict(norm="batchnorm"), "model.norm=batchnorm"),
    (dict(arch="lstm"), "model.arch=lstm"),
])
def test_models_without_an_hf_twin_are_refused_before_writing(tmp_path, change, names):
    cfg = small(**{**GPT2_STYLE, **change})
    with pytest.raises(ConfigError, match=f"{names}.*--format safetensors"):
        export_hf(None, cfg, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_family_is_chosen_by_the_options():
    assert hf_family(small(**GPT2_STYLE)) == "gpt2"
    assert hf_family(small(**LLAMA_STYLE)) == "llama"


def test_config_json_says_what_lmforge_computes(tmp_path):
    export_hf(random_gpt(small(**GPT2_STYLE)), small(**GPT2_STYLE), None, tmp_path / "g")
    export_hf(random_gpt(small(**LLAMA_STYLE)), small(**LLAMA_STYLE), None, tmp_path / "l")
    g = json.loads((tmp_path / "g" / "config.json").read_text())
    ll = json.loads((tmp_path / "l" / "config.json").read_text())
    assert (g["activation_function"], g["layer_norm_epsilon"], g["n_inner"]) == ("gelu", 1e-5, 256)
    tanh = small(**{**GPT2_STYLE, "mlp": "gelu_tanh"})
    export_hf(random_gpt(tanh), tanh, None, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["activation_function"] == "gelu_new"
    assert (ll["hidden_act"], ll["rms_norm_eps"], ll["rope_theta"]) == ("silu", 1e-5, 500.0)


# ---------------------------------------------------------------------------- tokenizers

@pytest.mark.parametrize("kind", ["bpe", "char", "byte"])
def test_autotokenizer_gives_the_same_ids(transformers, tmp_path, kind):
    tok = train_tokenizer(kind, [TEXT, *SAMPLES], vocab_size=300)
    cfg = small(vocab_size=tok.vocab_size, **GPT2_STYLE)
    note = export_hf(random_gpt(cfg), cfg, tok, tmp_path)
    assert "skipped" not in note
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(auto, transformers.PreTrainedTokenizerFast)
    assert (auto.eos_token, auto.bos_token) == (EOT_TOKEN, EOT_TOKEN)
    assert auto.eos_token_id == auto.bos_token_id == tok.eot_id
    for text in [TEXT, *SAMPLES]:
        ids = tok.encode(text)
        assert auto(text)["input_ids"] == ids, text
        assert auto.decode(ids + [tok.eot_id], skip_special_tokens=True) == tok.decode(ids)
    again = import_hf_tokenizer(tmp_path)
    assert (again.kind, again.vocab_size, again.eot_id) == (tok.kind, tok.vocab_size, tok.eot_id)


def test_generate_stops_at_eot(transformers, tmp_path):
    tok = train_tokenizer("bpe", [TEXT], vocab_size=300)
    cfg = small(vocab_size=tok.vocab_size, **LLAMA_STYLE)
    export_hf(random_gpt(cfg), cfg, tok, tmp_path)
    gen = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert gen.eos_token_id == tok.eot_id


def test_hf_only_tokenizer_json_is_the_models_own_tokenizer(tmp_path):
    tok = train_tokenizer("bpe", [TEXT], vocab_size=300)
    tok._hf.save(str(tmp_path / "tokenizer.json"))  # an HF directory: no tokenizer_meta.json
    wrapped = import_hf_tokenizer(tmp_path)  # end of text: <|endoftext|>, named nowhere else
    assert wrapped.kind == "hf" and wrapped.encode(TEXT) == tok.encode(TEXT)
    assert wrapped.eot_id == tok.eot_id

    from tokenizers import Tokenizer, models
    other = tmp_path / "llama"
    other.mkdir()
    Tokenizer(models.BPE(vocab={"a": 0, "</s>": 1}, merges=[])).save(str(other / "tokenizer.json"))
    (other / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert import_hf_tokenizer(other).eot_id == 1  # Llama's </s> (tests/unit/test_hf_tokenizers.py)
    (other / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eot|>"}))
    with pytest.raises(DataError, match="'<|eot|>' is not in tokenizer.json's vocabulary"):
        import_hf_tokenizer(other)


# ---------------------------------------------------------------------------- import

def save_hf(transformers, model, directory, *, bin_file: bool = False):
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    model.eval().save_pretrained(directory)
    if bin_file:  # what older checkpoints hold: a pickle loaded with weights_only
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    return model


@pytest.mark.parametrize("bin_file", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_imported_gpt2_gives_the_same_logits(transformers, tmp_path, bin_file, tie):
    # GPT2Config's default activation is gelu_new, GPT-2's tanh GELU; "gelu" is the exact one
    act = "gelu_new" if tie else "gelu"
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=300,
                                     tie_word_embeddings=tie, activation_function=act)
    hf = save_hf(transformers, transformers.GPT2LMHeadModel(config), tmp_path, bin_file=bin_file)
    cfg, sd = import_hf(tmp_path)
    mlp = "gelu_tanh" if tie else "gelu"
    assert (cfg.norm, cfg.mlp, cfg.pos, cfg.bias, cfg.tie_embeddings) == ("layernorm", mlp, "learned", True, tie)
    model = GPT(cfg).eval()
    model.load_state_dict(sd)  # strict
    x = tokens(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_imported_llama_gives_the_same_logits(transformers, tmp_path, bias, tie):
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=300,
                                      max_position_embeddings=32, rms_norm_eps=1e-5, rope_theta=500.0,
                                      attention_bias=bias, mlp_bias=bias, tie_word_embeddings=tie)
    hf = save_hf(transformers, transformers.LlamaForCausalLM(config), tmp_path)
    cfg, sd = import_hf(tmp_path)
    assert (cfg.rope_theta, cfg.bias, cfg.tie_embeddings, cfg.block_size) == (500.0, bias, tie, 32)
    model = GPT(cfg).eval()
    model.load_state_dict(sd)
    x = tokens(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("style", [dict(bias=True, **GPT2_STYLE), dict(bias=False, **LLAMA_STYLE),
                                   dict(bias=True, tie_embeddings=False, **LLAMA_STYLE)])
def test_round_trip_through_hf_keeps_every_weight(tmp_path, style):
    cfg = small(**style)
    model = random_gpt(cfg)
    export_hf(model, cfg, None, tmp_path)
    cfg2, sd = import_hf(tmp_path)
    assert cfg2 == cfg
    ours = model.state_dict()
    assert sd.keys() == ours.keys()
    for name, t in ours.items():
        assert torch.equal(sd[name], t), name


def test_round_trip_adds_zero_biases_to_a_biasless_gpt2(tmp_path):
    cfg = small(bias=False, **GPT2_STYLE)
    model = random_gpt(cfg)
    export_hf(model, cfg, None, tmp_path)
    cfg2, sd = import_hf(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, bias=True)  # HF's GPT-2 always has biases
    ours = model.state_dict()
    for name, t in sd.items():
        assert torch.equal(t, ours[name]) if name in ours else not t.any(), name


def write_config(directory, **config):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))


LLAMA = dict(model_type="llama", hidden_size=64, num_attention_heads=4, intermediate_size=176,
             rms_norm_eps=1e-5)


@pytest.mark.parametrize("config, what", [
    (dict(model_type="falcon"), "model_type='falcon'"),
    (dict(LLAMA, num_key_value_heads=3), "num_key_value_heads=3 does not divide"),
    (dict(LLAMA, rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope scaling 'yarn'"),
    (dict(LLAMA, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4}),
     "rope scaling 'llama3' without its factor"),
    (dict(LLAMA, partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(LLAMA, attention_bias=True), "attention_bias=True but mlp_bias=False"),
    (dict(LLAMA, hidden_act="gelu"), "hidden_act=gelu"),
    (dict(LLAMA, rms_norm_eps=0), "rms_norm_eps=0"),
    (dict(LLAMA, hidden_size=66, num_attention_heads=4), "no head_dim"),
    (dict(model_type="gpt2", activation_function="relu"), "activation_function=relu"),
    (dict(model_type="gpt2", scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
])
def test_unsupported_hf_models_are_refused(tmp_path, config, what):
    write_config(tmp_path, **config)
    with pytest.raises(ConfigError, match=f"cannot import.*{what}".replace("(", r"\(")):
        import_hf(tmp_path)


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config.json is missing"):
        import_hf(tmp_path / "nothing")


# ---------------------------------------------------------------------------- safetensors

@pytest.mark.parametrize("style", [GPT2_STYLE, dict(LLAMA_STYLE, pos="learned", tie_embeddings=False)])
def test_safetensors_export_round_trips(tmp_path, style):
    cfg = small(**style)
    model = random_gpt(cfg)
    tok = train_tokenizer("char", [TEXT], vocab_size=0)
    export_safetensors(model, cfg, tok, tmp_path)
    cfg2, sd = import_safetensors(tmp_path)
    assert cfg2 == cfg
    again = GPT(cfg2).eval()
    again.load_state_dict(sd)
    x = tokens(cfg)
    with torch.no_grad():
        assert torch.equal(again(x)[0], model(x)[0])
    assert import_hf_tokenizer(tmp_path).encode(TEXT) == tok.encode(TEXT)


def test_safetensors_export_takes_recurrent_models(tmp_path):
    rnn = pytest.importorskip("lmforge.models.rnn")
    cfg = small(arch="lstm", n_embd=32)
    model = rnn.RecurrentLM(cfg).eval()
    export_safetensors(model, cfg, None, tmp_path)
    cfg2, sd = import_safetensors(tmp_path)
    again = rnn.RecurrentLM(cfg2)
    again.load_state_dict(sd)
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name

