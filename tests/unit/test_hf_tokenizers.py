"""A Hugging Face model's own tokenizer ("hf"), in the styles of SmolLM2, Llama 3, Llama 2 /
TinyLlama and Qwen2 (tests/hf_styles.py builds them with `tokenizers`): the same ids as
`transformers` gives, saved and exported unchanged, prepared into datasets with a stable
digest, chosen by `train --init-from`, and damaged or hostile files refused in one line."""

from __future__ import annotations

import json
import os
import re

import pytest
from hf_styles import DOCUMENTS, STYLES, corpus, expected_specials, write_model_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import Config, ModelConfig, TokenizerConfig
from lmforge.data import hf_files, shards
from lmforge.data.prepare import ensure_dataset, prepare
from lmforge.data.tokenizer import (
    HfTokenizer,
    find_tokenizer,
    load_tokenizer,
    tokenizer_at,
    tokenizer_digest,
)
from lmforge.errors import DataError
from lmforge.interop.hf_export import export_hf
from lmforge.interop.hf_tokenizer import import_hf_tokenizer, write_hf_tokenizer
from lmforge.interop.init_from import check_tokenizer
from lmforge.models.gpt import GPT


@pytest.fixture(params=STYLES)
def model_dir(request, tmp_path):
    return write_model_dir(request.param, tmp_path / request.param)


def style(directory) -> str:
    return directory.name


def quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------- ids

def test_the_ids_are_transformers_ids(transformers, model_dir):
    tok = tokenizer_at(find_tokenizer(model_dir))
    auto = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert tok.kind == "hf" and tok.vocab_size == len(auto)
    for doc in [*DOCUMENTS, corpus()[:3000]]:
        ids = tok.encode(doc)
        assert ids == auto.encode(doc, add_special_tokens=False), doc[:40]
        # decoding skips specials and does not tidy spaces (Llama 3 config asks transformers to)
        shown = auto.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert tok.decode(ids) == shown
        if not doc[0].isspace():  # Llama 2's decoder drops a text's first space, as HF's does
            assert tok.decode(ids) == doc
    batch = tok.encode_batch(DOCUMENTS)
    assert batch == [tok.encode(d) for d in DOCUMENTS]


def test_eos_and_bos_are_the_models(transformers, model_dir):
    tok = HfTokenizer.from_model_dir(model_dir)
    auto = transformers.AutoTokenizer.from_pretrained(model_dir)
    eos, bos = expected_specials(style(model_dir))
    assert tok.eot_id == auto.convert_tokens_to_ids(eos) == auto.eos_token_id
    assert tok.token(tok.eot_id) == eos
    if bos is None:  # no bos put before a text: generation starts from eos, as ever
        assert tok.bos_id is None and tok.encode_prompt("") == [tok.eot_id]
        assert auto.encode("Hello") == tok.encode("Hello")
    else:
        assert tok.bos_id == auto.bos_token_id == auto.convert_tokens_to_ids(bos)
        assert tok.encode_prompt("") == [tok.bos_id]
        assert tok.encode_prompt("Hello") == auto.encode("Hello") == [tok.bos_id, *tok.encode("Hello")]


