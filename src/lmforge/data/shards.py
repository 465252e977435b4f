"""Flat token files and the manifest that describes them.

A prepared dataset is a directory:

    manifest.json        format, tokenizer, dtype, per split: its shard files (each with
                         tokens and sha256), tokens, bytes, documents, docs_file; the
                         settings, provenance and fingerprint
    train-00000.bin, …   the tokens of each split, back to back, little-endian, in shards
                         of at most `shard_tokens` tokens (a document may span two)
    train.docs.npy, ...  int64 offsets (in tokens, across the split) where each document starts
    tokenizer/           the tokenizer that made them
    report.json          what each stage of prepare read, dropped and wrote

Readers memory-map the shards, so a dataset larger than memory trains fine.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import DataError
from lmforge.files import sha256_file

MANIFEST = "manifest.json"
REPORT = "report.json"
FORMAT = 2
# Explicit byte order: a dataset prepared on one machine must read the same on another.
_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest token dtype that holds every id of the vocabulary."""
    return _DTYPES["uint16"] if vocab_size <= 1 << 16 else _DTYPES["uint32"]


def dtype_name(dtype: np.dtype | str) -> str:
    """'uint16' or 'uint32', as the manifest records it."""
    return np.dtype(dtype).name


def _np_dtype(name: str) -> np.dtype:
    if name not in _DTYPES:
        raise DataError(f"unknown token dtype '{name}' in the manifest; prepare the dataset again")
    return _DTYPES[name]


class ShardWriter:
    """Streams one split's tokens into shard files of at most `shard_tokens` tokens each,
    hashing as it goes."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype | str, *,
                 shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise ValueError("shard_tokens must be at least 1")
        self.directory = Path(directory)
        self.split = split
        self.dtype = _np_dtype(dtype_name(dtype))
        self.shard_tokens = shard_tokens
        self._limit = np.iinfo(self.dtype).max
        self._files: list[dict[str, Any]] = []
        self._file: Any = None
        self._sha = hashlib.sha256()
        self._in_shard = 0
        self._tokens = 0
        self._starts = array("q")

    def _roll(self) -> None:
        self._finish_shard()
        name = f"{self.split}-{len(self._files):05d}.bin"
        self._file = open(self.directory / name, "wb")  # closed in _finish_shard() or abort()
        self._files.append({"file": name})

    def _finish_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._files[-1].update(tokens=self._in_shard, sha256=self._sha.hexdigest())
            self._file, self._sha, self._in_shard = None, hashlib.sha256(), 0

    def append(self, ids: np.ndarray | list[int]) -> None:
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() > self._limit):
            raise ValueError(f"token ids outside 0..{self._limit} cannot be stored as {self.dtype}")
        arr = arr.astype(self.dtype, copy=False).ravel()
        while arr.size:
            if self._file is None or self._in_shard == self.shard_tokens:
                self._roll()
            part, arr = arr[:self.shard_tokens - self._in_shard], arr[self.shard_tokens - self._in_shard:]
            data = part.tobytes()
            self._file.write(data)
            self._sha.update(data)
            self._in_shard += part.size
            self._tokens += part.size

    def append_document(self, ids: np.ndarray | list[int]) -> None:
        """Append the tokens of a new document, recording where it starts."""
        self._starts.append(self._tokens)
        self.append(ids)

    def append_documents(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append consecutive documents at once: `ids` holds them end to end, `lengths` their
        token counts (one write and one range check for a whole batch)."""
        if not len(lengths):
            return
        starts = self._tokens + np.concatenate(([0], np.cumsum(lengths[:-1])))
        self._starts.extend(starts.tolist())
        self.append(ids)

    def close(self) -> dict[str, Any]:
        self._finish_shard()
        docs_file = f"{self.split}.docs.npy"
        np.save(self.directory / docs_file, np.frombuffer(self._starts, dtype=np.int64))
        return {"files": self._files, "tokens": self._tokens, "documents": len(self._starts),
                "docs_file": docs_file}

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically: readers see the old one or the new one, never half."""
    directory = Path(directory)
    tmp = directory / f"{MANIFEST}.tmp"
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if not isinstance(manifest, dict):
            raise ValueError
    except (OSError, ValueError):
        raise DataError(f"no prepared dataset at {directory} ({MANIFEST} missing or unreadable); "
                        f"run `lmforge prepare --data ... --out {directory}`") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"the dataset at {directory} was prepared by another version of lmforge "
                        f"(format {manifest.get('format')}, this one reads {FORMAT}); prepare it again")
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    """The manifest, after checking every shard's size and sha256 against it."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    itemsize = _np_dtype(manifest["dtype"]).itemsize
    for entry in manifest["splits"].values():
        for shard in entry["files"]:
            path = directory / shard["file"]
            corrupt = f"{path} is corrupt ({{}}); prepare the dataset again"
            if not path.is_file():
                raise DataError(f"{path} is missing; prepare the dataset again")
            if path.stat().st_size != shard["tokens"] * itemsize:
                raise DataError(corrupt.format("wrong size"))
            if sha256_file(path) != shard["sha256"]:
                raise DataError(corrupt.format("sha256 mismatch"))
        if not (directory / entry["docs_file"]).is_file():
            raise DataError(f"{directory / entry['docs_file']} is missing; prepare the dataset again")
    return manifest


def own_files(manifest: dict[str, Any]) -> set[str]:
    """Names of the files and folders a dataset directory holds by its manifest."""
    names = {MANIFEST, REPORT, manifest.get("tokenizer", {}).get("dir", "tokenizer")}
    for entry in manifest.get("splits", {}).values():
        names |= {shard.get("file") for shard in entry.get("files", [])}
        names.add(entry.get("docs_file"))
    return names


def _split_entry(directory: Path, split: str) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"]) or "none"
        raise DataError(f"split '{split}' is not in the prepared dataset at {directory} "
                        f"(it has: {have})")
    return manifest, manifest["splits"][split]


class ConcatTokens:
    """Several memory-mapped shards read as one array: len() and indexing by integer arrays
    (what the loader uses) or by slices."""

    def __init__(self, shards: Sequence[np.ndarray]) -> None:
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        index = np.asarray(index)
        flat = index.ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError("token index out of range")
        which = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        for shard in np.unique(which):
            sel = which == shard
            out[sel] = self.shards[shard][flat[sel] - self.starts[shard]]
        return out.reshape(index.shape)


# The tokens of a split: one memory-mapped array, or several read as one.
Tokens = np.ndarray | ConcatTokens


def open_split(directory: Path, split: str) -> Tokens:
    """The tokens of one split, memory-mapped read-only: an array for a single shard,
    a ConcatTokens over several."""
    directory = Path(directory)
    manifest, entry = _split_entry(directory, split)
    dtype = _np_dtype(manifest["dtype"])
    shards = [np.memmap(directory / shard["file"], dtype=dtype, mode="r", shape=(shard["tokens"],))
              for shard in entry["files"] if shard["tokens"]]  # mmap cannot map an empty file
    if not shards:
        return np.zeros(0, dtype=dtype)
    return shards[0] if len(shards) == 1 else ConcatTokens(shards)


def document_starts(directory: Path, split: str) -> np.ndarray:
    """The token offsets at which each document of a split starts (int64)."""
    directory = Path(directory)
    _, entry = _split_entry(directory, split)
    return np.load(directory / entry["docs_file"])
