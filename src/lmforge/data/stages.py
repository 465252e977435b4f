"""The two passes of prepare, the work they hand to worker processes, and the dataset's place.

Pass 1 reads the sources once, as raw units (units.py); workers parse them, clean the
documents, compute their duplicate keys and serialize their spool lines; this process
removes duplicates (it needs every document seen so far), counts the splits and writes the
kept lines to a JSONL spool as they came. The tokenizer trains on that spool. Pass 2 reads the
spool, tokenizes in workers and writes the shards in document order. Sources are read
once (a URL or a streamed hub dataset is not read twice), cleaning runs once, and memory
holds only the batches in flight.

The finished dataset is renamed into place (move_into_place), replacing an old one only when
that holds nothing lmforge did not write; what killed runs left beside it goes first
(clear_leftovers).

Byte counts that bits per byte divide by (the spool's, the splits') are of the text a
document stands for: with clean.segment_chinese, without the spaces put between words.
"""

from __future__ import annotations

import errno
import hashlib
import json
import operator
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import CleanConfig
from lmforge.data.chinese import desegment, is_inserted_space
from lmforge.data.clean import CleanStats, clean_document
from lmforge.data.dedup import DedupKey, Deduplicator, dedup_key
from lmforge.data.document import TRAIN, VAL, Document
from lmforge.data.formats import SourceStats
from lmforge.data.parallel import WorkerPool
from lmforge.data.shards import ShardWriter, dtype_name, foreign_files
from lmforge.data.sources import check_found
from lmforge.data.units import BATCH_CHARS, BATCH_DOCS, Unit, batched
from lmforge.errors import DataError
from lmforge.files import writing

# Worker-process state: the tokenizer a worker loaded, by directory (loaded once per process).
_tokenizers: dict[str, Any] = {}