def test_special_token_text_in_a_document_is_text(transformers, model_dir):
    tok = HfTokenizer.from_model_dir(model_dir)
    auto = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = "a <|endoftext|> <s> </s> <|im_end|> <|begin_of_text|> b"
    ids = tok.encode(text)
    assert tok.eot_id not in ids and tok.bos_id not in ids
    assert ids == auto(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_a_continuation_keeps_its_first_space(tmp_path):
    tok = HfTokenizer.from_model_dir(write_model_dir("llama2", tmp_path))
    prompt, more = tok.encode_prompt("Hello"), tok.encode(" world")  # "▁world": its space
    assert tok.decode(more) == "world"  # alone, Llama 2's decoder strips the space
    assert tok.decode_after(prompt, more) == " world"


# ---------------------------------------------------------------------------- save, export

def test_saving_copies_the_files_unchanged(model_dir, tmp_path):
    (model_dir / "config.json").write_text(json.dumps({"eos_token_id": 0}))
    (model_dir / "model.safetensors").write_bytes(b"weights")
    tok = HfTokenizer.from_model_dir(model_dir)
    tok.save(tmp_path / "saved")
    names = sorted(p.name for p in (tmp_path / "saved").iterdir())
    originals = sorted(n for n in hf_files.COPIED if (model_dir / n).is_file())
    assert names == sorted([*originals, "tokenizer_meta.json"])  # not config.json, nor weights
    for name in originals:
        assert (tmp_path / "saved" / name).read_bytes() == (model_dir / name).read_bytes()
    again = load_tokenizer(tmp_path / "saved")
    assert (again.kind, again.vocab_size, again.eot_id, again.bos_id) == \
        (tok.kind, tok.vocab_size, tok.eot_id, tok.bos_id)
    assert again.encode(DOCUMENTS[3]) == tok.encode(DOCUMENTS[3])
    assert tok.digest() == tokenizer_digest(tmp_path / "saved") == again.digest()
    again.save(tmp_path / "twice")
    assert tokenizer_digest(tmp_path / "twice") == tokenizer_digest(tmp_path / "saved")


def test_the_export_loads_in_autotokenizer_as_the_original(transformers, model_dir, tmp_path):
    tok = HfTokenizer.from_model_dir(model_dir)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tok.vocab_size + 40,
                      norm="rmsnorm", mlp="swiglu", pos="rope")  # an embedding padded past it
    note = export_hf(GPT(cfg), cfg, tok, tmp_path / "out")
    assert "as it came" in note
    original = transformers.AutoTokenizer.from_pretrained(model_dir)
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert type(exported) is type(original) and len(exported) == len(original)
    assert (exported.bos_token, exported.eos_token, exported.chat_template) == \
        (original.bos_token, original.eos_token, original.chat_template)
    for doc in DOCUMENTS:
        assert exported.encode(doc) == original.encode(doc)
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    bos = tok.bos_id if tok.bos_id is not None else tok.eot_id
    assert (gen["eos_token_id"], gen["bos_token_id"]) == (tok.eot_id, bos)
    back = import_hf_tokenizer(tmp_path / "out")  # lmforge's meta beside the originals
    assert back.digest() == tok.digest()


def test_other_kinds_export_as_before(tmp_path):
    from lmforge.data.tokenizer import train_tokenizer

    tok = train_tokenizer("bpe", [corpus()[:20_000]], vocab_size=300)
    note = write_hf_tokenizer(tok, tmp_path, model_max_length=16)
    assert note == "bpe tokenizer as tokenizer.json, eos = bos = <|endoftext|>"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


# ---------------------------------------------------------------------------- prepare, train

def write_corpus(directory):
    """Eight documents of Shakespeare (split by document, each followed by eos)."""
    directory.mkdir()
    text = corpus()[:24_000]
    for i in range(8):
        (directory / f"doc{i}.txt").write_text(text[i * 3000:(i + 1) * 3000].strip() + "\n")
    return str(directory / "*.txt")


def test_prepare_with_a_model_directory(model_dir, tmp_path):
    (model_dir / "model.safetensors").write_bytes(b"weights")
    data = write_corpus(tmp_path / "text")
    manifest = prepare([data], tmp_path / "ds", tokenizer_from=model_dir, log=quiet, progress=False)
    tok = HfTokenizer.from_model_dir(model_dir)
    assert manifest["tokenizer"] == {"kind": "hf", "vocab_size": tok.vocab_size,
                                     "eot_id": tok.eot_id, "dir": "tokenizer"}
    assert manifest["settings"]["tokenizer"] == "hf"
    assert manifest["settings"]["tokenizer_sha256"] == tok.digest()
    assert not (tmp_path / "ds" / "tokenizer" / "model.safetensors").exists()
    # bits per byte: the bytes are the text's, whatever the tokens
    texts = [p.read_text() for p in sorted((tmp_path / "text").iterdir())]
    splits = manifest["splits"]
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == sum(len(t.encode()) for t in texts)
    tokens = sum(len(tok.encode(t)) + 1 for t in texts)  # each document, then eos
    assert splits["train"]["tokens"] + splits["val"]["tokens"] == tokens
    # The same tokenizer given as the dataset, or again as the directory: the same settings
    lines: list[str] = []
    prepare([data], tmp_path / "ds", tokenizer_from=model_dir, log=lines.append, progress=False)
    assert "reusing prepared dataset" in lines[-1]
    other = prepare([data], tmp_path / "ds2", tokenizer_from=tmp_path / "ds", log=quiet,
                    progress=False)
    assert other["settings"] == manifest["settings"]


