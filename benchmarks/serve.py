"""The server under load: a live `lmforge serve` of the default model, as its clients see it.

The default job's model (5.3M-parameter GPT, BPE 8192, context 128) is trained into a work
directory (`lmforge train` run there: about 1.5 min on 2 cores, or up to its 4-minute bound
on a busy machine; `--run DIR` reuses a trained run) and exported for transformers (`lmforge
export`: GPT2LMHeadModel). The server is `lmforge serve RUN --port 0 --max-concurrency 16
--max-queue 32` in a subprocess on 127.0.0.1; nothing leaves loopback. A queue of 32 (half the
default) lets the 64-client level show both ways past 16 running sequences: waiting in the
queue, and 429 once 32 wait.

1. One stream: decode tokens/s of the server (a streamed /v1/completions request) against
   transformers' `generate` (AutoModelForCausalLM from the export, use_cache=True), both
   greedy from the same prompt ids for the same --tokens new tokens: the server with vLLM's
   `ignore_eos`, transformers with no eos token, so that end of text ends neither early. The
   rate is (tokens - 1) / (time of the last token - time of the first) for both (the
   server's tokens as its chunks arrive, counted by the usage chunk; transformers' by a
   streamer), so prefill and HTTP set-up are left out. Best (and median) of --repeats each,
   after a warm-up, the two taking turns so that load from elsewhere on a shared machine
   falls on both alike; the texts must match. Threads: --threads torch threads for both (OMP_NUM_THREADS and MKL_NUM_THREADS
   in the server's environment, torch.set_num_threads here). The default, 1, is the fair
   choice on 2 cores: the server also needs CPU for HTTP, its event loop and the stepping
   thread's Python, and this client reads the stream, which the second core takes, where
   transformers runs in this process with nothing beside it; a model this small gains
   little from a second thread at batch 1 anyway.
2. Load: --levels concurrent clients (1, 4, 16, 64; asyncio tasks sharing one
   httpx.AsyncClient), each sending --requests requests one after another (--requests-64
   at 64 clients), streamed, sampled (temperature 1, top-k 50, a seed each), with
   `ignore_eos` and --load-tokens new tokens (--load-tokens-64 at 64). Per level: completion
   tokens/s in all (tokens of the completed requests over the level's wall time), time to
   the first token and whole-request latency (p50 and p99, nearest rank: with fewer than 100
   requests p99 is the slowest), and answers: 200, 429 and errors (any other status, a
   refused or dropped connection, an error event, a 200 without `data: [DONE]` or short of
   its tokens), and the most requests /health saw waiting in the queue (polled every 0.1 s).
   After the levels the server must still answer /health and a request.
3. Drain: --drain-clients clients send requests of --load-tokens tokens one after another;
   when the chunks received reach half of what --drain-requests each would bring, the
   server gets SIGTERM. Every request it accepted (a 200 with a stream begun) must end with
   `data: [DONE]` and its full count of tokens, every later one get a 503 or a refused or
   closed connection, and the server must exit 0.

Targets (the issue's): lmforge >= 1.5x transformers on one stream; 16 clients >= 4x the tokens/s
of 1; p99 time to first token < 1 s at 16 clients; 0 errors; at 64 clients 429s and queueing,
never a 5xx, and a healthy server after; no accepted request lost in the drain, exit 0.

    python benchmarks/serve.py [--run runs/default] [--work DIR] [--threads 1] [--tokens 100]
        [--repeats 5] [--levels 1,4,16,64] [--requests 4] [--load-tokens 64]

About 2 minutes on 2 cores after training (1.5 to 4 min); `--levels 1,16 --requests 2
--repeats 1 --drain-requests 2` halves that. The machine's load average is printed before,
during and after: figures from a busy machine are lower and noisier.

Ends with: RESULT lmforge_tok_s=… transformers_tok_s=… speedup=… agg_1=… agg_4=… agg_16=…
agg_64=… scale_16=… ttft_p99_16_ms=… errors=… r429_64=… healthy=… drain_accepted=…
drain_lost=… drain_refused=… drain_other=… drain_exit=… load1=…
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from lmforge.data.tokenizer import Tokenizer, load_tokenizer

PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    "
MAX_CONCURRENCY, MAX_QUEUE = 16, 32
REFUSED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)  # before any answer


# ---------------------------------------------------------------------------- model and server


def lmforge(*args: str, cwd: Path, log: Path) -> None:
    """`python -m lmforge ARGS` in `cwd`, its output into `log`; a failure ends the benchmark."""
    with log.open("w") as out:
        code = subprocess.run([sys.executable, "-m", "lmforge", *args], cwd=cwd, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    if code:
        sys.exit(f"lmforge {' '.join(args)} failed ({code}):\n{log.read_text()[-3000:]}")


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def trained_run(work: Path, run: Path | None) -> Path:
    if run is not None:
        return run.resolve()
    run = work / "runs" / "default"
    if (run / "config.toml").is_file():  # a --work directory used before
        print(f"reusing the run in {run}")
        return run
    start = time.perf_counter()
    # from the work directory: the default corpus is prepared into its data/
    lmforge("train", f"--run.dir={run}", cwd=work, log=work / "train.log")
    print(f"trained the default job in {time.perf_counter() - start:.0f}s into {run}")
    return run


class Server:
    """`lmforge serve RUN --port 0` in a subprocess; its address read from the line it prints
    once the model is loaded and the port bound, then /health polled."""

    def __init__(self, run: Path, *, threads: int, log: Path) -> None:
        cmd = [sys.executable, "-m", "lmforge", "serve", str(run), "--port", "0",
               "--max-concurrency", str(MAX_CONCURRENCY), "--max-queue", str(MAX_QUEUE)]
        self.log = log
        self.proc = subprocess.Popen(cmd, env={**os.environ, **thread_env(threads)}, text=True,
                                     stdout=subprocess.PIPE, stderr=log.open("w"))
        assert self.proc.stdout is not None
        found = re.search(r"http://(\S+)/v1", self.proc.stdout.readline())
        if not found:
            sys.exit(f"lmforge serve printed no address:\n{log.read_text()[-3000:]}")
        self.url = f"http://{found.group(1)}"
        self.model = run.name
        for _ in range(100):
            if self.healthy():
                return
            time.sleep(0.1)
        sys.exit(f"lmforge serve never became healthy:\n{log.read_text()[-3000:]}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------- one streamed request


@dataclass
class Stream:
    """One streamed request as its client saw it; times in seconds from sending it."""

    status: int | None = None  # None: no answer
    refused: bool = False  # no answer: the connection was refused or closed before one
    error: str = ""
    tokens: int = 0  # completion tokens, by the usage chunk
    finish: str | None = None  # the finish reason
    done: bool = False  # ended with data: [DONE]
    first: float | None = None  # the first chunk of a choice: the first token
    last: float | None = None  # the last one: the one with the finish reason, the last token
    end: float = 0.0
    text: str = ""

    def complete(self, tokens: int) -> bool:
        return self.status == 200 and self.done and not self.error and self.tokens == tokens

    def why(self) -> str:
        """What went wrong, in a few words."""
        return (f"status {self.status}, {self.tokens} tokens, finish {self.finish}, "
                f"done {self.done}: {self.error[:120]}")


def body(model: str, prompt: list[int], tokens: int, *, seed: int | None) -> dict[str, Any]:
    """A streamed completion of exactly `tokens` tokens: greedy without a seed."""
    sampling = ({"temperature": 0} if seed is None
                else {"temperature": 1.0, "top_k": 50, "seed": seed})
    return {"model": model, "prompt": prompt, "max_tokens": tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, **sampling}


async def stream(client: httpx.AsyncClient, request: dict[str, Any],
                 on_chunk: Callable[[], None] | None = None) -> Stream:
    out = Stream()
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=request) as response:
            out.status = response.status_code
            if response.status_code != 200:
                out.error = (await response.aread()).decode(errors="replace")[:200]
            else:
                async for line in response.aiter_lines():
                    read_line(out, line, time.perf_counter() - start)
                    if on_chunk is not None and line:
                        on_chunk()
    except httpx.HTTPError as err:
        out.error = f"{type(err).__name__}: {err}"
        out.refused = out.status is None and isinstance(err, REFUSED)
    out.end = time.perf_counter() - start
    return out


def read_line(out: Stream, line: str, now: float) -> None:
    """One line of a server-sent event stream, into `out`."""
    if not line:
        return
    if line == "data: [DONE]":
        out.done = True
        return
    chunk = json.loads(line.removeprefix("data: "))
    if "error" in chunk:
        out.error = chunk["error"].get("message", "error event")
    if chunk.get("usage"):
        out.tokens = chunk["usage"]["completion_tokens"]
    for choice in chunk.get("choices") or ():
        out.first = now if out.first is None else out.first
        out.last = now
        out.finish = choice.get("finish_reason") or out.finish
        out.text += choice.get("text") or ""


def client(url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0),
                             limits=httpx.Limits(max_connections=connections + 4))


# ---------------------------------------------------------------------------- one stream


@dataclass
class Single:
    lmforge: list[float]  # decode tokens/s of each repeat
    transformers: list[float]
    same_text: bool  # both greedy: the same tokens, up to rounding that flips a near tie

    @property
    def ratio(self) -> float:
        return max(self.lmforge) / max(self.transformers)


def decode_rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if last > first else 0.0


def lmforge_once(server: Server, prompt: list[int], new: int) -> tuple[float, str]:
    """One greedy stream's decode rate, and its text."""
    async def ask() -> Stream:
        async with client(server.url, 1) as http:
            return await stream(http, body(server.model, prompt, new, seed=None))

    got = asyncio.run(ask())
    if not got.complete(new) or got.first is None or got.last is None:
        sys.exit(f"the single stream failed: {got.why()}")
    return decode_rate(got.tokens, got.first, got.last), got.text


