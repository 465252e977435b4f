"""Local sources: compression, JSONL, Parquet, stats, fingerprints, on real files in tmp_path;
and hostile ones: byte order marks, JSON nested too deep or with huge numbers, damaged
Parquet and compressed files (names too long and unreadable files: test_hostile_files)."""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import os
import random
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.data.document import SourceOptions
from lmforge.data.sources import SourceStats, fingerprint, iter_corpus, iter_documents, source_files
from lmforge.errors import DataError

COMPRESS = {
    "gz": gzip.compress,
    "bz2": lambda data: bz2.compress(data, compresslevel=1),  # 100 kB blocks: cuts land mid-stream
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "épée", "naïve", "日本", "\n"]
    return " ".join(rng.choice(vocab) + str(rng.randrange(1000)) for _ in range(n))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@pytest.mark.parametrize("ext", sorted(COMPRESS))
def test_compressed_text_round_trips(tmp_path, ext):
    text = words(5000)
    path = write(tmp_path / f"a.txt.{ext}", COMPRESS[ext](text.encode()))
    [doc] = iter_documents(str(path))
    assert doc.text == text and doc.id == f"a.txt.{ext}"


@pytest.mark.parametrize("ext", sorted(COMPRESS))
def test_compressed_jsonl_round_trips(tmp_path, ext):
    rows = [{"text": words(50, seed=i), "n": i} for i in range(20)]
    path = write(tmp_path / f"a.jsonl.{ext}", COMPRESS[ext](jsonl(rows)))
    docs = list(iter_documents(str(path)))
    assert [d.text for d in docs] == [r["text"] for r in rows]
    assert [d.meta for d in docs] == [{"n": i} for i in range(20)]


def test_zstd_with_several_frames_reads_them_all(tmp_path):
    # zstd -c a b > ab.zst and parallel compressors write one frame per piece.
    parts = [words(3000, seed=s).encode() for s in range(3)]
    path = write(tmp_path / "ab.txt.zst", b"".join(COMPRESS["zst"](p) for p in parts))
    [doc] = iter_documents(str(path))
    assert doc.text == b"".join(parts).decode()


@pytest.mark.parametrize("ext", sorted(COMPRESS))
def test_truncated_compressed_file_names_file_and_offset(tmp_path, ext):
    data = words(200_000).encode()
    packed = COMPRESS[ext](data)
    path = write(tmp_path / f"a.txt.{ext}", packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"is truncated or corrupt after [\d,]+ bytes") as info:
        list(iter_documents(str(path)))
    message = str(info.value)
    assert str(path) in message and "re-download or re-compress it" in message
    offset = int(re.search(r"after ([\d,]+) bytes", message).group(1).replace(",", ""))
    assert 0 < offset < len(data)  # it got somewhere before the cut, not to the end