def init_config(tmp_path, model_dir, data: str) -> Config:
    cfg = Config()
    cfg.run.init_from = str(model_dir)
    cfg.data.path = str(tmp_path / "data")
    cfg.data.source = data
    cfg.train.progress = False
    return cfg


def test_init_from_prepares_with_the_models_tokenizer(tmp_path):
    model_dir = write_model_dir("llama3", tmp_path / "llama3")
    cfg = init_config(tmp_path, model_dir, write_corpus(tmp_path / "text"))
    lines: list[str] = []
    ensure_dataset(cfg, log=lines.append)
    assert lines[0] == (f"preparing {cfg.data.source} into {cfg.data.path} with the tokenizer "
                        f"of {model_dir} (done once, reused afterwards)")
    manifest = shards.read_manifest(tmp_path / "data")
    tok = HfTokenizer.from_model_dir(model_dir)
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["tokenizer"]["eot_id"] == tok.eot_id
    cfg.model.vocab_size = tok.vocab_size + 64  # padded, as real embeddings often are
    assert check_tokenizer(cfg) == ""  # the model's own tokenizer: no note


def test_a_dataset_with_another_tokenizer_keeps_the_note(tmp_path):
    model_dir = write_model_dir("llama3", tmp_path / "llama3")
    data = write_corpus(tmp_path / "text")
    cfg = init_config(tmp_path, model_dir, data)
    prepare([data], tmp_path / "data", tokenizer=TokenizerConfig("bpe", 300), log=quiet,
            progress=False)
    lines: list[str] = []
    ensure_dataset(cfg, log=lines.append)  # there already: kept, not prepared again
    assert lines == []
    cfg.model.vocab_size = 700
    assert check_tokenizer(cfg).startswith("note: the dataset's bpe tokenizer (300 tokens) is "
                                           "not the one")
    # the same model's tokenizer in another style is another tokenizer
    prepare([data], tmp_path / "qwen-data", tokenizer_from=write_model_dir("qwen2", tmp_path / "q"),
            log=quiet, progress=False)
    cfg.data.path = str(tmp_path / "qwen-data")
    assert check_tokenizer(cfg).startswith("note: the dataset's hf tokenizer")


def test_init_from_without_a_tokenizer_trains_the_recipes(tmp_path):
    (tmp_path / "bare").mkdir()
    cfg = init_config(tmp_path, tmp_path / "bare", write_corpus(tmp_path / "text"))
    cfg.tokenizer.kind = "char"
    lines: list[str] = []
    ensure_dataset(cfg, log=lines.append)
    assert "with the tokenizer of" not in lines[0]
    assert shards.read_manifest(tmp_path / "data")["tokenizer"]["kind"] == "char"


# ---------------------------------------------------------------------------- hostile files

def damaged(directory, name: str, data: bytes | str) -> str:
    (directory / name).write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(DataError) as err:
        HfTokenizer.from_model_dir(directory)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("name, data, message", [
    ("tokenizer_config.json", "[" * 100_000, "tokenizer_config.json is not valid JSON"),
    ("tokenizer_config.json", b'{"eos_token": "\xff\xfe\xfa"}', "is not valid JSON .damaged, "
                                                                   "truncated or not UTF-8.;"),
    ("tokenizer_config.json", "[1, 2]", "holds a JSON list, not an object"),
    ("tokenizer_config.json", '{"eos_token": 7}', "eos_token is a JSON int, not a token"),
    ("tokenizer_config.json", '{"eos_token": {"content": ["x"]}}', "eos_token is a JSON list"),
    ("tokenizer_config.json", '{"eos_token": "<|nowhere|>"}', "'<|nowhere|>' is not in "
                                                               "tokenizer.json's vocabulary"),
    ("tokenizer_config.json", '{"eos_token_id": 1, "x": ' + "9" * 5000 + "}", "not valid JSON"),
    ("special_tokens_map.json", "{", "special_tokens_map.json is not valid JSON"),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": ', "tokenizer in .* is damaged"),
    ("tokenizer.json", b"\xff" * 100, "tokenizer in .* is damaged"),
    ("tokenizer.json", "[" * 100_000, "tokenizer in .* is damaged"),
])
def test_damaged_files_are_one_line(tmp_path, name, data, message):
    directory = write_model_dir("llama3", tmp_path / "m")
    assert re.search(message, damaged(directory, name, data))


