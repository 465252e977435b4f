"""File formats a local source can hold: compressed streams, plain text, JSONL and Parquet.

Each reader takes one file and yields Documents; which reader applies is decided by the
file's name alone (`kind_of`), so the same file is read the same way wherever it is found.
Decompression is streamed and guarded: a truncated or corrupt file stops with a DataError
that names the file and how far it got, never with a bare zlib or lzma traceback.

Text is UTF-8, unless it starts with a byte order mark: UTF-8's is dropped, and a file that
starts with UTF-16's or UTF-32's is decoded as such (a JSONL file so marked is transcoded to
UTF-8 as it streams, since its lines end in more than one byte).
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any, cast

from lmforge.data.document import Document, SourceOptions
from lmforge.errors import DataError

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_REUTERS_SGM = re.compile(r"reut2-\d+\.sgm", re.IGNORECASE)
_BINARY_PROBE = 8192
_CHUNK = 1 << 16
_JSONL_CHUNK = 1 << 16  # bytes of whole lines per unit: a worker task batches several
_PARQUET_BATCH = 1024  # rows converted to Python at a time: bounds memory on wide rows


@dataclass
class SourceStats:
    """What the local readers read and skipped, for the data report."""

    files_read: int = 0
    binary_skipped: int = 0  # binary files swept up by a directory or glob
    invalid_utf8_docs: int = 0  # documents in which at least one byte became U+FFFD
    bytes_read: int = 0  # on-disk size of the files read (compressed size if compressed)

    def merge(self, other: SourceStats) -> None:
        """Add the counts of `other`, e.g. of what a worker process parsed."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def inner_name(name: str) -> str:
    """The name without its compression suffix: 'a.jsonl.gz' -> 'a.jsonl', 'a.tgz' -> 'a.tar'."""
    lower = name.lower()
    if lower.endswith(".tgz"):
        return name[:-4] + ".tar"
    for suffix in _COMPRESSED:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_reuters_sgm(name: str) -> bool:
    return _REUTERS_SGM.fullmatch(inner_name(name)) is not None


def kind_of(name: str) -> str:
    """How a file is read: 'reuters', 'tar', 'jsonl', 'parquet' or 'text'."""
    inner = inner_name(name).lower()
    if is_reuters_sgm(name):
        return "reuters"
    if inner.endswith(".tar"):
        return "tar"
    if inner.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if inner.endswith(".parquet"):
        return "parquet"
    return "text"


# UTF-32's marks first: UTF-32-LE's begins with UTF-16-LE's
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def encoding_of(data: bytes) -> str:
    """The encoding a byte order mark at the start of `data` names; else utf-8."""
    return next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")


