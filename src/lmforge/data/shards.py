"""Flat token files and the manifest that describes them.

A prepared dataset is a directory:

    manifest.json        format, tokenizer, dtype, per split: file, tokens, bytes,
                         documents, sha256, docs_file; the settings and fingerprint
    train.bin, val.bin   the tokens of each split, back to back, little-endian
    train.docs.npy, ...  int64 offsets (in tokens) at which each document starts
    tokenizer/           the tokenizer that made them

Readers memory-map the token files, so a dataset larger than memory trains fine.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import DataError

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 20
# Explicit byte order: a dataset prepared on one machine must read the same on another.
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


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
    """Streams one split's tokens to `{split}.bin`, hashing as it goes."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype | str) -> None:
        self.directory = Path(directory)
        self.split = split
        self.dtype = _np_dtype(dtype_name(dtype))
        self._limit = np.iinfo(self.dtype).max
        self._file = open(self.directory / f"{split}.bin", "wb")  # closed in close() or abort()
        self._sha = hashlib.sha256()
        self._tokens = 0
        self._starts = array("q")

    def append(self, ids: np.ndarray | list[int]) -> None:
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() > self._limit):
            raise ValueError(f"token ids outside 0..{self._limit} cannot be stored as {self.dtype}")
        data = arr.astype(self.dtype, copy=False).tobytes()
        self._file.write(data)
        self._sha.update(data)
        self._tokens += arr.size

    def append_document(self, ids: np.ndarray | list[int]) -> None:
        """Append the tokens of a new document, recording where it starts."""
        self._starts.append(self._tokens)
        self.append(ids)

    def close(self) -> dict[str, Any]:
        self._file.close()
        docs_file = f"{self.split}.docs.npy"
        np.save(self.directory / docs_file, np.frombuffer(self._starts, dtype=np.int64))
        return {"file": f"{self.split}.bin", "tokens": self._tokens,
                "sha256": self._sha.hexdigest(), "documents": len(self._starts),
                "docs_file": docs_file}

    def abort(self) -> None:
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
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError):
        raise DataError(f"no prepared dataset at {directory} ({MANIFEST} missing or unreadable); "
                        f"run `lmforge prepare --data ... --out {directory}`") from None
    return manifest


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


def verify(directory: Path) -> dict[str, Any]:
    """The manifest, after checking every split file's size and sha256 against it."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    itemsize = _np_dtype(manifest["dtype"]).itemsize
    for entry in manifest["splits"].values():
        path = directory / entry["file"]
        corrupt = f"{path} is corrupt ({{}}); prepare the dataset again"
        if not path.is_file():
            raise DataError(f"{path} is missing; prepare the dataset again")
        if path.stat().st_size != entry["tokens"] * itemsize:
            raise DataError(corrupt.format("wrong size"))
        if _sha256(path) != entry["sha256"]:
            raise DataError(corrupt.format("sha256 mismatch"))
        if not (directory / entry["docs_file"]).is_file():
            raise DataError(f"{directory / entry['docs_file']} is missing; prepare the dataset again")
    return manifest


def _split_entry(directory: Path, split: str) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"]) or "none"
        raise DataError(f"split '{split}' is not in the prepared dataset at {directory} "
                        f"(it has: {have})")
    return manifest, manifest["splits"][split]


def open_split(directory: Path, split: str) -> np.ndarray:
    """The tokens of one split, memory-mapped read-only."""
    directory = Path(directory)
    manifest, entry = _split_entry(directory, split)
    dtype = _np_dtype(manifest["dtype"])
    if entry["tokens"] == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(directory / entry["file"], dtype=dtype, mode="r", shape=(entry["tokens"],))


def document_starts(directory: Path, split: str) -> np.ndarray:
    """The token offsets at which each document of a split starts (int64)."""
    directory = Path(directory)
    _, entry = _split_entry(directory, split)
    return np.load(directory / entry["docs_file"])
