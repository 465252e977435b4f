"""Reuters-21578: the 22 `reut2-NNN.sgm` files, loose or in their tar.gz distribution.

The SGML is not XML (no root element, bare `&#3;` control codes), so documents are cut out
with regular expressions. Each `<REUTERS>` element becomes one Document with id
`reuters:NEWID`; text is the title and the body, and meta["title"] the title alone ("" for
a story without one), so a task can tell them apart (headline generation). With split 'modapte' only the ModApte
documents are kept, each with meta["split"], so prepare uses the standard split instead of
hashing ids. Documents come file by file in name order, then in document order, so the
archive and the unpacked directory give the same stream.
"""

from __future__ import annotations

import html
import re
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO

from lmforge.data.document import TRAIN, VAL, Document
from lmforge.data.formats import SourceStats, decode, is_reuters_sgm
from lmforge.errors import DataError

SPLITS = ("modapte",)
ARCHIVE_NAME = "reuters21578.tar.gz"

_ATTR = re.compile(r'(\w+)="([^"]*)"')
_TAG = re.compile(r"<[^>]*>")
# Wire-service codes (&#2; starts a story, &#3; ends it, &#5;, &#22;, ...): every C0
# control but newline and tab, and DEL. Removed after entities are decoded.
_CONTROLS = "".join(map(chr, [*range(0x09), *range(0x0B, 0x20), 0x7F]))
_CONTROL_TABLE = dict.fromkeys(map(ord, _CONTROLS))
# ModApte: the documents with TOPICS="YES"; Lewis's TRAIN part trains, his TEST part tests.
_MODAPTE = {"TRAIN": TRAIN, "TEST": VAL}
# The top-level fields of a <REUTERS> element before its TEXT, found in one scan of that
# short head; TEXT comes last, and TITLE and BODY inside it.
_FIELDS = re.compile(r"<(DATE|TOPICS|PLACES|PEOPLE|ORGS|EXCHANGES)>(.*?)</\1>", re.DOTALL)
_NAME_END = frozenset(" \t\n\r>")


def check_split(split: str) -> None:
    if split and split not in SPLITS:
        raise DataError(f"unknown split {split!r} for Reuters-21578; choose one of "
                        f"{', '.join(SPLITS)} (or no split, to split by document hash)")


# Long spans (whole elements, TEXT, BODY) are cut out with str.find rather than lazy `.*?`
# regular expressions, which cost several times more per kilobyte; parsing is what the
# workers spend most on after tokenizing (benchmarks/prepare_throughput.py).

def _element(text: str, name: str, start: int = 0, stop: int | None = None) -> str | None:
    """The content of the first <name ...>...</name> in text[start:stop], or None."""
    open_tag, stop = "<" + name, len(text) if stop is None else stop
    at = text.find(open_tag, start, stop)
    while at >= 0 and text[at + len(open_tag):at + len(open_tag) + 1] not in _NAME_END:
        at = text.find(open_tag, at + 1, stop)  # <DATELINE> is not <DATE>
    if at < 0:
        return None
    inner = text.find(">", at, stop)
    close = text.find(f"</{name}>", inner, stop) if inner >= 0 else -1
    return text[inner + 1:close] if close >= 0 else None


def _clean(sgml: str) -> str:
    if "&" in sgml:  # unescape is the costly part, and most fields have no entity
        sgml = html.unescape(sgml)
    if not sgml.isprintable():  # tabs and newlines too, but most codes are one word
        sgml = sgml.translate(_CONTROL_TABLE)
    return sgml.strip()


def _codes(fields: dict[str, str], name: str) -> list[str]:
    field = fields.get(name)  # "<D>usa</D><D>uk</D>", most often empty
    return [_clean(d.partition("</D>")[0]) for d in field.split("<D>")[1:]] if field else []


def _title(text: str) -> str:
    title = _element(text, "TITLE")
    return _clean(title) if title is not None else ""


def _text(text: str, title: str) -> str:
    """Title and body; BRIEF stories have only a title, UNPROC ones only raw TEXT."""
    story = _element(text, "BODY")
    if story is not None:
        story = _clean(story)
        return f"{title}\n\n{story}" if title else story
    # BRIEF's TEXT is just the title plus "Blah blah blah." filler, so the title is the text.
    return title or _clean(_TAG.sub("", text))


def _elements(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset, attributes, content) of each complete <REUTERS ...>...</REUTERS> in data."""
    at = data.find(b"<REUTERS")
    while at >= 0:
        head = data.find(b">", at)
        end = data.find(b"</REUTERS>", head) if head >= 0 else -1
        if end < 0:
            return
        if data[at + 8:at + 9] in (b" ", b"\t", b"\n", b"\r", b">"):
            yield at, data[at + 8:head], data[head + 1:end]
        at = data.find(b"<REUTERS", end)


def parse(data: bytes, *, source: str, split: str, stats: SourceStats) -> Iterator[Document]:
    """The documents of one .sgm file's bytes (the `split` already checked)."""
    for offset, head, content in _elements(data):
        # The files are ASCII but for one stray wire byte (0xFC in reut2-017.sgm, in NEWID
        # 17980) that is noise, not a letter: U+FFFD says so, where latin-1 would make a 'ü'.
        attrs = dict(_ATTR.findall(decode(head, stats)))
        body = decode(content, stats)
        try:
            newid = int(attrs["NEWID"])
        except (KeyError, ValueError):
            raise DataError(f"{source}: a <REUTERS> element at byte {offset:,} has no "
                            "numeric NEWID; is this a Reuters-21578 file?") from None
        text_at = body.find("<TEXT")
        fields = dict(_FIELDS.findall(body, 0, text_at if text_at >= 0 else len(body)))
        meta: dict = {
            "topics": _codes(fields, "TOPICS"), "places": _codes(fields, "PLACES"),
            "people": _codes(fields, "PEOPLE"), "orgs": _codes(fields, "ORGS"),
            "exchanges": _codes(fields, "EXCHANGES"), "date": _clean(fields.get("DATE", "")),
            "newid": newid, "lewissplit": attrs.get("LEWISSPLIT", ""),
            "cgisplit": attrs.get("CGISPLIT", ""),
        }
        if split == "modapte":
            part = _MODAPTE.get(meta["lewissplit"]) if attrs.get("TOPICS") == "YES" else None
            if part is None:
                continue
            meta["split"] = part
        text = (_element(body, "TEXT", max(text_at, 0)) if text_at >= 0 else None) or ""
        meta["title"] = _title(text)
        yield Document(text=_text(text, meta["title"]), id=f"reuters:{newid}", meta=meta)


def members(stream: IO[bytes], source: str) -> list[tuple[str, bytes]]:
    """The reut2-*.sgm members of a tar stream, in name order (empty if it holds none)."""
    found = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                name = PurePosixPath(member.name).name
                if member.isfile() and is_reuters_sgm(name):
                    reader = archive.extractfile(member)
                    assert reader is not None  # a regular file always has one
                    found.append((name, reader.read()))
    except tarfile.TarError as err:
        raise DataError(f"{source} is not a readable tar archive ({err}); "
                        "re-download it") from err
    # The distribution stores members out of order (reut2-014 first); sorting needs them all
    # at hand, which is 28 MB for the whole corpus.
    return sorted(found)


def parse_file(payload: tuple[bytes, str, str], stats: SourceStats) -> list[Document]:
    """The documents of one .sgm file's bytes, named `source` in errors (a unit's parse: it
    runs in a worker process, so the main process only reads bytes)."""
    data, source, split = payload
    return list(parse(data, source=source, split=split, stats=stats))