json_value = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats()
                          | st.sampled_from(["", "</s>", "<s>", "<|im_end|>", "<unk>", "x"]),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(["content", "__type", "x"]), inner,
                                            max_size=3), max_leaves=6)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=st.dictionaries(st.sampled_from(["eos_token", "bos_token", "add_bos_token",
                                               "eos_token_id", "chat_template"]), json_value),
       model=st.dictionaries(st.sampled_from(["eos_token_id", "bos_token_id"]), json_value))
def test_any_special_token_fields_give_a_tokenizer_or_one_line(tmp_path_factory, fields, model):
    directory = write_model_dir("llama2", tmp_path_factory.mktemp("m"))
    (directory / "tokenizer_config.json").write_text(json.dumps(fields))
    (directory / "special_tokens_map.json").write_text("{}")
    (directory / "config.json").write_text(json.dumps(model))
    try:
        tok = HfTokenizer.from_model_dir(directory)
    except DataError as err:
        assert "\n" not in str(err)
        return
    assert 0 <= tok.eot_id < tok.vocab_size
    assert tok.bos_id is None or 0 <= tok.bos_id < tok.vocab_size


def test_eos_from_the_model_config_or_none(tmp_path):
    directory = write_model_dir("qwen2", tmp_path / "m")
    (directory / "tokenizer_config.json").write_text("{}")
    (directory / "special_tokens_map.json").write_text("{}")
    tok = HfTokenizer.from_model_dir(directory)  # no eos named: <|endoftext|> in the vocabulary
    assert tok.token(tok.eot_id) == "<|endoftext|>"
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [602, 601]}))
    assert HfTokenizer.from_model_dir(directory).eot_id == 602  # Llama 3 Instruct's list: first
    message = damaged(directory, "generation_config.json", json.dumps({"eos_token_id": 10**9}))
    assert "eos_token_id is 1000000000, not a token id of the tokenizer's 603" in message
    message = damaged(directory, "generation_config.json", json.dumps({"eos_token_id": True}))
    assert "eos_token_id is True" in message


def test_add_bos_token_without_a_bos_is_refused(tmp_path):
    directory = write_model_dir("llama2", tmp_path / "m")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["bos_token"]
    (directory / "special_tokens_map.json").write_text("{}")
    message = damaged(directory, "tokenizer_config.json", json.dumps(config))
    assert "says add_bos_token but names no bos_token" in message
    config["add_bos_token"] = False  # said so: no bos, whatever the post-processor adds
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert HfTokenizer.from_model_dir(directory).bos_id is None


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    directory = write_model_dir("smollm", tmp_path / "m")
    monkeypatch.setattr(hf_files, "MAX_FILE_BYTES", 1000)  # the limit, not the file, made small
    message = damaged(directory, "tokenizer_config.json", "{" + " " * 2000 + "}")
    assert "too large for a tokenizer file (at most 1,000)" in message


def test_a_damaged_saved_meta_is_one_line(tmp_path):
    HfTokenizer.from_model_dir(write_model_dir("llama2", tmp_path / "m")).save(tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "tokenizer_meta.json").read_text())
    for bad in ({"eot_id": 10**6}, {"bos_id": "1"}, {"eot_id": None}):
        (tmp_path / "t" / "tokenizer_meta.json").write_text(json.dumps({**meta, **bad}))
        with pytest.raises(DataError, match="eot_id or bos_id is missing or not a token id"):
            load_tokenizer(tmp_path / "t")


def test_a_chat_template_is_stored_never_run(tmp_path):
    marker = tmp_path / "ran"
    directory = write_model_dir("smollm", tmp_path / "m")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{{ cycler.__init__.__globals__.os.system('touch " + str(marker)
                               + "') }}")
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    data = write_corpus(tmp_path / "text")
    prepare([data], tmp_path / "ds", tokenizer_from=directory, log=quiet, progress=False)
    tok = load_tokenizer(tmp_path / "ds" / "tokenizer")
    write_hf_tokenizer(tok, tmp_path / "out", model_max_length=16)
    assert not marker.exists() and not (tmp_path / "ds" / "tokenizer" / "evil.py").exists()
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == config


def test_find_tokenizer_names_what_it_takes(tmp_path):
    with pytest.raises(DataError, match="or a Hugging Face model directory .one holding "
                                        "tokenizer.json.$"):
        find_tokenizer(tmp_path)
    os.makedirs(tmp_path / "m")
    (tmp_path / "m" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(DataError, match="^no tokenizer at"):
        find_tokenizer(tmp_path / "m")