class Transformers:
    """The export in transformers, greedy with the KV cache and no eos token; each new token
    timed by a streamer (its first put is the prompt)."""

    def __init__(self, export: Path) -> None:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model = AutoModelForCausalLM.from_pretrained(export).eval()
        # None here, or generate takes the exported eos token from the generation config
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0

    def once(self, prompt: list[int], new: int) -> tuple[float, list[int]]:
        from transformers.generation.streamers import BaseStreamer

        puts: list[float] = []

        class Clock(BaseStreamer):
            def put(self, value: torch.Tensor) -> None:
                puts.append(time.perf_counter())

            def end(self) -> None:
                pass

        ids = torch.tensor([prompt])
        with torch.inference_mode():
            made = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=new, do_sample=False, use_cache=True,
                                       streamer=Clock())
        out = made[0, len(prompt):].tolist()
        if len(out) != new or len(puts) != new + 1:
            sys.exit(f"transformers made {len(out)} tokens, not {new}")
        return decode_rate(new, puts[1], puts[-1]), out


def one_stream(server: Server, export: Path, prompt: list[int], tokenizer: Tokenizer, new: int,
               repeats: int) -> Single:
    """Both, one after the other in turns (so that both meet the same load from elsewhere on
    a shared machine), after a warm-up of each."""
    theirs = Transformers(export)
    single = Single([], [], same_text=True)
    for r in range(repeats + 1):
        rate, text = lmforge_once(server, prompt, new)
        their_rate, ids = theirs.once(prompt, new)
        if r:
            single.lmforge.append(rate)
            single.transformers.append(their_rate)
        single.same_text &= tokenizer.decode(ids) == text
    return single


