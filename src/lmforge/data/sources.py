"""Readers that turn a data spec into a stream of Documents.

A spec is 'stdlib' (the running Python's standard library sources), a remote source
('nltk:NAME', 'hf:NAME[:CONFIG]', an http(s) URL, or a known dataset name such as
'tinyshakespeare', all read by lmforge.data.remote), or a local file, directory or glob.
Local files are read by their name: compressed (.gz .bz2 .xz .zst) then by the inner
suffix, .jsonl/.ndjson, .parquet, Reuters-21578 (reut2-*.sgm or its tar.gz), else text.
Sources never tokenize and never clean: they only read, in a fixed order, so that the same
spec gives the same documents with the same ids on every run.

The prepare pipeline takes a spec's input as units (units.py): the bytes of a file, of a
Reuters member or of a run of JSONL lines, which worker processes parse; `iter_corpus`
parses them in this process. The units of a local file share out its size on disk, so
that the progress of reading them reaches the total of the files' sizes exactly.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import hashlib
import itertools
import json
import os
import stat
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.data import formats, remote, reuters
from lmforge.data.document import Document, SourceOptions
from lmforge.data.formats import SourceStats
from lmforge.data.units import Unit, document_units, share_disk
from lmforge.errors import DataError

__all__ = ["STDLIB", "Document", "SourceStats", "Unit", "check_found", "fingerprint",
           "is_remote", "iter_corpus", "iter_documents", "iter_units", "source_files"]

STDLIB = "stdlib"
# Test suites are mostly generated fixtures and would dominate the stdlib corpus; idlelib
# is an application rather than library code. What is left is 674 files, 11.4 MB on 3.11.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                               "idlelib", "__pycache__"})
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class _Input:
    path: Path
    id: str
    skip_binary: bool  # directories and globs may sweep up binaries; a named file may not

    @property
    def kind(self) -> str:
        """How the file is read, decided by its name alone."""
        return formats.kind_of(self.path.name)


def _is_glob(spec: str) -> bool:
    return any(c in _GLOB_CHARS for c in spec)


def _remote_kind(spec: str) -> str | None:
    """'nltk', 'hf', 'url' or 'named' for a remote spec; None for a local one."""
    if spec == STDLIB:
        return None
    if spec.startswith("nltk:"):
        return "nltk"
    if spec.startswith("hf:"):
        return "hf"
    if spec.startswith(("http://", "https://")):
        return "url"
    if spec in remote.NAMED_DATASETS and not Path(spec).exists():
        return "named"
    return None


def is_remote(spec: str) -> bool:
    """Whether a spec is read from elsewhere (its size is not known before it is read)."""
    return _remote_kind(spec) is not None


def _iter_remote(kind: str, spec: str, options: SourceOptions) -> Iterator[Document]:
    # An optional dependency of one remote kind (datasets, nltk's data) is imported by
    # remote.py only when that kind is used.
    if kind == "nltk":
        return remote.iter_nltk(spec[len("nltk:"):], options)
    if kind == "hf":
        name, _, config = spec[len("hf:"):].partition(":")
        return remote.iter_hf(name, config or None, options)
    if kind == "url":
        return _downloaded(remote.fetch_url(spec, options), spec, options)
    return _downloaded(remote.fetch_named(spec, options), spec, options)


def _downloaded(path: Path, base_id: str, options: SourceOptions) -> Iterator[Document]:
    """A downloaded file read as a local source, with ids built on `base_id` (the URL or the
    dataset's name), not on the cache's file name."""
    docs = iter_documents(str(path), options)
    head = list(itertools.islice(docs, 2))
    if len(head) == 1:  # a file that is one document is named by where it came from
        yield _rebase(head[0], base_id, base_id)
        return
    for doc in itertools.chain(head, docs):
        yield _rebase(doc, base_id, _sub_id(doc.id, path.name, base_id))


def _sub_id(doc_id: str, cache_name: str, base_id: str) -> str:
    # A reader names documents after the file ("<key>-data.jsonl:3"); the cache key is ours.
    if doc_id.startswith(cache_name):
        return base_id + doc_id[len(cache_name):]
    return f"{base_id}:{doc_id}"


def _rebase(doc: Document, base_id: str, new_id: str) -> Document:
    return dataclasses.replace(doc, id=new_id, meta={**doc.meta, "source": base_id})


def _stdlib_inputs() -> list[_Input]:
    root = Path(sysconfig.get_paths()["stdlib"])
    inputs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                path = Path(dirpath) / name
                inputs.append(_Input(path, path.relative_to(root).as_posix(), False))
    return inputs


def unreadable(path: Path, err: OSError) -> DataError:
    """A file or directory the system will not let us read, as one line that says why."""
    reason = err.strerror or type(err).__name__
    fix = {errno.EACCES: "make it readable, or move it out of the data",
           errno.EPERM: "make it readable, or move it out of the data",
           errno.ENAMETOOLONG: "shorten the name (each part at most 255 bytes)"}
    return DataError(f"cannot read {path} ({reason}); "
                     f"{fix.get(err.errno or 0, 'check the path and the disk')}")


def _walk_error(err: OSError) -> None:
    raise unreadable(Path(err.filename or "?"), err)


def _directory_inputs(root: Path) -> list[_Input]:
    inputs = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and path.is_file():
                inputs.append(_Input(path, path.relative_to(root).as_posix(), True))
    # An unpacked Reuters-21578 also holds its README, DTD and category lists: the corpus
    # is the reut2-*.sgm files alone, in name order as in the archive reader.
    sgm = [item for item in inputs if item.kind == "reuters"]
    return sorted(sgm, key=lambda item: item.path.name) if sgm else inputs


def _glob_root(spec: str) -> Path:
    """The leading directories of a glob that hold no wildcard: ids are relative to it."""
    parts = Path(spec).parts
    fixed = []
    for part in parts[:-1]:
        if _is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _glob_inputs(spec: str) -> list[_Input]:
    root = _glob_root(spec)
    paths = sorted(Path(p) for p in glob.glob(spec, recursive=True))
    return [_Input(p, p.relative_to(root).as_posix(), True) for p in paths if p.is_file()]


def _inputs(spec: str) -> list[_Input]:
    """The files a local spec names, in a fixed order (binary files not yet filtered out)."""
    # 'stdlib' is reserved: a path with that name can be given as ./stdlib
    if spec == STDLIB:
        return _stdlib_inputs()
    path = Path(spec)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = 0
    except OSError as err:  # a name too long, a directory on the way that cannot be entered
        if err.errno != errno.ENOTDIR and not _is_glob(spec):
            raise unreadable(path, err) from None
        mode = 0
    if stat.S_ISREG(mode):
        return [_Input(path, path.name, False)]
    if stat.S_ISDIR(mode):
        return _directory_inputs(path)
    if _is_glob(spec):
        inputs = _glob_inputs(spec)
        if not inputs:
            raise DataError(f"no files match the glob {spec!r}; check the pattern "
                            "(and quote it so the shell does not expand it)")
        return inputs
    raise DataError(f"data not found: {spec}; give a file, a directory, a glob or 'stdlib'")


def _check_split(spec: str, inputs: list[_Input], split: str) -> None:
    reuters.check_split(split)
    # A tar is only known to be Reuters once read; iter_tar says so then.
    other = next((item for item in inputs if item.kind not in ("reuters", "tar")), None)
    if other is not None:
        raise DataError(f"--split {split!r} (data.split) needs a corpus with a standard split, "
                        f"and only Reuters-21578 has one among local files for now; {spec} "
                        f"holds {other.path.name}. Drop --split to split by document hash")


# The reading of one local file yields (unit, how far into the file on disk reading had got).
Read = Iterator[tuple[Unit, int]]


def _tar_units(item: _Input, options: SourceOptions, stats: SourceStats, spec: int,
               disk: int) -> Read:
    reuters.check_split(options.split)
    with formats.open_stream(item.path) as stream:
        members = reuters.members(stream, str(item.path))
    if not members:
        if item.skip_binary and not options.split:
            stats.binary_skipped += 1  # a sweep's archive is data we cannot read as text
            return
        raise DataError(f"{item.path} is a tar archive without reut2-*.sgm members; lmforge "
                        "reads only the Reuters-21578 archive whole. Unpack it and give "
                        "the directory")
    stats.files_read += 1
    stats.bytes_read += disk
    # The archive is read whole before its members are parsed: each member's share of it
    # is its share of the unpacked bytes.
    unpacked, done = sum(len(data) for _, data in members), 0
    for name, data in members:
        done += len(data)
        payload = (data, f"{item.path}:{name}", options.split)
        yield Unit(reuters.parse_file, payload, len(data), spec), disk * done // max(unpacked, 1)


def _parquet_units(item: _Input, options: SourceOptions, stats: SourceStats, spec: int,
                   disk: int) -> Read:
    rows, done = formats.parquet_rows(item.path), 0
    for unit in document_units(formats.iter_parquet(item.path, item.id, options, stats), spec):
        done += len(unit.payload)
        yield unit, disk * done // max(rows, 1)


def _jsonl_units(item: _Input, options: SourceOptions, spec: int) -> Read:
    for chunk in formats.jsonl_chunks(item.path):
        payload = (chunk.data, str(item.path), item.id, chunk.first_line, options.text_field)
        yield Unit(formats.parse_jsonl, payload, len(chunk.data), spec), chunk.reached


def _whole_file_unit(item: _Input, options: SourceOptions, stats: SourceStats,
                     spec: int) -> Unit | None:
    """A text or Reuters .sgm file as one unit; None for a binary file a sweep picked up."""
    if item.kind == "reuters":
        reuters.check_split(options.split)
    data = formats.read_bytes(item.path, skip_binary=item.skip_binary and item.kind == "text")
    if data is None:
        stats.binary_skipped += 1
        return None
    if item.kind == "reuters":
        return Unit(reuters.parse_file, (data, str(item.path), options.split), len(data), spec)
    return Unit(formats.parse_text, (data, item.id, str(item.path)), len(data), spec)


def _file_units(item: _Input, options: SourceOptions, stats: SourceStats, spec: int,
                disk: int) -> Read:
    """The units of one local file, read by the kind its name gives: bytes for a worker to
    parse, but for Parquet, whose rows arrive parsed."""
    if item.kind == "tar":
        yield from _tar_units(item, options, stats, spec, disk)
        return
    if item.kind == "parquet":
        yield from _parquet_units(item, options, stats, spec, disk)
    elif item.kind == "jsonl":
        yield from _jsonl_units(item, options, spec)
    else:
        unit = _whole_file_unit(item, options, stats, spec)
        if unit is None:
            return
        yield unit, disk
    stats.files_read += 1
    stats.bytes_read += disk


def _units(item: _Input, options: SourceOptions, stats: SourceStats, spec: int) -> Iterator[Unit]:
    try:
        disk = item.path.stat().st_size
        yield from share_disk(_file_units(item, options, stats, spec, disk), disk, spec)
    except OSError as err:  # unreadable (permissions), or gone since it was listed
        raise unreadable(item.path, err) from None


def _spec_units(specs: list[str], index: int, options: SourceOptions,
                stats: SourceStats) -> Iterator[Unit]:
    spec = specs[index]
    kind = _remote_kind(spec)
    if kind is not None:
        yield from document_units(_iter_remote(kind, spec, options), index)
        return
    inputs = _inputs(spec)
    if options.split:
        _check_split(spec, inputs, options.split)
    for item in inputs:
        yield from _units(item, options, stats, index)


def iter_units(specs: list[str], options: SourceOptions | None = None,
               stats: SourceStats | None = None) -> Iterator[Unit]:
    """The raw units of every spec, spec after spec, in a fixed order. `stats` (if given)
    counts the files read and skipped; what parsing finds is counted by `Unit.documents`.
    Pass how many documents each spec's units held to `check_found` afterwards."""
    if not specs:
        raise DataError("no data sources given; give a file, a directory, a glob or 'stdlib'")
    options = options or SourceOptions()
    stats = stats if stats is not None else SourceStats()
    for index in range(len(specs)):
        yield from _spec_units(specs, index, options, stats)


def check_found(specs: list[str], index: int, documents: int) -> None:
    """A local spec that gave no document at all names nothing lmforge can read."""
    if not documents and _remote_kind(specs[index]) is None:
        raise DataError(f"no text files in {specs[index]} (hidden and binary files are "
                        "skipped); point the data at files that hold text")


def iter_corpus(specs: list[str], options: SourceOptions | None = None,
                stats: SourceStats | None = None) -> Iterator[Document]:
    """The documents of every spec, spec after spec, parsed in this process; `stats` (if
    given) counts what local readers read and skipped."""
    stats = stats if stats is not None else SourceStats()
    index, found = 0, 0
    for unit in iter_units(specs, options, stats):
        while unit.spec != index:  # the spec before is done
            check_found(specs, index, found)
            index, found = index + 1, 0
        docs = unit.documents(stats)
        found += len(docs)
        yield from docs
    for rest in range(index, len(specs)):
        check_found(specs, rest, found if rest == index else 0)


def iter_documents(spec: str, options: SourceOptions | None = None) -> Iterator[Document]:
    """Every document a spec names, in a fixed order; invalid UTF-8 becomes U+FFFD."""
    yield from iter_corpus([spec], options)


def source_files(specs: list[str], options: SourceOptions | None = None) -> list[Path]:
    """The local files the specs read, in reading order (none for remote specs)."""
    return [item.path for spec in specs if _remote_kind(spec) is None for item in _inputs(spec)]


def fingerprint(specs: list[str], options: SourceOptions | None = None) -> str:
    """A hash of the specs, the reading options and the path, size and mtime of every local
    file, to tell when inputs changed. Remote specs count by their spec string alone."""
    options = options or SourceOptions()
    entries = []
    for path in source_files(specs, options):
        st = path.stat()
        entries.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
    blob = json.dumps({"specs": list(specs), "text_field": options.text_field,
                       "split": options.split, "files": sorted(entries)}).encode()
    return hashlib.sha256(blob).hexdigest()
