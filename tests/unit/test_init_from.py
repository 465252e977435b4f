"""--init-from's config rules: the architecture comes from the directory, the run keeps its
dropout and may shorten its context, and a command-line shape that disagrees is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.config import Config, ModelConfig
from lmforge.errors import ConfigError
from lmforge.interop.hf_export import export_hf, export_safetensors
from lmforge.interop.init_from import load_into, load_state, resolve_config
from lmforge.models.gpt import GPT

SOURCE = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=50, dropout=0.1)


@pytest.fixture(params=["hf", "safetensors"])
def directory(request, tmp_path):
    torch.manual_seed(0)
    model = GPT(SOURCE)
    (export_hf if request.param == "hf" else export_safetensors)(model, SOURCE, None, tmp_path)
    (tmp_path / "format").write_text(request.param)
    return tmp_path


def config(directory, **model) -> Config:
    cfg = Config()
    cfg.run.init_from = str(directory)
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


def test_the_architecture_comes_from_the_directory(directory):
    cfg = config(directory, n_layer=6, n_embd=128, dropout=0.3)  # as a recipe might say
    note = resolve_config(cfg, explicit={"run.init_from"})
    want = {**dataclasses.asdict(SOURCE), "dropout": 0.3}  # dropout: the run's own
    if (directory / "format").read_text() == "hf":
        want["bias"] = True  # GPT-2 always has biases: zeros here
    assert dataclasses.asdict(cfg.model) == want
    assert "in place of the config's n_layer=6, n_embd=128" in note
    assert cfg.run.init_from == str(directory.resolve())


def test_a_command_line_shape_must_agree(directory):
    cfg = config(directory, n_head=4)
    with pytest.raises(ConfigError, match=r"--model.n_head=4 conflicts with the model in .* \(n_head=2\)"):
        resolve_config(cfg, explicit={"model.n_head"})
    cfg = config(directory, n_head=2)  # the same value is no conflict
    resolve_config(cfg, explicit={"model.n_head"})


def test_a_shorter_context_keeps_the_function(directory):
    cfg = config(directory, block_size=8)
    resolve_config(cfg, explicit={"model.block_size"})
    assert cfg.model.block_size == 8
    short = GPT(cfg.model).eval()
    load_into(short, load_state(cfg))
    full = GPT(dataclasses.replace(cfg.model, block_size=SOURCE.block_size)).eval()
    load_into(full, load_state(config(directory, **{**dataclasses.asdict(cfg.model),
                                                    "block_size": SOURCE.block_size})))
    x = torch.randint(0, SOURCE.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(short(x)[0], full(x)[0])


def test_a_longer_learned_context_is_refused(directory):
    cfg = config(directory, block_size=48)
    with pytest.raises(ConfigError, match="at most 24 with learned positions"):
        resolve_config(cfg, explicit={"model.block_size"})


def test_rope_models_take_any_context(tmp_path):
    src = dataclasses.replace(SOURCE, norm="rmsnorm", mlp="swiglu", pos="rope")
    export_safetensors(GPT(src), src, None, tmp_path)
    cfg = config(tmp_path, block_size=48)
    resolve_config(cfg, explicit={"model.block_size"})
    model = GPT(cfg.model)
    load_into(model, load_state(cfg))
    assert model(torch.zeros(1, 48, dtype=torch.long))[0].shape == (1, 48, SOURCE.vocab_size)


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_config(config(tmp_path / "nope"), explicit=set())
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_config(config(tmp_path), explicit=set())