# ---------------------------------------------------------------------------- load


@dataclass
class Level:
    clients: int
    tokens: int  # max_tokens of each request
    seconds: float
    streams: list[Stream] = field(default_factory=list)
    queued: int = 0  # the most requests seen waiting in the engine's queue (/health)

    def count(self, status: int) -> int:
        return sum(s.status == status for s in self.streams)

    @property
    def completed(self) -> list[Stream]:
        return [s for s in self.streams if s.complete(self.tokens)]

    @property
    def errors(self) -> int:
        """Anything but a complete 200 or a 429."""
        return len(self.streams) - len(self.completed) - self.count(429)

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.completed) / self.seconds

    def ttft(self, q: float) -> float:
        return percentile([s.first for s in self.completed if s.first is not None], q)

    def latency(self, q: float) -> float:
        return percentile([s.end for s in self.completed], q)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; NaN for none."""
    if not values:
        return math.nan
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


async def load(server: Server, prompt: list[int], clients: int, requests: int,
               tokens: int) -> Level:
    async with client(server.url, clients + 1) as http:
        async def one_client(c: int) -> list[Stream]:
            return [await stream(http, body(server.model, prompt, tokens,
                                            seed=c * requests + r))
                    for r in range(requests)]

        start = time.perf_counter()
        watch = asyncio.create_task(most_waiting(http))
        done = await asyncio.gather(*(one_client(c) for c in range(clients)))
        seconds = time.perf_counter() - start
        watch.cancel()
        queued = await watch
    return Level(clients, tokens, seconds, [s for streams in done for s in streams], queued)


async def most_waiting(http: httpx.AsyncClient) -> int:
    """The most requests /health says wait, polled every 0.1 s until cancelled."""
    most = 0
    try:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                most = max(most, (await http.get("/health")).json()["waiting"])
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        return most


def still_serves(server: Server, prompt: list[int]) -> bool:
    """/health answers and so does one more request, all of it."""
    async def ask() -> bool:
        async with client(server.url, 1) as http:
            return (await stream(http, body(server.model, prompt, 8, seed=0))).complete(8)

    return server.healthy() and asyncio.run(ask())


# ---------------------------------------------------------------------------- drain


@dataclass
class Drain:
    accepted: int  # 200: a stream begun
    completed: int  # of those, ended with [DONE] and every token
    unavailable: int  # 503: the server is stopping
    refused: int  # a refused connection, or one closed before an answer
    other: int  # anything else: an error
    exit_code: int | None  # None: still running after the wait
    seconds: float  # from SIGTERM to the exit

    @property
    def lost(self) -> int:
        return self.accepted - self.completed


async def drain(server: Server, prompt: list[int], clients: int, requests: int,
                tokens: int) -> Drain:
    received, sent_at = 0, 0.0
    mid = clients * requests * tokens // 2  # chunks: about one a token

    def sigterm() -> None:
        nonlocal sent_at
        if not sent_at:
            server.proc.send_signal(signal.SIGTERM)
            sent_at = time.perf_counter()

    def on_chunk() -> None:
        nonlocal received
        received += 1
        if received >= mid:
            sigterm()

    async with client(server.url, clients) as http:
        async def one_client(c: int) -> list[Stream]:
            streams: list[Stream] = []
            for r in range(requests):
                got = await stream(http, body(server.model, prompt, tokens,
                                              seed=10_000 + c * requests + r), on_chunk)
                streams.append(got)
                if got.status != 200:  # refused: the server is going
                    break
            return streams

        done = await asyncio.gather(*(one_client(c) for c in range(clients)))
    sigterm()  # had the chunks fallen short of mid-way
    code = await asyncio.to_thread(wait, server.proc, 120)
    streams = [s for group in done for s in group]
    accepted = [s for s in streams if s.status == 200]
    unavailable, refused = sum(s.status == 503 for s in streams), sum(s.refused for s in streams)
    return Drain(len(accepted), sum(s.complete(tokens) for s in accepted), unavailable, refused,
                 len(streams) - len(accepted) - unavailable - refused, code,
                 time.perf_counter() - sent_at)


def wait(proc: subprocess.Popen, seconds: float) -> int | None:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


# ---------------------------------------------------------------------------- report


def failures(levels: list[Level]) -> None:
    """A few of each level's errors, to say what they were."""
    for v in levels:
        wrong = [s for s in v.streams if not s.complete(v.tokens) and s.status != 429]
        for s in wrong[:3]:
            print(f"  error at {v.clients} clients: {s.why()}")


