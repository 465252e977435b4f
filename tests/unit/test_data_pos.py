"""Part-of-speech statistics (clean.pos_sample): NLTK's tagger for English, jieba's for
Chinese with segment_chinese, and a missing or broken tagger named before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.config import CleanConfig, DataConfig, TokenizerConfig
from lmforge.data.pos import TAGGER, load_taggers, pos_statistics
from lmforge.data.prepare import prepare
from lmforge.errors import ConfigError, DataError

QUIET = {"log": lambda _: None, "progress": False}
ENGLISH = ["The cat sat on the mat.", "Dogs bark.", "not sampled"]


@pytest.fixture
def nltk_data(monkeypatch, tmp_path):
    """An NLTK data directory of this test's own, and the only one NLTK looks in."""
    import nltk

    where = tmp_path / "nltk_data"
    where.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(where)])
    return where


def install_tagger(where: Path) -> None:
    """A tiny perceptron tagger saved where NLTK looks, so tagging runs without downloads."""
    from nltk.tag.perceptron import PerceptronTagger

    loc = where / "taggers" / TAGGER
    loc.mkdir(parents=True)
    tagger = PerceptronTagger(load=False)
    tagger.train([[("The", "DT"), ("cat", "NN"), ("sat", "VBD"), ("on", "IN"), ("the", "DT"),
                   ("mat", "NN"), (".", ".")], [("Dogs", "NNS"), ("bark", "VBP"), (".", ".")]])
    tagger.save_to_json(lang="eng", loc=str(loc))


def bad_jsonl(tmp_path: Path) -> Path:
    """A source that fails as soon as it is read: an error about it means it was read."""
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n[1, 2]\n')
    return src


def test_missing_tagger_says_how_to_install_it(nltk_data):
    with pytest.raises(DataError) as info:
        load_taggers(CleanConfig(pos_sample=1))
    message = str(info.value)
    assert "\n" not in message and f"taggers/{TAGGER}" in message
    assert f"python -m nltk.downloader -d {nltk_data} {TAGGER}" in message


def test_missing_tagger_is_found_before_the_sources_are_read(nltk_data, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DataError, match=f"python -m nltk.downloader -d {nltk_data} {TAGGER}"):
        prepare([str(bad_jsonl(tmp_path))], out, clean=CleanConfig(pos_sample=5),
                data=DataConfig(workers=2), **QUIET)
    assert not out.exists() and not list(tmp_path.glob(".ds*"))


@pytest.mark.parametrize("damage", ["no files", "unreadable weights"])
def test_incomplete_tagger_is_one_line_before_any_work(nltk_data, tmp_path, damage):
    install_tagger(nltk_data)
    loc = nltk_data / "taggers" / TAGGER
    weights = loc / f"{TAGGER}.weights.json"
    if damage == "no files":
        for path in loc.iterdir():
            path.unlink()
    else:
        weights.write_text('{"cut off in the mid')
    out = tmp_path / "ds"
    with pytest.raises(DataError) as info:
        prepare([str(bad_jsonl(tmp_path))], out, clean=CleanConfig(pos_sample=5), **QUIET)
    message = str(info.value)
    assert "\n" not in message and "incomplete or unreadable" in message and str(loc) in message
    assert f"python -m nltk.downloader -d {nltk_data} {TAGGER}" in message
    assert not out.exists()


def test_negative_pos_sample_is_refused(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("some text\n")
    with pytest.raises(ConfigError, match=r"clean.pos_sample must be 0 \(off\) or more, got -3"):
        prepare([str(src)], tmp_path / "ds", clean=CleanConfig(pos_sample=-3), **QUIET)
    assert not (tmp_path / "ds").exists()


def test_counts_tags_with_a_tagger_trained_here(nltk_data):
    install_tagger(nltk_data)
    stats = pos_statistics(iter(ENGLISH), sample=2, taggers=load_taggers(CleanConfig(pos_sample=2)))
    assert stats == {"nltk": {"tagger": f"nltk {TAGGER}", "tagset": "Penn Treebank",
                              "documents": 2, "tokens": 10,
                              "tags": {"DT": 2, "NN": 2, ".": 2, "VBD": 1, "IN": 1, "NNS": 1,
                                       "VBP": 1}}}


def test_counts_tags_with_nltks_own_tagger():
    import nltk

    try:
        nltk.data.find(f"taggers/{TAGGER}/")
    except LookupError:
        pytest.skip(f"NLTK's {TAGGER} is not installed")
    stats = pos_statistics(iter(ENGLISH), sample=2, taggers=load_taggers(CleanConfig(pos_sample=2)))
    assert stats["nltk"]["documents"] == 2 and stats["nltk"]["tokens"] == 10
    assert stats["nltk"]["tags"]["DT"] == 2 and sum(stats["nltk"]["tags"].values()) == 10


def test_chinese_documents_are_tagged_by_jieba(nltk_data, tmp_path):
    pytest.importorskip("jieba")
    install_tagger(nltk_data)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("我们在北京学习自然语言处理。今天天气很好。")
    (src / "b.txt").write_text("北京是中国的首都，长城吸引了很多游客。")
    (src / "c.txt").write_text("The cat sat on the mat. Dogs bark.")
    clean = CleanConfig(segment_chinese=True, pos_sample=10)
    log: list[str] = []
    prepare([str(src)], tmp_path / "ds", tokenizer=TokenizerConfig("char"), clean=clean,
            log=log.append, progress=False)
    said = [line for line in log if line.startswith("parts of speech")]
    assert said[0].startswith(f"parts of speech (nltk {TAGGER}, 1 document, 10 tokens): DT 20%")
    assert said[1].startswith("parts of speech (jieba.posseg, 2 documents, 23 tokens): ns 17%")
    pos = json.loads((tmp_path / "ds" / "report.json").read_text())["pos"]
    assert set(pos) == {"nltk", "jieba"}
    assert pos["nltk"]["documents"] == 1 and pos["nltk"]["tokens"] == 10
    zh = pos["jieba"]
    assert zh["tagger"] == "jieba.posseg" and zh["documents"] == 2
    assert zh["tags"]["ns"] >= 2  # 北京, twice: a place name
    assert zh["tags"]["n"] >= 1 and zh["tags"]["v"] >= 1 and zh["tags"]["x"] == 4  # 。。，。
    # jieba tags the unsegmented text: as many words as it cuts the cleaned text into
    import jieba.posseg

    texts = ("我们在北京学习自然语言处理。今天天气很好。", "北京是中国的首都，长城吸引了很多游客。")
    assert zh["tokens"] == sum(len(jieba.posseg.lcut(t)) for t in texts)
