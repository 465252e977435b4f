"""Reuters headline generation, a built-in instruction-tuning set: each ModApte story's body
is the prompt and its TITLE the completion; Lewis's TRAIN part trains, his TEST part
evaluates. Only stories with both a title and a body are kept (BRIEF stories are a title
alone, UNPROC ones raw tables without one). The body loses its "Reuter" sign-off and its
runs of whitespace become single spaces; the prompt ends with HEADLINE_CUE, after which the
model writes the title (in capitals, as Reuters writes them).

The lead baseline, the classic one for headlines and summaries: the body's first sentence,
cut to the median length in words of the training titles, in capitals. Its first sentence
ends at a full stop, question or exclamation mark followed by a capital, unless the word is
an initial (U.S.) or a common abbreviation (Corp., Jan.): a sentence splitter without a
model to download, which only matters when the sentence is shorter than the cut.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.document import TRAIN, SourceOptions
from lmforge.data.sources import iter_documents
from lmforge.errors import DataError
from lmforge.tasks.sft import GenerationScores, text_scores
from lmforge.tasks.sft_data import SftExample

HEADLINE_CUE = "\n\nHeadline:\n"
_SIGN_OFF = re.compile(r"(?:(?:^|\s+)reuter[\s.^M]*)+$", re.IGNORECASE)  # some twice
_INITIALS = re.compile(r"(?:[A-Za-z]\.)+")
_ABBREVIATIONS = frozenset(
    "inc. corp. co. ltd. plc. bhd. mr. mrs. ms. dr. st. no. vs. cts. dlrs. pct. approx. "
    "jan. feb. mar. apr. jun. jul. aug. sep. sept. oct. nov. dec.".split())


def reuters_headlines(path: str | Path, *,
                      body_words: int = 0) -> tuple[list[SftExample], list[SftExample]]:
    """(train, test) headline examples of reuters21578.tar.gz (or its unpacked directory),
    ModApte split. `body_words` > 0 keeps the first that many words of each body: with a
    small context, a long body would otherwise lose its beginning, where a story says what
    it is about."""
    if not Path(path).exists():
        raise DataError(f"{path} does not exist; pass reuters21578.tar.gz or the directory "
                        "it unpacks to")
    train: list[SftExample] = []
    test: list[SftExample] = []
    for doc in iter_documents(str(path), SourceOptions(split="modapte")):
        title = " ".join(str(doc.meta.get("title", "")).split())
        body = _body(doc.text, str(doc.meta.get("title", "")))
        if not title or not body:
            continue
        if body_words > 0:
            body = " ".join(body.split()[:body_words])
        example = SftExample(prompt=body + HEADLINE_CUE, completion=title, id=doc.id)
        (train if doc.meta["split"] == TRAIN else test).append(example)
    if not train or not test:
        raise DataError(f"{path} holds no ModApte {'training' if not train else 'test'} stories "
                        "with a title and a body; pass the full reuters21578.tar.gz")
    return train, test


def _body(text: str, title: str) -> str:
    """The body of a story whose text is its title, a blank line and the body (reuters.py);
    "" for a story without both."""
    if not title or not text.startswith(title + "\n\n"):
        return ""
    return " ".join(_SIGN_OFF.sub("", text[len(title) + 2:]).split())


def story_body(example: SftExample) -> str:
    """The body a headline example's prompt holds."""
    return example.prompt.removesuffix(HEADLINE_CUE)


def first_sentence(text: str) -> str:
    words = text.split()
    for i, word in enumerate(words[:-1]):
        ends = word[-1] in ".!?" or word.endswith(('."', '?"', '!"'))
        if (ends and words[i + 1][:1].isupper() and word.lower() not in _ABBREVIATIONS
                and not _INITIALS.fullmatch(word)):
            return " ".join(words[:i + 1])
    return " ".join(words)


@dataclass(frozen=True)
class LeadBaseline:
    words: int  # the cut: the median length of the training titles
    scores: GenerationScores  # on the test stories

    @property
    def rouge_l(self) -> float:
        return self.scores.rouge_l


def lead_baseline(train: list[SftExample], test: list[SftExample]) -> LeadBaseline:
    """The lead baseline's scores on the test stories (the module says how it is made)."""
    words = max(1, round(statistics.median(len(e.completion.split()) for e in train)))
    leads = [" ".join(first_sentence(story_body(e)).split()[:words]).upper() for e in test]
    return LeadBaseline(words, text_scores(leads, [e.completion for e in test]))
