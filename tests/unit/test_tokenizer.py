import inspect
import json
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.config import CleanConfig, TokenizerConfig
from lmforge.data import shards
from lmforge.data import tokenizer as tokenizer_module
from lmforge.data.prepare import prepare
from lmforge.data.tokenizer import _bounded, load_tokenizer, train_tokenizer
from lmforge.errors import DataError

MIXED = ("Hello, world!\nCafé naïve résumé Ærøskøbing\t→ tabs\there\r\n"
         "日本語のテキストと中文 한국어 😀🎉 👩‍👩‍👧 family\n\n  indented  \n")
KINDS = ["bpe", "char", "byte"]


def corpus() -> list[str]:
    # Real prose and code, a few KB: enough pairs for a 300-token BPE vocabulary.
    return [MIXED, inspect.getsource(json), inspect.getsource(shards)]


def trained(kind: str, vocab_size: int = 300):
    return train_tokenizer(kind, corpus(), vocab_size=vocab_size)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_mixed_text(kind):
    tok = trained(kind)
    ids = tok.encode(MIXED)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == MIXED
    assert tok.encode_batch([MIXED, "abc", ""]) == [ids, tok.encode("abc"), []]


@pytest.mark.parametrize("kind", KINDS)
def test_eot_decodes_to_nothing_and_joins_documents(kind):
    tok = trained(kind)
    ids = tok.encode("first doc") + [tok.eot_id] + tok.encode("second")
    assert tok.decode(ids) == "first docsecond"


@pytest.mark.parametrize("kind", KINDS)
def test_ids_outside_vocabulary_decode_to_replacement(kind):
    tok = trained(kind)
    ids = tok.encode("ab") + [tok.vocab_size, -1] + tok.encode("c")
    assert tok.decode(ids) == "ab\ufffd\ufffdc"


def test_bpe_literal_endoftext_is_text_not_a_boundary():
    tok = trained("bpe")
    text = "split here <|endoftext|> or not"
    ids = tok.encode(text)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["bpe", "byte"])
def test_decode_of_cut_multibyte_sequence_does_not_raise(kind):
    # vocab 257: no merges, so every byte of the emoji is its own token and can be cut
    tok = train_tokenizer(kind, ["abc"], vocab_size=257)
    ids = tok.encode("a😀b")
    assert len(ids) == 6
    assert tok.decode(ids[:3]) == "a\ufffd"
    assert tok.decode(ids[2:]) == "\ufffd\ufffd\ufffdb"
    rng = random.Random(0)
    for _ in range(200):  # any id sequence at all decodes to some string
        assert isinstance(tok.decode([rng.randrange(tok.vocab_size) for _ in range(8)]), str)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_tokenizer(kind, tmp_path):
    tok = trained(kind)
    tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer_meta.json").read_text())
    assert (meta["kind"], meta["vocab_size"], meta["eot_id"]) == (kind, tok.vocab_size, tok.eot_id)
    back = load_tokenizer(tmp_path / "tok")
    assert (back.kind, back.vocab_size, back.eot_id) == (tok.kind, tok.vocab_size, tok.eot_id)
    for text in corpus():
        assert back.encode(text) == tok.encode(text)
    assert back.decode(tok.encode(MIXED)) == MIXED


def test_load_from_directory_without_tokenizer(tmp_path):
    with pytest.raises(DataError, match="no tokenizer at .*tokenizer_meta.json missing"):
        load_tokenizer(tmp_path)


def test_bpe_vocab_too_small():
    with pytest.raises(DataError, match=r"tokenizer.vocab_size=256 is too small .*at least 257"):
        train_tokenizer("bpe", corpus(), vocab_size=256)


def test_bpe_vocab_size_is_honoured_on_enough_text():
    tok = trained("bpe", vocab_size=300)
    assert tok.vocab_size == 300
    assert tok.eot_id == 0


def test_bpe_reports_real_vocab_size_on_tiny_corpus():
    tok = train_tokenizer("bpe", ["ab ab"], vocab_size=1000)
    assert 257 <= tok.vocab_size < 1000


