"""benchmarks/carry_over.py's corpora, built for real: each about tinyshakespeare's size, cut
at a boundary between two files or stories, the same on every build, and the Reuters one
free of the corpus's SGML markup."""

import importlib.util
import re
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "carry_over.py"
TARGET = 1_115_394  # tinyshakespeare's length in characters
CLOSE = 0.05  # "about the size": within 5%
# The markup of Reuters-21578's SGML (a story's body holds tickers such as "<AXP>", which
# are the text's own, so any "<...>" would not do), its entities and its wire-service codes.
SGML = re.compile(r"</?(REUTERS|TEXT|BODY|TITLE|DATELINE|DATE|TOPICS|PLACES|PEOPLE|ORGS|"
                  r"EXCHANGES|COMPANIES|UNKNOWN|MKNOTE|AUTHOR)\b|&#\d+;|&lt;|&amp;|[\x02\x03]")


@pytest.fixture(scope="module")
def carry_over():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports common.py and time_to_loss.py
    try:
        spec = importlib.util.spec_from_file_location("carry_over", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["carry_over"] = module  # NamedTuple looks its module up while defined
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_the_python_corpus_is_the_same_each_time_and_about_the_target_size(carry_over):
    first, again = carry_over.python_corpus(), carry_over.python_corpus()
    assert first == again
    assert abs(len(first) - TARGET) <= CLOSE * TARGET


def test_the_python_corpus_ends_at_a_file_boundary(carry_over):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = carry_over.python_corpus(stdlib)
    assert corpus == whole_pieces(carry_over.python_sources(stdlib), "\n", len(corpus))


def whole_pieces(pieces, sep: str, size: int) -> str:
    """The first pieces joined, as few as make at least `size` characters."""
    kept, length = [], -len(sep)
    for piece in pieces:
        kept.append(piece)
        length += len(sep) + len(piece)
        if length >= size:
            break
    return sep.join(kept)


def test_the_cut_is_at_the_boundary_nearest_the_target(carry_over):
    pieces = ["a" * 40, "b" * 40, "c" * 40]
    assert carry_over.cut_near(pieces, "\n", target=90) == "a" * 40 + "\n" + "b" * 40
    assert carry_over.cut_near(pieces, "\n", target=110) == "\n".join(pieces)
    assert carry_over.cut_near(pieces, "\n", target=10) == "a" * 40  # never empty


def test_the_reuters_corpus_is_story_bodies_about_the_target_size(carry_over):
    tarball = carry_over.DEFAULT_REUTERS
    if not tarball.is_file():
        pytest.skip(f"needs {tarball}")
    corpus = carry_over.reuters_corpus(tarball)
    assert abs(len(corpus) - TARGET) <= CLOSE * TARGET
    assert not SGML.search(corpus)
    # bodies, not titles: the first story's body opens the corpus, its title (in capitals)
    # does not
    assert corpus.startswith("Showers continued throughout the week in\nthe Bahia cocoa zone")
    # the first k bodies, whole, for some k: no story cut in two
    assert corpus == whole_pieces(carry_over.reuters_bodies(tarball), "\n\n", len(corpus))
