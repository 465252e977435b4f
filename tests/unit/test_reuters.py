"""Reuters-21578: synthetic SGML written here, and the real distribution when it is on hand."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from pathlib import Path

import pytest

from lmforge.data.document import TRAIN, VAL, SourceOptions
from lmforge.data.sources import SourceStats, iter_corpus, iter_documents
from lmforge.errors import DataError

REAL = Path(__file__).parents[3] / "shared" / "data" / "reuters21578.tar.gz"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MODAPTE = SourceOptions(split="modapte")


def story(newid: int, *, lewis: str = "TRAIN", topics: str = "YES", codes: str = "",
          text: str = "") -> str:
    return (f'<REUTERS TOPICS="{topics}" LEWISSPLIT="{lewis}" CGISPLIT="TRAINING-SET" '
            f'OLDID="{newid + 5000}" NEWID="{newid}">\n<DATE>26-FEB-1987 15:01:01.79</DATE>\n'
            f"<TOPICS>{codes}</TOPICS>\n<PLACES><D>usa</D></PLACES>\n<PEOPLE></PEOPLE>\n"
            f"<ORGS></ORGS>\n<EXCHANGES></EXCHANGES>\n<COMPANIES></COMPANIES>\n"
            f"<UNKNOWN> \n&#5;&#5;&#5;C T\n&#22;&#22;&#1;f0704&#31;reute</UNKNOWN>\n"
            f"<TEXT{text}</TEXT>\n</REUTERS>\n")


SGM = ('<!DOCTYPE lewis SYSTEM "lewis.dtd">\n'
       + story(1, codes="<D>cocoa</D><D>grain</D>",
               text=">&#2;\n<TITLE>PROFIT &amp; LOSS &lt;AB&gt;</TITLE>\n<DATELINE>    NEW YORK, "
                    "Feb 26 - </DATELINE><BODY>Profits rose.\n    More text.\n Reuter\n&#3;</BODY>")
       + story(2, lewis="TEST", text=' TYPE="BRIEF">&#2;\n******<TITLE>RATES UP\n</TITLE>'
                                     "Blah blah blah.\n&#3;\n\n")
       + story(3, topics="NO", text=' TYPE="UNPROC">&#2;\nRAW TABLE 1 vs 2\n\n Reuter\n&#3;\n\n')
       + story(4, lewis="NOT-USED", text=">&#2;\n<BODY>No title here.\n&#3;</BODY>"))


def test_synthetic_sgm_text_and_metadata(tmp_path):
    path = tmp_path / "reut2-000.sgm"
    path.write_text(SGM)
    docs = list(iter_documents(str(path)))
    assert [d.id for d in docs] == ["reuters:1", "reuters:2", "reuters:3", "reuters:4"]
    assert [d.text for d in docs] == ["PROFIT & LOSS <AB>\n\nProfits rose.\n    More text.\n Reuter",
                                      "RATES UP", "RAW TABLE 1 vs 2\n\n Reuter", "No title here."]
    assert docs[0].meta == {"topics": ["cocoa", "grain"], "places": ["usa"], "people": [],
                            "orgs": [], "exchanges": [], "date": "26-FEB-1987 15:01:01.79",
                            "newid": 1, "lewissplit": "TRAIN", "cgisplit": "TRAINING-SET",
                            "title": "PROFIT & LOSS <AB>"}
    assert "split" not in docs[0].meta


def test_modapte_keeps_topics_yes_train_and_test(tmp_path):
    path = tmp_path / "reut2-000.sgm"
    path.write_text(SGM)
    docs = list(iter_documents(str(path), MODAPTE))
    assert [(d.id, d.meta["split"]) for d in docs] == [("reuters:1", TRAIN), ("reuters:2", VAL)]


def test_unknown_split_lists_the_known_ones(tmp_path):
    path = tmp_path / "reut2-000.sgm"
    path.write_text(SGM)
    with pytest.raises(DataError, match="unknown split 'lewis' for Reuters-21578; choose one of modapte"):
        list(iter_documents(str(path), SourceOptions(split="lewis")))


def test_stray_byte_becomes_replacement_and_is_counted(tmp_path):
    path = tmp_path / "reut2-001.sgm.gz"  # compressed single files work too
    path.write_bytes(gzip.compress(SGM.replace("Profits rose.", "Profits\xfc rose.").encode("latin-1")))
    stats = SourceStats()
    docs = list(iter_corpus([str(path)], stats=stats))
    assert docs[0].text.startswith("PROFIT & LOSS <AB>\n\nProfits\ufffd rose.")
    assert stats.invalid_utf8_docs == 1 and stats.files_read == 1


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_and_directory_give_the_same_stream(tmp_path):
    second = SGM.replace('NEWID="', 'NEWID="10').encode()  # ids 101..104
    # Out of order, as in the real archive, and with the distribution's other files.
    members = {"r/reut2-001.sgm": second, "r/README.txt": b"read me", "r/reut2-000.sgm": SGM.encode()}
    archive = tmp_path / "any-name.tar.gz"
    archive.write_bytes(make_tar(members))
    unpacked = tmp_path / "unpacked"
    for name, data in members.items():
        (unpacked / name).parent.mkdir(parents=True, exist_ok=True)
        (unpacked / name).write_bytes(data)
    from_tar = list(iter_documents(str(archive)))
    assert [d.id for d in from_tar] == [f"reuters:{i}" for i in (1, 2, 3, 4, 101, 102, 103, 104)]
    assert from_tar == list(iter_documents(str(unpacked)))
    assert list(iter_documents(str(archive), MODAPTE)) == list(iter_documents(str(unpacked), MODAPTE))


@pytest.fixture(scope="module")
def real_docs():
    if not REAL.exists():
        pytest.skip(f"the Reuters-21578 distribution is not at {REAL}")
    stats = SourceStats()
    return list(iter_corpus([str(REAL)], stats=stats)), stats


def test_real_corpus_counts_and_cleanliness(real_docs):
    docs, stats = real_docs
    assert len(docs) == 21_578 and len({d.id for d in docs}) == 21_578
    assert [d.meta["newid"] for d in docs] == list(range(1, 21_579))  # file order, then document
    assert not [d.id for d in docs if CONTROL.search(d.text)]
    assert not [d.id for d in docs if "&lt;" in d.text or "&amp;" in d.text or "&#" in d.text]
    # reut2-017.sgm holds one stray 0xFC byte (in NEWID 17980): the only replacement.
    assert [d.id for d in docs if "\ufffd" in d.text] == ["reuters:17980"]
    assert stats.invalid_utf8_docs == 1 and stats.files_read == 1
    first = docs[0]
    assert first.text.startswith("BAHIA COCOA REVIEW\n\nShowers continued throughout the week")
    assert first.text.endswith("Reuter")
    assert first.meta["topics"] == ["cocoa"] and first.meta["newid"] == 1
    assert first.meta["places"] == ["el-salvador", "usa", "uruguay"]
    assert (first.meta["lewissplit"], first.meta["cgisplit"]) == ("TRAIN", "TRAINING-SET")
    assert first.meta["date"] == "26-FEB-1987 15:01:01.79"


def test_real_corpus_modapte(real_docs):
    docs = list(iter_documents(str(REAL), MODAPTE))
    splits = [d.meta["split"] for d in docs]
    assert (splits.count(TRAIN), splits.count(VAL), len(docs)) == (9_603, 3_299, 12_902)
    everything = {d.id: d for d in real_docs[0]}
    assert all(d.text == everything[d.id].text for d in docs)


def test_real_directory_matches_archive(real_docs, tmp_path):
    with tarfile.open(REAL) as tar:
        for member in tar.getmembers():
            if member.name.endswith(("reut2-000.sgm", "reut2-021.sgm")):
                (tmp_path / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    from_dir = list(iter_documents(str(tmp_path)))
    wanted = [d for d in real_docs[0] if d.meta["newid"] <= 1000 or d.meta["newid"] > 21_000]
    assert len(from_dir) == 1578 and from_dir == wanted


def test_truncated_archive_names_file_and_offset(tmp_path):
    big = SGM.encode() * 200  # ids repeat; only the cut matters here
    packed = make_tar({"r/reut2-000.sgm": big, "r/reut2-001.sgm": big})
    archive = tmp_path / "reuters21578.tar.gz"
    archive.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"reuters21578\.tar\.gz is truncated or corrupt after "
                                        r"[\d,]+ bytes \(EOFError"):
        list(iter_documents(str(archive)))
