"""--init-from's config rules: the architecture comes from the directory, the run keeps its
dropout and may shorten its context, and a command-line shape that disagrees is refused;
and a damaged or hostile directory (config.json, weights, index, tokenizer, a pickle that
would run code) is refused in one line, before anything is allocated or run."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import Config, ModelConfig
from lmforge.data.tokenizer import train_tokenizer
from lmforge.errors import CheckpointError, ConfigError, DataError, LmforgeError
from lmforge.interop.hf_export import export_hf, export_safetensors
from lmforge.interop.hf_import import import_any, read_model_config
from lmforge.interop.hf_tokenizer import import_hf_tokenizer
from lmforge.interop.init_from import load_into, load_state, resolve_config
from lmforge.models import build_model
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


# ---------------------------------------------------------------------------- hostile directories

FEW = settings(max_examples=40, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def edit_config(directory, **changes):
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def refused(directory, error=LmforgeError, match: str = "") -> str:
    """The one-line error of resolving, then loading, `directory` as --init-from."""
    with pytest.raises(error, match=match) as err:
        cfg = config(directory)
        resolve_config(cfg, explicit=set())
        with torch.device("meta"):
            model = build_model(cfg.model)
        model.to_empty(device="cpu")
        load_into(model, load_state(cfg))
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("hf, safetensors, message", [
    ({"n_layer": "2"}, {"n_layer": "2"}, "n_layer"),
    ({"n_embd": 32.5}, {"n_embd": 32.5}, "n_embd"),
    ({"n_layer": 0}, {"n_layer": 0}, "n_layer"),
    ({"n_head": -2}, {"n_head": -2}, "n_head"),
    ({"vocab_size": None, "n_positions": -1}, {"block_size": -1}, "n_positions|block_size"),
    ({"n_layer": 10**12}, {"n_layer": 10**12}, "config.json: .*n_layer.*1000000000000"),
    ({"vocab_size": 10**12}, {"vocab_size": 10**12}, "config.json: .*vocab_size.*1000000000000"),
    ({"n_layer": 10**6}, {"n_layer": 10**6}, "n_layer"),
    ({"vocab_size": 10**8}, {"vocab_size": 10**8}, "vocab_size|weight files"),
    ({"n_embd": 4096}, {"n_embd": 4096}, r"at least 3\d,\d{3},\d{3} weights, more than its "
                                         r"weight files \(\d[\d,]* bytes\)"),
    ({"n_head": 3}, {"n_head": 3}, "not divisible"),
    ({"layer_norm_epsilon": "x"}, {"dropout": 1.5}, "layer_norm_epsilon|dropout"),
    ({"tie_word_embeddings": "yes"}, {"tie_embeddings": "yes"}, "tie_"),
    ({"model_type": ["gpt2"]}, {"arch": {}}, "model_type|model.arch"),
])
def test_damaged_config_json_is_refused_before_allocating(directory, hf, safetensors, message):
    edit_config(directory, **(hf if (directory / "format").read_text() == "hf" else safetensors))
    start = time.perf_counter()
    refused(directory, match=message)
    assert time.perf_counter() - start < 5  # arithmetic, not a model of 10**12 layers


def test_config_json_that_is_not_an_object(directory):
    (directory / "config.json").write_text("[1, 2]")
    refused(directory, ConfigError, "holds a JSON list, not an object")
    (directory / "config.json").write_text('{"n_layer": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(directory, ConfigError, "not valid JSON")
    (directory / "config.json").write_text('{"n_layer": ' + "9" * 5000 + "}")
    refused(directory, ConfigError, "not valid JSON")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header", "list"])
def test_corrupt_model_safetensors_is_one_line(directory, damage):
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2] + random.Random(1).randbytes(8),
                         "garbage": random.Random(2).randbytes(len(data)),
                         "header": (10**12).to_bytes(8, "little") + data[8:],
                         "list": (2).to_bytes(8, "little") + b"[]" + data[10:]}[damage])
    refused(directory, CheckpointError, "not a readable safetensors file")


@pytest.fixture
def sharded(tmp_path):
    """An HF GPT-2 directory whose weights are one shard named by an index."""
    export_hf(GPT(SOURCE), SOURCE, None, tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": "model-00001-of-00001.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    return tmp_path


@pytest.mark.parametrize("weight_map, message", [
    (None, "has no weight_map"),
    ([], "has no weight_map"),
    ({"a": "../../etc/passwd"}, r"names the shard '../../etc/passwd', outside"),
    ({"a": "/etc/passwd"}, r"names the shard '/etc/passwd', outside"),
    ({"a": "sub/../../x"}, "outside"),
    ({"a": 5}, "not file names"),
    ({"a": "model-00002-of-00002.safetensors"}, "lacks the shard model-00002"),
])
def test_an_index_pointing_outside_the_directory_is_refused_up_front(sharded, weight_map, message):
    resolve_config(config(sharded), explicit=set())  # the real index works
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"] = weight_map
    if weight_map is None:
        del index["weight_map"]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(sharded, CheckpointError, message)


class Hostile:
    """A pickle that runs code when loaded without weights_only: it would create `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_not_loaded(tmp_path):
    model = tmp_path / "model"
    export_hf(GPT(SOURCE), SOURCE, None, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"transformer.wte.weight": torch.zeros(SOURCE.vocab_size, SOURCE.n_embd),
                "padding": torch.zeros(100_000), "x": Hostile(marker)}, model / "pytorch_model.bin")
    message = refused(model, CheckpointError, r"may be hostile, and was not loaded")
    assert "pytorch_model.bin" in message and not marker.exists()
    torch.save([torch.zeros(100_000)], model / "pytorch_model.bin")  # tensors, not a state_dict
    refused(model, CheckpointError, "is not a state_dict")
    (model / "pytorch_model.bin").write_bytes(random.Random(0).randbytes(400_000))
    refused(model, CheckpointError, "damaged or may be hostile")


@pytest.fixture
def with_tokenizer(tmp_path):
    tok = train_tokenizer("bpe", ["hello world, " * 50], vocab_size=300)
    export_hf(GPT(SOURCE), SOURCE, tok, tmp_path)
    (tmp_path / "tokenizer_meta.json").unlink()  # as an HF directory: tokenizer.json alone
    return tmp_path


def test_a_corrupt_tokenizer_json_is_one_line(with_tokenizer):
    assert import_hf_tokenizer(with_tokenizer).vocab_size > 257
    path = with_tokenizer / "tokenizer.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(DataError, match="tokenizer in .* is damaged") as err:
        import_hf_tokenizer(with_tokenizer)
    assert "\n" not in str(err.value)
    (with_tokenizer / "tokenizer_config.json").write_text("[not json")
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    with pytest.raises(DataError, match="tokenizer_config.json is not valid JSON"):
        import_hf_tokenizer(with_tokenizer)


def mutated(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """`data` with each (position, length, bytes) replacing what was there."""
    out = bytearray(data)
    for pos, length, new in edits:
        pos %= len(out) + 1
        out[pos:pos + length] = new
    return bytes(out)


# positions near the start hit the headers (safetensors' JSON, the tokenizer's model type)
edits = st.lists(st.tuples(st.integers(0, 400) | st.integers(0, 10**6), st.integers(0, 64),
                           st.binary(max_size=16) | st.sampled_from([b'"', b"[", b"{", b"9" * 20])),
                 min_size=1, max_size=4)
json_value = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=6)
                          | st.integers(-(2**70), 2**70),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@FEW
@given(fmt=st.sampled_from(["hf", "safetensors"]), data=st.data())
def test_any_value_in_config_json_gives_a_model_or_one_line(tmp_path_factory, fmt, data):
    directory = tmp_path_factory.mktemp("m")
    (export_hf if fmt == "hf" else export_safetensors)(GPT(SOURCE), SOURCE, None, directory)
    raw = json.loads((directory / "config.json").read_text())
    key = data.draw(st.sampled_from(sorted(raw) + ["extra"]))
    edit_config(directory, **{key: data.draw(json_value)})
    try:
        import_any(directory)
        read_model_config(directory)
    except LmforgeError as err:
        assert "\n" not in str(err)


@FEW
@given(fmt=st.sampled_from(["hf", "safetensors"]), damage=edits)
def test_any_damage_to_the_weights_gives_a_model_or_one_line(tmp_path_factory, fmt, damage):
    directory = tmp_path_factory.mktemp("m")
    (export_hf if fmt == "hf" else export_safetensors)(GPT(SOURCE), SOURCE, None, directory)
    weights = directory / "model.safetensors"
    weights.write_bytes(mutated(weights.read_bytes(), damage))
    try:
        import_any(directory)
    except LmforgeError as err:
        assert "\n" not in str(err)


@FEW
@given(damage=edits)
def test_any_damage_to_tokenizer_json_gives_a_tokenizer_or_one_line(tmp_path_factory, damage):
    directory = tmp_path_factory.mktemp("t")
    (directory / "tokenizer.json").write_bytes(mutated(TOKENIZER_JSON, damage))
    try:
        import_hf_tokenizer(directory)
    except LmforgeError as err:
        assert "\n" not in str(err)


TOKENIZER_JSON = train_tokenizer("bpe", ["hello world, " * 50], vocab_size=270)._hf.to_str().encode()
