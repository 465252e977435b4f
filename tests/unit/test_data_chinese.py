"""clean.segment_chinese: the spaces jieba puts between Chinese words help BPE learn words, but
they are not the text: decoding drops them and the byte counts bits per byte divide by omit
them."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from lmforge.config import CleanConfig, TokenizerConfig
from lmforge.data import shards
from lmforge.data.chinese import desegment, mostly_han, segment
from lmforge.data.clean import CleanStats, clean_document
from lmforge.data.document import Document
from lmforge.data.prepare import prepare
from lmforge.data.tokenizer import load_tokenizer, train_tokenizer
from lmforge.errors import DataError

pytest.importorskip("jieba")

QUIET = {"log": lambda _: None, "progress": False}
SEGMENTED = CleanConfig(segment_chinese=True)

STORIES = [
    "自然语言处理是人工智能的一个重要方向。它研究人与计算机之间用自然语言进行有效通信的各种理论和方法。",
    "今天天气很好，我们去公园散步吧。公园里有很多花，红的、黄的、白的，非常漂亮。",
    "语言模型根据前面的词预测下一个词。训练数据越多，模型通常越好。",
    "北京是中国的首都，有着悠久的历史和丰富的文化。长城和故宫吸引了世界各地的游客。",
    "研究人员使用GPT-2和BERT等模型，在中文语料上训练了新的分词方法。",
]


def write_corpus(directory: Path, count: int = 15) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i in range(count):
        name = f"{i:02d}.txt"
        texts[name] = "".join(STORIES[(i + k) % len(STORIES)] for k in range(i % 4 + 1)) + \
            f"第{i}篇，共{count}篇。Mixed English text stays as it is.\n"
        (directory / name).write_text(texts[name])
    return texts


def unsegmented(text: str, cfg: CleanConfig) -> str:
    """What cleaning makes of `text` with every step of `cfg` but the segmentation."""
    doc = clean_document(Document(text, "x"), dataclasses.replace(cfg, segment_chinese=False),
                         CleanStats())
    assert doc is not None
    return doc.text


def decoded(out: Path, split: str) -> str:
    tok = load_tokenizer(out / "tokenizer")
    return tok.decode(shards.open_split(out, split).tolist())


def test_segment_then_desegment_gives_the_text_back():
    text = "我爱北京天安门。Hello, world 2024! 中文分词 in a sentence."
    seg = segment(text)
    assert seg != text and "北京 天安门" in seg and "Hello, world 2024!" in seg
    assert desegment(seg) == text
    assert desegment("no Chinese here, two  spaces") == "no Chinese here, two  spaces"
    assert mostly_han("今天天气很好，我们去公园散步吧。 OK") and not mostly_han("Hello 你好 world")


@pytest.mark.parametrize("kind", ["bpe", "char", "byte"])
def test_segmented_dataset_decodes_and_counts_bytes_without_the_inserted_spaces(tmp_path, kind):
    texts = write_corpus(tmp_path / "zh")
    out = tmp_path / kind
    manifest = prepare([str(tmp_path / "zh")], out, tokenizer=TokenizerConfig(kind, 400),
                       clean=SEGMENTED, **QUIET)
    tok = load_tokenizer(out / "tokenizer")
    meta = json.loads((out / "tokenizer" / "tokenizer_meta.json").read_text())
    assert meta["segment_chinese"] is True and tok.segmented
    plain = {name: unsegmented(text, SEGMENTED) for name, text in texts.items()}
    for name, text in texts.items():
        seg = clean_document(Document(text, name), SEGMENTED, CleanStats()).text
        assert " " in seg.replace(" text stays as it is", "")  # the spaces jieba inserted
        assert tok.decode(tok.encode(seg)) == plain[name]
    # Every document is in one split; decoded, each split is its documents' unsegmented text.
    for split in ("train", "val"):
        text = decoded(out, split)
        assert not any(f"{a} {b}" in text for a, b in zip("自然语言", "然语言处", strict=True))
        assert manifest["splits"][split]["bytes"] == len(text.encode())
    both = decoded(out, "train") + decoded(out, "val")
    assert sorted(both) == sorted("".join(plain.values()))  # the same characters, no spaces added
    assert sum(s["bytes"] for s in manifest["splits"].values()) == \
        sum(len(t.encode()) for t in plain.values())


def test_one_segmented_file_split_by_position_keeps_its_bytes(tmp_path):
    # One document is cut by position; a cut next to an inserted space must not keep it.
    text = "".join(STORIES) * 7 + "\n"
    src = tmp_path / "novel.txt"
    src.write_text(text)
    manifest = prepare([str(src)], tmp_path / "ds", tokenizer=TokenizerConfig("char"),
                       clean=SEGMENTED, **QUIET)
    assert manifest["split_by"] == "position"
    plain = unsegmented(text, SEGMENTED)
    train, val = decoded(tmp_path / "ds", "train"), decoded(tmp_path / "ds", "val")
    assert train + val == plain
    assert manifest["splits"]["train"]["bytes"] == len(train.encode())
    assert manifest["splits"]["val"]["bytes"] == len(val.encode())


def test_unsegmented_tokenizers_keep_spaces_between_chinese_words(tmp_path):
    text = "中文 中文，北京 上海"
    for kind in ("bpe", "char", "byte"):
        tok = train_tokenizer(kind, [text], vocab_size=300)
        assert not tok.segmented and tok.decode(tok.encode(text)) == text
        tok.save(tmp_path / kind)
        assert "segment_chinese" not in json.loads((tmp_path / kind / "tokenizer_meta.json").read_text())
        seg = train_tokenizer(kind, [text], vocab_size=300, segmented=True)
        seg.save(tmp_path / f"{kind}-seg")
        back = load_tokenizer(tmp_path / f"{kind}-seg")
        assert back.segmented and back.decode(back.encode(text)) == "中文中文，北京上海"


def test_tokenizer_from_must_match_the_segmentation(tmp_path):
    write_corpus(tmp_path / "zh")
    prepare([str(tmp_path / "zh")], tmp_path / "seg", tokenizer=TokenizerConfig("char"),
            clean=SEGMENTED, **QUIET)
    with pytest.raises(DataError, match=r"segment_chinese.*--clean.segment_chinese=true") as err:
        prepare([str(tmp_path / "zh")], tmp_path / "new", tokenizer_from=tmp_path / "seg", **QUIET)
    assert "\n" not in str(err.value) and not (tmp_path / "new").exists()
    made = prepare([str(tmp_path / "zh")], tmp_path / "new", tokenizer_from=tmp_path / "seg",
                   clean=SEGMENTED, **QUIET)
    assert made["splits"]["train"]["tokens"] > 0


def test_segment_chinese_without_jieba_stops_before_reading(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # what an absent package looks like to import
    src = tmp_path / "bad.jsonl"
    src.write_text("[1, 2]\n")  # an error about it would mean it was read
    with pytest.raises(DataError, match=r"segment_chinese needs jieba: pip install 'lmforge\[zh\]'"):
        prepare([str(src)], tmp_path / "ds", clean=SEGMENTED, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_dataset_segmented_by_an_older_lmforge_is_prepared_again(tmp_path):
    write_corpus(tmp_path / "zh")
    out = tmp_path / "ds"
    prepare([str(tmp_path / "zh")], out, tokenizer=TokenizerConfig("char"), clean=SEGMENTED, **QUIET)
    meta_path = out / "tokenizer" / "tokenizer_meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["segment_chinese"]  # what lmforge wrote before decoding removed the spaces
    meta_path.write_text(json.dumps(meta))
    log: list[str] = []
    prepare([str(tmp_path / "zh")], out, tokenizer=TokenizerConfig("char"), clean=SEGMENTED,
            log=log.append, progress=False)
    assert log[0] == (f"{out} was prepared with a tokenizer that keeps the spaces "
                      "segment_chinese inserts; preparing it again")
    assert load_tokenizer(out / "tokenizer").segmented
    log.clear()
    prepare([str(tmp_path / "zh")], out, tokenizer=TokenizerConfig("char"), clean=SEGMENTED,
            log=log.append, progress=False)
    assert log == [f"reusing prepared dataset at {out}"]