def single_table(single: Single, new: int) -> None:
    print(f"\none stream, greedy, {new} new tokens, decode tokens/s (best and median of "
          f"{len(single.lmforge)}, in turns):")
    for name, rates in (("lmforge serve", single.lmforge), ("transformers", single.transformers)):
        print(f"  {name:<14} {max(rates):6.0f} {statistics.median(rates):8.0f}")
    print(f"  ratio {single.ratio:.2f}x (target >= 1.5x); the same text: "
          f"{'yes' if single.same_text else 'no'}")


def load_table(levels: list[Level]) -> None:
    print(f"{'clients':>7} {'max_tok':>7} {'requests':>8} {'200':>4} {'429':>4} {'errors':>6} "
          f"{'queued':>6} {'tok/s':>7} {'ttft p50':>9} {'ttft p99':>9} {'lat p50':>8} "
          f"{'lat p99':>8}")
    for v in levels:
        print(f"{v.clients:>7} {v.tokens:>7} {len(v.streams):>8} {v.count(200):>4} "
              f"{v.count(429):>4} {v.errors:>6} {v.queued:>6} {v.tokens_per_s:>7.0f} "
              f"{ms(v.ttft(0.5)):>9} {ms(v.ttft(0.99)):>9} {ms(v.latency(0.5)):>8} "
              f"{ms(v.latency(0.99)):>8}")


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}ms"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def result(single: Single, levels: dict[int, Level], healthy: bool, drained: Drain) -> str:
    def agg(n: int) -> float:
        return levels[n].tokens_per_s if n in levels else math.nan

    l16 = levels.get(16)
    fields = {
        "lmforge_tok_s": f"{max(single.lmforge):.0f}",
        "transformers_tok_s": f"{max(single.transformers):.0f}", "speedup": f"{single.ratio:.2f}",
        "agg_1": f"{agg(1):.0f}", "agg_4": f"{agg(4):.0f}", "agg_16": f"{agg(16):.0f}",
        "agg_64": f"{agg(64):.0f}", "scale_16": f"{agg(16) / agg(1):.2f}",
        "ttft_p99_16_ms": f"{l16.ttft(0.99) * 1000:.0f}" if l16 else "nan",
        "errors": str(sum(v.errors for v in levels.values())),
        "r429_64": str(levels[64].count(429)) if 64 in levels else "nan",
        "healthy": str(int(healthy)), "drain_accepted": str(drained.accepted),
        "drain_lost": str(drained.lost),
        "drain_refused": str(drained.unavailable + drained.refused),
        "drain_other": str(drained.other), "drain_exit": str(drained.exit_code),
        "load1": f"{os.getloadavg()[0]:.2f}",
    }
    return "RESULT " + " ".join(f"{k}={v}" for k, v in fields.items())