def nbytes(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def hash_fraction(doc_id: str) -> float:
    """A document's place in [0, 1): the same id lands in the same split on every run."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64


# --- pass 1: clean, deduplicate, spool ------------------------------------------------------

def text_bytes(text: str, segmented: bool) -> int:
    """UTF-8 bytes of the text `text` stands for (without the spaces segmentation put in)."""
    return nbytes(desegment(text) if segmented else text)


@dataclass(frozen=True, slots=True)
class Kept:
    """What the main process needs of a document that survived cleaning."""

    id: str
    key: DedupKey | None  # None without duplicate removal
    nbytes: int  # UTF-8 bytes as spooled (what the cleaning report counts)
    text_bytes: int  # ... of the text it stands for (what bits per byte divide by)
    blank: bool
    source_split: str | None  # the split its source gave, if any
    hash: float  # else its place in [0, 1), which decides its split
    length: int  # bytes of its spool record

    def __reduce__(self) -> tuple[type[Kept], tuple[Any, ...]]:
        # Every kept document crosses from a worker: by position it pickles and loads twice
        # as fast as by the slots' default state, about as fast as a plain tuple.
        return Kept, _kept_fields(self)


_kept_fields = operator.attrgetter(*(f.name for f in fields(Kept)))


@dataclass
class Cleaned:
    """What a worker sends back for a batch of units: the spool records of the documents that
    survived cleaning, already serialized, and the little the main process needs of each."""

    found: list[tuple[int, int]]  # (spec index, documents parsed) of each unit
    kept: list[Kept]
    records: bytes  # the spool lines of `kept`, in order
    source_stats: SourceStats
    clean_stats: CleanStats
    disk: int  # on-disk bytes of the sources the units account for (read progress)


def clean_units(task: tuple[CleanConfig, float, list[Unit]]) -> Cleaned:
    """Worker: parse units into documents, clean them, compute duplicate keys and spool lines."""
    cfg, val_fraction, units = task
    dedup = cfg.dedup_exact or cfg.dedup_near
    out = Cleaned([], [], b"", SourceStats(), CleanStats(), sum(u.disk for u in units))
    records = []
    for unit in units:
        docs = unit.documents(out.source_stats)
        out.found.append((unit.spec, len(docs)))
        for doc in docs:
            cleaned = clean_document(doc, cfg, out.clean_stats)
            if cleaned is None:
                continue
            text = cleaned.text
            key = dedup_key(text, cfg) if dedup else None
            source_split = doc.meta.get("split")
            if source_split in (TRAIN, VAL):
                split, h = source_split, 0.0
            else:  # the main process balances the splits afterwards if the hash left one empty
                source_split, h = None, hash_fraction(doc.id)
                split = VAL if h < val_fraction else TRAIN
            record = _record(cleaned, split)
            size = nbytes(text)
            plain = text_bytes(text, True) if cfg.segment_chinese else size
            out.kept.append(Kept(doc.id, key, size, plain, text.isspace(), source_split, h,
                                 len(record)))
            records.append(record)
    out.records = b"".join(records)
    return out


@dataclass
class Spool:
    """What pass 1 learned about the kept documents."""

    path: Path
    val_fraction: float
    documents: int = 0
    bytes: int = 0
    by_source_split: int = 0  # documents whose source gave their split
    in_val: int = 0
    lowest: tuple[float, int] = (2.0, -1)  # (hash, index) of the document nearest to val
    highest: tuple[float, int] = (-1.0, -1)  # and of the one nearest to train
    forced: dict[int, str] = field(default_factory=dict)
    has_text: bool = False

    def note(self, index: int, source_split: str | None, h: float) -> None:
        """Count the split of the document at `index`: its source's, or its id's hash."""
        if source_split is not None:
            self.by_source_split += 1
            self.in_val += source_split == VAL
            return
        self.lowest = min(self.lowest, (h, index))
        self.highest = max(self.highest, (h, index))
        self.in_val += h < self.val_fraction

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


def spool_documents(units: Iterable[Unit], spool: Spool, *, specs: list[str], cfg: CleanConfig,
                    pool: WorkerPool, source_stats: SourceStats, clean_stats: CleanStats,
                    progress: Callable[[int], None]) -> None:
    """Pass 1: units are parsed and cleaned in workers; here only what needs every document
    seen so far happens (duplicate removal, split counts), and the workers' records are
    written as they are."""
    dedup = Deduplicator(cfg)
    found = [0] * len(specs)
    with writing(f"the cleaned text ({spool.path.name})"), open(spool.path, "wb") as out:
        tasks = ((cfg, spool.val_fraction, batch) for batch in batched(units, size=lambda u: u.size))
        for batch in pool.map(clean_units, tasks):
            source_stats.merge(batch.source_stats)
            clean_stats.merge(batch.clean_stats)
            for spec, n in batch.found:
                found[spec] += n
            view = memoryview(batch.records)
            start = run = 0  # the records from `run` to `start` are kept, not yet written
            for doc in batch.kept:
                if doc.key is not None and dedup.check(doc.id, doc.key, nbytes=doc.nbytes,
                                                       stats=clean_stats):
                    out.write(view[run:start])
                    run = start + doc.length
                else:
                    spool.note(spool.documents, doc.source_split, doc.hash)
                    spool.has_text = spool.has_text or not doc.blank
                    spool.documents += 1
                    spool.bytes += doc.text_bytes
                start += doc.length
            out.write(view[run:start])
            progress(batch.disk)
    for index, n in enumerate(found):
        check_found(specs, index, n)
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


def spool_ranges(spool: Spool) -> Iterator[tuple[int, int, int]]:
    """(first index, byte offset, byte length) of batches of whole spooled lines, so the
    workers read and parse the text themselves and only token ids cross between processes."""
    start = offset = index = first = 0
    with open(spool.path, "rb") as fh:
        for line in fh:
            offset += len(line)
            index += 1
            if index - first >= BATCH_DOCS or offset - start >= BATCH_CHARS:
                yield first, start, offset - start
                start, first = offset, index
    if offset > start:
        yield first, start, offset - start


# --- pass 2: tokenize, write shards ---------------------------------------------------------

def _loaded(tokenizer_dir: str) -> Any:
    if tokenizer_dir not in _tokenizers:
        from lmforge.data.tokenizer import load_tokenizer

        _tokenizers[tokenizer_dir] = load_tokenizer(Path(tokenizer_dir))
    return _tokenizers[tokenizer_dir]


@dataclass
class Encoded:
    """A batch of spooled documents as a worker returns it: per split, the documents' tokens
    (each followed by end-of-text) in one array of the shard dtype, ready to write, with each
    document's token count and the split's UTF-8 bytes; and the batch's token histogram."""

    ids: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    bytes: dict[str, int]
    token_counts: np.ndarray


@dataclass(frozen=True)
class EncodeTask:
    path: str
    tokenizer_dir: str
    dtype: str
    forced: dict[int, str]  # the balancing's overrides (a document or none)
    first: int  # index of the batch's first document
    offset: int
    length: int


def encode_range(task: EncodeTask) -> Encoded:
    """Worker: read a batch of spooled records, tokenize them and group them by split."""
    tokenizer = _loaded(task.tokenizer_dir)
    with open(task.path, "rb") as fh:
        fh.seek(task.offset)
        records = [_parse_record(line) for line in fh.read(task.length).splitlines()]
    ids_list = tokenizer.encode_batch([text for _, text in records])
    segmented = tokenizer.segmented
    eot = [tokenizer.eot_id]
    parts: dict[str, list[np.ndarray]] = {TRAIN: [], VAL: []}
    lengths: dict[str, list[int]] = {TRAIN: [], VAL: []}
    sizes = {TRAIN: 0, VAL: 0}
    for index, ((split, text), ids) in enumerate(zip(records, ids_list, strict=True), start=task.first):
        split = task.forced.get(index, split)
        parts[split].append(np.asarray(ids, dtype=np.uint32))
        parts[split].append(np.asarray(eot, dtype=np.uint32))
        lengths[split].append(len(ids) + 1)
        sizes[split] += text_bytes(text, segmented)
    ids = {name: np.concatenate(p) if p else np.zeros(0, np.uint32) for name, p in parts.items()}
    counts = np.bincount(np.concatenate(list(ids.values())), minlength=tokenizer.vocab_size)
    # The shard dtype (uint16 for most vocabularies) halves what crosses back to the writer.
    return Encoded({name: a.astype(task.dtype) for name, a in ids.items()},
                   {name: np.asarray(n, dtype=np.int64) for name, n in lengths.items()},
                   sizes, counts)


@dataclass
class SplitCounts:
    bytes: dict[str, int] = field(default_factory=lambda: {TRAIN: 0, VAL: 0})
    token_counts: np.ndarray | None = None  # occurrences of each token id

    def add_tokens(self, ids: np.ndarray, vocab_size: int) -> None:
        self.add_counts(np.bincount(ids, minlength=vocab_size))

    def add_counts(self, counts: np.ndarray) -> None:
        self.token_counts = counts if self.token_counts is None else self.token_counts + counts


def _position_cut(text: str, val_fraction: float, segmented: bool) -> int:
    """Where one document splits into train and val; never beside a space segmentation
    inserted, which neither half could then drop, since only a space between two Han
    characters is one. (A run of one-character words moves the cut a few characters on.)"""
    cut = int(len(text) * (1 - val_fraction))
    while segmented and 0 < cut < len(text) and (is_inserted_space(text, cut - 1)
                                                 or is_inserted_space(text, cut)):
        cut += 1
    return cut


def write_shards(spool: Spool, *, tokenizer: Any, tokenizer_dir: Path,
                 writers: dict[str, ShardWriter], pool: WorkerPool, val_fraction: float,
                 progress: Callable[[int], None]) -> SplitCounts:
    counts = SplitCounts()
    vocab = tokenizer.vocab_size
    if spool.by_position:
        # No end-of-text token here, so char-level losses compare with nanoGPT's exactly.
        for _, _, text in spooled(spool):
            cut = _position_cut(text, val_fraction, tokenizer.segmented)
            for split, part in ((TRAIN, text[:cut]), (VAL, text[cut:])):
                ids = np.asarray(tokenizer.encode(part), dtype=np.uint32)
                writers[split].append_document(ids)
                counts.add_tokens(ids, vocab)
                counts.bytes[split] += text_bytes(part, tokenizer.segmented)
            progress(text_bytes(text, tokenizer.segmented))
        return counts
    # Workers without processes (pool.workers=0) encode here, where the cache may hold the
    # tokenizer of an earlier prepare in this process, built in a directory of the same name.
    _tokenizers[str(tokenizer_dir)] = tokenizer
    tasks = (EncodeTask(str(spool.path), str(tokenizer_dir), dtype_name(writers[TRAIN].dtype),
                        spool.forced, first, offset, length)
             for first, offset, length in spool_ranges(spool))
    for batch in pool.map(encode_range, tasks):
        for split, ids in batch.ids.items():
            writers[split].append_documents(ids, batch.lengths[split])
            counts.bytes[split] += batch.bytes[split]
        counts.add_counts(batch.token_counts)
        progress(sum(batch.bytes.values()))
    return counts


# --- the dataset's place: what killed runs left beside it, moving the new one in ------------

def not_ours(out: Path, foreign: list[str]) -> DataError:
    """The refusal to replace `out`, naming (on one line) what lmforge did not write there."""
    names = [name if name.isprintable() else repr(name) for name in foreign[:3]]
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    return DataError(f"{out} already holds files lmforge did not write ({', '.join(names)}"
                     f"{more}); choose another --out or empty it")


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished dataset `tmp` to `out`. A non-empty `out` was found lmforge's by
    prepare; it is checked again once moved aside, so nothing put there since is lost."""
    try:
        os.rename(tmp, out)  # `out` absent or empty: one step
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    foreign = foreign_files(old)
    if foreign:
        os.rename(old, out)
        raise not_ours(out, foreign)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a process before this one that had its pid
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # another user's
    return True


def _size(path: Path) -> int:
    return sum(os.lstat(os.path.join(root, name)).st_size
               for root, _, files in os.walk(path) for name in files)


def clear_leftovers(out: Path, log: Callable[[str], None]) -> None:
    """Remove what prepare runs into `out` that were killed left beside it: build directories
    `.NAME.tmp-PID` and replaced datasets `.NAME.old-PID` of processes no longer alive.
    They are lmforge's by name and place, and with `out` locked no live prepare uses them.
    An old dataset that is all there is (killed between the renames) is put back instead."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)")
    removed, freed = [], 0
    for path in sorted(out.parent.iterdir()):
        found = pattern.fullmatch(path.name)
        if not found or path.is_symlink() or not path.is_dir() or _alive(int(found[2])):
            continue
        if found[1] == "old" and not out.exists() and not out.is_symlink():
            os.rename(path, out)
            log(f"put {out} back from {path.name}, where a killed prepare had moved it")
            continue
        size = _size(path)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path.name)
            freed += size
    if removed:
        log(f"removed {', '.join(removed)} beside {out}, left by killed prepare runs "
            f"({freed / 1e6:,.1f} MB)")
