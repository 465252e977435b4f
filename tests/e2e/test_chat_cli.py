"""`lmforge chat` as a user runs it: a real subprocess reading turns from a pipe. Each reply
must be what the model gives the whole conversation so far, rendered by the run's chat
template (computed here with generate_tokens and the turn's seed), and /reset must forget
it."""

from __future__ import annotations

import pytest
import torch
from helpers import QUIET, TINY_MODEL, json_corpus, lmforge, options

from lmforge.generate import generate_tokens
from lmforge.models.decode_layout import use_decode_layout
from lmforge.runs.load import load_run
from lmforge.tasks.chat import Message, template_for

TINY = options(TINY_MODEL, QUIET, {"model.block_size": "128", "train.max_steps": "20", "eval.every": "0",
                                   "eval.batches": "1", "checkpoint.every": "0",
                                   "train.report": "false", "log.to": "none",
                                   "data.path": "data/json", "data.source": ""})
TOKENS = 10


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = json_corpus(tmp_path_factory, "chat")
    lmforge("train", *TINY, "--run.dir=runs/tiny", cwd=work, threads=1)
    return work


def chat(work, lines: list[str], *args: str):
    return lmforge("chat", "runs/tiny", *args, cwd=work, check=False, threads=1,
                   input="".join(f"{line}\n" for line in lines))


def reply(loaded, messages: list[Message], seed: int) -> str:
    """The reply to `messages` as the model samples it alone with `seed` (temperature 1, no
    filter), up to the end of text or of the turn, at most TOKENS tokens."""
    tok = loaded.tokenizer
    template = template_for(tok)
    ids = template.prompt(tuple(messages))
    new: list[int] = []
    for step in generate_tokens(loaded.model, torch.tensor([ids]), max_new_tokens=TOKENS,
                                temperature=1.0, top_k=0,
                                generator=torch.Generator().manual_seed(seed)):
        token = int(step[0])
        if token in (tok.eot_id, template.end_of_turn):
            break
        new.append(token)
    return tok.decode_after(ids, new)


def test_each_reply_answers_the_whole_conversation_and_reset_forgets_it(work):
    questions = ["def main", "import os"]
    proc = chat(work, [questions[0], questions[1], "/reset", questions[0], "/exit", "never"],
                "--seed", "3", "--temperature", "1", "--top-k", "0", "--max-tokens", str(TOKENS))
    assert proc.returncode == 0, proc.stderr
    loaded = load_run(work / "runs" / "tiny")
    use_decode_layout(loaded.model)  # as the engine stores its weights
    first = reply(loaded, [Message("user", questions[0])], seed=3)
    second = reply(loaded, [Message("user", questions[0]), Message("assistant", first),
                            Message("user", questions[1])], seed=4)  # each turn: seed + 1
    third = reply(loaded, [Message("user", questions[0])], seed=5)
    # one line a reply (a reply may hold newlines of its own); nothing after /exit
    assert proc.stdout == f"{first}\n{second}\n{third}\n"
    assert "(conversation forgotten)" in proc.stderr


def test_a_conversation_longer_than_the_context_drops_its_oldest_exchanges(work):
    # a 128-token context, a character a token: with the template's markers an exchange of a
    # 30-character question and its reply takes about 60, so the third turn cannot hold two
    proc = chat(work, ["x" * 30] * 3, "--temperature", "0", "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") >= 3
    assert "oldest exchange left out to fit the model's context" in proc.stderr


def test_seeded_replies_repeat(work):
    once = chat(work, ["class A", "def f"], "--seed", "5", "--max-tokens", str(TOKENS))
    again = chat(work, ["class A", "def f"], "--seed", "5", "--max-tokens", str(TOKENS))
    assert once.returncode == again.returncode == 0, once.stderr
    assert once.stdout == again.stdout


@pytest.mark.parametrize("args, message", [
    (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--max-tokens", "129"], "at most the model's context of 128 tokens"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--checkpoint", "step_99999999"], "step_99999999"),
])
def test_bad_options_are_one_line_errors(work, args, message):
    proc = chat(work, ["hello"], *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
