"""The open models people start from, checked against transformers itself: tiny random
models built by transformers from the real configs of SmolLM2-135M, Qwen2.5-0.5B,
TinyLlama-1.1B, Llama-3.2-1B and Mistral-7B, scaled down (fewer layers, narrower) but
keeping each one's grouped-query ratio, norm epsilon, rope base and scaling, biases, head
width and tying. For each: lmforge imports the directory and computes the same logits,
the same greedy continuation and the same loss; exported back, transformers loads it and
computes the same logits again."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.config import Config
from lmforge.errors import ConfigError
from lmforge.evaluate import cross_entropy
from lmforge.generate import generate_tokens
from lmforge.interop.hf_export import export_hf
from lmforge.interop.hf_import import import_hf
from lmforge.interop.init_from import resolve_config
from lmforge.models import build_model

VOCAB = 320

# The real configs' shape-defining fields (from each model's config.json), with widths and
# depths scaled down; the ratios, epsilons, rope settings, biases and tying are the real ones.
FAMILIES = {
    "SmolLM2-135M": dict(  # 9 heads over 3 kv heads, eps 1e-5, theta 1e5, tied
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=72,
        intermediate_size=192, num_attention_heads=9, num_key_value_heads=3,
        num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        max_position_embeddings=8192, hidden_act="silu", attention_bias=False, mlp_bias=False),
    "Qwen2.5-0.5B": dict(  # 14 heads over 2, q/k/v biases, eps 1e-6, theta 1e6, tied
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=112,
        intermediate_size=304, num_attention_heads=14, num_key_value_heads=2,
        num_hidden_layers=2, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=32768, sliding_window=32768, use_sliding_window=False,
        max_window_layers=2, hidden_act="silu"),
    "TinyLlama-1.1B": dict(  # 32 heads over 4 (scaled: 16 over 2), untied, eps 1e-5
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=128,
        intermediate_size=352, num_attention_heads=16, num_key_value_heads=2,
        num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        max_position_embeddings=2048, hidden_act="silu"),
    "Llama-3.2-1B": dict(  # 32 heads over 8 (scaled: 8 over 2), llama3 rope scaling, head_dim
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=128,
        intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
        num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        max_position_embeddings=131072, hidden_act="silu",
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "Mistral-7B": dict(  # 32 heads over 8 (scaled: 8 over 2), a sliding window, untied
        architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=64,
        intermediate_size=160, num_attention_heads=8, num_key_value_heads=2,
        num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        max_position_embeddings=4096, sliding_window=96, hidden_act="silu"),
}
LINEAR_ROPE = dict(FAMILIES["TinyLlama-1.1B"], rope_scaling={"rope_type": "linear", "factor": 4.0})


def hf_model(transformers, config: dict, directory, *, shard: bool = False):
    """A random transformers model of `config` saved in `directory`: every parameter drawn
    anew (norm gains and biases too), so a tensor mapped to the wrong place shows."""
    hf_config = transformers.AutoConfig.for_model(**{k: v for k, v in config.items()
                                                     if k != "architectures"}, vocab_size=VOCAB,
                                                  bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 and p.numel() == config["hidden_size"] else 0.0))
    model.save_pretrained(directory, max_shard_size="200KB" if shard else "5GB")
    return model


def windows(length: int = 48) -> torch.Tensor:
    return torch.randint(2, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))


def lmforge_model(directory):
    cfg, sd = import_hf(directory)
    model = build_model(cfg)
    model.load_state_dict(sd, strict=True)
    return cfg, model.eval()


@pytest.mark.parametrize("name", [*FAMILIES, "linear-rope"])
def test_imported_models_compute_what_transformers_computes(transformers, tmp_path, name):
    config = LINEAR_ROPE if name == "linear-rope" else FAMILIES[name]
    hf = hf_model(transformers, config, tmp_path / "hf", shard=name == "Qwen2.5-0.5B")
    if name == "Qwen2.5-0.5B":  # the sharded one: an index and several files
        assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    cfg, model = lmforge_model(tmp_path / "hf")
    x = windows()
    with torch.no_grad():
        theirs = hf(x).logits
        ours, _ = model(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    # the loss at step 0 on the same windows: ours on (x, y), theirs on labels shifted inside
    with torch.no_grad():
        their_loss = hf(x, labels=x).loss
        our_loss = cross_entropy(model(x[:, :-1])[0], x[:, 1:])
    assert abs(float(our_loss) - float(their_loss)) < 1e-5

    # 50 greedy tokens, ours through the KV cache
    prompt = x[:1, :5]
    with torch.no_grad():
        their_tokens = hf.generate(prompt, max_new_tokens=50, do_sample=False, min_new_tokens=50,
                                   eos_token_id=None, pad_token_id=0)[0, 5:].tolist()
    our_tokens = [int(t) for t in generate_tokens(model, prompt, max_new_tokens=50, temperature=0)]
    assert our_tokens == their_tokens


@pytest.mark.parametrize("name", [*FAMILIES, "linear-rope"])
def test_export_reloads_in_transformers_with_the_same_logits(transformers, tmp_path, name):
    config = LINEAR_ROPE if name == "linear-rope" else FAMILIES[name]
    hf_model(transformers, config, tmp_path / "hf")
    cfg, model = lmforge_model(tmp_path / "hf")
    export_hf(model, cfg, None, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = windows(cfg.block_size if cfg.block_size < 48 else 48)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x)[0], atol=1e-4, rtol=1e-4)
    assert written["num_key_value_heads"] == config["num_key_value_heads"]
    # Mistral's window is lmforge's context; what it computes there is a Llama's
    want = {"mistral": "LlamaForCausalLM"}.get(config["model_type"], config["architectures"][0])
    assert type(back).__name__ == want
    # and imported again, the same config
    again, _ = import_hf(tmp_path / "out")
    assert again == cfg


def test_what_each_family_becomes_in_lmforge(transformers, tmp_path):
    made = {}
    for name, config in FAMILIES.items():
        hf_model(transformers, config, tmp_path / name)
        made[name] = import_hf(tmp_path / name)[0]
    smol, qwen, tiny, llama3, mistral = made.values()
    assert (smol.n_head, smol.kv_heads, smol.norm_eps, smol.rope_theta, smol.tie_embeddings) == (
        9, 3, 1e-5, 1e5, True)
    assert (qwen.qkv_bias, qwen.bias, qwen.norm_eps, qwen.kv_heads) == (True, False, 1e-6, 2)
    assert (tiny.tie_embeddings, tiny.mlp_hidden, tiny.kv_heads) == (False, 352, 2)
    assert (llama3.head_size, llama3.rope_scaling, llama3.rope_factor) == (32, "llama3", 32.0)
    assert mistral.block_size == 96  # the sliding window bounds the context


def test_a_context_beyond_mistrals_sliding_window_is_refused(transformers, tmp_path):
    hf_model(transformers, FAMILIES["Mistral-7B"], tmp_path / "m")
    cfg = Config()
    cfg.run.init_from, cfg.model.block_size = str(tmp_path / "m"), 128
    with pytest.raises(ConfigError, match="at most 96 .*sliding window"):
        resolve_config(cfg, explicit={"model.block_size"})
    cfg = Config()
    cfg.run.init_from, cfg.model.block_size = str(tmp_path / "m"), 64
    resolve_config(cfg, explicit={"model.block_size"})
    assert cfg.model.block_size == 64  # a shorter context is the run's own choice


@pytest.mark.parametrize("name", ["Qwen2.5-0.5B", "Llama-3.2-1B"])
def test_lora_on_an_imported_model_lowers_the_loss_and_resumes_exactly(transformers, tmp_path,
                                                                        name):
    """`lmforge train --init-from DIR --lora.r=4` as the CLI runs it (in this process): the
    loss falls, and a run resumed from its middle checkpoint retraces it exactly."""
    from helpers import losses, rewind

    from lmforge.config import TokenizerConfig
    from lmforge.data.prepare import prepare
    from lmforge.plan import TrainRequest, planned_run
    from lmforge.train.session import train_run

    hf_model(transformers, FAMILIES[name], tmp_path / "hf")
    (tmp_path / "notes.txt").write_text("To be, or not to be, that is the question. " * 200)
    prepare([str(tmp_path / "notes.txt")], tmp_path / "data", log=lambda _: None,
            tokenizer=TokenizerConfig(kind="byte"), progress=False)  # 257 ids: within 320
    settings = {"run.init_from": str(tmp_path / "hf"), "data.path": str(tmp_path / "data"),
                "data.source": "", "lora.r": "4", "lora.alpha": "8", "model.block_size": "32",
                "train.batch_size": "4", "train.max_steps": "16", "train.log_every": "1",
                "eval.every": "0", "eval.batches": "1", "eval.samples": "0",
                "eval.samples_at_eval": "0", "train.precision": "fp32", "log.to": "none",
                "train.report": "false", "train.progress": "false", "train.max_minutes": "0",
                "optim.lr": "1e-2", "optim.warmup_steps": "2", "checkpoint.every": "8",
                "checkpoint.keep_last": "5", "run.dir": str(tmp_path / "run")}
    with planned_run(TrainRequest(overrides=settings)) as plan:
        assert train_run(plan).exit_code == 0
    straight = losses(tmp_path / "run")
    assert len(straight) == 16 and straight[-1] < straight[0] - 0.5
    rewind(tmp_path / "run", 8)
    with planned_run(TrainRequest(resume=tmp_path / "run")) as plan:
        assert plan.resume_step == 8
        assert train_run(plan).exit_code == 0
    assert losses(tmp_path / "run") == straight
