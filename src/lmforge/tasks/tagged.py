"""Tagged sentences for sequence tagging (part of speech, named entities): CoNLL and CoNLL-U
files, and a tagging set that needs no download, Python sources tagged by the standard
library's `tokenize` module.

- **CoNLL** (CoNLL-2000/2003 and the many files like them): one word per line in whitespace
  separated columns, the word in one column (`word_column`, the first by default) and its
  tag in another (`tag_column`, the last by default); a blank line between sentences;
  `-DOCSTART-` lines (CoNLL-2003's document breaks) are skipped.
- **CoNLL-U** (Universal Dependencies), read with the `conllu` library: the FORM of each
  word and its UPOS tag (`field="upos"`) or its language-specific XPOS (`field="xpos"`).
  Multiword tokens (`2-3`) and empty nodes (`3.1`) are left out: the words of the syntax
  are the ones that carry tags.
- **Python sources**: a sentence is a logical line of a standard-library package's files
  (a statement, brackets and continuation lines included, or a comment on its own line),
  its words are the tokens' strings and the tag of each is its token type (NAME, OP,
  NUMBER, STRING, COMMENT, ...), with `keyword` for Python's keywords. The tags are exact, so
  a tagger's errors are its own, and the set is as large as the package (json: about 700
  sentences, email: about 6,000). Token types come from the running Python (3.12 splits
  f-strings into FSTRING_START, FSTRING_MIDDLE, FSTRING_END).
"""

from __future__ import annotations

import io
import keyword
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.stages import hash_fraction
from lmforge.errors import DataError

DOCSTART = "-DOCSTART-"
CONLLU_FIELDS = ("upos", "xpos")
# what tokenize yields that is layout, not a word
_LAYOUT = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER,
           tokenize.ENCODING}


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class TaggedSet:
    """Training and test sentences, and every tag either uses (sorted: the tag indices)."""

    train: list[TaggedSentence]
    test: list[TaggedSentence]
    tag_names: tuple[str, ...]


def tagged_set(train: list[TaggedSentence], test: list[TaggedSentence]) -> TaggedSet:
    if not train or not test:
        raise DataError(f"tagging needs training and test sentences; got {len(train)} and "
                        f"{len(test)}")
    names = sorted({t for s in [*train, *test] for t in s.tags})
    return TaggedSet(train, test, tuple(names))


def hold_out(sentences: list[TaggedSentence], fraction: float) -> TaggedSet:
    """A test part of about `fraction` of the sentences, chosen by a hash of their words, so
    the same sentence is on the same side on every run and copies of it never straddle."""
    test = [s for s in sentences if hash_fraction("\x1f".join(s.words)) < fraction]
    train = [s for s in sentences if hash_fraction("\x1f".join(s.words)) >= fraction]
    return tagged_set(train, test)


def read_tagged(path: str | Path, *, word_column: int = 0, tag_column: int = -1,
                field: str = "upos") -> list[TaggedSentence]:
    """The sentences of a CoNLL-U file (`.conllu`) or of a CoNLL one (any other name)."""
    path = Path(path)
    if path.suffix == ".conllu":
        return read_conllu(path, field=field)
    return read_conll(path, word_column=word_column, tag_column=tag_column)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None


def read_conll(path: str | Path, *, word_column: int = 0,
               tag_column: int = -1) -> list[TaggedSentence]:
    """The sentences of a CoNLL file: whitespace-separated columns, a blank line between
    sentences, -DOCSTART- lines skipped."""
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        columns = line.split()
        if not columns or columns[0] == DOCSTART:
            if words:
                sentences.append(TaggedSentence(tuple(words), tuple(tags)))
            words, tags = [], []
            continue
        if not _distinct_columns(len(columns), word_column, tag_column):
            raise DataError(f"{path}:{number}: {len(columns)} column(s), but the word is in "
                            f"column {word_column} and the tag in column {tag_column}")
        words.append(columns[word_column])
        tags.append(columns[tag_column])
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    if not sentences:
        raise DataError(f"{path}: no tagged words (CoNLL: a word and its tag per line)")
    return sentences


def _distinct_columns(n: int, word_column: int, tag_column: int) -> bool:
    """Whether a line of n columns has both, in different columns (-1 is the last)."""
    if not (-n <= word_column < n and -n <= tag_column < n):
        return False
    return word_column % n != tag_column % n


def read_conllu(path: str | Path, *, field: str = "upos") -> list[TaggedSentence]:
    """The sentences of a CoNLL-U file, each word tagged with its UPOS or XPOS."""
    import conllu
    from conllu.exceptions import ParseException

    path = Path(path)
    if field not in CONLLU_FIELDS:
        raise DataError(f"CoNLL-U tags come from {' or '.join(CONLLU_FIELDS)}, not {field!r}")
    try:
        parsed = conllu.parse(_text(path))
    except ParseException as err:
        raise DataError(f"{path}: not CoNLL-U: {str(err).splitlines()[0]}") from None
    sentences = []
    for number, tokens in enumerate(parsed, start=1):
        words, tags = [], []
        for token in tokens:
            if not isinstance(token["id"], int):  # a multiword token or an empty node
                continue
            tag = token.get(field)
            if not tag or tag == "_":
                where = tokens.metadata.get("sent_id", str(number))
                raise DataError(f"{path}: sentence {where}, word {token['form']!r} has no "
                                f"{field.upper()} tag")
            words.append(str(token["form"]))
            tags.append(str(tag))
        if words:
            sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    if not sentences:
        raise DataError(f"{path}: no sentences (CoNLL-U: ten tab-separated columns per word)")
    return sentences


# ---------------------------------------------------------------------------- Python sources

def python_sentences(source: str) -> list[TaggedSentence]:
    """The logical lines of Python source, each token tagged with its type (keyword for
    keywords). A comment on a line of its own is a sentence; one after code belongs to it."""
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    depth = 0  # brackets open: a newline inside them continues the logical line
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.OP and tok.string in ("(", "[", "{"):
            depth += 1
        elif tok.type == tokenize.OP and tok.string in (")", "]", "}"):
            depth = max(0, depth - 1)
        if tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and depth == 0):
            if words:
                sentences.append(TaggedSentence(tuple(words), tuple(tags)))
            words, tags = [], []
        elif tok.type not in _LAYOUT and tok.string.strip():
            words.append(tok.string)
            is_keyword = tok.type == tokenize.NAME and keyword.iskeyword(tok.string)
            tags.append("keyword" if is_keyword else tokenize.tok_name[tok.type])
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    return sentences


def package_files(package: str) -> list[Path]:
    """The .py files of a standard-library package (or module), tests left out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = stdlib / package
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.py")
                       if not {"test", "tests"} & set(p.relative_to(root).parts))
    else:
        files = [root.with_suffix(".py")] if root.with_suffix(".py").is_file() else []
    if not files:
        raise DataError(f"no standard-library package or module named {package!r} in {stdlib}")
    return files


def python_tokens_set(package: str = "json", *, test_fraction: float = 0.2) -> TaggedSet:
    """The logical lines of a standard-library package, tagged by `tokenize`: the last
    `test_fraction` of each file's sentences are the test part (code further down a file is
    new code, as the end of a text is for a language model)."""
    train: list[TaggedSentence] = []
    test: list[TaggedSentence] = []
    for path in package_files(package):
        try:
            sentences = python_sentences(path.read_text(encoding="utf-8"))
        except (tokenize.TokenError, SyntaxError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot tokenize: {err}") from None
        cut = len(sentences) - round(len(sentences) * test_fraction)
        train += sentences[:cut]
        test += sentences[cut:]
    return tagged_set(train, test)
