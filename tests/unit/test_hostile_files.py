"""Files that lmforge reads, damaged at random: a recipe, a run's config.toml and its
checkpoint pointers, pickled tensors (pytorch_model.bin, trainer.pt), a tokenizer directory;
and data files whose names are too long or that may not be read. Each gives its result or
one LmforgeError of one line; never a traceback, and never code run from a file."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.checkpoint import TRAINER_FILE, read_trainer_state
from lmforge.config import Config, load_config
from lmforge.data.sources import iter_documents
from lmforge.data.tokenizer import load_tokenizer, train_tokenizer
from lmforge.errors import ConfigError, DataError, LmforgeError
from lmforge.interop.hf_weights import load_bin
from lmforge.recipes import read_toml, recipe_path
from lmforge.rundir import RunDir, read_run_config, write_config

FEW = settings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RECIPES = ["default", "shakespeare_char", "gpt2_124m", "lstm_char"]
# (position, how many bytes to replace, by what): near the start, or anywhere
edits = st.lists(st.tuples(st.integers(0, 200) | st.integers(0, 5000), st.integers(0, 16),
                           st.binary(max_size=6) | st.sampled_from([b"\xff", b"\xfe\xff", b"[",
                                                                    b"=", b'"', b"\n[x]\n"])),
                 min_size=1, max_size=4)


def mutated(data: bytes, changes: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for pos, length, new in changes:
        pos %= len(out) + 1
        out[pos:pos + length] = new
    return bytes(out)


def one_line(err: BaseException) -> None:
    assert isinstance(err, LmforgeError) and "\n" not in str(err), repr(err)


# ---------------------------------------------------------------------------- recipes and runs

@pytest.mark.parametrize("content, message", [
    (b"[model]\nn_layer = 2 # caf\xe9\n", r"is not valid UTF-8 \(byte 25 is not text\); fix"),
    (b"\xff\xfe[\x00m\x00", r"is not valid UTF-8 \(byte 0 "),
    (b"[model]\nn_layer = " + b"9" * 5000, r"is not valid TOML \(Exceeds the limit"),
    (b"x = " + b"[" * 5000, r"is not valid TOML \(nested too deeply\)"),
])
def test_a_recipe_that_is_not_utf8_or_toml_is_one_line(tmp_path, content, message):
    path = tmp_path / "recipe.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(str(path))
    one_line(err.value)


@FEW
@given(recipe=st.sampled_from(RECIPES), changes=edits)
def test_a_damaged_recipe_gives_a_config_or_one_line(tmp_path, recipe, changes):
    path = tmp_path / "recipe.toml"
    path.write_bytes(mutated(recipe_path(recipe).read_bytes(), changes))
    try:
        load_config(str(path))
    except LmforgeError as err:
        one_line(err)


@FEW
@given(changes=edits)
def test_a_damaged_run_config_gives_a_config_or_one_line(tmp_path, changes):
    run = RunDir(tmp_path / "run")
    shutil.rmtree(run.path, ignore_errors=True)
    write_config(Config(), run)
    run.config.write_bytes(mutated(run.config.read_bytes(), changes))
    try:
        read_run_config(run)
    except LmforgeError as err:
        one_line(err)


def test_a_recipe_path_too_long_is_one_line(tmp_path):
    for name in ("r" * 300, str(tmp_path / ("r" * 300) / "x.toml")):
        with pytest.raises(ConfigError, match=r"cannot read the config file .*\(File name too "
                                              r"long\); give a TOML file or one of: default") as err:
            load_config(name)
        one_line(err.value)


def test_read_toml_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\x80")
    with pytest.raises(ConfigError, match=r"config\.toml is not valid UTF-8 .*; start again"):
        read_toml(path, fix="start again")
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.toml \(No such file"):
        read_toml(tmp_path / "missing.toml")


@given(pointer=st.binary(max_size=40))
def test_a_damaged_checkpoint_pointer_names_no_checkpoint(tmp_path_factory, pointer):
    run = RunDir(tmp_path_factory.mktemp("run"))
    run.checkpoints.mkdir()
    (run.checkpoints / "latest").write_bytes(pointer)
    assert isinstance(run.pointer("latest"), str)  # a name, found among the checkpoints or not


# ---------------------------------------------------------------------------- pickled tensors

@pytest.fixture(scope="module")
def pickles() -> dict[str, bytes]:
    """A small state_dict saved by torch.save, in its zip format and its legacy pickle."""
    state = {"wte.weight": torch.zeros(4, 3), "step": torch.arange(10)}
    out = {}
    for fmt in ("zip", "legacy"):
        buffer = io.BytesIO()
        torch.save(state, buffer, _use_new_zipfile_serialization=fmt == "zip")
        out[fmt] = buffer.getvalue()
    return out


@FEW
@given(fmt=st.sampled_from(["zip", "legacy"]), changes=edits)
def test_a_damaged_pytorch_model_bin_gives_tensors_or_one_line(tmp_path, pickles, fmt, changes):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(mutated(pickles[fmt], changes))
    try:
        load_bin(path)
    except LmforgeError as err:  # the unpickler's IndexError, struct.error, ... included
        one_line(err)


@FEW
@given(fmt=st.sampled_from(["zip", "legacy"]), changes=edits)
def test_a_damaged_trainer_state_gives_a_state_or_one_line(tmp_path, pickles, fmt, changes):
    (tmp_path / TRAINER_FILE).write_bytes(mutated(pickles[fmt], changes))
    try:
        read_trainer_state(tmp_path)
    except LmforgeError as err:
        one_line(err)


# ---------------------------------------------------------------------------- tokenizers

@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A saved tokenizer of each kind."""
    texts = ["hello world, hello tokens. " * 40]
    out = {}
    for kind in ("bpe", "char", "byte"):
        out[kind] = tmp_path_factory.mktemp(kind)
        train_tokenizer(kind, texts, vocab_size=280).save(out[kind])
    return out


