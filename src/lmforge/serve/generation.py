"""One generation request on the engine: its prompts submitted as n sequences each (all or
none), their tokens turned into text as they come, and the answer given whole or streamed as
server-sent events, within the request's deadline; what it took goes to the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmforge.data.tokenizer import Tokenizer
from lmforge.serve.choices import ClientGone, Delta, GenerationFailed, Sequence, deltas
from lmforge.serve.decoding import TextStream
from lmforge.serve.engine import Engine, EngineStopped, QueueFull, SamplingParams
from lmforge.serve.errors import ApiError, bad_request, error_body, queue_full
from lmforge.serve.errors import draining as draining_error
from lmforge.serve.limits import Limits
from lmforge.serve.metrics import Metrics
from lmforge.serve.prompts import Encoder
from lmforge.serve.responses import DONE, Answer
from lmforge.serve.schemas import ChatCompletionRequest, CompletionRequest


class Generation:
    """Answers generation requests with `engine`; `ends`: the tokens that end a sequence, by
    the answer's kind (completion, chat)."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, encoder: Encoder, metrics: Metrics,
                 limits: Limits, ends: dict[str, frozenset[int]]) -> None:
        self.engine, self.tokenizer, self.encoder = engine, tokenizer, encoder
        self.metrics, self.limits, self.ends = metrics, limits, ends

    async def respond(self, request: Request, answer: Answer, prompts: list[list[int]],
                       body: CompletionRequest | ChatCompletionRequest,
                       start: float) -> Response:
        params = [self.encoder.sampling(body, ids) for ids in prompts]
        sequences = self.submit(prompts, params, body.stop, self.ends[answer.kind])
        n = body.n or 1
        # the tokens the model reads (the engine crops a prompt to its context), once a prompt
        prompt_tokens = sum(s.handle.prompt_tokens for s in sequences[::n])
        deadline = asyncio.get_running_loop().time() + self.limits.request_timeout - (
            time.monotonic() - start)
        timing = Timing(self.metrics, answer.kind, start)

        async def gone() -> None:  # the body is read: the next message is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                pass

        stream = deltas(sequences, gone=gone)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = self.sse(answer, stream, sequences, deadline, timing,
                         usage_of=prompt_tokens if include_usage else None)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            async with contextlib.aclosing(stream), asyncio.timeout_at(deadline):
                async for delta in stream:
                    timing.seen(delta)
        except TimeoutError:
            raise timed_out() from None
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; uvicorn logs it
        except GenerationFailed as err:
            raise ApiError(500, str(err), type="server_error") from None
        finally:
            timing.done()
        return JSONResponse(answer.whole(sequences, prompt_tokens=prompt_tokens,
                                         tokenizer=self.tokenizer, logprobs=params[0][0].logprobs))

    def submit(self, prompts: list[list[int]], params: list[list[SamplingParams]], stops: list[str],
               end: frozenset[int]) -> list[Sequence]:
        """Each prompt with each of its settings (n); all or none: a full queue cancels those
        already in. A sequence with ignore_eos runs to its max_tokens: no token in `end` ends
        it."""
        sequences: list[Sequence] = []
        try:
            for ids, settings in zip(prompts, params, strict=True):
                for p in settings:
                    handle = self.engine.submit(ids, p)
                    sequences.append(Sequence(len(sequences), handle,
                                              TextStream(self.tokenizer, ids, stops),
                                              frozenset() if p.ignore_eos else end))
        except (QueueFull, EngineStopped, ValueError) as err:
            for seq in sequences:
                seq.handle.cancel()
            if isinstance(err, QueueFull):
                raise queue_full() from None
            if isinstance(err, EngineStopped):
                raise draining_error() from None
            raise bad_request(str(err)) from None  # what the engine cannot run
        self.metrics.prompt_tokens.inc(sum(s.handle.prompt_tokens for s in sequences))
        return sequences

    async def sse(self, answer: Answer, stream: AsyncGenerator[Delta, None], sequences: list[Sequence],
                  deadline: float, timing: Timing, *, usage_of: int | None) -> AsyncIterator[str]:
        started: set[int] = set()
        try:
            async with contextlib.aclosing(stream), asyncio.timeout_at(deadline):
                async for delta in stream:
                    timing.seen(delta)
                    first = delta.index not in started
                    started.add(delta.index)
                    if answer.kind == "chat" and first:
                        yield answer.chunk(delta.index, "", None, role=True)
                    if delta.text:
                        yield answer.chunk(delta.index, delta.text, None)
                    if delta.finish_reason is not None:
                        yield answer.chunk(delta.index, None, delta.finish_reason)
            if usage_of is not None:
                yield answer.usage_chunk(usage_of, sum(s.generated for s in sequences))
        except TimeoutError:
            yield f"data: {json.dumps(timed_out().body())}\n\n"
        except GenerationFailed as err:
            yield f"data: {json.dumps(error_body(str(err), type='server_error'))}\n\n"
        except ClientGone:
            return
        finally:
            timing.done()
        yield DONE


class Timing:
    """Time to the first token and to the end of one generation request, into the metrics."""

    def __init__(self, metrics: Metrics, kind: str, start: float) -> None:
        self.metrics, self.kind, self.start, self.first, self.ended = metrics, kind, start, False, False

    def seen(self, delta: Delta) -> None:
        if not delta.tokens:
            return
        self.metrics.generated_tokens.inc(delta.tokens)
        if not self.first:
            self.first = True
            self.metrics.first_token.observe(time.monotonic() - self.start)

    def done(self) -> None:
        if not self.ended:
            self.ended = True
            self.metrics.latency.labels(self.kind).observe(time.monotonic() - self.start)


def timed_out() -> ApiError:
    return ApiError(504, "the request took longer than the server's per-request timeout",
                    type="timeout_error", code="timeout")