def decode(data: bytes, stats: SourceStats) -> str:
    """UTF-8 text (or UTF-16/32 by its byte order mark); corpora in the wild hold stray bytes,
    so they become U+FFFD and are counted."""
    encoding = encoding_of(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        stats.invalid_utf8_docs += 1
        return data.decode(encoding, errors="replace")


def _is_binary(head: bytes) -> bool:
    """Whether the first bytes of a file are binary: a NUL byte, but in UTF-16 or UTF-32
    text (marked by its BOM), where a NUL character is."""
    encoding = encoding_of(head)
    if encoding.startswith("utf-8"):
        return b"\0" in head
    try:  # incremental: a character cut at the end of `head` is no error
        return "\0" in codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError:
        return True


class _ToUtf8(io.RawIOBase):
    """A UTF-16 or UTF-32 stream (known by its BOM) as UTF-8 bytes."""

    def __init__(self, stream: IO[bytes], encoding: str) -> None:
        self._text = io.TextIOWrapper(cast(Any, stream), encoding=encoding, errors="replace",
                                      newline="")
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._out:
            self._out = self._text.read(_CHUNK).encode("utf-8")
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


class _ZstdRaw(io.RawIOBase):
    """A .zst stream that notices truncation.

    zstandard's own stream_reader returns a short read, without an error, when the input
    ends inside a frame; a decompressobj per frame tells a frame's end from a cut.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        import zstandard

        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self._frame: Any = None  # the decompressobj of the frame being read, if any
        self._out = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out and not self._done:
            self._fill()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _fill(self) -> None:
        chunk = self._fh.read(_CHUNK)
        if not chunk:
            if self._frame is not None:
                raise EOFError("input ended inside a zstd frame")
            self._done = True
            return
        parts = []
        try:
            while chunk:  # a file may hold several frames, one after another
                if self._frame is None:
                    self._frame = self._dctx.decompressobj()
                parts.append(self._frame.decompress(chunk))
                chunk = self._frame.unused_data if self._frame.eof else b""
                if self._frame.eof:
                    self._frame = None
        except self._error as err:
            raise OSError(f"zstd: {err}") from err
        self._out = memoryview(b"".join(parts))


class _Guarded(io.RawIOBase):
    """Counts the bytes a decompressor yields and turns its failures into one DataError."""

    _FAILURES = (EOFError, OSError, zlib.error, lzma.LZMAError)

    def __init__(self, stream: IO[bytes] | io.RawIOBase, path: Path) -> None:
        self._stream = stream
        self._path = path
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            n = self._stream.readinto(buffer)  # type: ignore[union-attr]  # every stream here has it
        except self._FAILURES as err:
            raise DataError(f"{self._path} is truncated or corrupt after {self.offset:,} bytes "
                            f"({type(err).__name__}: {err}); re-download or re-compress it"
                            ) from err
        self.offset += n or 0
        return n or 0


def _decompressor(path: Path, fh: IO[bytes]) -> IO[bytes] | io.RawIOBase:
    # Binary file objects all, whatever typeshed calls each one.
    lower = path.name.lower()
    if lower.endswith((".gz", ".tgz")):
        return cast(IO[bytes], gzip.GzipFile(fileobj=fh, mode="rb"))
    if lower.endswith(".bz2"):
        return cast(IO[bytes], bz2.BZ2File(fh, mode="rb"))
    if lower.endswith(".xz"):
        return cast(IO[bytes], lzma.LZMAFile(fh, mode="rb"))
    if lower.endswith(".zst"):
        return _ZstdRaw(fh)
    return fh


@contextmanager
def _decompressed(path: Path, fh: IO[bytes]) -> Iterator[IO[bytes]]:
    stream = _decompressor(path, fh)
    if stream is fh:
        yield fh
        return
    with stream:
        yield io.BufferedReader(_Guarded(stream, path), buffer_size=_CHUNK)


@contextmanager
def open_stream(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed by its suffix, read in a stream."""
    with open(path, "rb") as fh, _decompressed(path, fh) as stream:
        yield stream


def read_bytes(path: Path, *, skip_binary: bool) -> bytes | None:
    """The whole (decompressed) file, or None for a binary one a sweep picked up."""
    with open_stream(path) as stream:
        if skip_binary and _is_binary(stream.peek(_BINARY_PROBE)[:_BINARY_PROBE]):  # type: ignore[attr-defined]
            return None
        return stream.read()


def read_text(path: Path, *, skip_binary: bool, stats: SourceStats) -> str | None:
    """The whole (decompressed) file as text, or None for a binary one a sweep picked up."""
    data = read_bytes(path, skip_binary=skip_binary)
    return None if data is None else decode(data, stats)


def parse_text(payload: tuple[bytes, str, str], stats: SourceStats) -> list[Document]:
    """A text file's bytes as its one Document (a unit's parse: runs in a worker)."""
    data, doc_id, path = payload
    return [Document(text=decode(data, stats), id=doc_id, meta={"path": path})]


def _jsonl_text(obj: dict, path: Path, line: int, field: str) -> str:
    if field not in obj:
        fields = ", ".join(sorted(obj)) or "none"
        raise DataError(f"{path} line {line} has no field {field!r} (fields: {fields}); "
                        "choose the text field with --text-field / data.text_field")
    text = obj[field]
    if text is None:  # a null text is an empty document: prepare skips and counts those
        return ""
    if not isinstance(text, str):
        raise DataError(f"{path} line {line}: field {field!r} holds {type(text).__name__}, "
                        "not text; choose another --text-field")
    return text


@dataclass(frozen=True)
class Chunk:
    """A run of whole lines of a file."""

    data: bytes
    first_line: int  # the number of its first line
    reached: int  # how far into the file on disk reading had got (compressed bytes if so)


def jsonl_chunks(path: Path) -> Iterator[Chunk]:
    """Runs of whole lines of about _JSONL_CHUNK bytes."""
    line = 1
    parts: list[bytes] = []
    with open(path, "rb") as fh, _decompressed(path, fh) as raw:
        encoding = encoding_of(raw.peek(4)[:4])  # type: ignore[attr-defined]
        stream = raw if encoding.startswith("utf-8") else io.BufferedReader(_ToUtf8(raw, encoding))
        while block := stream.read(_JSONL_CHUNK):
            cut = block.rfind(b"\n") + 1
            if not cut:  # a line longer than a block: keep gathering it
                parts.append(block)
                continue
            chunk = b"".join([*parts, block[:cut]])
            parts = [block[cut:]]
            yield Chunk(chunk, line, fh.tell())
            line += chunk.count(b"\n")
        reached = fh.tell()
    rest = b"".join(parts)
    if rest:
        yield Chunk(rest, line, reached)


def parse_jsonl(payload: tuple[bytes, str, str, int, str], stats: SourceStats) -> list[Document]:
    """One Document per JSON object line of a chunk (a unit's parse: runs in a worker); the
    other fields become meta."""
    chunk, name, file_id, first, field = payload
    path = Path(name)
    docs = []
    # Split on "\n" alone, as a binary file iterates, so line numbers match an editor's.
    for line, raw in enumerate(chunk.split(b"\n"), start=first):
        if not raw.strip():
            continue
        try:
            obj = json.loads(decode(raw, stats))
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {line} is not JSON ({err.msg} at column "
                            f"{err.colno}); each line of a .jsonl file must be one "
                            "JSON object") from None
        except RecursionError:
            raise DataError(f"{path} line {line} nests arrays or objects too deeply for "
                            "Python to parse; flatten it or remove the line") from None
        except ValueError as err:  # Python's limit on the digits of an int, as of 3.11
            raise DataError(f"{path} line {line} holds a number Python will not read "
                            f"({str(err).split(':')[0]}); quote it as a string or remove the "
                            "line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {line} is a JSON {type(obj).__name__}, "
                            "not an object; each line must be one JSON object")
        text = _jsonl_text(obj, path, line, field)
        meta = {k: v for k, v in obj.items() if k != field}
        doc_id = f"{file_id}:{obj['id']}" if "id" in obj else f"{file_id}:{line}"
        docs.append(Document(text=text, id=doc_id, meta=meta))
    return docs


def iter_jsonl(path: Path, file_id: str, options: SourceOptions,
               stats: SourceStats) -> Iterator[Document]:
    """One document per JSON object line; the other fields become meta."""
    for chunk in jsonl_chunks(path):
        yield from parse_jsonl((chunk.data, str(path), file_id, chunk.first_line,
                                options.text_field), stats)


@contextmanager
def _parquet(path: Path) -> Iterator[Any]:
    """The open Parquet file; its failures, then or later, as one DataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if inner_name(path.name) != path.name:
        raise DataError(f"{path}: Parquet compresses its own columns and cannot be read "
                        "through a compressed stream; decompress the file")
    try:
        with pq.ParquetFile(path) as pf:
            yield pf
    except (pa.ArrowException, OSError) as err:
        reason = " ".join(str(err).split())  # pyarrow's thrift errors end in a newline
        raise DataError(f"{path} is not a readable Parquet file ({type(err).__name__}: "
                        f"{reason}); re-download or re-write it") from err


def parquet_rows(path: Path) -> int:
    """How many rows (documents) a Parquet file holds, from its footer."""
    with _parquet(path) as pf:
        return pf.metadata.num_rows


def iter_parquet(path: Path, file_id: str, options: SourceOptions,
                 stats: SourceStats) -> Iterator[Document]:
    """One document per row, read batch by batch within row groups, never the whole file."""
    field = options.text_field
    with _parquet(path) as pf:
        columns = pf.schema_arrow.names
        if field not in columns:
            raise DataError(f"{path} has no column {field!r} (columns: {', '.join(columns)}); "
                            "choose the text column with --text-field / data.text_field")
        row = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH):
            for record in batch.to_pylist():
                text = record.pop(field)
                if isinstance(text, bytes):  # a binary column: decode like a text file
                    text = decode(text, stats)
                elif text is None:
                    text = ""
                elif not isinstance(text, str):
                    raise DataError(f"{path} row {row}: column {field!r} holds "
                                    f"{type(text).__name__}, not text; choose another "
                                    "--text-field")
                yield Document(text=text, id=f"{file_id}:{row}", meta=record)
                row += 1
