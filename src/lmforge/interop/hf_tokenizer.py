"""lmforge tokenizers as Hugging Face `tokenizers` (for export, so AutoTokenizer loads them),
and a model directory's tokenizer as an lmforge tokenizer (for import).

A model's own tokenizer ("hf", data/tokenizer.HfTokenizer) goes both ways unchanged: its
files are copied as they came, so the export's AutoTokenizer is the original's, bos, eos and
chat template included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.data.tokenizer import (
    BPE_FILE,
    EOT_TOKEN,
    META_FILE,
    BpeTokenizer,
    ByteTokenizer,
    CharTokenizer,
    HfTokenizer,
    Tokenizer,
    load_tokenizer,
)
from lmforge.errors import DataError
from lmforge.interop.hf_layout import write_json


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the alphabet of byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def hf_tokenizer(tokenizer: Tokenizer) -> Any:
    """The same tokenizer as an HF `tokenizers.Tokenizer` (ids, decoding and eot id kept), or
    None for a kind it cannot express. Char and byte become BPE models with no merges."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, BpeTokenizer):
        return HFTokenizer.from_str(tokenizer._hf.to_str())  # a copy: ours stays as it is
    if isinstance(tokenizer, ByteTokenizer):
        vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
    elif isinstance(tokenizer, CharTokenizer):
        # no pre-tokenizer: the text is one word that BPE, without merges, splits into chars
        hf = HFTokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(tokenizer.chars)}, merges=[]))
        hf.decoder = decoders.Fuse()  # join the characters without spaces
    else:
        return None
    hf.add_special_tokens([AddedToken(EOT_TOKEN, special=True, normalized=False)])
    if hf.token_to_id(EOT_TOKEN) != tokenizer.eot_id:
        return None
    return hf


def write_hf_tokenizer(tokenizer: Tokenizer | None, out_dir: Path, *, model_max_length: int) -> str:
    if tokenizer is None:
        return "no tokenizer given"
    if isinstance(tokenizer, HfTokenizer):  # its own files, byte for byte, and lmforge's meta
        tokenizer.save(out_dir)
        return (f"the model's own tokenizer ({', '.join(sorted(tokenizer.files))}) as it came, "
                f"eos = {tokenizer.token(tokenizer.eot_id)}")
    hf = hf_tokenizer(tokenizer)
    if hf is None:
        return (f"tokenizer skipped: the {tokenizer.kind} tokenizer has no HF `tokenizers` "
                "equivalent; AutoTokenizer will not load this directory")
    tokenizer.save(out_dir)  # lmforge's own files too, so import_hf_tokenizer is exact
    hf.save(str(out_dir / BPE_FILE))
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN}
    # split_special_tokens: a literal "<|endoftext|>" in text is text, as in lmforge
    write_json(out_dir / "tokenizer_config.json",
          {"tokenizer_class": "PreTrainedTokenizerFast", **special,
           "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
           "split_special_tokens": True, "add_bos_token": False, "add_eos_token": False})
    write_json(out_dir / "special_tokens_map.json", special)
    return f"{tokenizer.kind} tokenizer as tokenizer.json, eos = bos = {EOT_TOKEN}"


def import_hf_tokenizer(directory: Path) -> Tokenizer:
    """An lmforge tokenizer from a model directory: lmforge's own files when present (an
    export_hf directory), else tokenizer.json as the model's own ("hf") tokenizer, its end
    of text the model's eos, else GPT-2's vocab.json + merges.txt as a bpe tokenizer, which
    needs <|endoftext|> (DataError without it).
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    directory = Path(directory)
    if (directory / META_FILE).is_file():
        return load_tokenizer(directory)
    if (directory / BPE_FILE).is_file():
        return HfTokenizer.from_model_dir(directory)
    try:  # tokenizers raises plain Exception, with Rust's message, for a damaged file
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            hf = HFTokenizer(models.BPE.from_file(str(directory / "vocab.json"),
                                                  str(directory / "merges.txt")))
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.decoder = decoders.ByteLevel()
            if hf.token_to_id(EOT_TOKEN) is not None:
                hf.add_special_tokens([EOT_TOKEN])
        else:
            raise DataError(f"no tokenizer in {directory} (no {BPE_FILE}, nor vocab.json + "
                            "merges.txt)")
    except DataError:
        raise
    except Exception as err:
        reason = " ".join(str(err).split())[:160]
        raise DataError(f"the tokenizer in {directory} is damaged ({reason}); re-download "
                        f"{BPE_FILE} (or vocab.json and merges.txt)") from None
    if hf.token_to_id(EOT_TOKEN) is None:
        raise DataError(f"the tokenizer in {directory} has no {EOT_TOKEN} token (its end of "
                        f"text is {_eos(directory)!r}); lmforge's bpe tokenizer needs {EOT_TOKEN}")
    return BpeTokenizer(hf)


def _eos(directory: Path) -> Any:
    """tokenizer_config.json's eos_token, for a message; None when it cannot be read."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    eos = config.get("eos_token") if isinstance(config, dict) else None
    eos = eos.get("content") if isinstance(eos, dict) else eos  # an AddedToken's fields
    return eos if isinstance(eos, str) else None
