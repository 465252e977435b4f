"""A conversation through the serving engine (serve/conversation.py): each reply continues
the whole conversation as the chat template renders it, exactly as generate_tokens
continues that prompt; the oldest exchanges go first when the context is short; reset
forgets. A tiny GPT with sharp random weights, so that its tokens follow the context."""

from __future__ import annotations

import string

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.tokenizer import CharTokenizer
from lmforge.generate import generate_tokens
from lmforge.models import build_model
from lmforge.serve.conversation import Conversation, Turn
from lmforge.serve.engine import Engine, SamplingParams
from lmforge.tasks.chat import Message, template_for

TOK = CharTokenizer(string.ascii_letters + string.digits + string.punctuation + " \n")
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


def sharp_model(block_size: int):
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size,
                      vocab_size=TOK.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture
def talk(request):
    engine = Engine(sharp_model(getattr(request, "param", 256)), eot_id=TOK.eot_id, max_batch=1)
    engine.start()
    yield Conversation(engine, TOK, system="Be brief.")
    engine.stop()


def alone(model, messages: list[Message]) -> str:
    """What generate_tokens gives the rendered conversation, greedy, up to the turn's end."""
    template = template_for(TOK)
    ids = template.prompt(tuple(messages))
    new: list[int] = []
    for step in generate_tokens(model, torch.tensor([ids]), max_new_tokens=12, temperature=0.0):
        if int(step[0]) in (TOK.eot_id, template.end_of_turn):
            break
        new.append(int(step[0]))
    return TOK.decode_after(ids, new)


def ask(talk: Conversation, text: str) -> tuple[str, Turn]:
    turn = Turn()
    pieces = list(talk.reply(text, GREEDY, turn))
    assert "".join(pieces) == turn.text
    return turn.text, turn


def test_each_reply_continues_the_whole_conversation(talk):
    model = talk.engine.model
    system = Message("system", "Be brief.")
    first, turn = ask(talk, "hello there")
    assert first == alone(model, [system, Message("user", "hello there")])
    assert turn.finish_reason in ("stop", "length") and turn.tokens >= len(first) > 0
    second, _ = ask(talk, "and then?")
    history = [system, Message("user", "hello there"), Message("assistant", first),
               Message("user", "and then?")]
    assert second == alone(model, history)
    assert second != alone(model, [system, Message("user", "and then?")])  # it read the history
    assert talk.history == history[1:] + [Message("assistant", second)]
    talk.reset()
    assert talk.history == [] and ask(talk, "hello there")[0] == first


@pytest.mark.parametrize("talk", [96], indirect=True)
def test_the_oldest_exchanges_go_first_when_the_context_is_short(talk):
    model = talk.engine.model
    _, turn = ask(talk, "q" * 20)
    assert turn.dropped == 0
    first = talk.history[-1].content
    _, turn = ask(talk, "r" * 20)  # 96 - 12 + 1 = 85 prompt tokens at most: room for one
    assert turn.dropped == 1
    # the prompt held the system message and the new question only; the history keeps all
    assert talk.history[-1].content == alone(model, [Message("system", "Be brief."),
                                                     Message("user", "r" * 20)])
    assert [m.content for m in talk.history[:2]] == ["q" * 20, first]