def test_byte_and_char_basics():
    byte = trained("byte")
    assert (byte.vocab_size, byte.eot_id) == (257, 256)
    assert byte.encode("é") == [0xC3, 0xA9]
    char = train_tokenizer("char", ["cab", "ba"], vocab_size=0)
    assert char.chars == ["a", "b", "c"]
    assert (char.vocab_size, char.eot_id) == (4, 3)
    assert char.encode("abc") == [0, 1, 2]


def test_char_unknown_character():
    tok = train_tokenizer("char", ["abc"], vocab_size=0)
    with pytest.raises(DataError, match=r"character 'z' is not in .*prepared corpus"):
        tok.encode("abz")


def test_unknown_kind():
    with pytest.raises(DataError, match="unknown tokenizer kind 'wordpiece'"):
        train_tokenizer("wordpiece", [], vocab_size=300)


@pytest.mark.parametrize("kind", ["bpe", "byte"])
def test_invalid_utf8_survives_prepare(kind, tmp_path):
    raw = (b"valid start caf\xc3\xa9 " + b"\xff\xfe broken \xe6\x97 cut " * 40
           + MIXED.encode() * 3 + b"\xc3 end")
    src = tmp_path / "bad.txt"
    src.write_bytes(raw)
    expected = raw.decode("utf-8", errors="replace")
    assert "\ufffd" in expected
    out = tmp_path / "ds"
    # Cleaning would trim the sample's trailing tabs; this test is about the bytes alone.
    prepare([str(src)], out, tokenizer=TokenizerConfig(kind, 300), log=lambda _: None,
            clean=CleanConfig(whitespace=False, control_chars=False))
    tok = load_tokenizer(out / "tokenizer")
    decoded = "".join(tok.decode(shards.open_split(out, s).tolist()) for s in ("train", "val"))
    assert decoded == expected
    assert tok.decode(tok.encode(expected)) == expected


def test_tokenizer_files_are_self_describing(tmp_path):
    tok = trained("bpe")
    tok.save(tmp_path)
    hf = json.loads(Path(tmp_path / "tokenizer.json").read_text())
    assert hf["model"]["type"] == "BPE"
    assert hf["pre_tokenizer"]["type"] == "ByteLevel"
    assert hf["decoder"]["type"] == "ByteLevel"
    assert [t["content"] for t in hf["added_tokens"]] == ["<|endoftext|>"]


# ---------------------------------------------------------------------------- a corpus of one word

def test_bpe_training_sees_ordinary_text_as_it_is(monkeypatch):
    texts = corpus()
    assert list(_bounded(texts)) == texts
    cut = trained("bpe")._hf.to_str()
    monkeypatch.setattr(tokenizer_module, "_bounded", lambda texts: texts)  # as before the cut
    assert trained("bpe")._hf.to_str() == cut


@settings(max_examples=60, deadline=None)
@given(runs=st.lists(st.tuples(st.sampled_from("ab1. \n"), st.integers(1, 3000)), max_size=6))
def test_bpe_training_cuts_only_long_runs_and_keeps_every_character(runs):
    text = "".join(ch * n for ch, n in runs)
    pieces = list(_bounded([text]))
    assert "".join(pieces) == text and all(pieces)
    assert not any(re.search(r"\S{1025}|\s{1025}", p) for p in pieces)
    if not re.search(r"\S{1025}|\s{1025}", text):
        assert pieces == ([text] if text else [])


def test_bpe_on_a_single_line_without_spaces_is_fast_and_round_trips():
    # 2 MB in one word: the pre-tokenizer keeps it whole, and training on it without the
    # cut takes minutes (quadratic in the word's length); with it, about a second
    rng = random.Random(0)
    text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=2_000_000))
    start = time.perf_counter()
    tok = train_tokenizer("bpe", [text], vocab_size=300)
    assert time.perf_counter() - start < 30
    assert tok.vocab_size == 300
    sample = text[:5000]
    assert tok.decode(tok.encode(sample)) == sample
