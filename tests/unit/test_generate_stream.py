"""What `lmforge generate` prints while it streams: exactly the decoded text, whatever the
token boundaries."""

import torch

from lmforge.cli.generate import _stream_one
from lmforge.data.tokenizer import train_tokenizer


def stream(tokenizer, text):
    return (torch.tensor([i]) for i in tokenizer.encode(text) + [tokenizer.eot_id])


def test_a_segmented_tokenizers_spaces_between_chinese_words_never_show(capsys):
    segmented = "我们 每天 学习 中文 , and English words stay apart"
    tok = train_tokenizer("char", [segmented], vocab_size=0, segmented=True)
    _stream_one(stream(tok, segmented), prompt="", tokenizer=tok)
    printed = capsys.readouterr().out
    assert printed == tok.decode(tok.encode(segmented)) + "\n"
    assert printed.startswith("我们每天学习中文 ,") and "English words stay apart" in printed


def test_a_character_cut_between_two_byte_tokens_waits_for_the_next(capsys):
    tok = train_tokenizer("byte", [], vocab_size=0)
    _stream_one(stream(tok, "café 決心"), prompt="> ", tokenizer=tok)
    assert capsys.readouterr().out == "> café 決心\n"
