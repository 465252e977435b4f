"""A Hugging Face model directory's tokenizer as files: what lmforge's "hf" tokenizer
(tokenizer.HfTokenizer) is made of, read and checked without running anything.

The tokenizer itself is tokenizer.json, the fast tokenizer's file that HF `tokenizers` loads
(not `transformers`: lmforge never needs it). Beside it, tokenizer_config.json and
special_tokens_map.json name the end-of-text (eos) and beginning-of-text (bos) tokens and say
whether the model's tokenizer puts bos before a text (add_bos_token); generation_config.json
and config.json give their ids where the tokenizer files do not. These files, and a chat
template in chat_template.jinja, are kept byte for byte (COPIED) so that a prepared dataset, a
run and an export carry the model's tokenizer exactly as it came.

Nothing here executes what it reads: a tokenizer_config.json may name Python classes
(auto_map) and hold a Jinja chat template; both are stored and copied, never imported; the
template is rendered only by instruction tuning, in jinja2's sandbox (tasks/chat.py). The
JSON files may be damaged or hostile (huge, nested past Python's limits, not UTF-8, a list
where an object belongs): each is one DataError that names the file and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import DataError

TOKENIZER_JSON = "tokenizer.json"
CONFIG = "tokenizer_config.json"
SPECIAL_MAP = "special_tokens_map.json"
CHAT_TEMPLATE = "chat_template.jinja"
COPIED = (TOKENIZER_JSON, CONFIG, SPECIAL_MAP, CHAT_TEMPLATE)  # kept byte for byte
# The model's own files, read for eos/bos ids only (never copied: they describe the weights).
MODEL_FILES = ("generation_config.json", "config.json")
FALLBACK_EOS = "<|endoftext|>"  # GPT-2's (and lmforge's): the end of text a bare tokenizer.json has
# Real tokenizer.json files reach tens of MB (Gemma's: 33 MB), their configs a few MB; far
# larger is no tokenizer, and is refused before it is read into memory.
MAX_TOKENIZER_BYTES = 1 << 30
MAX_FILE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class ModelTokenizerFiles:
    """What a directory holds of a Hugging Face tokenizer."""

    directory: Path
    raw: dict[str, bytes]  # the COPIED files present, as they are on disk
    config: dict[str, Any]  # tokenizer_config.json ({} when absent)
    special_map: dict[str, Any]  # special_tokens_map.json ({} when absent)


def _read(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise DataError(f"{path} is {size:,} bytes, too large for a tokenizer file (at most "
                            f"{limit:,}); the file is damaged or not a tokenizer's: re-download it")
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}); check the file and its "
                        "permissions") from None


def _json_object(path: Path, data: bytes) -> dict[str, Any]:
    """The JSON object in `data`; anything else (not JSON, not UTF-8, nesting too deep for
    Python, an integer of 4,300+ digits, a list) is one DataError."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise DataError(f"{path} is not valid JSON (damaged, truncated or not UTF-8); "
                        "re-download it") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a JSON {type(value).__name__}, not an object; the file is "
                        "damaged or not a tokenizer's: re-download it")
    return value


def read_files(directory: Path) -> ModelTokenizerFiles:
    """The tokenizer files of `directory` (tokenizer.json required), checked as JSON."""
    directory = Path(directory)
    if not (directory / TOKENIZER_JSON).is_file():
        raise DataError(f"no {TOKENIZER_JSON} in {directory}; lmforge reads a Hugging Face "
                        f"model's tokenizer from {TOKENIZER_JSON} (the fast tokenizer's file): "
                        "download it with the model")
    raw = {TOKENIZER_JSON: _read(directory / TOKENIZER_JSON, MAX_TOKENIZER_BYTES)}
    for name in COPIED[1:]:
        if (directory / name).is_file():
            raw[name] = _read(directory / name, MAX_FILE_BYTES)
    objects = {name: _json_object(directory / name, raw[name])
               for name in (CONFIG, SPECIAL_MAP) if name in raw}
    return ModelTokenizerFiles(directory, raw, objects.get(CONFIG, {}),
                               objects.get(SPECIAL_MAP, {}))


