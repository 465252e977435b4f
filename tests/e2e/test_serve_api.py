"""`lmforge serve` as a client sees it: a real server process on loopback, spoken to with
OpenAI's own client (and raw HTTP where the client would hide what is checked)."""

import json
import re
import signal
import socket
import threading
import time

import pytest
from helpers import lmforge
from serving import Server, tiny_run

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tiny_run(tmp_path_factory, "serve")


@pytest.fixture(scope="module")
def server(work):
    # two sequences at once and two waiting: a request for two always gets in (queued if the
    # engine has not admitted them yet), one for five never does (429)
    served = Server(work / "runs" / "tiny", "--max-concurrency", "2", "--max-queue", "2",
                    "--max-body-bytes", "4096", cwd=work)
    yield served
    assert served.stop() == 0, served.log.read_text()


def test_models_lists_the_run_by_its_directory_name(server):
    assert [m.id for m in server.client().models.list().data] == ["tiny"]
    assert server.client().models.retrieve("tiny").id == "tiny"


def test_a_completion_counts_its_tokens_and_gives_their_logprobs(server):
    out = server.client().completions.create(model="tiny", prompt="def ", max_tokens=10,
                                             temperature=0, logprobs=0)
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == "tiny"
    assert out.usage.prompt_tokens == 4  # a character each
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    lp = choice.logprobs
    if choice.finish_reason == "length":
        assert out.usage.completion_tokens == 10
    assert len(lp.tokens) == len(lp.token_logprobs) == out.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text
    assert all(v <= 0 for v in lp.token_logprobs)


def test_the_same_seed_gives_the_same_choices_and_n_gives_n(server):
    client = server.client()

    def ask():
        return client.completions.create(model="tiny", prompt="import", max_tokens=12,
                                         temperature=1.0, seed=7, n=2)

    first, again = ask(), ask()
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.text for c in again.choices]
    assert texts[0] != texts[1]  # seeds 7 and 8


def test_a_stop_string_ends_the_text_before_it(server):
    client = server.client()
    for seed in range(20):  # a sample that the end of text does not cut short
        ask = dict(model="tiny", prompt="class", max_tokens=24, temperature=1.0, seed=seed)
        full = client.completions.create(**ask).choices[0].text
        if len(full) >= 8:
            break
    assert len(full) >= 8, full
    stop = full[5:7]
    cut = client.completions.create(**ask, stop=[stop, "never in it \u2603"]).choices[0]
    assert cut.text == full[:full.find(stop)] and cut.finish_reason == "stop"


