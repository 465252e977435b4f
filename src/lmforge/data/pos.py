"""Part-of-speech statistics of the first clean.pos_sample prepared documents, for the report.

NLTK's averaged perceptron tagger tags English (Penn Treebank tags). It knows no Chinese:
with clean.segment_chinese, documents whose letters are mostly Han characters go to
jieba.posseg instead (jieba's tags: n noun, v verb, ns place name, x punctuation, ...), on
the text without the spaces segmentation inserted. Each tagger's counts stay apart, since
the two tag sets do not mix.

The taggers are loaded by `load_taggers` before prepare reads anything, so a missing or
broken install stops it at once rather than after the whole corpus is read and tokenized.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import CleanConfig
from lmforge.data import chinese
from lmforge.errors import DataError

TAGGER = "averaged_perceptron_tagger_eng"
_TOP = 20  # tags per tagger in the report


@dataclass(frozen=True)
class Taggers:
    """What tags the sample: NLTK's tagger, loaded, with the tokenizer its input needs, and
    jieba.posseg where Chinese documents go to it."""

    english: Any  # nltk.tag.perceptron.PerceptronTagger
    words: Callable[[str], list[str]]
    chinese: Any | None = None  # the jieba.posseg module


def _install_hint() -> str:
    import nltk

    where = nltk.data.path[0] if nltk.data.path else "~/nltk_data"
    return (f"run `python -m nltk.downloader -d {where} {TAGGER}` (it must go under a "
            f"directory of nltk.data.path, the first being {where})")


def _nltk_tagger() -> Any:
    import nltk
    from nltk.tag.perceptron import PerceptronTagger

    try:
        found = nltk.data.find(f"taggers/{TAGGER}/")
    except LookupError:
        raise DataError(f"NLTK resource taggers/{TAGGER} is missing (clean.pos_sample needs "
                        f"it): {_install_hint()}") from None
    try:
        return PerceptronTagger(lang="eng")
    except (OSError, ValueError, TypeError, LookupError) as err:
        where = getattr(found, "path", found)
        reason = (str(err).splitlines() or [""])[0]
        raise DataError(f"NLTK's tagger at {where} is incomplete or unreadable "
                        f"({type(err).__name__}: {reason}); install it again: "
                        f"{_install_hint()}") from None


def _english_words() -> Callable[[str], list[str]]:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return nltk.word_tokenize
    except LookupError:  # punkt only splits sentences; a regex split serves for counting tags
        return re.compile(r"\w+|[^\w\s]").findall


def load_taggers(cfg: CleanConfig) -> Taggers:
    """The taggers clean.pos_sample needs, loaded; a one-line DataError that says how to
    install one that is missing or broken."""
    english = _nltk_tagger()
    if not cfg.segment_chinese:
        return Taggers(english, _english_words())
    chinese.jieba()
    import jieba.posseg

    return Taggers(english, _english_words(), jieba.posseg)


@dataclass
class _Tally:
    tagger: str
    tagset: str
    documents: int = 0
    tokens: int = 0
    tags: Counter = field(default_factory=Counter)

    def add(self, tags: list[str]) -> None:
        self.documents += 1
        self.tokens += len(tags)
        self.tags.update(tags)

    def as_dict(self) -> dict[str, Any]:
        return {"tagger": self.tagger, "tagset": self.tagset, "documents": self.documents,
                "tokens": self.tokens, "tags": dict(self.tags.most_common(_TOP))}


def pos_statistics(texts: Iterable[str], *, sample: int, taggers: Taggers) -> dict[str, Any]:
    """Tag frequencies (the top 20 of each tagger) of the first `sample` texts: under "nltk",
    and under "jieba" when Chinese documents go to jieba."""
    english = _Tally(f"nltk {TAGGER}", "Penn Treebank")
    zh = _Tally("jieba.posseg", "jieba (ICTCLAS)")
    for text in itertools.islice(texts, max(sample, 0)):
        if taggers.chinese is not None and chinese.mostly_han(text):
            zh.add([p.flag for p in taggers.chinese.lcut(chinese.desegment(text))
                    if not p.word.isspace()])
        else:
            english.add([tag for _, tag in taggers.english.tag(taggers.words(text))])
    found = {"nltk": english.as_dict()}
    if taggers.chinese is not None:
        found["jieba"] = zh.as_dict()
    return found