@contextlib.contextmanager
def rust_errors(directory: Path) -> Iterator[None]:
    """HF `tokenizers` failures in the block as one DataError: it raises plain Exception, with
    Rust's message, for a damaged file, and a Rust panic surfaces as pyo3's PanicException,
    a BaseException."""
    try:
        yield
    except (DataError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:
        reason = " ".join(str(err).split())[:160]
        raise DataError(f"the tokenizer in {directory} is damaged ({reason}); re-download "
                        f"{TOKENIZER_JSON}") from None


def parse(files: ModelTokenizerFiles) -> Any:
    """tokenizer.json as an HF `tokenizers.Tokenizer`; a damaged file is one DataError."""
    from tokenizers import Tokenizer as HFTokenizer

    with rust_errors(files.directory):
        return HFTokenizer.from_str(files.raw[TOKENIZER_JSON].decode("utf-8"))


def vocab_size(hf: Any) -> int:
    """Ids the tokenizer can produce: one past the largest, added tokens included (their ids
    may leave gaps, so the count alone could fall short)."""
    vocab = hf.get_vocab(with_added_tokens=True)
    return max(hf.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)


def _token(files: ModelTokenizerFiles, key: str) -> str | None:
    """tokenizer_config.json's `key` (eos_token, bos_token), else special_tokens_map.json's:
    a string, or an AddedToken's fields with the string as "content"."""
    for name, source in ((CONFIG, files.config), (SPECIAL_MAP, files.special_map)):
        value = source.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise DataError(f"{files.directory / name}: {key} is a JSON {type(value).__name__}, "
                            "not a token; the file is damaged: re-download it")
        return value
    return None


def _token_id(files: ModelTokenizerFiles, hf: Any, key: str, token: str) -> int:
    found = hf.token_to_id(token)
    if found is None:
        raise DataError(f"{files.directory}: the {key} {token[:40]!r} is not in {TOKENIZER_JSON}'s "
                        "vocabulary; the tokenizer files do not belong together: re-download them")
    return int(found)


def _model_id(files: ModelTokenizerFiles, key: str, vocab: int) -> int | None:
    """generation_config.json's `key` (eos_token_id, bos_token_id), else config.json's; of a
    list (Llama 3 Instruct's several eos ids), the first."""
    for name in MODEL_FILES:
        path = files.directory / name
        if not path.is_file():
            continue
        value = _json_object(path, _read(path, MAX_FILE_BYTES)).get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab:
            raise DataError(f"{path}: {key} is {str(value)[:40]}, not a token id of the "
                            f"tokenizer's {vocab:,}; the file is damaged or not this model's: "
                            "re-download it")
        return value
    return None


def eos_id(files: ModelTokenizerFiles, hf: Any) -> int:
    """The model's end of text: the document separator of lmforge's shards."""
    token = _token(files, "eos_token")
    if token is not None:
        return _token_id(files, hf, "eos_token", token)
    found = _model_id(files, "eos_token_id", vocab_size(hf))
    if found is None:
        found = hf.token_to_id(FALLBACK_EOS)
    if found is None:
        raise DataError(f"the tokenizer in {files.directory} names no end-of-text token (no "
                        f"eos_token in {CONFIG} or {SPECIAL_MAP}, no eos_token_id in "
                        f"{' or '.join(MODEL_FILES)}); add the model's {CONFIG}")
    return int(found)


def bos_id(files: ModelTokenizerFiles, hf: Any) -> int | None:
    """The token the model's tokenizer puts before every text, or None: tokenizer_config.json's
    add_bos_token when it says (Llama 2, TinyLlama), else what the post-processor adds
    (Llama 3's TemplateProcessing)."""
    add = files.config.get("add_bos_token")
    if add is False:
        return None
    if add is not True:
        return _added_in_front(hf)
    token = _token(files, "bos_token")
    if token is not None:
        return _token_id(files, hf, "bos_token", token)
    found = _model_id(files, "bos_token_id", vocab_size(hf))
    if found is None:
        raise DataError(f"{files.directory / CONFIG} says add_bos_token but names no bos_token; "
                        "the file is damaged: re-download it")
    return found


def _added_in_front(hf: Any) -> int | None:
    """The token the post-processor puts before a text, if it puts one there."""
    bare = hf.encode("a", add_special_tokens=False).ids
    full = hf.encode("a", add_special_tokens=True).ids
    if len(full) > len(bare) and full[1:1 + len(bare)] == bare:
        return int(full[0])
    return None
