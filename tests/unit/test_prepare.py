import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import DataConfig, TokenizerConfig
from lmforge.data import shards
from lmforge.data.prepare import prepare
from lmforge.data.sources import fingerprint, iter_documents
from lmforge.data.tokenizer import load_tokenizer
from lmforge.errors import DataError

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


def quiet(_: str) -> None:
    pass


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def decode_split(out: Path, split: str) -> str:
    tok = load_tokenizer(out / "tokenizer")
    return tok.decode(shards.open_split(out, split).tolist())


def make_docs(directory: Path, count: int) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i in range(count):
        name = f"sub{i % 3}/doc{i:02d}.txt"
        texts[name] = f"document {i}: " + "lorem ipsum dolor " * (i + 1) + "end\n"
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_text(texts[name])
    return texts


def in_val(doc_id: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    return h < val_fraction


def test_single_file_splits_by_position(tmp_path):
    text = "".join(f"line {i}: to be or not to be, ça va? ✓\n" for i in range(97))
    src = tmp_path / "one.txt"
    src.write_text(text)
    out = tmp_path / "ds"
    manifest = prepare([str(src)], out, tokenizer=TokenizerConfig("char"), log=quiet)
    cut = int(len(text) * 0.9)
    assert decode_split(out, "train") == text[:cut]
    assert decode_split(out, "val") == text[cut:]
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert (train["tokens"], val["tokens"]) == (cut, len(text) - cut)  # no eot inserted
    assert train["bytes"] + val["bytes"] == len(text.encode())
    assert val["bytes"] == len(text[cut:].encode())
    assert manifest["split_by"] == "position"


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared data not on this machine")
def test_tinyshakespeare_matches_nanogpt_split(tmp_path):
    manifest = prepare([str(SHAKESPEARE)], tmp_path / "ds", tokenizer=TokenizerConfig("char"), log=quiet)
    assert manifest["splits"]["train"]["tokens"] == 1_003_854
    assert manifest["splits"]["val"]["tokens"] == 111_540
    assert manifest["tokenizer"]["vocab_size"] == 65 + 1  # nanoGPT's 65 characters and eot


def test_documents_split_by_hash_deterministically(tmp_path):
    texts = make_docs(tmp_path / "corpus", 40)
    m1 = prepare([str(tmp_path / "corpus")], tmp_path / "a", tokenizer=TokenizerConfig("byte"), log=quiet)
    m2 = prepare([str(tmp_path / "corpus")], tmp_path / "b", tokenizer=TokenizerConfig("byte"), log=quiet)
    assert m1["splits"] == m2["splits"]
    assert m1["split_by"] == "document"
    expect_val = sorted(name for name in texts if in_val(name, 0.1))
    assert 0 < len(expect_val) < 40
    assert m1["splits"]["val"]["documents"] == len(expect_val)
    assert m1["splits"]["train"]["documents"] == 40 - len(expect_val)
    # every document is followed by eot, and eot decodes to "": the texts join up in order
    assert decode_split(tmp_path / "a", "val") == "".join(texts[n] for n in expect_val)
    val = shards.open_split(tmp_path / "a", "val")
    starts = shards.document_starts(tmp_path / "a", "val")
    assert (val == 256).sum() == len(expect_val)
    assert all(val[s - 1] == 256 for s in starts[1:]) and val[-1] == 256


@pytest.mark.parametrize("val_fraction", [0.01, 0.99])
def test_two_documents_give_two_nonempty_splits(tmp_path, val_fraction):
    make_docs(tmp_path / "corpus", 2)
    m = prepare([str(tmp_path / "corpus")], tmp_path / "ds", tokenizer=TokenizerConfig("char"),
                data=DataConfig(val_fraction=val_fraction), log=quiet)
    assert m["splits"]["train"]["documents"] == m["splits"]["val"]["documents"] == 1


def test_second_call_reuses(tmp_path):
    make_docs(tmp_path / "corpus", 5)
    out = tmp_path / "ds"
    first = prepare([str(tmp_path / "corpus")], out, tokenizer=TokenizerConfig("char"), log=quiet)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    log = Log()
    assert prepare([str(tmp_path / "corpus")], out, tokenizer=TokenizerConfig("char"), log=log) == first
    assert log == [f"reusing prepared dataset at {out}"]
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_changed_input_is_prepared_again_in_place(tmp_path):
    texts = make_docs(tmp_path / "corpus", 5)
    out = tmp_path / "ds"
    first = prepare([str(tmp_path / "corpus")], out, tokenizer=TokenizerConfig("byte"), log=quiet)
    path = tmp_path / "corpus" / "sub0/doc00.txt"
    path.write_text("a brand new text")
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse-clock file systems
    log = Log()
    second = prepare([str(tmp_path / "corpus")], out, tokenizer=TokenizerConfig("byte"), log=log)
    assert any("changed" in line for line in log)
    assert second["fingerprint"] != first["fingerprint"]
    texts["sub0/doc00.txt"] = "a brand new text"
    decoded = decode_split(out, "train") + decode_split(out, "val")
    assert "a brand new text" in decoded and "document 0:" not in decoded
    assert len(decoded) == sum(len(t) for t in texts.values())
    assert shards.verify(out) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ds"]  # no temp dirs left


def test_corrupt_dataset_is_prepared_again(tmp_path):
    make_docs(tmp_path / "corpus", 5)
    out = tmp_path / "ds"
    prepare([str(tmp_path / "corpus")], out, tokenizer=TokenizerConfig("byte"), log=quiet)
    (out / "train-00000.bin").write_bytes(b"\0\0")
    log = Log()
    prepare([str(tmp_path / "corpus")], out, tokenizer=TokenizerConfig("byte"), log=log)
    assert "corrupt" in log[0]
    shards.verify(out)


def test_out_with_other_files_is_left_alone(tmp_path):
    (tmp_path / "one.txt").write_text("some text to prepare")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match=r"files lmforge did not write \(thesis.tex\); choose another --out or empty it"):
        prepare([str(tmp_path / "one.txt")], out, tokenizer=TokenizerConfig("char"), log=quiet)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "one.txt"]


