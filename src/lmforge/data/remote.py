"""Sources that come from elsewhere: URLs (cached and checksummed), named datasets,
Hugging Face datasets and NLTK corpora.

Nothing here reaches the network unless a source asks for it, and every failure to reach
it is a DataError that says how to get the data onto the machine by hand.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import re
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.document import TRAIN, VAL, Document, SourceOptions
from lmforge.errors import DataError
from lmforge.files import sha256_file

Log = Callable[[str], None]

_TIMEOUT_S = 30
_CHUNK = 1 << 20
_ATTEMPTS = 3  # tries per download; only a connection lost mid-file is retried (resuming)
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_HAND_HINT = "download it yourself and pass the file path"


@dataclass(frozen=True)
class NamedDataset:
    url: str
    sha256: str
    filename: str


NAMED_DATASETS: dict[str, NamedDataset] = {
    "tinyshakespeare": NamedDataset(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
            "tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
    ),
}


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- downloads with a cache

def check_url(url: str) -> None:
    """An http(s) URL that urllib can take apart: scheme, host and (if any) a port in range,
    and no space or control character; else one DataError."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise DataError(f"the URL {url!r} holds a space or a control character; "
                        "percent-encode it (a space is %20)")
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as err:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise DataError(f"{url} is not a valid URL ({err}); check the address") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise DataError(f"{url} is not a valid URL (it needs http:// or https://, a host and "
                        "at most a port from 1 to 65535); check the address")


def _cache_path(url: str, cache_dir: Path, filename: str | None) -> Path:
    """Keyed by the URL, and ending in the URL's file name so readers can go by its suffix."""
    name = filename or Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cache_dir) / "downloads" / f"{key}-{name}"


def _opener(url: str) -> urllib.request.OpenerDirector:
    # A proxy set in the environment cannot reach this machine's own loopback address.
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in _LOOPBACK or host.startswith("127."):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", header or "")
    return int(match.group(1)) if match else None


def _fetch_once(url: str, part: Path) -> bool:
    """One request into `part`, resuming it when it exists; True when the body came whole.

    Errors before the body starts (refused, 404, DNS) propagate: there is nothing to resume.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lmforge"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = _opener(url).open(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is as long as the file or longer: start over
            part.unlink()
            return _fetch_once(url, part)
        raise
    with response:
        if have and response.status == 206 \
                and _content_range_start(response.headers.get("Content-Range")) != have:
            part.unlink()  # the server resumed from elsewhere: start over rather than guess
            return _fetch_once(url, part)
        if response.status != 206:
            have = 0  # the server ignored Range and sends the whole file
        length = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if have else "wb") as fh:
            try:
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    received += len(chunk)
            except (OSError, http.client.HTTPException):
                return False  # lost mid-body: keep what arrived, the next try resumes
    # http.client returns a short body silently when the connection drops early.
    return length is None or received == int(length)


def _failure(url: str, reason: object, hint: str) -> DataError:
    return DataError(f"could not download {url} ({reason}); check the address and the "
                     f"network, or {hint}")


def _fetch(url: str, dest: Path, *, sha256: str | None, log: Log, hint: str) -> Path:
    """`url` into `dest` through `dest.part`, checked against sha256, renamed when whole."""
    if dest.exists():
        if sha256 is None or sha256_file(dest) == sha256:
            return dest
        log(f"{dest} does not match its sha256; downloading it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log(f"downloading {url} to {dest}")
    for _ in range(_ATTEMPTS):
        try:
            if _fetch_once(url, part):
                break
        except urllib.error.URLError as e:  # an HTTPError says "HTTP Error 404: Not Found"
            reason = e if isinstance(e, urllib.error.HTTPError) else e.reason
            raise _failure(url, reason, hint) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise _failure(url, e, hint) from None
    else:
        raise _failure(url, f"the connection closed early {_ATTEMPTS} times; "
                       f"{part.stat().st_size} bytes kept to resume from", hint)
    if sha256 is not None and (actual := sha256_file(part)) != sha256:
        part.unlink()
        raise DataError(f"{url} does not match its checksum: expected sha256 {sha256}, "
                        f"got {actual}; the download was deleted. Check the address, "
                        "or the file changed upstream")
    os.replace(part, dest)  # atomic: a reader never sees a half-written file under dest
    return dest


def download(url: str, *, cache_dir: Path, sha256: str | None = None,
             filename: str | None = None, log: Log | None = None) -> Path:
    """The path of `url`'s file in the cache, downloading it on first use."""
    check_url(url)
    dest = _cache_path(url, cache_dir, filename)
    return _fetch(url, dest, sha256=sha256, log=log or (lambda _: None), hint=_HAND_HINT)


def fetch_url(url: str, options: SourceOptions) -> Path:
    """The file at `url`, downloaded once into options.cache_dir (sources.py reads it)."""
    return download(url, cache_dir=options.cache_dir, log=_say)


def fetch_named(name: str, options: SourceOptions) -> Path:
    """A well-known corpus by name; $LMFORGE_URL_<NAME> points at a mirror instead."""
    if name not in NAMED_DATASETS:
        raise DataError(f"unknown named dataset {name!r}; known: {', '.join(NAMED_DATASETS)}")
    known = NAMED_DATASETS[name]
    url = os.environ.get(f"LMFORGE_URL_{name.upper()}", known.url)
    check_url(url)
    # Cached under the canonical URL whatever the mirror: the checksum vouches for the bytes,
    # and a user can seed the cache by hand at one documented path.
    dest = _cache_path(known.url, options.cache_dir, known.filename)
    return _fetch(url, dest, sha256=known.sha256, log=_say, hint=f"copy {known.filename} to {dest}")


# ---------------------------------------------------------------- Hugging Face datasets

