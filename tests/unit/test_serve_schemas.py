"""The API's request validation (every wrong body is a 400 naming its field, never a 500) and
its incremental decoding with stop strings."""

import json

import pytest

from lmforge.data.tokenizer import ByteTokenizer, train_tokenizer
from lmforge.serve.decoding import TextStream
from lmforge.serve.errors import ApiError
from lmforge.serve.schemas import ChatCompletionRequest, CompletionRequest, parse


def completion(**fields) -> CompletionRequest:
    return parse(CompletionRequest, json.dumps({"model": "m", "prompt": "x", **fields}).encode())


def refused(kind, body: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(kind, body)
    assert caught.value.status == 400
    return caught.value


def test_a_valid_completion_is_read_with_its_prompts_and_stops():
    req = completion(max_tokens=5, temperature=0, top_k=3, top_p=0.5, seed=1, n=2, stop="\n",
                     logprobs=0, stream=True, user="someone")  # unknown fields are ignored
    assert req.prompt == ["x"] and req.stop == ["\n"] and req.n == 2 and req.logprobs == 0
    assert completion(prompt=["a", "b"]).prompt == ["a", "b"]
    assert completion(prompt=[1, 2]).prompt == [[1, 2]]
    assert completion(prompt=[[1], [2, 3]]).prompt == [[1], [2, 3]]
    assert completion(temperature=1).temperature == 1.0  # an int is a number


@pytest.mark.parametrize("fields, param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),  # strict: a string is not a number
    ({"max_tokens": True}, "max_tokens"),  # nor is a bool
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": 1e-9}, "temperature"),  # too small to divide by
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"prompt": ["a"] * 9, "n": 2}, "n"),  # 18 sequences
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"stop": ""}, "stop"),
    ({"stop": ["a"] * 5}, "stop"),
    ({"stop": 3}, "stop"),
    ({"logprobs": 6}, "logprobs"),
    ({"model": 3}, "model"),
    ({"stream": "yes"}, "stream"),
    ({"echo": True}, "echo"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"suffix": "x"}, "suffix"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"ignore_eos": 1}, "ignore_eos"),
])
def test_a_wrong_field_is_a_400_that_names_it(fields, param):
    body = {"model": "m", "prompt": "x", **fields}
    err = refused(CompletionRequest, json.dumps(body).encode())
    assert err.param == param and param in err.message
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_a_missing_field_is_named():
    err = refused(CompletionRequest, b'{"model": "m"}')
    assert err.param == "prompt" and "required" in err.message


@pytest.mark.parametrize("body", [b"{", b"", b"not json", b'{"model": "m", "prompt": NaN}',
                                  b"\xff\xfe", b"[1, 2]", b"null"])
def test_a_body_that_is_not_a_json_object_is_a_400(body):
    err = refused(CompletionRequest, body)
    assert err.param is None or err.param == "prompt"


def test_chat_messages_are_checked_one_by_one():
    ok = parse(ChatCompletionRequest, json.dumps({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]}).encode())
    assert [m.content for m in ok.messages] == ["be brief", "ab"]
    for messages, param in (([], "messages"),
                            ([{"role": "robot", "content": "x"}], "messages[0].role"),
                            ([{"role": "user"}], "messages[0].content"),
                            ([{"role": "user", "content": [{"type": "image_url"}]}],
                             "messages[0].content")):
        err = refused(ChatCompletionRequest,
                      json.dumps({"model": "m", "messages": messages}).encode())
        assert err.param == param, err.message


def shown(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.push(i) for i in ids] + [stream.finish()]


def test_text_is_shown_as_it_comes_and_ends_before_a_stop_string():
    tok = ByteTokenizer()
    stream = TextStream(tok, [], ["END"])
    pieces = shown(stream, tok.encode("abEN"))
    # "E" and "EN" might begin the stop string: held back until the text goes on or ends
    assert pieces == ["a", "b", "", "", "EN"]
    stream = TextStream(tok, [], ["END"])
    pieces = [stream.push(i) for i in tok.encode("abENDcd")]
    assert "".join(pieces) == "ab" and stream.stopped and stream.text == "ab"
    assert stream.kept_tokens() == 2  # the tokens of "END" and after are not the answer's


def test_the_earliest_of_several_stop_strings_wins_even_across_tokens():
    tok = train_tokenizer("bpe", ["hello world, hello there. " * 50], vocab_size=300)
    stream = TextStream(tok, [], ["there", "lo w"])
    text = "".join(stream.push(i) for i in tok.encode("hello world, hello there"))
    assert text == "hel" and stream.stopped


def test_a_character_cut_between_tokens_waits_for_the_next():
    tok = ByteTokenizer()
    stream = TextStream(tok, [], [])
    ids = tok.encode("é!")  # two bytes, then one
    assert [stream.push(i) for i in ids] == ["", "é", "!"]


def test_ignore_eos_is_read_for_completions_and_chats_and_is_off_by_default():
    assert completion().ignore_eos is False
    assert completion(ignore_eos=True).ignore_eos is True
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "ignore_eos": True}
    assert parse(ChatCompletionRequest, json.dumps(chat).encode()).ignore_eos is True
