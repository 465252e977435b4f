"""The data pipeline: sources → split → tokenizer → shards, into one dataset directory.

The corpus is streamed twice (once to train the tokenizer, once to encode), so it never
has to fit in memory. The dataset is built in a hidden sibling directory and renamed into
place when complete, so a crash never leaves half a dataset behind, and preparing again
with the same inputs and settings reuses the result instead of redoing it.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lmforge.data import shards
from lmforge.data.shards import ShardWriter, dtype_for
from lmforge.data.sources import Document, fingerprint, iter_corpus
from lmforge.data.tokenizer import KINDS, Tokenizer, train_tokenizer
from lmforge.errors import DataError

TOKENIZER_DIR = "tokenizer"
_BATCH_DOCS = 1000
_BATCH_CHARS = 4_000_000


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _hash_fraction(doc_id: str) -> float:
    """A document's place in [0, 1): the same id lands in the same split on every run."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64


class _Scan:
    """Counts the corpus while the tokenizer trains on it, and decides each document's split."""

    def __init__(self, val_fraction: float) -> None:
        self.val_fraction = val_fraction
        self.documents = self.empty = self.bytes = self.in_val = 0
        self.has_text = False
        self._lowest = (2.0, -1)   # (hash, index) of the document nearest to val
        self._highest = (-1.0, -1)  # and of the one nearest to train
        self._forced: dict[int, str] = {}

    def texts(self, docs: Iterable[Document]) -> Iterator[str]:
        for doc in docs:
            if not doc.text:  # the same test as _numbered: both passes number alike
                self.empty += 1
                continue
            index = self.documents
            self.documents += 1
            self.bytes += _nbytes(doc.text)
            self.has_text = self.has_text or not doc.text.isspace()
            h = _hash_fraction(doc.id)
            self.in_val += h < self.val_fraction
            self._lowest = min(self._lowest, (h, index))
            self._highest = max(self._highest, (h, index))
            yield doc.text

    def finish(self) -> None:
        # With a few documents the hash can put them all on one side; both splits must exist.
        if self.documents >= 2 and self.in_val == 0:
            self._forced[self._lowest[1]] = "val"
        elif self.documents >= 2 and self.in_val == self.documents:
            self._forced[self._highest[1]] = "train"

    def split_of(self, index: int, doc: Document) -> str:
        if index in self._forced:
            return self._forced[index]
        return "val" if _hash_fraction(doc.id) < self.val_fraction else "train"


def _numbered(docs: Iterable[Document]) -> Iterator[tuple[int, Document]]:
    """The non-empty documents with their index, numbered as _Scan.texts numbers them."""
    index = 0
    for doc in docs:
        if doc.text:
            yield index, doc
            index += 1


def _write_by_position(docs: Iterable[Document], tok: Tokenizer, writers: dict[str, ShardWriter],
                       nbytes: dict[str, int], val_fraction: float) -> None:
    # One document: split its characters as nanoGPT does, without eot, so that char-level
    # losses compare with nanoGPT's exactly.
    for _, doc in _numbered(docs):
        cut = int(len(doc.text) * (1 - val_fraction))
        for split, part in (("train", doc.text[:cut]), ("val", doc.text[cut:])):
            writers[split].append_document(tok.encode(part))
            nbytes[split] += _nbytes(part)


def _write_by_hash(docs: Iterable[Document], tok: Tokenizer, writers: dict[str, ShardWriter],
                   nbytes: dict[str, int], scan: _Scan) -> None:
    batch: list[tuple[str, str]] = []
    chars = 0

    def flush() -> None:
        for (split, text), ids in zip(batch, tok.encode_batch([t for _, t in batch]), strict=True):
            ids.append(tok.eot_id)
            writers[split].append_document(ids)
            nbytes[split] += _nbytes(text)
        batch.clear()

    for index, doc in _numbered(docs):
        batch.append((scan.split_of(index, doc), doc.text))
        chars += len(doc.text)
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            flush()
            chars = 0
    flush()


def _write_splits(sources: list[str], tmp: Path, tok: Tokenizer, scan: _Scan) -> dict[str, Any]:
    nbytes = {"train": 0, "val": 0}
    dtype = dtype_for(tok.vocab_size)
    with ShardWriter(tmp, "train", dtype) as train, ShardWriter(tmp, "val", dtype) as val:
        writers = {"train": train, "val": val}
        if scan.documents == 1:
            _write_by_position(iter_corpus(sources), tok, writers, nbytes, scan.val_fraction)
        else:
            _write_by_hash(iter_corpus(sources), tok, writers, nbytes, scan)
        return {split: {**w.close(), "bytes": nbytes[split]} for split, w in writers.items()}


