"""Chinese text: Han characters, word segmentation with jieba, and undoing it.

Written Chinese has no spaces between words, so byte-level BPE merges across word
boundaries. clean.segment_chinese puts a space between the words of each run of Han
characters; the tokenizer then learns word-like tokens. Those spaces are not part of the
text: a tokenizer trained on segmented text removes them when decoding (`desegment`), and
the byte counts that bits per byte divide by leave them out.

Undoing is by rule, not by record: every single space between two Han characters goes, so a
space the text itself had there goes too (rare in Chinese, which does not write them).
jieba is imported only when segmentation or tagging needs it (the 'zh' extra).
"""

from __future__ import annotations

import re
from types import ModuleType

from lmforge.errors import DataError

# CJK Unified Ideographs with extension A, the compatibility ideographs, and planes 2-3
# (extensions B to H).
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HAN_RUN = re.compile(f"[{HAN}]+")
_HAN_CHAR = re.compile(f"[{HAN}]")
_INSERTED = re.compile(f"(?<=[{HAN}]) (?=[{HAN}])")


def jieba() -> ModuleType:
    """The jieba module, or a one-line error that names the extra to install."""
    try:
        import jieba
    except ImportError as e:
        raise DataError("clean.segment_chinese needs jieba: pip install 'lmforge[zh]'") from e
    import logging

    jieba.setLogLevel(logging.WARNING)  # it logs dictionary loading at DEBUG on every process
    return jieba


def segment(text: str) -> str:
    """`text` with a space between the words jieba finds in each run of Han characters."""
    if not HAN_RUN.search(text):
        return text
    cut = jieba().lcut
    return HAN_RUN.sub(lambda m: " ".join(cut(m.group())), text)


def desegment(text: str) -> str:
    """`text` without the spaces `segment` put in: each single space between two Han
    characters."""
    return _INSERTED.sub("", text) if " " in text else text


def is_inserted_space(text: str, at: int) -> bool:
    """Whether text[at] is a space `desegment` would remove."""
    return _INSERTED.match(text, at) is not None


def mostly_han(text: str) -> bool:
    """Whether most of the letters of `text` are Han characters (punctuation, digits and
    spaces do not count either way)."""
    han = len(_HAN_CHAR.findall(text))
    return han > 0 and 2 * han > sum(c.isalpha() for c in text)
