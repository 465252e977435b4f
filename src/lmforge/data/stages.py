"""The two passes of prepare, and the work they hand to worker processes.

Pass 1 reads the sources once, cleans documents in workers, removes duplicates in this
process (it needs every document seen so far) and spools the kept documents to a JSONL
file, deciding each one's split. The tokenizer trains on that spool. Pass 2 reads the
spool, tokenizes in workers and writes the shards in document order. Sources are read
once (a URL or a streamed hub dataset is not read twice), cleaning runs once, and memory
holds only the batches in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import CleanConfig
from lmforge.data.clean import CleanStats, Deduplicator, clean_document, dedup_key
from lmforge.data.document import TRAIN, VAL, Document
from lmforge.data.parallel import ordered_map
from lmforge.data.shards import ShardWriter

BATCH_DOCS = 512
BATCH_CHARS = 1 << 20

# Worker-process state, set once per process by the initializers below.
_clean_cfg: CleanConfig | None = None
_tokenizer: Any = None


def nbytes(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def hash_fraction(doc_id: str) -> float:
    """A document's place in [0, 1): the same id lands in the same split on every run."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64


def batched(items: Iterable[Any], *, size: Callable[[Any], int]) -> Iterator[list[Any]]:
    """Batches of at most BATCH_DOCS items or about BATCH_CHARS characters."""
    batch: list[Any] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += size(item)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# --- pass 1: clean, deduplicate, spool ------------------------------------------------------

def init_clean(cfg: CleanConfig) -> None:
    global _clean_cfg
    _clean_cfg = cfg


def clean_batch(docs: list[Document]) -> tuple[list[tuple[Document, Any]], CleanStats]:
    """Worker: clean each document and compute its duplicate key."""
    cfg = _clean_cfg
    stats = CleanStats()
    out = []
    for doc in docs:
        cleaned = clean_document(doc, cfg, stats)
        if cleaned is not None:
            key = dedup_key(cleaned.text, cfg) if cfg.dedup_exact or cfg.dedup_near else None
            out.append((cleaned, key))
    return out, stats


@dataclass
class Spool:
    """What pass 1 learned about the kept documents."""

    path: Path
    documents: int = 0
    bytes: int = 0
    by_source_split: int = 0  # documents whose source gave their split
    in_val: int = 0
    lowest: tuple[float, int] = (2.0, -1)  # (hash, index) of the document nearest to val
    highest: tuple[float, int] = (-1.0, -1)  # and of the one nearest to train
    forced: dict[int, str] = field(default_factory=dict)
    has_text: bool = False

    def split_of(self, index: int, doc: Document, val_fraction: float) -> str:
        if doc.meta.get("split") in (TRAIN, VAL):
            self.by_source_split += 1
            return doc.meta["split"]
        h = hash_fraction(doc.id)
        self.lowest = min(self.lowest, (h, index))
        self.highest = max(self.highest, (h, index))
        return VAL if h < val_fraction else TRAIN

    def balance(self) -> None:
        """With few documents the hash can put them all on one side; both splits must exist."""
        hashed = self.documents - self.by_source_split
        if self.documents >= 2 and hashed and self.in_val == 0:
            self.forced[self.lowest[1]] = VAL
        elif self.documents >= 2 and hashed and self.in_val == self.documents:
            self.forced[self.highest[1]] = TRAIN

    @property
    def by_position(self) -> bool:
        """A single document (one text file) is split by position, as nanoGPT does."""
        return self.documents == 1 and self.by_source_split == 0


def _record(doc: Document, split: str) -> bytes:
    # Not ASCII-escaped: CJK text stays a third of the size, and UTF-8 is what the tokenizer reads.
    line = json.dumps({"id": doc.id, "split": split, "text": doc.text}, ensure_ascii=False)
    return line.encode("utf-8", errors="surrogatepass") + b"\n"


def spool_documents(docs: Iterable[Document], spool: Spool, *, cfg: CleanConfig,
                    val_fraction: float, workers: int, stats: CleanStats,
                    progress: Callable[[int], None]) -> None:
    dedup = Deduplicator(cfg)
    with open(spool.path, "wb") as out:
        batches = batched(docs, size=lambda d: len(d.text))
        for kept, batch_stats in ordered_map(clean_batch, batches, workers=workers,
                                             initializer=init_clean, initargs=(cfg,)):
            stats.merge(batch_stats)
            lines = []
            for doc, key in kept:
                size = nbytes(doc.text)
                progress(size)
                if key is not None and dedup.check(doc.id, key, nbytes=size, stats=stats):
                    continue
                split = spool.split_of(spool.documents, doc, val_fraction)
                spool.in_val += split == VAL
                spool.has_text = spool.has_text or not doc.text.isspace()
                lines.append(_record(doc, split))
                spool.documents += 1
                spool.bytes += size
            out.write(b"".join(lines))
    spool.balance()


