"""What sources produce and what they are told: the Document and the reading options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmforge.files import default_cache_dir

# A source that knows its corpus's standard split sets meta["split"] to one of these, and
# prepare then uses it instead of hashing the document id.
TRAIN, VAL = "train", "val"


@dataclass(frozen=True)
class Document:
    text: str
    id: str  # stable across runs: the split by hash depends on it
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source; every reader takes the fields it understands and ignores the rest."""

    text_field: str = "text"  # JSONL field / Parquet column / HF dataset column with the text
    split: str = ""  # a corpus's standard split, e.g. "modapte" for Reuters-21578
    cache_dir: Path = field(default_factory=default_cache_dir)