json_value = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=6)
                          | st.integers(-(2**40), 2**40),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@FEW
@given(kind=st.sampled_from(["bpe", "char", "byte"]), data=st.data())
def test_any_value_in_tokenizer_meta_gives_a_tokenizer_or_one_line(tmp_path, saved, kind, data):
    directory = tmp_path / "tok"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(saved[kind], directory)
    meta = json.loads((directory / "tokenizer_meta.json").read_text())
    key = data.draw(st.sampled_from([*sorted(meta), "segment_chinese"]))
    meta[key] = data.draw(json_value)
    (directory / "tokenizer_meta.json").write_text(json.dumps(meta))
    try:
        tok = load_tokenizer(directory)
    except LmforgeError as err:
        one_line(err)
    else:
        assert isinstance(tok.decode(range(-1, tok.vocab_size + 1)), str)  # never raises


@FEW
@given(kind=st.sampled_from(["bpe", "char"]), name=st.sampled_from(["tokenizer_meta.json",
                                                                    "tokenizer.json"]),
       changes=edits)
def test_damaged_tokenizer_files_give_a_tokenizer_or_one_line(tmp_path, saved, kind, name, changes):
    directory = tmp_path / "tok"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(saved[kind], directory)
    path = directory / name
    if path.exists():
        path.write_bytes(mutated(path.read_bytes(), changes))
    try:
        load_tokenizer(directory)
    except LmforgeError as err:
        one_line(err)


def test_a_char_tokenizer_without_its_characters_is_one_line(tmp_path, saved):
    shutil.copytree(saved["char"], tmp_path / "tok")
    meta = tmp_path / "tok" / "tokenizer_meta.json"
    for chars in (None, "abc", [1, 2], {"a": 1}):
        meta.write_text(json.dumps({"kind": "char", "chars": chars}))
        with pytest.raises(DataError, match=r"'chars' are missing or damaged; prepare the dataset"):
            load_tokenizer(tmp_path / "tok")
    meta.write_text(json.dumps({"kind": ["char\nx"]}))
    with pytest.raises(DataError, match=r"unknown tokenizer kind \['char\\nx'\]") as err:
        load_tokenizer(tmp_path / "tok")
    one_line(err.value)