def spooled_texts(spool: Spool) -> Iterator[str]:
    for _, _, text in spooled(spool):
        yield text


def _parse_record(line: bytes) -> tuple[str, str]:
    record = json.loads(line.decode("utf-8", errors="surrogatepass"))
    return record["split"], record["text"]


def spooled(spool: Spool) -> Iterator[tuple[int, str, str]]:
    """(index, split, text) of every spooled document, with the balancing applied."""
    with open(spool.path, "rb") as fh:
        for index, line in enumerate(fh):
            split, text = _parse_record(line)
            yield index, spool.forced.get(index, split), text


def spool_ranges(spool: Spool) -> Iterator[tuple[str, int, int, int]]:
    """(path, first index, byte offset, byte length) of batches of whole spooled lines, so the
    workers read and parse the text themselves and only token ids cross between processes."""
    start = offset = index = first = 0
    with open(spool.path, "rb") as fh:
        for line in fh:
            offset += len(line)
            index += 1
            if index - first >= BATCH_DOCS or offset - start >= BATCH_CHARS:
                yield str(spool.path), first, start, offset - start
                start, first = offset, index
    if offset > start:
        yield str(spool.path), first, start, offset - start


# --- pass 2: tokenize, write shards ---------------------------------------------------------

def init_encode(tokenizer_dir: str, single_thread: bool) -> None:
    global _tokenizer
    if single_thread:  # in a worker process: the workers are the parallelism
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from lmforge.data.tokenizer import load_tokenizer

    _tokenizer = load_tokenizer(Path(tokenizer_dir))


def encode_range(task: tuple[str, int, int, int]) -> tuple[int, list[tuple[str, int, np.ndarray]]]:
    """Worker: read a batch of spooled records and return the first one's index and the
    (split, UTF-8 bytes, token ids) of each; ids as compact arrays, cheap to send back."""
    path, first, offset, length = task
    with open(path, "rb") as fh:
        fh.seek(offset)
        records = [_parse_record(line) for line in fh.read(length).splitlines()]
    ids_list = _tokenizer.encode_batch([text for _, text in records])
    return first, [(split, nbytes(text), np.asarray(ids, dtype=np.uint32))
                   for (split, text), ids in zip(records, ids_list, strict=True)]


@dataclass
class SplitCounts:
    bytes: dict[str, int] = field(default_factory=lambda: {TRAIN: 0, VAL: 0})
    token_counts: np.ndarray | None = None  # occurrences of each token id

    def add_tokens(self, ids: np.ndarray, vocab_size: int) -> None:
        counts = np.bincount(ids, minlength=vocab_size)
        self.token_counts = counts if self.token_counts is None else self.token_counts + counts


def write_shards(spool: Spool, *, tokenizer: Any, tokenizer_dir: Path,
                 writers: dict[str, ShardWriter], workers: int, val_fraction: float,
                 progress: Callable[[int], None]) -> SplitCounts:
    counts = SplitCounts()
    vocab = tokenizer.vocab_size
    if spool.by_position:
        # No end-of-text token here, so char-level losses compare with nanoGPT's exactly.
        for _, _, text in spooled(spool):
            cut = int(len(text) * (1 - val_fraction))
            for split, part in ((TRAIN, text[:cut]), (VAL, text[cut:])):
                ids = np.asarray(tokenizer.encode(part), dtype=np.uint32)
                writers[split].append_document(ids)
                counts.add_tokens(ids, vocab)
                counts.bytes[split] += nbytes(part)
            progress(nbytes(text))
        return counts
    eot = np.asarray([tokenizer.eot_id], dtype=np.uint32)
    for first, records in ordered_map(encode_range, spool_ranges(spool), workers=workers,
                                      initializer=init_encode,
                                      initargs=(str(tokenizer_dir), workers > 0)):
        written = []
        for index, (split, size, ids) in enumerate(records, start=first):
            split = spool.forced.get(index, split)
            ids = np.concatenate([ids, eot])
            writers[split].append_document(ids)
            written.append(ids)
            counts.bytes[split] += size
            progress(size)
        counts.add_tokens(np.concatenate(written), vocab)
    return counts
