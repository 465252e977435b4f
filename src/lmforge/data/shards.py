"""Flat token files and the manifest that describes them.

A prepared dataset is a directory:

    manifest.json        lmforge_dataset (true: lmforge wrote this directory), format,
                         tokenizer, dtype, per split: its shard files (each with tokens and
                         sha256), tokens, bytes, documents, docs_file; the settings,
                         provenance and fingerprint; contents: every other file it holds
    train-00000.bin, …   the tokens of each split, back to back, little-endian, in shards
                         of at most `shard_tokens` tokens (a document may span two)
    train.docs.npy, ...  int64 offsets (in tokens, across the split) where each document starts
    tokenizer/           the tokenizer that made them
    report.json          what each stage of prepare read, dropped and wrote

Readers memory-map the shards, so a dataset larger than memory trains fine. read_manifest
checks the manifest's shape for every reader (a missing key, a wrong type, a file outside the
directory: one DataError); foreign_files names what in a directory lmforge did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from array import array
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lmforge.data.tokenizer import BPE_FILE, META_FILE
from lmforge.errors import DataError
from lmforge.files import sha256_file, writing

MANIFEST = "manifest.json"
REPORT = "report.json"
FORMAT = 2
# The manifest's own proof that lmforge wrote the directory, and its list of what else it
# wrote there (paths relative to the directory): what prepare may replace, and no more.
MARKER = "lmforge_dataset"
CONTENTS = "contents"
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
    hashing as it goes. A write that runs out of room raises DiskFull naming the split."""

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
        with writing(f"the {self.split} shards"):
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
        with writing(f"the {self.split} shards"):
            self._finish_shard()  # flushes: the last write may fail only here
        docs_file = f"{self.split}.docs.npy"
        with writing(docs_file):
            np.save(self.directory / docs_file, np.frombuffer(self._starts, dtype=np.int64))
        return {"files": self._files, "tokens": self._tokens, "documents": len(self._starts),
                "docs_file": docs_file}

    def abort(self) -> None:
        if self._file is not None:
            with suppress(OSError):  # the write that failed has said why; the file goes
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
    with writing(MANIFEST), open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)


class _Damaged(Exception):
    """What is wrong with a manifest's shape, for the one-line error."""


def _short(value: Any) -> str:
    text = repr(value)  # one line whatever the value holds
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true, false, null
    return {dict: "an object", list: "a list", str: "a string", int: "a whole number"}.get(
        type(value), "a number")


def _key(key: str) -> str:
    return key if key.isprintable() else repr(key)


def _get(mapping: dict[str, Any], key: str, kind: type, where: str = "",
         required: bool = True) -> Any:
    """mapping[key], of `kind` (an int: not negative); `where` names the mapping ('splits.x.')."""
    if key not in mapping:
        if required:
            raise _Damaged(f"no '{where}{key}'")
        return None
    value: Any = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _Damaged(f"'{where}{key}' is {_json_type(value)}, not {_json_type(kind())}")
    if isinstance(value, int) and value < 0:
        raise _Damaged(f"'{where}{key}' is negative ({value})")
    return value


def _file_name(where: str, name: str) -> str:
    """`name` if it is a plain name in the dataset directory (no path, nothing odd)."""
    if (not name or name in (".", "..") or "/" in name or not name.isprintable()
            or len(name.encode()) > 255):
        raise _Damaged(f"'{where}' is {_short(name)}, not a file name in the dataset directory")
    return name


