"""Hugging Face model directories' tokenizers in the styles of real open models, built here
with the `tokenizers` library on a little text (no download): what the "hf" tokenizer tests
read, as `lmforge prepare --tokenizer-from` and `train --init-from` would find them.

    smollm  SmolLM2 / GPT-2: byte-level BPE, <|endoftext|> as bos and eos, no bos added
    llama3  Llama 3: byte-level BPE after a regex split, <|begin_of_text|> put before every
            text by a TemplateProcessing post-processor, <|end_of_text|> as eos, a chat
            template in tokenizer_config.json
    llama2  Llama 2 / TinyLlama: Metaspace + byte-fallback BPE, <s> / </s> as AddedToken
            objects, add_bos_token true
    qwen2   Qwen2: NFC + regex split + byte-level BPE, <|endoftext|>, <|im_start|> and
            <|im_end|>, eos <|im_end|> (chat) and no bos, the chat template in
            chat_template.jinja
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    processors,
    trainers,
)
from tokenizers import pre_tokenizers as pre

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
INLINE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "We are accounted poor citizens, the patricians good. What authority surfeits on "
          "would relieve us: if they would yield us but the superfluity, while it were "
          "wholesome, we might guess they relieved us humanely; but they think we are too "
          "dear: the leanness that afflicts us, the object of our misery, is as an inventory "
          "to particularise their abundance; our sufferance is a gain to them. 1234567 ")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?"
               r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|start_header_id|>"
                   "{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}"
                   "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>"
                   "assistant<|end_header_id|>\n\n{% endif %}")
QWEN2_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                  "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
STYLES = ("smollm", "llama3", "llama2", "qwen2")
# Documents the tests encode both ways: prose, several lines, spaces, non-ASCII, digits.
DOCUMENTS = [
    "Hello world",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  two  spaces,\ttabs\n\nand blank lines  \n",
    "café naïve — “quoted” 決心 🙂 12345678",
    "MENENIUS:\nI tell you, friends, most charitable care\nHave the patricians of you.",
]


def corpus() -> str:
    """About 100 kB of Shakespeare (inline text where the shared copy is missing)."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")[:100_000]
    return INLINE * 40


def _byte_level(split: str | None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=split is None)
    tok.pre_tokenizer = (byte_level if split is None else
                         pre.Sequence([pre.Split(Regex(split), behavior="isolated"), byte_level]))
    tok.decoder = decoders.ByteLevel()
    return tok


def _train(tok: Tokenizer, specials: list[str], vocab_size: int = 600) -> Tokenizer:
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([corpus()], trainer=trainer)
    return tok


def _specials(tok: Tokenizer, names: list[str]) -> None:
    """Special tokens after the learned vocabulary, as Llama 3 and Qwen2 have them."""
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])


def smollm() -> tuple[Tokenizer, dict, dict]:
    tok = _train(_byte_level(None), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    config = {"tokenizer_class": "GPT2Tokenizer", **special, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 8192}
    return tok, config, special


def llama3() -> tuple[Tokenizer, dict, dict]:
    tok = _train(_byte_level(LLAMA3_SPLIT), [])
    _specials(tok, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
              "chat_template": LLAMA3_TEMPLATE, "clean_up_tokenization_spaces": True,
              "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072}
    return tok, config, special


def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}


def llama2() -> tuple[Tokenizer, dict, dict]:
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    # trained on words (split=True), fast; used as Llama's converter writes it: split=False
    tok.pre_tokenizer = pre.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([corpus()], trainer=trainer)
    tok.pre_tokenizer = pre.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    # Llama's vocabulary: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then merges
    spec = json.loads(tok.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    first = specials + [f"<0x{b:02X}>" for b in range(256)]
    words = first + [t for t, _ in learned if t not in first]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(words)}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 1)])
    special = {"bos_token": _added("<s>"), "eos_token": _added("</s>"), "unk_token": _added("<unk>")}
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              **special, "legacy": False, "pad_token": None, "sp_model_kwargs": {},
              "clean_up_tokenization_spaces": False, "model_max_length": 2048}
    return tok, config, special


def qwen2() -> tuple[Tokenizer, dict, dict]:
    tok = _byte_level(QWEN2_SPLIT)
    tok.normalizer = normalizers.NFC()
    tok = _train(tok, [])
    _specials(tok, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
               "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, **special,
              "errors": "replace", "split_special_tokens": False, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 32768}
    return tok, config, special


BUILDERS = {"smollm": smollm, "llama3": llama3, "llama2": llama2, "qwen2": qwen2}
_BUILT: dict[str, tuple[str, str, str]] = {}  # style → the files' text, built once a session


def write_model_dir(style: str, directory: Path, *, config_json: dict | None = None) -> Path:
    """A model directory holding `style`'s tokenizer files (and `config_json` as config.json)."""
    if style not in _BUILT:
        tok, config, special = BUILDERS[style]()
        _BUILT[style] = (tok.to_str(), json.dumps(config, indent=2), json.dumps(special, indent=2))
    tokenizer, config, special = _BUILT[style]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(config, encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(special, encoding="utf-8")
    if style == "qwen2":
        (directory / "chat_template.jinja").write_text(QWEN2_TEMPLATE, encoding="utf-8")
    if config_json is not None:
        (directory / "config.json").write_text(json.dumps(config_json))
    return directory


def expected_specials(style: str) -> tuple[str, str | None]:
    """(eos token, the bos token the model's tokenizer puts before a text, or None)."""
    return {"smollm": ("<|endoftext|>", None), "llama3": ("<|end_of_text|>", "<|begin_of_text|>"),
            "llama2": ("</s>", "<s>"), "qwen2": ("<|im_end|>", None)}[style]
