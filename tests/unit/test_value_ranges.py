"""Every number of the config in its range, and sizes checked before anything is built.

A value far out of range (2**63 layers, a NaN threshold, a negative batch) is one
ConfigError at config load that names the field and the limit; a model or a batch too
large to exist on any device is refused by arithmetic on the config. Nothing here builds a
large model or allocates a large tensor: that is the point."""

from __future__ import annotations

import dataclasses
import itertools
import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge import config_checks
from lmforge.cli.main import main
from lmforge.config import (
    Config,
    ModelConfig,
    field_infos,
    from_dict,
    load_config,
    model_vocab,
    validate,
)
from lmforge.config_checks import (
    BOUNDS,
    MAX_DEVICE_BYTES,
    MAX_PARAMS,
    check_sizes,
    eval_batch_bytes,
    model_params,
    sampling_bytes,
    train_batch_bytes,
)
from lmforge.errors import ConfigError, LmforgeError
from lmforge.recipes import recipe_names

NUMERIC = [info for info in field_infos() if info.type in (int, float)]
INTS = [info.key for info in NUMERIC if info.type is int]
FLOATS = [info.key for info in NUMERIC if info.type is float]


def refused(key: str, value, match: str = "") -> str:
    """The one-line message of loading the default recipe with `key` set to `value`."""
    with pytest.raises(ConfigError) as err:
        load_config("default", {key: value})
    message = str(err.value)
    assert "\n" not in message and key in message, message
    assert match in message, message
    return message


# ---------------------------------------------------------------------------- the table

def test_every_number_has_a_range_and_its_default_is_in_it():
    assert {info.key for info in NUMERIC} == set(BOUNDS)
    for info in NUMERIC:
        assert info.bounds is BOUNDS[info.key]
        config_checks.check_value(info.key, info.default)  # the defaults are valid
    for name in recipe_names():
        cfg = load_config(name)
        check_sizes(cfg.model, vocab=model_vocab(cfg), train_batch=cfg.train.batch_size,
                    eval_batch=cfg.eval.batch_size or cfg.train.batch_size,
                    samples=max(cfg.eval.samples, cfg.eval.samples_at_eval))


@pytest.mark.parametrize("key", INTS)
def test_integers_of_64_bits_and_more_are_refused(key):
    for value in ("9223372036854775808", 2**63, str(2**64), "-9223372036854775809"):
        refused(key, value, "must be")


@pytest.mark.parametrize("key", [k for k in INTS if BOUNDS[k].low >= 0])
def test_negative_counts_are_refused(key):
    message = refused(key, "-1", "got -1")
    assert "or more" in message or "at least" in message


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", 10**400])
def test_floats_must_be_finite(key, value):
    refused(key, value)


@pytest.mark.parametrize("key, value, match", [
    ("eval.batch_size", "-1", "eval.batch_size must be 0 (train.batch_size) or more, got -1"),
    ("model.rope_theta", "0", "model.rope_theta must be in (1, 1e+12], got 0.0"),
    ("model.rope_theta", "-10000", "must be in (1, 1e+12]"),
    ("model.rope_theta", "1", "stop falling"),
    ("clean.near_threshold", "nan", "clean.near_threshold must be a finite number, got nan"),
    ("clean.near_threshold", "0", "clean.near_threshold must be in (0, 1], got 0.0"),
    ("clean.near_threshold", "1.5", "must be in (0, 1]"),
    ("clean.near_num_perm", "0", "clean.near_num_perm must be at least 2, got 0"),
    ("clean.near_num_perm", "-3", "at least 2"),
    ("clean.near_num_perm", "100000", "between 2 and 1,024"),
    ("clean.min_chars", "-1", "clean.min_chars must be 0 or more, got -1"),
    ("clean.max_chars", "-1", "clean.max_chars must be 0 (no bound) or more, got -1"),
    ("clean.max_dup_line_frac", "1.5", "in [0, 1]"),
    ("clean.max_dup_ngram_frac", "-0.1", "in [0, 1]"),
    ("clean.pos_sample", "-3", "clean.pos_sample must be 0 (off) or more, got -3"),
    ("optim.max_nonfinite", "-1", "optim.max_nonfinite must be 0 or more"),
    ("optim.grad_clip", "-1", "turn the gradients around"),
    ("optim.lr", "0", "optim.lr must be above 0"),
    ("optim.min_lr", "-1e-4", "optim.min_lr must be 0 or more"),
    ("train.max_minutes", "-1", "in [0, 1e+07]"),
    ("train.peak_tflops", "-5", "in [0, 1e+06]"),
    ("train.max_steps", "100000000", "between 1 and 99,999,999"),
    ("checkpoint.keep_last", "-1", "checkpoint.keep_last must be 0 (the newest is kept all "
                                   "the same) or more"),
    ("parallel.timeout_s", "0", "in (0, 604800]"),
    ("parallel.timeout_s", "-1", "in (0, 604800]"),
    ("tokenizer.vocab_size", "100000000000", "between 1 and 2,097,152"),
    ("model.vocab_size", "4294967296", "between 0 and 2,097,152"),
    ("data.val_fraction", "1", "the training split would be empty"),
])
def test_values_that_were_taken_silently(key, value, match):
    refused(key, value, match)


