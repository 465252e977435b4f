import re
import tomllib

import pytest

from lmforge.cli.options import Parser, parse_overrides
from lmforge.config import SECTIONS, Config, from_dict, load_config
from lmforge.errors import ConfigError
from lmforge.recipes import recipe_names
from lmforge.rundir import RunDir, read_run_config, write_config


def test_overrides_apply_on_top_of_the_recipe():
    cfg = load_config("default", parse_overrides(["--train.max_steps=7", "--model.n_layer", "2",
                                                  "--model.tie_embeddings=false", "--optim.lr=3e-4"]))
    assert cfg.train.max_steps == 7
    assert cfg.model.n_layer == 2
    assert cfg.model.tie_embeddings is False
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.n_embd == 256  # from the recipe, untouched


@pytest.mark.parametrize("args, message", [
    (["--train.max_step=5"], "unknown config key 'train.max_step'; did you mean 'train.max_steps'?"),
    (["--max_steps=5"], "did you mean 'train.max_steps'?"),
    (["--train.max_steps=abc"], "train.max_steps: expected an integer, got 'abc'"),
    (["--model.bias=maybe"], "model.bias: expected true or false, got 'maybe'"),
    (["--model.norm=rmsnrm"], "did you mean 'rmsnorm'?"),
    (["--train.max_steps"], "--train.max_steps needs a value"),
])
def test_bad_overrides_name_the_key_and_the_fix(args, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        parse_overrides(args)


def test_toml_errors_name_the_section_and_key():
    with pytest.raises(ConfigError, match=r"unknown section \[modle\]; did you mean \[model\]"):
        from_dict({"modle": {"n_layer": 2}})
    with pytest.raises(ConfigError, match="model.n_layer: expected an integer, got '2'"):
        from_dict({"model": {"n_layer": "2"}})
    with pytest.raises(ConfigError, match="did you mean 'model.n_embd'"):
        from_dict({"model": {"n_emb": 2}})


def test_batchnorm_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="see future tokens"):
        load_config("default", {"model.norm": "batchnorm"})


def test_impossible_shapes_are_refused():
    with pytest.raises(ConfigError, match="not divisible"):
        load_config("default", {"model.n_embd": "100", "model.n_head": "3"})
    with pytest.raises(ConfigError, match="at least 1"):
        load_config("default", {"train.batch_size": "0"})


def test_every_shipped_recipe_loads():
    assert {"default", "shakespeare_char"} <= set(recipe_names())
    for name in recipe_names():
        assert isinstance(load_config(name), Config)


def test_unknown_recipe_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="choose one of: .*default"):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layer = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))


def test_resolved_config_round_trips_through_the_run_dir(tmp_path):
    cfg = load_config("shakespeare_char", {"train.max_steps": "11", "model.dropout": "0.1"})
    write_config(cfg, RunDir(tmp_path))
    assert read_run_config(RunDir(tmp_path)) == cfg
    written = tomllib.loads((tmp_path / "config.toml").read_text())
    assert list(written) == SECTIONS  # every section, every field: nothing left to defaults


@pytest.mark.parametrize("key, value, message", [
    ("eval.sample_tokens", "10000000", "must be between 0 and 1,000,000"),
    ("eval.samples_at_eval", "100000", "must be between 0 and 1,000"),
    ("eval.samples", "-1", "must be 0 or more, got -1")])
def test_sampling_sizes_are_bounded(key, value, message):
    with pytest.raises(ConfigError, match=f"{key} {message}"):
        load_config("default", {key: value})