def _shape(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Check the keys every reader uses, and their types; the (key, name) of every file the
    manifest names, the tokenizer's directory first."""
    dtype = _get(manifest, "dtype", str)
    if dtype not in _DTYPES:
        raise _Damaged(f"unknown token dtype {_short(dtype)}")
    tokenizer = _get(manifest, "tokenizer", dict)
    names = [("tokenizer.dir", _get(tokenizer, "dir", str, "tokenizer."))]
    for key, kind in (("kind", str), ("vocab_size", int), ("eot_id", int)):
        _get(tokenizer, key, kind, "tokenizer.")  # training and bits per byte read them all
    for split, entry in _get(manifest, "splits", dict).items():
        where = f"splits.{_key(split)}."
        if not isinstance(entry, dict):
            raise _Damaged(f"'{where[:-1]}' is {_json_type(entry)}, not an object")
        for i, shard in enumerate(_get(entry, "files", list, where)):
            at = f"{where}files[{i}]."
            if not isinstance(shard, dict):
                raise _Damaged(f"'{at[:-1]}' is {_json_type(shard)}, not an object")
            names.append((f"{at}file", _get(shard, "file", str, at)))
            _get(shard, "tokens", int, at)
            _get(shard, "sha256", str, at)
        names.append((f"{where}docs_file", _get(entry, "docs_file", str, where)))
        for key in ("tokens", "bytes"):
            _get(entry, key, int, where)
        _get(entry, "documents", int, where, required=False)
    for where, name in names:
        _file_name(where, name)
    return names


def _load(directory: Path) -> dict[str, Any] | None:
    """The manifest as JSON, or None when there is none or it is no JSON object."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) else None


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the dataset at `directory`, its shape checked (see _shape) and every
    file it names inside `directory`; anything else is one DataError."""
    directory = Path(directory)
    manifest = _load(directory)
    prepare = f"run `lmforge prepare --data ... --out {directory}`"
    if manifest is None:
        raise DataError(f"no prepared dataset at {directory} ({MANIFEST} missing or unreadable); "
                        f"{prepare}")
    found = manifest.get("format")
    if found is None and MARKER not in manifest:
        raise DataError(f"no prepared dataset at {directory} ({MANIFEST} is not lmforge's); "
                        f"{prepare}")
    if type(found) is not int or found != FORMAT:
        raise DataError(f"the dataset at {directory} was prepared by another version of lmforge "
                        f"(format {_short(found)}, this one reads {FORMAT}); prepare it again")
    try:
        names = _shape(manifest)
    except _Damaged as err:
        raise DataError(f"{directory / MANIFEST} is damaged ({err}); prepare the dataset "
                        "again") from None
    _inside(directory, names)
    return manifest


def _inside(directory: Path, names: list[tuple[str, str]]) -> None:
    """Plain names are inside `directory`; a symbolic link may still lead out of it."""
    for path in (directory / name for _, name in names):
        try:
            target = path.resolve(strict=True) if path.is_symlink() else None
        except (OSError, RuntimeError):  # dangling, or a loop
            raise DataError(f"{path} is a broken symbolic link; prepare the dataset again") from None
        if target is not None and not target.is_relative_to(directory.resolve()):
            raise DataError(f"{path} leads outside {directory} (a symbolic link to {target}); "
                            "prepare the dataset again")


def claimed(manifest: Any) -> set[str] | None:
    """The files (paths relative to the dataset directory) that `manifest` says lmforge wrote,
    or None when it is not lmforge's. Marked manifests list them (CONTENTS). Unmarked ones
    are of datasets prepared before the marker: format 2 is trusted when its shape is whole
    (its shards, docs files, report and tokenizer), format 1 likewise (a file per split)."""
    if not isinstance(manifest, dict):
        return None
    contents = manifest.get(CONTENTS)
    if (manifest.get(MARKER) is True and isinstance(contents, list)
            and all(isinstance(name, str) for name in contents)):
        return {MANIFEST, *contents}
    found = manifest.get("format")
    try:
        if type(found) is int and found == FORMAT:
            names = [name for _, name in _shape(manifest)]
            tokenizer, files = names[0], names[1:] + [REPORT]
        elif type(found) is int and found == 1:
            tokenizer = _get(_get(manifest, "tokenizer", dict), "dir", str)
            files = [_get(entry, key, str) for entry in _get(manifest, "splits", dict).values()
                     for key in ("file", "docs_file")]
        else:
            return None
    except (_Damaged, TypeError):  # TypeError: a split that is no object
        return None
    return {MANIFEST, *files, f"{tokenizer}/{META_FILE}", f"{tokenizer}/{BPE_FILE}"}


def _plain_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def foreign_files(directory: Path) -> list[str]:
    """The names (top level, sorted) of what in `directory` lmforge cannot prove it wrote:
    all unless its manifest is lmforge's (claimed), else what that does not list and what
    is no plain file or folder (a link); [] means replacing it loses only lmforge's files."""
    directory = Path(directory)
    claims = claimed(_load(directory)) or set()
    folders = {str(parent) for name in claims for parent in PurePosixPath(name).parents}
    foreign: set[str] = set()

    def top(path: str) -> str:
        return os.path.relpath(path, directory).split(os.sep)[0]

    def unreadable(err: OSError) -> None:
        foreign.add(top(err.filename) if err.filename else ".")

    for root, dirs, files in os.walk(directory, onerror=unreadable):
        here = Path(root).relative_to(directory)
        for name in list(dirs):
            path = os.path.join(root, name)
            if (here / name).as_posix() not in folders or os.path.islink(path):
                foreign.add(top(path))
                dirs.remove(name)  # not ours: nothing in it is looked at
        for name in files:
            path = os.path.join(root, name)
            if (here / name).as_posix() not in claims or not _plain_file(path):
                foreign.add(top(path))
    return sorted(foreign)


def _shard_path(directory: Path, shard: dict[str, Any], itemsize: int) -> Path:
    """The path of a shard the manifest lists, after checking that it has its size."""
    path = directory / shard["file"]
    if not path.is_file():
        raise DataError(f"{path} is missing; prepare the dataset again")
    if path.stat().st_size != shard["tokens"] * itemsize:
        raise DataError(f"{path} is corrupt (wrong size); prepare the dataset again")
    return path


def verify(directory: Path) -> dict[str, Any]:
    """The manifest, after checking every shard's size and sha256 against it."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    itemsize = _np_dtype(manifest["dtype"]).itemsize
    for entry in manifest["splits"].values():
        for shard in entry["files"]:
            path = _shard_path(directory, shard, itemsize)
            if sha256_file(path) != shard["sha256"]:
                raise DataError(f"{path} is corrupt (sha256 mismatch); prepare the dataset again")
        if not (directory / entry["docs_file"]).is_file():
            raise DataError(f"{directory / entry['docs_file']} is missing; prepare the dataset again")
    return manifest


def _split_entry(directory: Path, split: str) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        have = ", ".join(map(_key, manifest["splits"])) or "none"
        raise DataError(f"split '{_key(split)}' is not in the prepared dataset at {directory} "
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
    paths = [(_shard_path(directory, shard, dtype.itemsize), shard["tokens"])
             for shard in entry["files"]]
    shards = [np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))
              for path, tokens in paths if tokens]  # mmap cannot map an empty file
    if not shards:
        return np.zeros(0, dtype=dtype)
    return shards[0] if len(shards) == 1 else ConcatTokens(shards)


def document_starts(directory: Path, split: str) -> np.ndarray:
    """The token offsets at which each document of a split starts (int64)."""
    directory = Path(directory)
    _, entry = _split_entry(directory, split)
    path = directory / entry["docs_file"]
    try:
        starts = np.load(path)  # allow_pickle=False: numbers only, no code
    except Exception:  # a damaged header raises ValueError, tokenize.TokenError, SyntaxError
        raise DataError(f"{path} is missing or unreadable; prepare the dataset again") from None
    if not isinstance(starts, np.ndarray) or starts.dtype != np.int64 or starts.ndim != 1:
        raise DataError(f"{path} is corrupt (not a list of int64 offsets); prepare the "
                        "dataset again")
    return starts