def test_a_toml_integer_too_large_for_a_float_is_a_config_error():
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        from_dict({"optim": {"lr": 10**400}})
    with pytest.raises(ConfigError, match="model.n_layer must be between 1 and 1,024"):
        from_dict({"model": {"n_layer": 2**63}})


def test_a_config_built_in_code_is_checked_as_well():
    cfg = Config()
    cfg.eval.batch_size = -1
    with pytest.raises(ConfigError, match="eval.batch_size must be 0"):
        validate(cfg)
    cfg = Config()
    cfg.model.rope_theta = math.nan
    with pytest.raises(ConfigError, match="model.rope_theta must be a finite number"):
        validate(cfg)


# ---------------------------------------------------------------------------- combinations

@pytest.mark.parametrize("overrides, match", [
    ({"optim.lr": "1e-4"}, "optim.min_lr=0.0002 is above optim.lr=0.0001"),
    ({"clean.min_chars": "100", "clean.max_chars": "10"}, "every document would be dropped"),
    ({"clean.dedup_near": "true", "clean.near_num_perm": "8"},
     "raise clean.near_num_perm to 16 or more"),
    ({"clean.dedup_near": "true", "clean.near_threshold": "1"}, "lower clean.near_threshold"),
    ({"train.batch_size": "65536", "train.grad_accum": "65536"}, "global batch of"),
    ({"eval.batches": "16777216", "eval.batch_size": "2"}, "use eval.batches=0"),
])
def test_combinations_no_single_field_checks(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("default", overrides)


def test_min_lr_above_lr_is_fine_with_a_constant_schedule_or_in_a_trained_run(tmp_path):
    from lmforge.rundir import RunDir, read_run_config, write_config

    assert load_config("default", {"optim.lr": "1e-4", "optim.schedule": "constant"})
    trained = load_config("default")
    trained.optim.lr = 1e-5  # as a run trained before min_lr <= lr was checked
    write_config(trained, RunDir(tmp_path))
    assert read_run_config(RunDir(tmp_path)).optim.lr == 1e-5  # still evaluated, sampled


# ---------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("overrides, match", [
    ({"model.n_layer": "1024", "model.n_embd": "65536"}, "make a model of 5.28e+13 parameters"),
    ({"model.n_embd": "65536", "model.vocab_size": "2097152", "model.tie_embeddings": "false",
      "model.n_layer": "16"}, "lmforge builds at most 1e12"),
    ({"train.batch_size": "1048576"}, "one training micro-batch of train.batch_size=1048576"),
    ({"model.block_size": "1048576"}, "lower train.batch_size"),
    ({"eval.batch_size": "1048576"}, "one validation batch of eval.batch_size=1048576"),
    ({"model.block_size": "1048576", "train.batch_size": "1", "eval.samples": "1000"},
     "drawing 1000 samples at once (eval.samples"),
])
def test_sizes_that_cannot_exist_are_refused_by_arithmetic(overrides, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("+", r"\+")):
        load_config("default", overrides)