@pytest.mark.parametrize("args, message", [
    ([f"--model.n_layer={2**63}"], "model.n_layer must be between 1 and 1,024"),
    (["--eval.batch_size=-1"], "eval.batch_size must be 0 (train.batch_size) or more"),
    (["--model.rope_theta=0"], "model.rope_theta must be in (1, 1e+12]"),
    (["--clean.near_threshold=nan"], "clean.near_threshold must be a finite number"),
])
def test_out_of_range_overrides_fail_when_parsed(args, message):
    """Before any recipe is read: the CLI checks each override as it parses it."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_overrides(args)


# ---------------------------------------------------------------------------- speedrun options

SPEEDRUN = {"optim.name": "adamw", "optim.muon_lr": 0.02, "optim.muon_momentum": 0.95,
            "optim.muon_weight_decay": 0.0, "optim.muon_adjust_lr": "original",
            "model.qk_norm": False, "model.zero_init_proj": False, "model.logit_softcap": 0.0}


def test_a_run_saved_before_the_speedrun_options_loads_as_it_trained(tmp_path):
    """Its config.toml lacks the new fields: they take the defaults, which compute what it
    computed (AdamW, no q/k norm, GPT-2's init, plain logits)."""
    cfg = load_config("shakespeare_char_fast", {"train.max_steps": "11"})
    for key, value in SPEEDRUN.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key
    write_config(cfg, RunDir(tmp_path))
    text = (tmp_path / "config.toml").read_text()
    old = "\n".join(line for line in text.splitlines()
                    if line.split(" = ")[0] not in {k.split(".")[1] for k in SPEEDRUN})
    assert "qk_norm" in text and "qk_norm" not in old and "muon_lr" not in old
    (tmp_path / "config.toml").write_text(old)
    assert read_run_config(RunDir(tmp_path)) == cfg


def test_the_speedrun_options_are_set_from_the_command_line():
    cfg = load_config("shakespeare_char_fast", parse_overrides([
        "--optim.name=muon", "--optim.muon_lr=0.05", "--optim.muon_adjust_lr=match_rms_adamw",
        "--model.qk_norm=true", "--model.mlp=relu2", "--model.zero_init_proj=true",
        "--model.logit_softcap=15", "--model.tie_embeddings=false"]))
    assert (cfg.optim.name, cfg.optim.muon_lr, cfg.optim.muon_adjust_lr) == (
        "muon", 0.05, "match_rms_adamw")
    assert cfg.model.qk_norm and cfg.model.zero_init_proj and cfg.model.mlp == "relu2"
    assert cfg.model.logit_softcap == 15.0


@pytest.mark.parametrize("overrides, message", [
    ({"model.arch": "lstm", "model.qk_norm": "true"},
     "model.qk_norm is a Transformer option, and model.arch=lstm does not implement it"),
    ({"model.arch": "gru", "model.logit_softcap": "30"}, "model.logit_softcap is a Transformer"),
    ({"model.arch": "rnn", "model.zero_init_proj": "true"}, "model.zero_init_proj is a"),
    ({"model.qk_norm": "true", "parallel.strategy": "tp"},
     "model.qk_norm=true with parallel.strategy=tp: its gains are shared by heads"),
    ({"optim.name": "muon", "lora.r": "8"}, "optim.name=muon with lora.r=8"),
    ({"optim.name": "sgd"}, "optim.name: 'sgd' is not one of adamw, muon"),
    ({"model.mlp": "relu"}, "did you mean 'relu2'?"),
    ({"model.logit_softcap": "-1"}, "model.logit_softcap must be 0 (off) or more"),
    ({"optim.muon_lr": "0"}, "optim.muon_lr must be in (0, 1000], got 0.0 (a learning rate of 0 never trains)"),
    ({"optim.muon_momentum": "1"}, "optim.muon_momentum must be in [0, 1)"),
])
def test_speedrun_options_where_they_mean_nothing_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("default", overrides)


def test_a_usage_error_quoting_a_line_break_is_still_one_line(capsys):
    parser = Parser(prog="lmforge eval")
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["a\rb\u2028c"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == ("lmforge eval: error: unrecognized arguments: a\\rb\\u2028c; "
                   "see `lmforge eval --help`\n")