def _build(tmp: Path, settings: dict[str, Any], fp: str, log: Callable[[str], None]) -> dict[str, Any]:
    sources = settings["sources"]
    t0 = time.perf_counter()
    scan = _Scan(settings["val_fraction"])
    texts = scan.texts(iter_corpus(sources))
    tok = train_tokenizer(settings["tokenizer"], texts, vocab_size=settings["vocab_size"])
    collections.deque(texts, maxlen=0)  # the byte tokenizer learns nothing; count anyway
    scan.finish()
    skipped = f" ({scan.empty:,} empty skipped)" if scan.empty else ""
    size = f"{scan.bytes / 1e6:.1f} MB" if scan.bytes >= 100_000 else f"{scan.bytes:,} bytes"
    plural = "" if scan.documents == 1 else "s"
    log(f"read {scan.documents:,} document{plural}, {size} from {', '.join(sources)}{skipped}")
    if not scan.has_text:
        raise DataError(f"the corpus at {', '.join(sources)} has no text; "
                        "give files that contain text")
    log(f"trained {tok.kind} tokenizer: vocabulary {tok.vocab_size:,} "
        f"in {time.perf_counter() - t0:.1f}s")
    tok.save(tmp / TOKENIZER_DIR)
    splits = _write_splits(sources, tmp, tok, scan)
    for split, entry in splits.items():
        if entry["tokens"] == 0:
            raise DataError(f"the {split} split is empty (0 tokens) at "
                            f"val_fraction={settings['val_fraction']}; add more data or "
                            f"{'raise' if split == 'val' else 'lower'} val_fraction")
    tokens = sum(e["tokens"] for e in splits.values())
    log(f"tokens: train {splits['train']['tokens']:,}, val {splits['val']['tokens']:,} "
        f"(split by {'position' if scan.documents == 1 else 'document'}); "
        f"{scan.bytes / tokens:.2f} bytes per token")
    manifest = {
        "format": shards.FORMAT,
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
                      "dir": TOKENIZER_DIR},
        "dtype": shards.dtype_name(dtype_for(tok.vocab_size)),
        "splits": splits,
        "split_by": "position" if scan.documents == 1 else "document",
        "settings": settings,
        "fingerprint": fp,
        "sources": sources,
    }
    shards.write_manifest(tmp, manifest)
    return manifest


def _describe(settings: Any) -> str:
    try:
        return (f"{', '.join(settings['sources'])}, {settings['tokenizer']} tokenizer, "
                f"vocab_size {settings['vocab_size']}, val_fraction {settings['val_fraction']}")
    except (TypeError, KeyError):
        return "made with other settings"


def _own_names(manifest: dict[str, Any]) -> set[str]:
    names = {shards.MANIFEST, manifest.get("tokenizer", {}).get("dir", TOKENIZER_DIR)}
    for entry in manifest.get("splits", {}).values():
        names |= {entry.get("file"), entry.get("docs_file")}
    return names


def _existing(out: Path, settings: dict[str, Any], fp: str,
              log: Callable[[str], None]) -> dict[str, Any] | None:
    """The dataset at `out` if it can be reused; None if `out` may be (re)written; else raises."""
    if not out.exists():
        return None
    taken = "; choose another --out or delete it"
    if not out.is_dir():
        raise DataError(f"{out} is a file, not a dataset directory{taken}")
    names = set(os.listdir(out))
    if not names:
        return None
    try:
        manifest = shards.read_manifest(out)
    except DataError:
        raise DataError(f"{out} already holds other files and no lmforge dataset{taken}") from None
    if manifest.get("settings") != settings:
        raise DataError(f"{out} already holds a different dataset "
                        f"({_describe(manifest.get('settings'))}){taken}")
    extra = sorted(names - _own_names(manifest))
    if extra:  # never delete what the user put there
        raise DataError(f"{out} holds files lmforge did not write ({extra[0]}){taken}")
    if manifest.get("fingerprint") != fp:
        log(f"the inputs of {out} changed; preparing it again")
        return None
    try:
        shards.verify(out)
    except DataError as err:
        log(f"{err.args[0].split(';')[0]}; preparing it again")
        return None
    return manifest


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):  # an older dataset of ours, checked by _existing
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old, out)
            raise
        shutil.rmtree(old)
        return
    if out.is_dir():
        out.rmdir()
    os.rename(tmp, out)


def prepare(sources: list[str], out: Path, *, tokenizer: str = "bpe", vocab_size: int = 8192,
            val_fraction: float = 0.1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare `sources` into the dataset directory `out` and return its manifest."""
    t0 = time.perf_counter()
    out = Path(out)
    if not sources:
        raise DataError("no data sources given; give a file, a directory, a glob or 'stdlib'")
    if tokenizer not in KINDS:
        raise DataError(f"unknown tokenizer kind '{tokenizer}'; choose one of {', '.join(KINDS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    # Only bpe learns a vocabulary of a chosen size; char and byte ignore vocab_size, so it
    # must not make an otherwise identical dataset look different.
    settings = {"sources": list(sources), "tokenizer": tokenizer,
                "vocab_size": vocab_size if tokenizer == "bpe" else 0, "val_fraction": val_fraction}
    fp = fingerprint(settings["sources"])
    reused = _existing(out, settings, fp, log)
    if reused is not None:
        log(f"reusing prepared dataset at {out}")
        return reused
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed run with our pid; ours by name
    tmp.mkdir(parents=True)
    try:
        manifest = _build(tmp, settings, fp, log)
        try:
            _move_into_place(tmp, out)
        except OSError:
            # Another process may have prepared the same dataset meanwhile.
            reused = _existing(out, settings, fp, log)
            if reused is None:
                raise
            log(f"reusing prepared dataset at {out}")
            return reused
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"prepared {out} in {time.perf_counter() - t0:.1f}s")
    return manifest