def test_truncated_jsonl_gz_also_reports_offset(tmp_path):
    rows = [{"text": words(100, seed=i)} for i in range(500)]
    packed = gzip.compress(jsonl(rows))
    path = write(tmp_path / "a.jsonl.gz", packed[: len(packed) * 3 // 4])
    docs = []
    with pytest.raises(DataError, match=r"a\.jsonl\.gz is truncated or corrupt after [\d,]+ bytes"):
        docs.extend(iter_documents(str(path)))
    assert 0 < len(docs) < 500  # lines before the cut were already read, in a stream


def test_file_that_is_not_gzip_gives_data_error(tmp_path):
    path = write(tmp_path / "a.txt.gz", b"plain text, not gzip")
    with pytest.raises(DataError, match="truncated or corrupt after 0 bytes"):
        list(iter_documents(str(path)))


def test_jsonl_text_field_meta_and_ids(tmp_path):
    rows = [{"body": "first", "id": "x1", "lang": "en"}, {"body": "second", "tags": [1, 2]},
            {"body": None, "note": "null text is an empty document"}]
    data = jsonl(rows[:1]) + b"\n   \n" + jsonl(rows[1:])  # blank lines are skipped
    path = write(tmp_path / "d" / "a.ndjson", data)
    docs = list(iter_documents(str(path), SourceOptions(text_field="body")))
    assert [d.text for d in docs] == ["first", "second", ""]
    assert [d.id for d in docs] == ["a.ndjson:x1", "a.ndjson:4", "a.ndjson:5"]
    assert docs[0].meta == {"id": "x1", "lang": "en"} and docs[1].meta == {"tags": [1, 2]}
    in_dir = [d.id for d in iter_documents(str(tmp_path / "d"), SourceOptions(text_field="body"))]
    assert in_dir == [d.id for d in docs]


def test_jsonl_line_that_is_not_json(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"a\.jsonl line 2 is not JSON"):
        list(iter_documents(str(path)))
    path = write(tmp_path / "b.jsonl", b'["a list"]\n')
    with pytest.raises(DataError, match=r"b\.jsonl line 1 is a JSON list, not an object"):
        list(iter_documents(str(path)))


def test_jsonl_missing_text_field_lists_fields(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl([{"text": "a"}, {"content": "b", "url": "u"}]))
    with pytest.raises(DataError, match=r"a\.jsonl line 2 has no field 'text' \(fields: content, url\)"):
        list(iter_documents(str(path)))


def write_parquet(path: Path, rows: dict, row_group_size: int) -> Path:
    pq.write_table(pa.table(rows), path, row_group_size=row_group_size)
    return path


def test_parquet_reads_every_row_group_in_order(tmp_path):
    rows = {"content": [f"row {i}" for i in range(5)], "score": [i / 2 for i in range(5)]}
    path = write_parquet(tmp_path / "t.parquet", rows, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 2
    docs = list(iter_documents(str(path), SourceOptions(text_field="content")))
    assert [d.text for d in docs] == rows["content"]
    assert [d.id for d in docs] == [f"t.parquet:{i}" for i in range(5)]
    assert [d.meta for d in docs] == [{"score": s} for s in rows["score"]]


def test_parquet_missing_column_lists_columns(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"body": ["a"], "url": ["u"]}, row_group_size=1)
    with pytest.raises(DataError, match=r"t\.parquet has no column 'text' \(columns: body, url\)"):
        list(iter_documents(str(path)))


def test_truncated_parquet_gives_data_error(tmp_path):
    good = write_parquet(tmp_path / "t.parquet", {"text": ["a"] * 100}, row_group_size=10)
    path = write(tmp_path / "cut.parquet", good.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cut\.parquet is not a readable Parquet file"):
        list(iter_documents(str(path)))


def test_stats_count_binary_skipped_and_invalid_utf8(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "good.txt", "plain ünïcode".encode())
    write(corpus / "latin1.txt", "café".encode("latin-1"))  # invalid UTF-8: é is one byte
    write(corpus / "image.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    write(corpus / "packed.bin.gz", gzip.compress(b"\0\1\2" * 100))  # binary once decompressed
    write(corpus / "rows.jsonl", b'{"text": "ok"}\n{"text": "bad \xff byte"}\n')
    stats = SourceStats()
    docs = list(iter_corpus([str(corpus)], stats=stats))
    assert [d.id for d in docs] == ["good.txt", "latin1.txt", "rows.jsonl:1", "rows.jsonl:2"]
    assert docs[1].text == "caf\ufffd" and docs[3].text == "bad \ufffd byte"
    assert stats.binary_skipped == 2 and stats.files_read == 3 and stats.invalid_utf8_docs == 2
    read = ["good.txt", "latin1.txt", "rows.jsonl"]
    assert stats.bytes_read == sum((corpus / name).stat().st_size for name in read)


def test_named_binary_file_is_read_not_skipped(tmp_path):
    path = write(tmp_path / "blob.dat", b"a\0b")
    stats = SourceStats()
    [doc] = iter_corpus([str(path)], stats=stats)
    assert doc.text == "a\0b" and stats.binary_skipped == 0


def test_tar_without_reuters_members(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    path = write(tmp_path / "d" / "other.tar.gz", buf.getvalue())
    with pytest.raises(DataError, match="tar archive without reut2-"):
        list(iter_documents(str(path)))
    write(tmp_path / "d" / "a.txt", b"text")
    stats = SourceStats()
    assert [d.id for d in iter_corpus([str(tmp_path / "d")], stats=stats)] == ["a.txt"]
    assert stats.binary_skipped == 1


def test_source_files_and_fingerprint_follow_the_files(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "b.txt", b"b")
    write(corpus / "a" / "z.jsonl.gz", gzip.compress(jsonl([{"text": "z"}])))
    spec = [str(corpus), "https://example.com/data.txt", "nltk:gutenberg", "hf:user/set:cfg"]
    # Reading order: a directory's own files, then its subdirectories, each sorted.
    assert source_files(spec) == [corpus / "b.txt", corpus / "a" / "z.jsonl.gz"]
    before = fingerprint(spec)
    assert fingerprint(spec) == before
    assert fingerprint(spec[:3]) != before  # a remote spec counts by its string
    assert fingerprint(spec, SourceOptions(text_field="body")) != before
    assert fingerprint(spec, SourceOptions(split="modapte")) != before
    (corpus / "b.txt").write_bytes(b"c")  # same size: the mtime tells
    st = (corpus / "b.txt").stat()
    os.utime(corpus / "b.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fingerprint(spec) != before
    changed = fingerprint(spec)
    write(corpus / "c.txt", b"new")
    assert fingerprint(spec) != changed and source_files(spec)[1] == corpus / "c.txt"


@pytest.mark.parametrize("name", ["a.txt", "a.jsonl", "a.txt.gz"])
def test_split_on_a_source_without_one_errors(tmp_path, name):
    data = b'{"text": "x"}\n' if name.endswith("jsonl") else b"x"
    path = write(tmp_path / name, gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(DataError, match="only Reuters-21578 has one"):
        list(iter_documents(str(path), SourceOptions(split="modapte")))
    with pytest.raises(DataError, match="only Reuters-21578 has one"):
        list(iter_documents("stdlib", SourceOptions(split="modapte")))


def test_empty_jsonl_has_no_documents(tmp_path):
    path = write(tmp_path / "a.jsonl", b"\n\n")
    with pytest.raises(DataError, match="no text files in"):
        list(iter_documents(str(path)))


def test_jsonl_read_in_chunks_keeps_line_numbers_and_ids(tmp_path):
    # Over 4 chunks of whole lines, with blank lines, a line longer than a chunk and no final
    # newline: ids and error lines still count lines as an editor does.
    lines = []
    for i in range(1, 3001):
        lines.append("" if i % 97 == 0 else json.dumps({"text": words(40, seed=i)}))
    lines[1500] = json.dumps({"text": words(30_000, seed=1)})  # ~270 kB, line 1501
    path = write(tmp_path / "a.jsonl", "\n".join(lines).encode())
    assert path.stat().st_size > 4 * (1 << 16)
    docs = list(iter_documents(str(path)))
    expected = [f"a.jsonl:{i}" for i in range(1, 3001) if i % 97]
    assert [d.id for d in docs] == expected
    assert docs[-1].text == words(40, seed=3000) and len(docs[1500 - 1500 // 97].text) > 200_000
    lines[2500] = "{not json"
    write(path, "\n".join(lines).encode())
    with pytest.raises(DataError, match=r"a\.jsonl line 2501 is not JSON"):
        list(iter_documents(str(path)))


def test_units_pickle_and_parse_in_workers_as_in_this_process(tmp_path):
    # What the prepare pipeline does: the main process reads units, worker processes parse.
    import pickle

    from lmforge.data.parallel import WorkerPool
    from lmforge.data.sources import iter_units

    write(tmp_path / "c" / "a.jsonl", jsonl([{"text": words(50, seed=i), "n": i} for i in range(300)]))
    write(tmp_path / "c" / "b.txt.gz", gzip.compress(words(2000).encode()))
    write(tmp_path / "c" / "c.txt", "latin-1 \xe9".encode("latin-1"))  # invalid UTF-8
    stats = SourceStats()
    units = list(iter_units([str(tmp_path / "c")], stats=stats))
    assert units and all(pickle.loads(pickle.dumps(u)) == u for u in units)
    assert stats.files_read == 3 and stats.invalid_utf8_docs == 0  # decoding is parsing
    with WorkerPool(2) as pool:
        parsed = list(pool.map(_parse_unit, units))
    docs = [d for part, _ in parsed for d in part]
    for _, worker_stats in parsed:
        stats.merge(worker_stats)
    assert docs == list(iter_documents(str(tmp_path / "c")))
    assert stats.invalid_utf8_docs == 1


def _parse_unit(unit):
    stats = SourceStats()
    return unit.documents(stats), stats


# ---------------------------------------------------------------------------- hostile files

FEW = settings(max_examples=40, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BOMS = {"utf-8-sig": lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
        "utf-16-le": lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"),
        "utf-16-be": lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"),
        "utf-32-le": lambda t: codecs.BOM_UTF32_LE + t.encode("utf-32-le"),
        "utf-32-be": lambda t: codecs.BOM_UTF32_BE + t.encode("utf-32-be")}
# Text without NUL (a NUL character is binary to a directory sweep) or lone surrogates
plain_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                     max_size=300)


def one_line_data_error(spec: str, options: SourceOptions | None = None) -> str:
    with pytest.raises(DataError) as err:
        list(iter_documents(spec, options))
    assert "\n" not in str(err.value)
    return str(err.value)


@FEW
@given(text=plain_text, encoding=st.sampled_from(sorted(BOMS)), gz=st.booleans())
def test_text_with_a_byte_order_mark_is_decoded_by_it(tmp_path, text, encoding, gz):
    data = BOMS[encoding](text)
    corpus = tmp_path / encoding
    shutil.rmtree(corpus, ignore_errors=True)  # hypothesis runs every example in one tmp_path
    name = "doc.txt.gz" if gz else "doc.txt"
    write(corpus / name, gzip.compress(data) if gz else data)
    stats = SourceStats()
    # in a directory: a sweep that skips binary files must not take UTF-16's NULs for one
    docs = list(iter_corpus([str(corpus)], stats=stats)) if text else []
    assert [d.text for d in docs] == ([text] if text else [])
    assert stats.invalid_utf8_docs == 0 and stats.binary_skipped == 0


@FEW
@given(texts=st.lists(plain_text, min_size=1, max_size=5), encoding=st.sampled_from(sorted(BOMS)))
def test_jsonl_with_a_byte_order_mark_is_decoded_by_it(tmp_path, texts, encoding):
    path = write(tmp_path / f"{encoding}.jsonl", BOMS[encoding](jsonl([{"text": t} for t in texts]).decode()))
    assert [d.text for d in iter_documents(str(path))] == texts


def test_binary_file_with_a_bom_like_start_is_still_skipped(tmp_path):
    write(tmp_path / "d" / "blob.bin", codecs.BOM_UTF16_LE + b"\0\0\0\0\x00\xd8")  # NUL, cut
    write(tmp_path / "d" / "a.txt", b"text")
    stats = SourceStats()
    assert [d.id for d in iter_corpus([str(tmp_path / "d")], stats=stats)] == ["a.txt"]
    assert stats.binary_skipped == 1


@pytest.mark.parametrize("line, message", [
    ('{"text": "a", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests arrays or objects too deeply"),
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "too deeply"),
    ('{"text": "a", "n": ' + "9" * 5000 + "}", r"holds a number Python will not read \(Exceeds"),
    ('{"text": "a", "n": -' + "1" * 5000 + "}", "holds a number Python will not read"),
])
def test_jsonl_too_deep_or_with_a_huge_integer_is_one_line(tmp_path, line, message):
    path = write(tmp_path / "x.jsonl", b'{"text": "fine"}\n' + line.encode() + b"\n")
    assert re.search(r"x\.jsonl line 2 .*" + message, one_line_data_error(str(path)))


@FEW
@given(depth=st.integers(1, 3000), digits=st.integers(1, 6000))
def test_jsonl_any_depth_or_number_of_digits_is_read_or_one_line(tmp_path, depth, digits):
    row = '{"text": "a", "m": ' + "[" * depth + "]" * depth + ', "n": ' + "7" * digits + "}\n"
    path = write(tmp_path / "x.jsonl", row.encode())
    try:
        [doc] = iter_documents(str(path))
    except DataError as err:
        assert "\n" not in str(err) and (depth > 900 or digits > 4300)
    else:
        assert doc.text == "a"


def test_damaged_parquet_is_one_line(tmp_path):
    good = write_parquet(tmp_path / "t.parquet", {"text": ["hello"] * 100}, row_group_size=10)
    data = bytearray(good.read_bytes())
    data[-200:-8] = b"\xff" * 192  # the footer's thrift: pyarrow's message ends in a newline
    path = write(tmp_path / "footer.parquet", bytes(data))
    assert "footer.parquet is not a readable Parquet file" in one_line_data_error(str(path))


def mutated(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for pos, length, new in edits:
        pos %= len(out) + 1
        out[pos:pos + length] = new
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 32), st.binary(max_size=8)),
                 min_size=1, max_size=3)


@FEW
@given(damage=edits, kind=st.sampled_from(["parquet", *sorted(COMPRESS)]))
def test_damaged_parquet_or_compressed_file_gives_documents_or_one_line(tmp_path, damage, kind):
    text = words(300)
    if kind == "parquet":
        good = write_parquet(tmp_path / "g.parquet", {"text": text.split("\n")}, row_group_size=7)
        data, name = good.read_bytes(), "x.parquet"
    else:
        data, name = COMPRESS[kind](jsonl([{"text": t} for t in text.split("\n")])), f"x.jsonl.{kind}"
    path = write(tmp_path / name, mutated(data, damage))
    try:
        list(iter_documents(str(path)))
    except DataError as err:
        assert "\n" not in str(err)
