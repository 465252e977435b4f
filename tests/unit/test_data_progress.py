"""What `lmforge prepare` says while it works: progress lines where stderr is no terminal, and
read progress counted in the same unit as its total (the files' on-disk bytes)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_reuters import make_tar, story

from lmforge.config import DataConfig, TokenizerConfig
from lmforge.data.prepare import prepare
from lmforge.data.sources import iter_units

# A progress line as console.Progress writes it: "read and clean: 1,234 B of 5,678 B (22%), 0s"
LINE = re.compile(r"^(read and clean|tokenize): ([\d,]+) B(?: of ([\d,]+) B \((\d+)%\))?, \d+s")


def prose(i: int, words: int = 400) -> str:
    return " ".join(f"word{(i * 7 + k) % 613} of document {i}" for k in range(words)) + "\n"


def reuters_sgm(first: int, count: int) -> bytes:
    """A Reuters-21578 .sgm file of `count` stories, small."""
    stories = [story(n, text=f">&#2;\n<TITLE>STORY {n}</TITLE>\n<BODY>{prose(n, 60)}&#3;</BODY>")
               for n in range(first, first + count)]
    return ('<!DOCTYPE lewis SYSTEM "lewis.dtd">\n' + "".join(stories)).encode()


def corpus(tmp_path: Path, kind: str) -> Path:
    """A small corpus of one kind of input, under 1 MB so progress counts whole bytes."""
    src = tmp_path / "src"
    src.mkdir()
    if kind == "plain":
        for i in range(12):
            (src / f"{i:02d}.txt").write_text(prose(i))
        (src / "image.dat").write_bytes(b"\x89PNG\0\0\0binary")  # skipped, but read from disk
    elif kind == "gzip":
        for i in range(3):
            (src / f"{i}.txt.gz").write_bytes(gzip.compress(prose(i, 3000).encode()))
    elif kind == "jsonl.gz":  # several chunks of lines in one compressed stream
        rows = "".join(json.dumps({"text": prose(i, 40)}) + "\n" for i in range(1500))
        (src / "rows.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    elif kind == "tar.gz":
        (src / "reuters21578.tar.gz").write_bytes(make_tar(
            {"README.txt": b"not a story", "reut2-001.sgm": reuters_sgm(1001, 40),
             "reut2-000.sgm": reuters_sgm(1, 40)}))
    elif kind == "parquet":
        table = pa.table({"text": [prose(i, 30) for i in range(3000)]})
        pq.write_table(table, src / "rows.parquet", row_group_size=500)
    return src


def progress_lines(err: str, desc: str) -> list[tuple[int, int | None, int | None]]:
    found = []
    for line in err.splitlines():
        m = LINE.match(line)
        if m and m.group(1) == desc:
            done = int(m.group(2).replace(",", ""))
            total = int(m.group(3).replace(",", "")) if m.group(3) else None
            found.append((done, total, int(m.group(4)) if m.group(4) else None))
    return found


@pytest.mark.parametrize("kind", ["plain", "gzip", "jsonl.gz", "tar.gz", "parquet"])
def test_units_carry_their_files_on_disk_bytes_exactly(tmp_path, kind):
    src = corpus(tmp_path, kind)
    units = list(iter_units([str(src)]))
    on_disk = sum(p.stat().st_size for p in src.iterdir())
    assert sum(u.disk for u in units) == on_disk
    assert all(u.disk >= 0 for u in units)


@pytest.mark.parametrize("kind", ["plain", "gzip", "tar.gz"])
@pytest.mark.parametrize("workers", [0, 2])
def test_read_progress_ends_exactly_at_its_total(tmp_path, capsys, kind, workers):
    src = corpus(tmp_path, kind)
    on_disk = sum(p.stat().st_size for p in src.iterdir())
    prepare([str(src)], tmp_path / "ds", tokenizer=TokenizerConfig("byte"),
            data=DataConfig(workers=workers), log=lambda _: None, progress_every_s=0)
    read = progress_lines(capsys.readouterr().err, "read and clean")
    assert read, "no progress lines"
    assert all(total == on_disk and done <= total for done, total, _ in read)
    assert read[-1][:2] == (on_disk, on_disk) and read[-1][2] == 100
    assert [done for done, _, _ in read] == sorted(done for done, _, _ in read)


def test_progress_lines_for_both_passes_and_none_without_progress(tmp_path, capsys):
    src = corpus(tmp_path, "plain")
    prepare([str(src)], tmp_path / "ds", tokenizer=TokenizerConfig("char"), log=lambda _: None,
            progress_every_s=0)
    err = capsys.readouterr().err
    tokenize = progress_lines(err, "tokenize")
    assert progress_lines(err, "read and clean") and tokenize
    assert tokenize[-1][0] == tokenize[-1][1] and tokenize[-1][2] == 100
    prepare([str(src)], tmp_path / "quiet", tokenizer=TokenizerConfig("char"), log=lambda _: None,
            progress=False, progress_every_s=0)
    assert capsys.readouterr().err == ""


def test_progress_lines_come_every_every_s_not_every_batch(tmp_path, capsys):
    src = corpus(tmp_path, "plain")
    # An interval no test outlasts: only the lines a pass forces itself would show.
    prepare([str(src)], tmp_path / "ds", tokenizer=TokenizerConfig("char"), log=lambda _: None,
            progress_every_s=1e9)
    assert progress_lines(capsys.readouterr().err, "read and clean") == []


def test_says_so_before_training_a_tokenizer(tmp_path):
    src = corpus(tmp_path, "plain")
    log: list[str] = []
    prepare([str(src)], tmp_path / "ds", tokenizer=TokenizerConfig("bpe", 300), log=log.append,
            progress=False)
    starts = [i for i, line in enumerate(log) if line.startswith("training a bpe tokenizer")]
    ends = [i for i, line in enumerate(log) if line.startswith("trained bpe tokenizer")]
    assert len(starts) == len(ends) == 1 and starts[0] < ends[0]
    assert re.fullmatch(r"training a bpe tokenizer \(vocabulary 300\) on [\d.]+ MB \.\.\.",
                        log[starts[0]])