# ---------------------------------------------------------------------------- main


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="a trained run of the default job (default: train one)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the trained run, export and logs here (default: a temporary "
                             "directory, removed at the end)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and "
                                                                "transformers alike")
    parser.add_argument("--tokens", type=int, default=100, help="new tokens of the one stream")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levels", default="1,4,16,64", help="concurrent clients, by level")
    parser.add_argument("--requests", type=int, default=4, help="requests a client sends")
    parser.add_argument("--requests-64", type=int, default=2,
                        help="requests a client sends at 64 clients or more")
    parser.add_argument("--load-tokens", type=int, default=64, help="max_tokens under load")
    parser.add_argument("--load-tokens-64", type=int, default=32,
                        help="max_tokens at 64 clients or more")
    parser.add_argument("--drain-clients", type=int, default=16)
    parser.add_argument("--drain-requests", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    print(f"load average before: {load_average()} ({os.cpu_count()} cores)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lmforge-serve-bench-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        bench(args, work)


def bench(args: argparse.Namespace, work: Path) -> None:
    run = trained_run(work, args.run)
    export = work / "hf"
    shutil.rmtree(export, ignore_errors=True)  # a --work directory used before
    lmforge("export", str(run), "--out", str(export), cwd=work, log=work / "export.log")
    tokenizer = load_tokenizer(run / "tokenizer")
    prompt = tokenizer.encode_prompt(PROMPT)
    server = Server(run, threads=args.threads, log=work / "serve.log")
    print(f"serving {run} at {server.url} (--max-concurrency {MAX_CONCURRENCY} --max-queue "
          f"{MAX_QUEUE}); {args.threads} torch thread(s) each; prompt {len(prompt)} tokens")
    try:
        single = one_stream(server, export, prompt, tokenizer, args.tokens, args.repeats)
        single_table(single, args.tokens)
        levels: dict[int, Level] = {}
        for n in (int(x) for x in args.levels.split(",")):
            big = n >= 64
            levels[n] = asyncio.run(load(server, prompt, n,
                                         args.requests_64 if big else args.requests,
                                         args.load_tokens_64 if big else args.load_tokens))
        print(f"\nload (sampled, ignore_eos; load average {load_average()}):")
        load_table(list(levels.values()))
        failures(list(levels.values()))
        healthy = still_serves(server, prompt)
        print(f"after the load: {'healthy' if healthy else 'NOT healthy'}")
        drained = asyncio.run(drain(server, prompt, args.drain_clients, args.drain_requests,
                                    args.load_tokens))
    finally:
        server.kill()
    print(f"\ndrain ({args.drain_clients} clients, SIGTERM mid-way): {drained.accepted} "
          f"accepted, {drained.completed} completed, {drained.lost} lost; refused: "
          f"{drained.unavailable} 503, {drained.refused} connection; {drained.other} other; "
          f"exit {drained.exit_code} "
          f"{drained.seconds:.1f}s after SIGTERM")
    print(f"load average after: {load_average()}")
    print(result(single, levels, healthy, drained))


if __name__ == "__main__":
    main()
