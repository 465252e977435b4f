"""Units of raw input: what the main process reads, and what a worker parses into Documents.

Reading bytes has to happen in one place and in order, and costs little; parsing them
(Reuters SGML, JSON lines, UTF-8 decoding) costs more than reading and can happen anywhere.
So local sources hand out units that carry the bytes and the module-level function that
parses them: a function pickles by name, so a unit crosses to a worker process as its
bytes plus a reference, and only cleaned text comes back. Sources that only give parsed
Documents (Parquet rows, remote datasets) travel as batches of Documents.

Each unit also carries the share of its file's on-disk bytes it accounts for (`disk`), so
that read progress counts what the total counts: the files' sizes on disk. A compressed file's
units hold more bytes than the file; their shares still add up to its size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from lmforge.data.document import Document
from lmforge.data.formats import SourceStats

BATCH_DOCS = 512
BATCH_CHARS = 1 << 20

Parse = Callable[[Any, SourceStats], list[Document]]


@dataclass(frozen=True)
class Unit:
    parse: Parse  # module-level, so that it pickles by name
    payload: Any
    size: int  # bytes (or characters) it holds, to batch units by
    spec: int  # index of the data spec it came from
    disk: int = 0  # on-disk bytes of its file it accounts for (of a remote source: `size`)

    def documents(self, stats: SourceStats) -> list[Document]:
        return self.parse(self.payload, stats)


def given(docs: list[Document], stats: SourceStats) -> list[Document]:
    """The parse of a unit that already holds Documents."""
    return docs


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


def document_units(docs: Iterable[Document], spec: int) -> Iterator[Unit]:
    """Parsed Documents, in batches, as units."""
    for batch in batched(docs, size=lambda d: len(d.text)):
        size = sum(len(d.text) for d in batch)
        yield Unit(given, batch, size, spec, size)


def share_disk(read: Iterable[tuple[Unit, int]], disk: int, spec: int) -> Iterator[Unit]:
    """The units of one file of `disk` bytes, each given the bytes of the file read for it.

    `read` pairs each unit with how far into the file reading had got once it was made, an
    estimate where a decompressor reads ahead. The last unit takes what is left, so the shares
    add up to `disk` exactly; a file that gave no unit (a binary file skipped) still counts,
    by an empty one.
    """
    taken, last = 0, None
    for unit, reached in read:
        if last is not None:
            yield last
        share = min(max(reached, taken), disk) - taken
        last, taken = replace(unit, disk=share), taken + share
    if last is None:
        yield Unit(given, [], 0, spec, disk)
    else:
        yield replace(last, disk=last.disk + disk - taken)
