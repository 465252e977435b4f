"""Tokenizers: byte-level BPE (HF `tokenizers`), characters, raw bytes, and a Hugging Face
model's own tokenizer ("hf": its tokenizer.json and the files beside it, used unchanged).

Every tokenizer has one special token, end-of-text (`eot_id`), which separates documents
in the shards. `decode` renders eot as "" (the documents around it simply join up), ids
outside the vocabulary (a model whose output layer is padded past the vocabulary can
sample them) as U+FFFD, and byte sequences that are not valid UTF-8 — a sequence cut in
the middle of a character — as U+FFFD too; it never raises.

A tokenizer trained on text that clean.segment_chinese spaced into words is `segmented`:
it removes those spaces when decoding (chinese.desegment), so generated Chinese reads as
Chinese is written. Its meta says so; text without segmentation decodes as it always did.

A tokenizer lives in a directory: its own file plus `tokenizer_meta.json`, which says
which kind it is. An "hf" tokenizer's end of text is the model's eos token; where the model's
tokenizer puts a bos token before every text (Llama), `bos_id` names it, and generation starts
from it (`encode_prompt`). Documents are encoded without the specials the model's tokenizer
would add around a text: in the shards eos alone separates them.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmforge.data import hf_files
from lmforge.data.chinese import desegment
from lmforge.errors import DataError

META_FILE = "tokenizer_meta.json"
BPE_FILE = "tokenizer.json"
EOT_TOKEN = "<|endoftext|>"
KINDS = ("bpe", "char", "byte")  # the kinds lmforge trains; "hf" is given, never trained
_REPLACEMENT = "\ufffd"
# BPE training: a run of more characters without a break is cut into pieces this long
_MAX_RUN = 1024
_LONG_RUN = re.compile(rf"\S{{{_MAX_RUN + 1},}}|\s{{{_MAX_RUN + 1},}}")


class Tokenizer(ABC):
    """The interface every kind implements."""

    kind: str
    vocab_size: int
    eot_id: int
    bos_id: int | None = None  # what the model's tokenizer puts before a text ("hf" only)
    segmented: bool = False  # trained on text with spaces between Chinese words

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_prompt(self, text: str) -> list[int]:
        """What generation starts from: bos and `text` where the model's tokenizer puts bos
        before a text; else `text`, or end-of-text (the boundary a document follows in the
        shards) when there is no text. Never empty."""
        ids = self.encode(text) if text else []
        if self.bos_id is not None:
            return [self.bos_id, *ids]
        return ids or [self.eot_id]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; never raises on a sequence that cuts a character in half."""
        text = self._decode(ids)
        return desegment(text) if self.segmented else text

    @abstractmethod
    def _decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` as the tokens spell it."""

    def decode_after(self, context: list[int], ids: list[int]) -> str:
        """The text `ids` add after `context` (a prompt): for these kinds, decode(ids)."""
        return self.decode(ids)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / META_FILE).write_text(self._meta_text())

    def _meta_text(self) -> str:
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                **self._extra_meta()}
        if self.segmented:  # only then, so other tokenizers' files (and digests) stay as they were
            meta["segment_chinese"] = True
        return json.dumps(meta, indent=2) + "\n"

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


class _HfBacked(Tokenizer):
    """A tokenizer that HF `tokenizers` runs. The specials a post-processor would add around
    a text are left out (documents are separated by eot alone), and a special token's text
    inside a document is text, not a boundary (encode_special_tokens)."""

    _hf: Any

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

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


class BpeTokenizer(_HfBacked):
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

    def save(self, directory: Path) -> None:
        super().save(directory)
        self._hf.save(str(Path(directory) / BPE_FILE))


class HfTokenizer(_HfBacked):
    """A Hugging Face model's own tokenizer, so that a model trained elsewhere keeps the ids
    it was trained with. Its files are kept byte for byte (hf_files.COPIED): saving copies
    them beside tokenizer_meta.json, so AutoTokenizer loads a saved or exported one exactly as
    the original, chat template included (stored as it is; only instruction tuning renders it, in
    jinja2's sandbox: tasks/chat.py)."""

    kind = "hf"

    def __init__(self, files: hf_files.ModelTokenizerFiles, hf: Any, *, eot_id: int,
                 bos_id: int | None) -> None:
        hf.encode_special_tokens = True
        self._hf = hf
        self.files = dict(files.raw)
        self.vocab_size = hf_files.vocab_size(hf)
        self.eot_id, self.bos_id = eot_id, bos_id

    @classmethod
    def from_model_dir(cls, directory: Path) -> HfTokenizer:
        """The tokenizer of a Hugging Face model directory (tokenizer.json required)."""
        files = hf_files.read_files(directory)
        hf = hf_files.parse(files)
        with hf_files.rust_errors(files.directory):
            eot, bos = hf_files.eos_id(files, hf), hf_files.bos_id(files, hf)
        return cls(files, hf, eot_id=eot, bos_id=bos)

    def _extra_meta(self) -> dict[str, Any]:
        return {"bos_id": self.bos_id, "files": sorted(self.files)}

    def encode_with_specials(self, text: str) -> list[int]:
        """Ids of a text the model's chat template rendered, where a special token's text
        (<|im_start|>) is that token, as the model was tuned to read it. Documents never come
        here: in them such text is text (encode)."""
        self._hf.encode_special_tokens = False
        try:
            return list(self._hf.encode(text, add_special_tokens=False).ids)
        finally:
            self._hf.encode_special_tokens = True

    def token(self, i: int) -> str | None:
        """The token of id `i` as the vocabulary spells it (for messages)."""
        found = self._hf.id_to_token(i)
        return str(found) if found is not None else None

    def decode_after(self, context: list[int], ids: list[int]) -> str:
        # A decoder may drop the space that starts a text (Llama 2's Metaspace/Strip), which
        # after a prompt is the space between it and the continuation: decoded together,
        # the space stays.
        before, full = self.decode(context), self.decode([*context, *ids])
        return full[len(before):] if full.startswith(before) else self.decode(ids)

    def save(self, directory: Path) -> None:
        super().save(directory)
        for name, data in sorted(self.files.items()):
            (Path(directory) / name).write_bytes(data)

    def digest(self) -> str:
        """tokenizer_digest of the directory `save` writes, without writing it."""
        return _digest({**self.files, META_FILE: self._meta_text().encode()})


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
    if kind == "hf":
        return _loaded_hf(meta, directory)
    raise DataError(f"{directory / META_FILE}: unknown tokenizer kind {kind!r}; prepare the "
                    "dataset again")


def _loaded_hf(meta: dict[str, Any], directory: Path) -> HfTokenizer:
    """An "hf" tokenizer that `save` wrote: its ids come from the meta, since the model files
    they may have been read from (config.json) are not copied."""
    files = hf_files.read_files(directory)
    hf = hf_files.parse(files)
    vocab = hf_files.vocab_size(hf)
    eot, bos = meta.get("eot_id"), meta.get("bos_id")
    ids_ok = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab
                 for i in (eot, *([] if bos is None else [bos])))
    if not ids_ok or not isinstance(eot, int):
        raise DataError(f"{directory / META_FILE}: eot_id or bos_id is missing or not a token id "
                        f"of the tokenizer's {vocab:,}; prepare the dataset again")
    return HfTokenizer(files, hf, eot_id=eot, bos_id=bos)


def tokenizer_digest(directory: Path) -> str:
    """sha256 over a tokenizer directory's files: equal exactly when the ids mean the same."""
    return _digest({p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()})


def _digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    return digest.hexdigest()


def find_tokenizer(path: Path) -> Path:
    """The tokenizer directory of `path`: a tokenizer directory itself, a prepared dataset or
    a run directory that holds one in tokenizer/, or a Hugging Face model directory (one
    holding tokenizer.json; open it with `tokenizer_at`)."""
    path = Path(path)
    for directory in (path, path / "tokenizer"):
        if (directory / META_FILE).is_file():
            return directory
    if (path / hf_files.TOKENIZER_JSON).is_file():
        return path
    raise DataError(f"no tokenizer at {path}; give a prepared dataset, a run directory, a "
                    f"tokenizer directory (one holding {META_FILE}) or a Hugging Face model "
                    f"directory (one holding {hf_files.TOKENIZER_JSON})")


def is_model_dir(directory: Path) -> bool:
    """A directory `find_tokenizer` found that is a Hugging Face model's, not lmforge's."""
    return not (Path(directory) / META_FILE).is_file()


def tokenizer_at(directory: Path) -> Tokenizer:
    """The tokenizer in a directory `find_tokenizer` returned."""
    if is_model_dir(directory):
        return HfTokenizer.from_model_dir(directory)
    return load_tokenizer(directory)


def given_digest(directory: Path, tokenizer: Tokenizer) -> str:
    """The tokenizer_digest `tokenizer`, found at `directory`, has once saved as a dataset's:
    of lmforge's directory as it is, of a model directory's what `save` copies of it (not the
    weights beside it). The same tokenizer given either way gets the same digest."""
    if isinstance(tokenizer, HfTokenizer) and is_model_dir(directory):
        return tokenizer.digest()
    return tokenizer_digest(directory)