def test_out_with_a_different_dataset_is_left_alone(tmp_path):
    (tmp_path / "one.txt").write_text("some text to prepare")
    out = tmp_path / "ds"
    first = prepare([str(tmp_path / "one.txt")], out, tokenizer=TokenizerConfig("char"), log=quiet)
    with pytest.raises(DataError, match="already holds a different dataset"):
        prepare([str(tmp_path / "one.txt")], out, tokenizer=TokenizerConfig("byte"), log=quiet)
    assert shards.verify(out) == first


def test_dataset_with_user_files_added_is_not_replaced(tmp_path):
    (tmp_path / "one.txt").write_text("some text to prepare")
    out = tmp_path / "ds"
    prepare([str(tmp_path / "one.txt")], out, tokenizer=TokenizerConfig("char"), log=quiet)
    (out / "notes.md").write_text("mine")
    (tmp_path / "one.txt").write_text("some other text now")
    with pytest.raises(DataError, match=r"files lmforge did not write \(notes.md\)"):
        prepare([str(tmp_path / "one.txt")], out, tokenizer=TokenizerConfig("char"), log=quiet)
    assert (out / "notes.md").read_text() == "mine"


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as err:
        prepare([str(missing)], tmp_path / "ds", log=quiet)
    assert str(err.value) == (f"data not found: {missing}; give a file, a directory, "
                              "a glob or 'stdlib'")


def test_empty_corpus_leaves_nothing_behind(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "blank.txt").write_text("  \n\t\n")
    (corpus / "empty.txt").write_text("")
    with pytest.raises(DataError, match="the corpus at .* has no text"):
        prepare([str(corpus)], tmp_path / "ds", tokenizer=TokenizerConfig("char"), log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_directory_of_binary_files(tmp_path):
    corpus = tmp_path / "bin"
    corpus.mkdir()
    (corpus / "a.dat").write_bytes(b"\x89PNG\0\0\x01")
    (corpus / ".hidden.txt").write_text("hidden text is skipped")
    with pytest.raises(DataError, match="no text files in .*binary files are skipped"):
        prepare([str(corpus)], tmp_path / "ds", log=quiet)


def test_single_character_corpus_has_no_train_split(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(DataError, match="the train split is empty"):
        prepare([str(tmp_path / "a.txt")], tmp_path / "ds", tokenizer=TokenizerConfig("char"), log=quiet)


def test_glob_and_directory_sources(tmp_path):
    make_docs(tmp_path / "corpus", 6)
    (tmp_path / "corpus" / "skip.md").write_text("not matched")
    docs = list(iter_documents(str(tmp_path / "corpus" / "**" / "*.txt")))
    assert [d.id for d in docs] == sorted(d.id for d in docs)
    assert {d.id for d in docs} == {f"sub{i % 3}/doc{i:02d}.txt" for i in range(6)}
    in_dir = [d.id for d in iter_documents(str(tmp_path / "corpus"))]
    assert in_dir == sorted(in_dir) and "skip.md" in in_dir and len(in_dir) == 7
    with pytest.raises(DataError, match="no files match the glob"):
        list(iter_documents(str(tmp_path / "*.nothing")))


def test_fingerprint_tracks_content(tmp_path):
    make_docs(tmp_path / "corpus", 3)
    spec = [str(tmp_path / "corpus")]
    before = fingerprint(spec)
    assert fingerprint(spec) == before
    (tmp_path / "corpus" / "new.txt").write_text("x")
    assert fingerprint(spec) != before


def test_stdlib_source_excludes_tests_and_site_packages():
    docs = list(iter_documents("stdlib"))
    assert len(docs) > 500
    paths = [d.meta["path"] for d in docs]
    assert not [p for p in paths if "/test/" in p or "site-packages" in p or "/tests/" in p]
    assert not [d for d in docs if Path(d.id).name.startswith("test_")]
    assert all(p.endswith(".py") for p in paths)
    assert "json/decoder.py" in {d.id for d in docs}
    assert np.sum([len(d.text) for d in docs]) > 5_000_000


def test_preparing_again_in_one_process_tokenizes_with_the_new_tokenizer(tmp_path):
    """The build directory's name is the same for every prepare of one process: the
    tokenizer cached for it by the first must not tokenize for the second."""
    corpus = tmp_path / "corpus"
    texts = make_docs(corpus, 5)
    out = tmp_path / "ds"
    prepare([str(corpus)], out, tokenizer=TokenizerConfig("char"), log=quiet)
    (corpus / "sub0/doc00.txt").write_text("zebra quartz vexing")  # characters new to it
    os.utime(corpus / "sub0/doc00.txt", ns=(1, 1))
    texts["sub0/doc00.txt"] = "zebra quartz vexing"
    prepare([str(corpus)], out, tokenizer=TokenizerConfig("char"), log=quiet)
    decoded = decode_split(out, "train") + decode_split(out, "val")
    assert "zebra quartz vexing" in decoded
    assert len(decoded) == sum(len(t) for t in texts.values())
