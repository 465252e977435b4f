"""LoRA through peft on lmforge's own modules: only the adapters train, a fresh adapter
changes nothing, merging changes nothing, checkpoints hold the adapters and name their base,
another base or other adapters are refused, and a peft adapter directory loads in peft on
top of the Hugging Face base with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import losses, resumed_at
from helpers import tiny_config as shared_config
from helpers import trainer as make_trainer
from safetensors import safe_open

from lmforge import checkpoint
from lmforge.config import Config, LoraConfig, ModelConfig, load_config
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop import lora
from lmforge.interop.hf_export import export_hf
from lmforge.interop.peft_export import export_peft
from lmforge.models.gpt import GPT
from lmforge.rundir import RunDir, write_config
from lmforge.runs.load import load_run

GPT2_STYLE = dict(norm="layernorm", mlp="gelu", pos="learned")
LLAMA_STYLE = dict(norm="rmsnorm", mlp="swiglu", pos="rope")
SETTINGS = {"train.log_every": "1", "eval.every": "10", "train.precision": "fp32",
            "lora.r": "4", "lora.alpha": "8", "optim.lr": "1e-2", "optim.warmup_steps": "5",
            "train.max_steps": "20", "eval.samples_at_eval": "0"}


def small(**style) -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=300, **style)


def tokens(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))


def with_random_adapters(model: GPT, cfg: LoraConfig) -> GPT:
    """`model` with LoRA adapters whose B is not zero, so they change what it computes."""
    lora.apply_lora(model, cfg, seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return model.eval()


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE])
def test_only_the_adapters_train_and_start_as_the_base(style):
    cfg = small(**style)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    x = tokens(cfg)
    before = model(x)[0]
    lora.apply_lora(model, LoraConfig(r=4), seed=1)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # r (in + out) per adapted layer: q, k, v, c_proj (64 -> 64) and the MLP's layers
    mlp = [(64, 256), (256, 64)] if style is GPT2_STYLE else [(64, 176), (64, 176), (176, 64)]
    per_block = 4 * 4 * (64 + 64) + sum(4 * (i + o) for i, o in mlp)
    assert lora.trainable_params(model) == 2 * per_block
    assert torch.equal(model(x)[0], before)  # B starts at zero: the base's function exactly


def test_targets_choose_the_layers_and_names_the_model_lacks_are_skipped():
    model = GPT(small(**GPT2_STYLE))
    lora.apply_lora(model, LoraConfig(r=2, targets="attn.q_proj,mlp.w1"), seed=0)
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"blocks.0.attn.q_proj", "blocks.1.attn.q_proj"}
    with pytest.raises(ConfigError, match="this model has none of those layers; its blocks "
                                          "have attn.q_proj, .*mlp.c_fc, mlp.c_proj"):
        lora.apply_lora(GPT(small(**GPT2_STYLE)), LoraConfig(r=2, targets="mlp.w3"), seed=0)


@pytest.mark.parametrize("overrides, message", [
    ({"lora.targets": "attn.qproj"}, "lora.targets: unknown module 'attn.qproj'; choose from "
                                     "attn.q_proj, attn.k_proj, attn.v_proj, attn.c_proj, "
                                     "mlp.c_fc, mlp.w1, mlp.w3, mlp.c_proj"),
    ({"lora.targets": " , "}, "lora.targets: no module named; choose from attn.q_proj"),
    ({"lora.r": "4", "model.arch": "lstm"}, "LoRA adapts a Transformer's linear layers, and "
                                            "model.arch=lstm has none"),
    ({"lora.r": "4", "parallel.strategy": "tp"}, "tensor parallelism cannot split the adapters"),
    ({"lora.r": "-1"}, "lora.r"),
    ({"lora.dropout": "1"}, "lora.dropout"),
])
def test_bad_lora_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("default", overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE])
def test_merged_model_computes_what_the_lora_model_does(style):
    cfg = small(**style)
    torch.manual_seed(0)
    model = with_random_adapters(GPT(cfg), LoraConfig(r=4, alpha=8))
    x = tokens(cfg)
    want = model(x)[0]
    lora.merge_adapters(model)
    plain = GPT(cfg).eval()
    plain.load_state_dict(model.state_dict(), strict=True)  # lmforge's own names again
    assert torch.allclose(plain(x)[0], want, atol=1e-5)
    assert all(p.requires_grad for p in plain.parameters())


@pytest.mark.parametrize("style, targets", [
    (GPT2_STYLE, LoraConfig().targets), (LLAMA_STYLE, LoraConfig().targets),
    (GPT2_STYLE, "attn.k_proj,mlp.c_proj")])  # c_attn with k's adapter alone
def test_peft_adapter_loads_on_the_hf_base_with_the_same_logits(transformers, tmp_path, style,
                                                                  targets):
    import peft

    cfg = small(**style)
    torch.manual_seed(0)
    base = GPT(cfg)
    export_hf(base, cfg, None, tmp_path / "base")
    run_cfg = Config(model=cfg, lora=LoraConfig(r=4, alpha=8, targets=targets))
    run_cfg.run.init_from = str(tmp_path / "base")
    model = with_random_adapters(base, run_cfg.lora)
    x = tokens(cfg)
    export_peft(model, run_cfg, None, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tuned = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        got, want = tuned(x).logits, model(x)[0]
        assert (got - want).abs().max() < 1e-4
        with tuned.disable_adapter():  # the adapters count
            assert (tuned(x).logits - want).abs().max() > 1e-2


def test_peft_export_needs_a_hugging_face_base(tmp_path):
    cfg = Config(model=small(**LLAMA_STYLE), lora=LoraConfig(r=4))
    model = with_random_adapters(GPT(cfg.model), cfg.lora)
    with pytest.raises(ConfigError, match="random initialization of run.seed"):
        export_peft(model, cfg, None, tmp_path / "out")
    cfg.lora.r = 0
    with pytest.raises(ConfigError, match="this run trained every weight"):
        export_peft(model, cfg, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- training

def tiny_config(dataset, run_dir, **extra):
    return shared_config(dataset, run_dir, SETTINGS, extra)


def test_only_the_adapters_change_and_the_checkpoint_holds_them(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "run")
    trainer = make_trainer(cfg)
    base = lora.state_digest(lora.build_base(trainer.cfg))
    before = {n: t.clone() for n, t in trainer.raw_model.state_dict().items()}
    trainer.fit()
    after = trainer.raw_model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    # every adapter trained (B away from zero), and nothing else moved
    assert changed == {n for n in before if ".lora_" in n}
    path = checkpoint.find_checkpoint(RunDir(tmp_path / "run"))
    meta = checkpoint.verify(path)
    assert meta.lora is not None and meta.lora["base_sha256"] == base
    assert meta.lora["base"].startswith("the random initialization of run.seed=1337")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == {n for n, p in trainer.raw_model.named_parameters() if p.requires_grad}
    # eval and generate rebuild the base and add the adapters: the trained model exactly
    write_config(trainer.cfg, RunDir(tmp_path / "run"))  # as `lmforge train` does
    trainer.start_files()
    loaded = load_run(tmp_path / "run")
    x = tokens(trainer.cfg.model)[:, :8] % trainer.cfg.model.vocab_size
    trainer.raw_model.eval()
    assert torch.equal(loaded.model(x)[0], trainer.raw_model(x)[0])


def test_lora_resume_continues_the_same_run(dataset, tmp_path):
    """With adapter dropout, so the random state must come back too."""
    make_trainer(tiny_config(dataset, tmp_path / "full", **{"lora.dropout": "0.1"})).fit()
    cut = {"checkpoint.every": "13", "checkpoint.keep_last": "9", "lora.dropout": "0.1"}
    second = resumed_at(tiny_config(dataset, tmp_path / "cut", **cut), 13)
    assert second.counters.step == 13
    second.fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_another_base_or_other_adapters_are_refused(dataset, tmp_path):
    cfg = tiny_config(dataset, tmp_path / "run", **{"checkpoint.every": "10",
                                                     "train.max_steps": "10"})
    make_trainer(cfg).fit()
    cfg.run.seed = 7  # another random base
    with pytest.raises(CheckpointError, match=r"holds LoRA adapters for another base model: "
                                              r"trained on sha256 [0-9a-f]{12} \(the random "
                                              r"initialization of run.seed=1337\), but the base "
                                              r"is now sha256 [0-9a-f]{12} \(the random "
                                              r"initialization of run.seed=7\)") as err:
        make_trainer(cfg, resume=True)
    assert "\n" not in str(err.value)
    path = checkpoint.find_checkpoint(RunDir(tmp_path / "run"))
    meta = checkpoint.verify(path)
    cfg.run.seed, cfg.lora.r = 1337, 8
    with pytest.raises(CheckpointError, match="other adapters .lora.r: checkpoint 4, config 8"):
        lora.check_resume(meta.lora, cfg, path=path)
    cfg.lora.r = 0
    with pytest.raises(CheckpointError, match="which lora.r=0 cannot continue"):
        lora.check_resume(meta.lora, cfg, path=path)
    cfg.lora.r = 4
    with pytest.raises(CheckpointError, match="holds a fully trained model"):
        lora.check_resume(None, cfg, path=path)


def test_a_bf16_run_keeps_the_frozen_base_in_bf16_and_resumes_exactly(dataset, tmp_path):
    bf16 = {"train.precision": "bf16"}
    full = make_trainer(tiny_config(dataset, tmp_path / "full", **bf16))
    adapted = [m for m in full.raw_model.modules() if hasattr(m, "base_layer")]
    assert adapted and all(m.base_layer.weight.dtype == torch.bfloat16 for m in adapted)
    # the adapters, embeddings and norms keep float32
    assert all(p.dtype == torch.float32 for n, p in full.raw_model.named_parameters()
               if p.requires_grad or "base_layer" not in n)
    full.fit()
    cut = {**bf16, "checkpoint.every": "13", "checkpoint.keep_last": "9"}
    second = resumed_at(tiny_config(dataset, tmp_path / "cut", **cut), 13)
    second.fit()
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert losses(tmp_path / "full")[-1] < losses(tmp_path / "full")[0]
