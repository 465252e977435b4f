"""The prepare pipeline at scale: worker processes, bounded shards, the data report."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.config import CleanConfig, DataConfig, TokenizerConfig
from lmforge.data import shards
from lmforge.data.loader import RandomWindows
from lmforge.data.parallel import ordered_map
from lmforge.data.prepare import prepare
from lmforge.data.tokenizer import load_tokenizer
from lmforge.errors import DataError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUIET = {"log": lambda _: None, "progress": False}


def square(x: int) -> int:
    return x * x


def test_ordered_map_keeps_order_in_worker_processes():
    items = list(range(50))
    assert list(ordered_map(square, items, workers=2, max_in_flight=3)) == [x * x for x in items]
    assert list(ordered_map(square, items, workers=0)) == [x * x for x in items]


def test_shards_roll_over_and_read_back_as_one_split(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) % 500
    with shards.ShardWriter(tmp_path, "train", np.uint16, shard_tokens=300) as writer:
        writer.append_document(tokens[:450])
        writer.append_document(tokens[450:])
        entry = writer.close()
    assert [s["tokens"] for s in entry["files"]] == [300, 300, 300, 100]
    manifest = {"format": shards.FORMAT, "dtype": "uint16",
                "splits": {"train": {**entry, "bytes": 1000}},
                "tokenizer": {"dir": "tokenizer", "kind": "byte", "vocab_size": 257,
                              "eot_id": 256}}
    shards.write_manifest(tmp_path, manifest)
    split = shards.open_split(tmp_path, "train")
    assert len(split) == 1000
    assert np.array_equal(split[np.arange(1000)], tokens)
    assert np.array_equal(split[250:350], tokens[250:350])
    idx = np.array([[0, 299, 300], [899, 900, 999]])
    assert np.array_equal(split[idx], tokens[idx])
    # Windows that straddle two shards read the same tokens as from one array.
    a = RandomWindows(split, batch_size=16, block_size=64, seed=3)
    b = RandomWindows(tokens, batch_size=16, block_size=64, seed=3)
    for _ in range(5):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    assert shards.document_starts(tmp_path, "train").tolist() == [0, 450]
    shards.verify(tmp_path)
    third = tmp_path / "train-00002.bin"
    data = bytearray(third.read_bytes())
    data[7] ^= 1
    third.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-00002.bin is corrupt"):
        shards.verify(tmp_path)


def test_one_or_two_workers_write_identical_shards(tmp_path):
    corpus = [str(STDLIB / "json" / "*.py"), str(STDLIB / "email" / "*.py")]
    made = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        made[workers] = prepare(corpus, out, tokenizer=TokenizerConfig("bpe", 600),
                                data=DataConfig(workers=workers, shard_tokens=20_000), **QUIET)
    assert made[1]["splits"] == made[2]["splits"]  # same sha256 for every shard
    assert len(made[1]["splits"]["train"]["files"]) > 1
    for name in ("train-00000.bin", "val-00000.bin", "train.docs.npy"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_report_counts_every_step_and_duplicates(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    text = (STDLIB / "json" / "decoder.py").read_text()
    (src / "a.py").write_text(text)
    (src / "b.py").write_text(text)  # an exact duplicate
    (src / "c.py").write_text((STDLIB / "json" / "encoder.py").read_text())
    (src / "d.bin").write_bytes(b"\x00\x01binary")
    (src / "e.txt").write_bytes(b"caf\xe9 au lait, " * 20)  # latin-1, invalid as UTF-8
    out = tmp_path / "out"
    manifest = prepare([str(src)], out, tokenizer=TokenizerConfig("byte"), **QUIET)
    report = json.loads((out / "report.json").read_text())
    assert report["clean"]["dedup_exact"]["docs_in"] == 4
    assert report["clean"]["dedup_exact"]["docs_out"] == 3
    assert report["sources"]["binary_skipped"] == 1
    assert report["sources"]["invalid_utf8_docs"] == 1
    splits = report["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 3
    assert sum(s["tokens"] for s in splits.values()) == sum(
        e["tokens"] for e in manifest["splits"].values())
    assert report["top_tokens"][0]["count"] >= report["top_tokens"][1]["count"] > 0
    prov = manifest["provenance"]
    assert {Path(f["path"]).name for f in prov["files"]} >= {"a.py", "b.py", "c.py"}
    assert all(len(f["sha256"]) == 64 for f in prov["files"])
    assert "tokenizers" in prov["versions"] and manifest["settings"]["clean"]["dedup_exact"]


def test_corpus_empty_after_cleaning_is_a_clear_error(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("short text\n")
    with pytest.raises(DataError, match="no text after cleaning"):
        prepare([str(src)], tmp_path / "out", tokenizer=TokenizerConfig("char"),
                clean=CleanConfig(min_chars=1000), **QUIET)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


CHINESE = [
    "自然语言处理是人工智能的一个重要方向。它研究人与计算机之间用自然语言进行有效通信的各种理论和方法。",
    "今天天气很好，我们去公园散步吧。公园里有很多花，红的、黄的、白的，非常漂亮。",
    "语言模型根据前面的词预测下一个词。训练数据越多，模型通常越好。",
    "北京是中国的首都，有着悠久的历史和丰富的文化。长城和故宫吸引了世界各地的游客。",
]


@pytest.mark.parametrize("kind", ["bpe", "char", "byte"])
def test_chinese_text_round_trips_through_every_tokenizer(tmp_path, kind):
    src = tmp_path / "zh"
    src.mkdir()
    for i in range(12):
        (src / f"{i}.txt").write_text(CHINESE[i % 4] * (i + 1) + f"第{i}篇。ＡＢＣ１２３\n")
    out = tmp_path / kind
    manifest = prepare([str(src)], out, tokenizer=TokenizerConfig(kind, 400),
                       clean=CleanConfig(normalize="NFKC"), **QUIET)
    tok = load_tokenizer(out / "tokenizer")
    for split in ("train", "val"):
        ids = shards.open_split(out, split)
        text = tok.decode(ids.tolist())
        assert "自然语言" in text or "天气" in text or "语言模型" in text or "北京" in text
        assert "ＡＢＣ" not in text and "ABC123" in text  # NFKC folds full-width letters and digits
        entry = manifest["splits"][split]
        assert entry["bytes"] == len(text.encode())  # bits per byte counts UTF-8 bytes


def test_worker_pool_serves_both_passes_with_the_same_processes():
    import os

    from lmforge.data.parallel import WorkerPool

    with WorkerPool(2) as pool:
        first = set(pool.map(_pid, range(20)))
        second = set(pool.map(_pid, range(20)))
    assert os.getpid() not in first and second <= first and len(first) <= 2


def _pid(_: int) -> int:
    import os
    import time

    time.sleep(0.01)
    return os.getpid()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_input_parsed_in_a_worker_is_one_data_error(tmp_path, workers):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(50))
                                    + '{"text": 3}\n')
    with pytest.raises(DataError, match=r"a\.jsonl line 51: field 'text' holds int, not text"):
        prepare([str(corpus)], tmp_path / "ds", data=DataConfig(workers=workers), **QUIET)
    (corpus / "a.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no text files in .*binary files are skipped"):
        prepare([str(corpus)], tmp_path / "ds", data=DataConfig(workers=workers), **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_modapte_split_and_dedup_match_for_any_worker_count(tmp_path):
    reuters = Path(__file__).parents[3] / "shared" / "data" / "reuters21578.tar.gz"
    if not reuters.is_file():
        pytest.skip("reuters21578.tar.gz is not in ../shared/data")

    made = {}
    for workers in (0, 2):
        made[workers] = prepare([str(reuters)], tmp_path / f"w{workers}",
                                tokenizer=TokenizerConfig("byte"),
                                data=DataConfig(split="modapte", workers=workers), **QUIET)
    assert made[0]["splits"] == made[2]["splits"]
    reports = [json.loads((tmp_path / f"w{w}" / "report.json").read_text()) for w in (0, 2)]
    assert reports[0]["clean"] == reports[1]["clean"] and reports[0]["sources"] == reports[1]["sources"]
    assert reports[0]["clean"]["dedup_exact"]["docs_out"] < reports[0]["clean"]["dedup_exact"]["docs_in"]
