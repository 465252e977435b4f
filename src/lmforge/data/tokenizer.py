"""Tokenizers: byte-level BPE (HF `tokenizers`), characters, and raw bytes.

Every tokenizer has one special token, end-of-text (`eot_id`), which separates documents
in the shards. `decode` renders eot as "" (the documents around it simply join up), ids
outside the vocabulary (a model whose output layer is padded past the vocabulary can
sample them) as U+FFFD, and byte sequences that are not valid UTF-8 — a sequence cut in
the middle of a character — as U+FFFD too; it never raises.

A tokenizer trained on text that clean.segment_chinese spaced into words is `segmented`:
it removes those spaces when decoding (chinese.desegment), so generated Chinese reads as
Chinese is written. Its meta says so; text without segmentation decodes as it always did.

A tokenizer lives in a directory: its own file plus `tokenizer_meta.json`, which says
which kind it is.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmforge.data.chinese import desegment
from lmforge.errors import DataError

META_FILE = "tokenizer_meta.json"
BPE_FILE = "tokenizer.json"
EOT_TOKEN = "<|endoftext|>"
KINDS = ("bpe", "char", "byte")
_REPLACEMENT = "\ufffd"
# BPE training: a run of more characters without a break is cut into pieces this long
_MAX_RUN = 1024
_LONG_RUN = re.compile(rf"\S{{{_MAX_RUN + 1},}}|\s{{{_MAX_RUN + 1},}}")


class Tokenizer(ABC):
    """The interface every kind implements."""

    kind: str
    vocab_size: int
    eot_id: int
    segmented: bool = False  # trained on text with spaces between Chinese words

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; never raises on a sequence that cuts a character in half."""
        text = self._decode(ids)
        return desegment(text) if self.segmented else text

    @abstractmethod
    def _decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` as the tokens spell it."""

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                **self._extra_meta()}
        if self.segmented:  # only then, so other tokenizers' files (and digests) stay as they were
            meta["segment_chinese"] = True
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255, and eot = 256."""

    kind = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        # surrogatepass: a lone surrogate (possible in JSON-sourced text) must not crash
        return list(text.encode("utf-8", errors="surrogatepass"))

    def _decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        for i in ids:
            if 0 <= i < 256:
                out.append(i)
            elif i != self.eot_id:
                out += _REPLACEMENT.encode()
        return out.decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """The characters of the training text, sorted, and eot as the last id."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_id = len(self.chars)
        self.vocab_size = len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the char tokenizer's "
                            "vocabulary, which comes from the prepared corpus; prepare a "
                            "corpus that contains it or use the byte or bpe tokenizer") from None

    def _decode(self, ids: Iterable[int]) -> str:
        chars, n = self.chars, len(self.chars)
        return "".join(chars[i] if 0 <= i < n else ("" if i == n else _REPLACEMENT)
                       for i in ids)

    def _extra_meta(self) -> dict[str, Any]:
        return {"chars": self.chars}


class BpeTokenizer(Tokenizer):
    """Byte-level BPE from HF `tokenizers`; any byte is encodable, so nothing is unknown."""

    kind = "bpe"

    def __init__(self, hf: Any) -> None:
        # Literal "<|endoftext|>" in a document is text, not a document boundary.
        hf.encode_special_tokens = True
        self._hf = hf
        self.vocab_size = hf.get_vocab_size()
        self.eot_id = hf.token_to_id(EOT_TOKEN)
        if self.eot_id is None:
            raise DataError(f"the bpe tokenizer has no {EOT_TOKEN} token; prepare the dataset again")

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._hf.encode_batch(texts)]

    def _decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        n = self.vocab_size
        if all(0 <= i < n for i in ids):
            return self._hf.decode(ids, skip_special_tokens=True)
        # HF drops unknown ids silently; show each as U+FFFD instead
        parts, run = [], []
        for i in ids:
            if 0 <= i < n:
                run.append(i)
            else:
                parts += [self._hf.decode(run, skip_special_tokens=True), _REPLACEMENT]
                run = []
        parts.append(self._hf.decode(run, skip_special_tokens=True))
        return "".join(parts)

    def save(self, directory: Path) -> None:
        super().save(directory)
        self._hf.save(str(Path(directory) / BPE_FILE))


def _bounded(texts: Iterable[str]) -> Iterator[str]:
    """The texts as BPE training sees them. The byte-level pre-tokenizer splits text at
    whitespace (and between letters, digits and punctuation), so a run without whitespace is
    one word, and the trainer's work on a word grows with the square of its length: a
    single-line corpus of 50 MB ran for hours. So each run of over _MAX_RUN characters (of
    non-space, or of space) is cut into pieces of _MAX_RUN, for training alone: encoding sees
    the whole run, with the same pre-tokenizer. Text without such a run passes as it is, so
    what the tokenizer learns from ordinary text does not change."""
    for text in texts:
        start = 0
        for match in _LONG_RUN.finditer(text):
            if match.start() > start:
                yield text[start:match.start()]
            run = match.group()
            yield from (run[i:i + _MAX_RUN] for i in range(0, len(run), _MAX_RUN))
            start = match.end()
        if start < len(text):
            yield text[start:] if start else text


def _train_bpe(texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise DataError(f"tokenizer.vocab_size={vocab_size} is too small for a byte-level BPE "
                        "tokenizer (needs at least 257); raise it")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(_bounded(texts), trainer=trainer)
    return BpeTokenizer(hf)


def _fitted(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if kind == "bpe":
        return _train_bpe(texts, vocab_size)
    if kind == "char":
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return CharTokenizer(chars)
    if kind == "byte":
        return ByteTokenizer()
    raise DataError(f"unknown tokenizer kind '{kind}'; choose one of {', '.join(KINDS)}")


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int,
                    segmented: bool = False) -> Tokenizer:
    """A tokenizer of `kind` fitted to `texts` (char and byte ignore `vocab_size`);
    `segmented`: the texts had spaces put between Chinese words, which decoding removes.

    The byte tokenizer learns nothing and does not consume `texts`.
    """
    tok = _fitted(kind, texts, vocab_size)
    tok.segmented = segmented
    return tok


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer saved in `directory` by `Tokenizer.save`."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
        kind = meta["kind"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise DataError(f"no tokenizer at {directory} ({META_FILE} missing or unreadable); "
                        "prepare the dataset again") from None
    tok = _loaded(kind, meta, directory)
    tok.segmented = meta.get("segment_chinese") is True
    return tok


def _loaded(kind: str, meta: dict[str, Any], directory: Path) -> Tokenizer:
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        chars = meta.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise DataError(f"{directory / META_FILE}: the char tokenizer's 'chars' are missing "
                            "or damaged; prepare the dataset again")
        return CharTokenizer(chars)
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_file(str(directory / BPE_FILE))
        except Exception:  # tokenizers raises plain Exception for missing or bad files
            raise DataError(f"no tokenizer at {directory} ({BPE_FILE} missing or unreadable); "
                            "prepare the dataset again") from None
        return BpeTokenizer(hf)
    raise DataError(f"{directory / META_FILE}: unknown tokenizer kind {kind!r}; prepare the "
                    "dataset again")


def tokenizer_digest(directory: Path) -> str:
    """sha256 over a tokenizer directory's files: equal exactly when the ids mean the same."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def find_tokenizer(path: Path) -> Path:
    """The tokenizer directory of `path`: a tokenizer directory itself, or a prepared dataset
    or a run directory that holds one in tokenizer/."""
    path = Path(path)
    for directory in (path, path / "tokenizer"):
        if (directory / META_FILE).is_file():
            return directory
    raise DataError(f"no tokenizer at {path}; give a prepared dataset, a run directory or a "
                    f"tokenizer directory (one holding {META_FILE})")