# ---------------------------------------------------------------------------- data files

def one_line_data_error(spec: str) -> str:
    with pytest.raises(DataError) as err:
        list(iter_documents(spec))
    one_line(err.value)
    return str(err.value)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_path_component_too_long_is_one_line(tmp_path):
    long = "a" * 300
    for spec in (tmp_path / f"{long}.txt", tmp_path / long / "b.txt", tmp_path / long / "*.txt"):
        if "*" in str(spec):
            assert "no files match the glob" in one_line_data_error(str(spec))
        else:
            assert "(File name too long); shorten the name" in one_line_data_error(str(spec))
    assert "File name too long" in one_line_data_error(str(tmp_path / long))


NOBODY = 65534


def as_nobody(fn) -> str:
    """fn() in a forked child that runs as nobody: 'ok', or the DataError it raised. Skips
    where the check cannot fail: a user whom chmod does not stop (root with its capabilities
    and no way to give them up)."""
    probe = tempfile.NamedTemporaryFile(dir=tempfile.gettempdir(), delete=False)
    os.chmod(probe.name, 0)
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                open(probe.name).close()
                result = "skip: this user reads a file of mode 000"
            except PermissionError:
                fn()
                result = "ok"
        except DataError as err:
            result = f"DataError: {err}"
        except BaseException as err:  # noqa: BLE001 - reported to the parent, which fails
            result = f"{type(err).__name__}: {err}"
        os.write(write_end, result.encode("utf-8", "replace"))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read, "rb") as fh:
        result = fh.read().decode()
    os.waitpid(pid, 0)
    os.unlink(probe.name)
    if result.startswith("skip: "):
        pytest.skip(result[6:])
    return result


@pytest.fixture
def shared_dir():
    """A directory every user may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp())
    os.chmod(path, 0o755)
    yield path
    for p in path.rglob("*"):
        os.chmod(p, 0o755)
    shutil.rmtree(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to drop privileges")
def test_an_unreadable_file_or_directory_is_one_line(shared_dir):
    corpus = shared_dir / "corpus"
    write(corpus / "a.txt", b"readable")
    write(corpus / "b.txt", b"not readable")
    write(corpus / "sub" / "c.txt", b"in a closed directory")
    os.chmod(corpus / "b.txt", 0)
    assert as_nobody(lambda: list(iter_documents(str(corpus / "a.txt")))) == "ok"
    for spec in (corpus / "b.txt", corpus):
        result = as_nobody(lambda spec=spec: list(iter_documents(str(spec))))
        assert re.fullmatch(r"DataError: cannot read \S*b\.txt \(Permission denied\); make it "
                            r"readable, or move it out of the data", result), result
    os.chmod(corpus / "b.txt", 0o644)
    os.chmod(corpus / "sub", 0)
    result = as_nobody(lambda: list(iter_documents(str(corpus))))
    assert re.fullmatch(r"DataError: cannot read \S*sub \(Permission denied\); .*", result), result


def test_a_run_dir_that_is_a_file_or_lies_under_one_is_one_line(tmp_path):
    from lmforge.rundir import new_run_dir

    (tmp_path / "afile").write_text("a user's file")
    for target, where in (("afile", "is a file"), ("afile/sub", "lies under the file")):
        cfg = load_config("default", {"run.dir": str(tmp_path / target)})
        with pytest.raises(ConfigError, match=f"run.dir .*{target} {where}"):
            new_run_dir(cfg, recipe_name="default")
    assert (tmp_path / "afile").read_text() == "a user's file"


@pytest.mark.parametrize("spec, message", [("hf:", "hf: needs a dataset's name"),
                                           ("hf:/", "hf: needs a dataset's name"),
                                           ("nltk:", "nltk: needs a corpus's name")])
def test_a_remote_source_without_a_name_is_one_line(spec, message):
    with pytest.raises(DataError, match=message):
        list(iter_documents(spec))
