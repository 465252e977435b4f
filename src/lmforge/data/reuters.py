"""Reuters-21578: the 22 `reut2-NNN.sgm` files, loose or in their tar.gz distribution.

The SGML is not XML (no root element, bare `&#3;` control codes), so documents are cut out
with regular expressions. Each `<REUTERS>` element becomes one Document with id
`reuters:NEWID`; text is the title and the body. With split 'modapte' only the ModApte
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

_DOC = re.compile(rb"<REUTERS\b([^>]*)>(.*?)</REUTERS>", re.DOTALL)
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_D = re.compile(r"<D>(.*?)</D>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
# Wire-service codes (&#2; starts a story, &#3; ends it, &#5;, &#22;, ...): every C0
# control but newline and tab, and DEL. Removed after entities are decoded.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# ModApte: the documents with TOPICS="YES"; Lewis's TRAIN part trains, his TEST part tests.
_MODAPTE = {"TRAIN": TRAIN, "TEST": VAL}


def check_split(split: str) -> None:
    if split and split not in SPLITS:
        raise DataError(f"unknown split {split!r} for Reuters-21578; choose one of "
                        f"{', '.join(SPLITS)} (or no split, to split by document hash)")


# The top-level fields of a <REUTERS> element, found in one scan; then TITLE and BODY inside TEXT.
_FIELDS = re.compile(r"<(DATE|TOPICS|PLACES|PEOPLE|ORGS|EXCHANGES|TEXT)\b[^>]*>(.*?)</\1>",
                     re.DOTALL)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.DOTALL)
_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.DOTALL)


def _inner(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def _clean(sgml: str) -> str:
    if "&" in sgml:  # unescape is the costly part, and most fields have no entity
        sgml = html.unescape(sgml)
    return _CONTROL.sub("", sgml).strip()


def _codes(fields: dict[str, str], name: str) -> list[str]:
    return [_clean(d) for d in _D.findall(fields.get(name, ""))]


def _text(text: str) -> str:
    """Title and body; BRIEF stories have only a title, UNPROC ones only raw TEXT."""
    title, story = _inner(_TITLE, text), _inner(_BODY, text)
    title = _clean(title) if title is not None else ""
    if story is not None:
        story = _clean(story)
        return f"{title}\n\n{story}" if title else story
    # BRIEF's TEXT is just the title plus "Blah blah blah." filler, so the title is the text.
    return title or _clean(_TAG.sub("", text))


def parse(data: bytes, *, source: str, split: str, stats: SourceStats) -> Iterator[Document]:
    """The documents of one .sgm file's bytes (the `split` already checked)."""
    for match in _DOC.finditer(data):
        # The files are ASCII but for one stray wire byte (0xFC in reut2-017.sgm, in NEWID
        # 17980) that is noise, not a letter: U+FFFD says so, where latin-1 would make a 'ü'.
        attrs = dict(_ATTR.findall(decode(match.group(1), stats)))
        body = decode(match.group(2), stats)
        try:
            newid = int(attrs["NEWID"])
        except (KeyError, ValueError):
            raise DataError(f"{source}: a <REUTERS> element at byte {match.start():,} has no "
                            "numeric NEWID; is this a Reuters-21578 file?") from None
        fields = dict(_FIELDS.findall(body))
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
        yield Document(text=_text(fields.get("TEXT", "")), id=f"reuters:{newid}", meta=meta)


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