def test_a_streamed_completion_joins_to_the_whole_one(server):
    client = server.client()
    ask = dict(model="tiny", prompt="def ", max_tokens=20, temperature=0.8, seed=11)
    whole = client.completions.create(**ask).choices[0]
    chunks = list(client.completions.create(**ask, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
    assert chunks[-1].usage.completion_tokens > 0


def test_a_chat_completion_uses_the_runs_chat_template(server, work):
    from lmforge.data.tokenizer import load_tokenizer
    from lmforge.tasks.chat import Message, template_for

    client = server.client()
    messages = [{"role": "user", "content": "def"}]
    # 27 prompt tokens: with 4 new ones they fit the context of 32 uncropped
    ask = dict(model="tiny", messages=messages, max_tokens=4, temperature=0.5, seed=2)
    out = client.chat.completions.create(**ask)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    tok = load_tokenizer(work / "runs" / "tiny" / "tokenizer")
    assert out.usage.prompt_tokens == len(template_for(tok).prompt((Message("user", "def"),)))
    streamed = list(client.chat.completions.create(**ask, stream=True))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == \
        out.choices[0].message.content


def test_a_raw_stream_is_server_sent_events_ending_with_done(server):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=server.headers,
                      timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_wrong_key_is_401_and_an_unknown_model_404(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    no_key = httpx.get(f"{server.url}/v1/models", timeout=10)
    assert error_of(no_key, 401)["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="gpt-4", prompt="x", max_tokens=2)
    error = error_of(server.post("/v1/completions", {"model": "gpt-4", "prompt": "x"}), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "prompt": "x", "max_tokens": 100_000}, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 33}, "max_tokens"),  # past the context (32)
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": "tiny", "prompt": "\u2603"}, "prompt"),  # not in the char tokenizer's vocabulary
    ({"model": "tiny", "prompt": [10**9]}, "prompt"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
])
def test_a_bad_field_is_a_400_that_names_it(server, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    error = error_of(server.post(path, body), 400)
    assert error["param"] == param and param in error["message"]


def test_malformed_json_is_a_400_and_a_body_over_the_limit_a_413(server):
    assert error_of(server.post("/v1/completions", b'{"model": "tiny", "prompt": '), 400)
    too_big = {"model": "tiny", "prompt": "x" * 5000}
    assert error_of(server.post("/v1/completions", too_big), 413)["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        yield json.dumps(too_big).encode()

    response = httpx.post(f"{server.url}/v1/completions", content=chunked(), timeout=60,
                          headers=server.headers)
    error_of(response, 413)


def test_more_sequences_than_slots_and_queue_is_a_429(server):
    with pytest.raises(openai.RateLimitError):
        server.client().completions.create(model="tiny", prompt="x", max_tokens=30, n=5)
    # nothing of it stays behind: the next request runs
    assert server.client().completions.create(model="tiny", prompt="x", max_tokens=2).choices


def test_metrics_count_requests_tokens_and_latency(server):
    server.client().completions.create(model="tiny", prompt="x", max_tokens=3)
    text = httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=10).text
    for name in ("lmforge_requests_total", "lmforge_generated_tokens_total",
                 "lmforge_queue_depth", "lmforge_time_to_first_token_seconds_count",
                 "lmforge_request_latency_seconds_count"):
        assert name in text
    assert 'path="/v1/completions",status="200"' in text
    generated = re.search(r"^lmforge_generated_tokens_total (\S+)$", text, re.M)
    assert generated and float(generated.group(1)) > 0


def test_sigterm_finishes_the_request_in_flight_and_exits_0(work):
    served = Server(work / "runs" / "tiny", cwd=work, key=None)
    body = {"model": "tiny", "prompt": "x", "max_tokens": 30, "temperature": 0, "stream": True}
    lines = []
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=60) as response:
        stream = response.iter_lines()
        lines.append(next(stream))  # the request is in flight
        served.proc.send_signal(signal.SIGTERM)
        lines += list(stream)
    assert served.proc.wait(timeout=60) == 0, served.log.read_text()
    assert [line for line in lines if line][-1] == "data: [DONE]"
    assert '"finish_reason": "length"' in "".join(lines) or '"finish_reason": "stop"' in "".join(lines)


def test_a_missing_run_and_a_port_in_use_are_one_line_errors(work):
    proc = lmforge("serve", "runs/nothing", cwd=work, check=False)
    assert proc.returncode == 2 and "run directory not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = lmforge("serve", "runs/tiny", "--port", str(port), cwd=work, check=False,
                       threads=1, timeout=120)
    assert proc.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr



@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_frees_its_slot_at_once(work, stream):
    """In this process, over loopback, with an engine that only steps when told: a client that
    gives up before any token frees its sequence, which never runs to its max_tokens."""
    import uvicorn

    from lmforge.runs.load import load_run
    from lmforge.serve.api import create_app
    from lmforge.serve.engine import Engine
    from lmforge.serve.server import bind

    loaded = load_run(work / "runs" / "tiny")
    engine = Engine(loaded.model, eot_id=loaded.tokenizer.eot_id, max_batch=1)  # not started
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, loaded.tokenizer, "tiny"),
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 30, "stream": stream}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"http://127.0.0.1:{sock.getsockname()[1]}/v1/completions", json=body,
                       timeout=0.5)
        assert engine.waiting == 1  # nothing ran: the engine has not stepped
        steps = 0
        while (engine.waiting or engine.running) and steps < 30:
            time.sleep(0.05)
            engine.step()
            steps += 1
        assert engine.waiting == engine.running == 0 and steps < 10  # not run to 30 tokens
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_ignore_eos_runs_a_greedy_request_to_exactly_max_tokens(server):
    """vLLM's extension: no end-of-text token ends the sequence before max_tokens."""
    for stream in (False, True):
        ask = dict(model="tiny", prompt="x", max_tokens=28, temperature=0,
                   extra_body={"ignore_eos": True})
        if stream:
            chunks = list(server.client().completions.create(
                **ask, stream=True, stream_options={"include_usage": True}))
            tokens = chunks[-1].usage.completion_tokens
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            out = server.client().completions.create(**ask)
            tokens, finish = out.usage.completion_tokens, out.choices[0].finish_reason
        assert (tokens, finish) == (28, "length")


def test_the_servers_connections_do_not_wait_to_gather_small_writes():
    """bind() names TCP, so asyncio turns Nagle's algorithm off on each connection it accepts
    (TCP_NODELAY): a response's head and body are not held for the client's delayed ACK, 40 ms
    a response on a kept-alive connection."""
    import asyncio

    from lmforge.serve.server import bind

    async def nodelay() -> int:
        sock = bind("127.0.0.1", 0)
        seen = asyncio.get_running_loop().create_future()

        async def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                       socket.TCP_NODELAY))
            writer.close()

        async with await asyncio.start_server(accepted, sock=sock):
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(nodelay())