def test_the_size_check_builds_nothing():
    """A config of 5e13 parameters is refused in a process that never imports torch."""
    code = ("import sys\n"
            "from lmforge.config import load_config\n"
            "from lmforge.errors import ConfigError\n"
            "try:\n"
            "    load_config('default', {'model.n_layer': '1024', 'model.n_embd': '65536'})\n"
            "except ConfigError as err:\n"
            "    print(err)\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "parameters" in proc.stdout


def _shapes():
    for pos, mlp, bias, tie, norm in itertools.product(("learned", "rope"), ("gelu", "swiglu"),
                                                       (False, True), (False, True),
                                                       ("layernorm", "rmsnorm")):
        yield ModelConfig(n_layer=2, n_head=2, n_embd=12, block_size=10, vocab_size=23, pos=pos,
                          mlp=mlp, bias=bias, tie_embeddings=tie, norm=norm, mlp_ratio=2.5)
    for arch, bias, tie, both in itertools.product(("rnn", "lstm", "gru"), (False, True),
                                                   (False, True), (False, True)):
        yield ModelConfig(arch=arch, n_layer=2, n_embd=12, vocab_size=23, bias=bias,
                          tie_embeddings=tie, bidirectional=both)


def test_the_parameter_count_is_the_models_own():
    from lmforge.models import build_model

    for cfg in _shapes():
        model = build_model(cfg)
        assert model_params(cfg) == sum(p.numel() for p in model.parameters()), cfg


def test_the_estimates_grow_with_every_size():
    base = ModelConfig(vocab_size=100)
    for name in ("n_layer", "n_embd", "block_size", "vocab_size"):
        bigger = dataclasses.replace(base, **{name: getattr(base, name) * 2})
        assert model_params(bigger) > model_params(base)
        assert train_batch_bytes(bigger, bigger.vocab_size, 4) > train_batch_bytes(base, 100, 4)
    assert eval_batch_bytes(base, 100, 8) == 2 * eval_batch_bytes(base, 100, 4)
    assert sampling_bytes(base, 100, 8) == 2 * sampling_bytes(base, 100, 4)


# ---------------------------------------------------------------------------- the property

EXTREMES = [0, -1, 1, 2, 2**31, -(2**31), 2**63, -(2**63), 2**64, 10**400, 0.0, -0.0, 0.5, 1.0,
            1.5, 1e308, -1e308, math.nan, math.inf, -math.inf, 5e-324, 1e-320,
            2.2250738585072014e-308, True]
extreme = st.sampled_from(EXTREMES)
a_value = st.one_of(extreme, extreme.map(str), extreme.map(repr),
                    st.just("9223372036854775808"), st.just("1_000"), st.just(" 7 "),
                    st.integers().map(str), st.floats().map(repr), st.integers(), st.floats())
PROPERTY = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _loads_within_limits(overrides: dict) -> None:
    """load_config either refuses `overrides` with one ConfigError line, or gives a config
    whose every number is in range and whose sizes pass the checks, computed, not built."""
    try:
        cfg = load_config("default", overrides)
    except ConfigError as err:
        assert "\n" not in str(err) and any(key in str(err) for key in overrides), str(err)
        return
    for info in NUMERIC:
        section, name = info.key.split(".")
        config_checks.check_value(info.key, getattr(getattr(cfg, section), name))
    vocab = model_vocab(cfg)
    assert model_params(cfg.model, vocab) <= MAX_PARAMS
    assert train_batch_bytes(cfg.model, vocab, cfg.train.batch_size) <= MAX_DEVICE_BYTES
    check_sizes(cfg.model, vocab=vocab, train_batch=cfg.train.batch_size,
                eval_batch=cfg.eval.batch_size or cfg.train.batch_size,
                samples=max(cfg.eval.samples, cfg.eval.samples_at_eval))


@PROPERTY
@given(info=st.sampled_from(NUMERIC), value=a_value)
def test_any_value_of_any_number_loads_or_is_one_config_error(info, value):
    _loads_within_limits({info.key: value})


def _edges(key: str) -> list:
    r = BOUNDS[key]
    high = r.high if math.isfinite(r.high) else 1e300
    return [r.low, high, (r.low + high) / 2] if isinstance(r.low, float) else [r.low, int(high)]


size_keys = ["model.n_layer", "model.n_head", "model.n_embd", "model.block_size",
             "model.vocab_size", "model.mlp_ratio", "train.batch_size", "train.grad_accum",
             "eval.batch_size", "eval.batches", "eval.samples", "tokenizer.vocab_size"]
edge = st.sampled_from(size_keys).flatmap(
    lambda key: st.tuples(st.just(key), st.sampled_from(_edges(key)).map(str)))


@PROPERTY
@given(overrides=st.lists(edge, min_size=2, max_size=5).map(dict))
def test_sizes_at_their_limits_together_load_or_are_one_config_error(overrides):
    _loads_within_limits(overrides)


# ---------------------------------------------------------------------------- the CLI

def run_cli(capsys, *argv) -> str:
    """`lmforge ARGV` in this process: it must fail with exit 2 and one line; that line."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_prepare_refuses_a_vocabulary_the_tokenizer_trainer_cannot_reserve(tmp_path, capsys):
    err = run_cli(capsys, "prepare", "--data", str(tmp_path / "nothing"), "--out",
                  str(tmp_path / "out"), "--vocab-size", "100000000000")
    assert err.startswith("lmforge prepare: error: --vocab-size must be between 1 and "
                          "2,097,152, got 100000000000"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, match", [
    (["--batches", "100000000000"], "--batches 100000000000 of --batch-size 16 make"),
    (["--batch-size", "1000000000"], "--batch-size must be at most 1,048,576"),
    (["--batches", "1048576", "--batch-size", "1024"], "use --batches 0"),
])
def test_eval_bounds_its_batches_before_reading_the_run(tmp_path, capsys, args, match):
    err = run_cli(capsys, "eval", str(tmp_path / "no-run"), *args)
    assert err.startswith("lmforge eval: error: ") and match in err, err


def test_eval_checks_one_batch_against_free_memory_before_building_the_model(tmp_path,
                                                                             monkeypatch):
    from lmforge.rundir import RunDir, write_config
    from lmforge.runs import evaluation

    cfg = load_config("default", {"model.vocab_size": "50000", "model.block_size": "1024"})
    write_config(cfg, RunDir(tmp_path))  # a run's config, and no checkpoint at all
    monkeypatch.setattr(evaluation, "available_memory", lambda device: 2 * 10**9)
    with pytest.raises(LmforgeError, match=r"--batch-size 4096 needs about .* and "
                                                     r"2 GB is free; lower --batch-size \(about "
                                                     r"\d+ fit\)"):
        evaluation.evaluate_run(tmp_path, batch_size=4096)