_HF_VAL_SPLITS = ("validation", "valid", "test")


def _json_friendly(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    return isinstance(value, list) and all(_json_friendly(v) for v in value)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError("hf: sources need the datasets package: "
                        "pip install 'lmforge[hf]'") from None
    return datasets


def _hf_failure(name: str, config: str | None, error: Exception) -> DataError:
    # The hub's errors are many and nested; their first line says which one it was.
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return DataError(f"could not load the Hugging Face dataset {name!r}"
                     f"{f' (config {config!r})' if config else ''}: {reason}; check the name, "
                     "config, split and the network, or set HF_DATASETS_OFFLINE=1 with a "
                     "cached copy")


def _hf_split_meta(splits: Iterable[str]) -> dict[str, str]:
    """HF split → our split, only when the dataset has both a train and a held-out split."""
    names = set(splits)
    held_out = [s for s in _HF_VAL_SPLITS if s in names]
    if "train" not in names or not held_out:
        return {}  # prepare splits by hashing ids instead
    return {"train": TRAIN, **{s: VAL for s in held_out}}


def _hf_document(name: str, split: str, index: int, row: dict[str, Any], field: str,
                 ours: dict[str, str]) -> Document:
    if field not in row:
        raise DataError(f"the Hugging Face dataset {name!r} has no column {field!r} "
                        f"(columns: {', '.join(row)}); set the text field to one of them")
    text = row[field]
    if text is None:
        text = ""  # as for local JSONL: an empty document, which prepare skips and counts
    if not isinstance(text, str):
        raise DataError(f"column {field!r} of the Hugging Face dataset {name!r} holds "
                        f"{type(text).__name__}, not text; set the text field to a column "
                        "of strings")
    meta = {k: v for k, v in row.items() if k != field and _json_friendly(v)}
    meta["hf_split"] = split
    if split in ours:
        meta["split"] = ours[split]
    return Document(text=text, id=f"hf:{name}:{split}:{index}", meta=meta)


def iter_hf(name: str, config: str | None, options: SourceOptions) -> Iterator[Document]:
    """Rows of a Hugging Face dataset (a hub name or a local directory), streamed."""
    if not name.strip("/"):
        raise DataError("hf: needs a dataset's name after it, like hf:wikitext:"
                        "wikitext-2-raw-v1, or a local dataset directory")
    datasets = _import_datasets()
    # Streaming fetches as it goes, so loading and reading can both fail on the network or
    # on a malformed file (pyarrow raises ValueErrors).
    errors = (OSError, ValueError, datasets.exceptions.DatasetsError)
    try:
        loaded = datasets.load_dataset(name, config, split=options.split or None,
                                       streaming=True)
    except errors as e:
        raise _hf_failure(name, config, e) from None
    splits = {options.split: loaded} if options.split else dict(loaded)
    ours = _hf_split_meta(splits)
    for split, rows in splits.items():
        try:
            for index, row in enumerate(rows):
                yield _hf_document(name, split, index, row, options.text_field, ours)
        except errors as e:
            raise _hf_failure(name, config, e) from None


# ---------------------------------------------------------------- NLTK corpora

def _online(url: str, timeout_s: float = 3.0) -> bool:
    """Whether `url`'s host answers on TCP, decided within `timeout_s` whatever DNS does."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname or "", port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own and can hang for minutes on a machine offline.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def _nltk_corpus(name: str) -> Any:
    import nltk
    import nltk.corpus
    from nltk.corpus.reader.api import CorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    corpus = getattr(nltk.corpus, name, None) if not name.startswith("_") else None
    if not isinstance(corpus, LazyCorpusLoader | CorpusReader):
        known = sorted(k for k, v in vars(nltk.corpus).items()
                       if isinstance(v, LazyCorpusLoader | CorpusReader))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DataError(f"no NLTK corpus named {name!r}; {hint}known corpora include "
                        f"{', '.join(known[:12])}, …")
    try:
        corpus.fileids()  # a LazyCorpusLoader finds its data on first use
        return corpus
    except LookupError:
        pass
    from nltk.downloader import Downloader

    if _online(Downloader.DEFAULT_URL):
        try:
            nltk.download(name, quiet=True)
            corpus.fileids()
            return corpus
        except (LookupError, OSError, ValueError):
            pass
    raise DataError(f"NLTK corpus {name!r} is not installed and could not be downloaded; "
                    f"run `python -m nltk.downloader {name}` on a machine with network and "
                    f"copy nltk_data to one of: {', '.join(map(str, nltk.data.path[:3]))}")


def _reuters_split(fileid: str) -> str:
    # NLTK's reuters is the ModApte split already: training/NNN and test/NNN.
    return TRAIN if fileid.startswith("training/") else VAL


def iter_nltk(name: str, options: SourceOptions) -> Iterator[Document]:
    """Every file of an NLTK corpus, read through NLTK's own reader, in fileid order."""
    if not name:
        raise DataError("nltk: needs a corpus's name after it, like nltk:reuters or nltk:gutenberg")
    if name == "reuters" and options.split not in ("", "modapte"):
        raise DataError(f"nltk:reuters knows the split 'modapte', not {options.split!r}")
    corpus = _nltk_corpus(name)
    fileids = corpus.fileids()
    if not fileids:
        raise DataError(f"the NLTK corpus {name!r} holds no text files to read")
    categorized = callable(getattr(corpus, "categories", None))
    for fileid in fileids:
        meta: dict[str, Any] = {"fileid": fileid}
        if categorized:
            meta["categories"] = corpus.categories(fileid)
        if name == "reuters" and options.split == "modapte":
            meta["split"] = _reuters_split(fileid)
        yield Document(text=corpus.raw(fileid), id=f"nltk:{name}:{fileid}", meta=meta)
