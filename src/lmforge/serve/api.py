"""The HTTP app: OpenAI's completions, chat completions and models endpoints over an Engine,
plus /health and /metrics.

A generation request is validated (schemas), encoded (prompts), submitted to the engine as
n sequences per prompt, and answered whole or streamed as server-sent events ending with
`data: [DONE]`. Every failure is an error body in OpenAI's shape with its status (errors.py).
The model is named after the run's directory; any other name is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lmforge.data.tokenizer import Tokenizer
from lmforge.serve.choices import ClientGone, Delta, GenerationFailed, Sequence, deltas
from lmforge.serve.decoding import TextStream
from lmforge.serve.engine import Engine, EngineStopped, QueueFull, SamplingParams
from lmforge.serve.errors import ApiError, bad_request, error_body, queue_full, unknown_model
from lmforge.serve.errors import draining as draining_error
from lmforge.serve.guard import Gate, Guard
from lmforge.serve.limits import Limits
from lmforge.serve.metrics import CONTENT_TYPE, Metrics
from lmforge.serve.prompts import Encoder
from lmforge.serve.responses import DONE, Answer
from lmforge.serve.schemas import ChatCompletionRequest, CompletionRequest, parse
from lmforge.tasks.chat import template_for

log = logging.getLogger("lmforge.serve")

INDEX = """<!doctype html><title>lmforge serve</title>
<p>lmforge serves <b>{model}</b> through OpenAI's API at <code>/v1</code>:
<code>GET /v1/models</code>, <code>POST /v1/completions</code>,
<code>POST /v1/chat/completions</code>; <code>GET /health</code>, <code>GET /metrics</code>.
"""


def create_app(engine: Engine, tokenizer: Tokenizer, model_name: str, *,
               limits: Limits | None = None, api_key: str | None = None,
               gate: Gate | None = None) -> FastAPI:
    """The app serving `engine` (started by the caller) as `model_name`; `gate` is closed by
    the server when it starts draining (503 from then on)."""
    limits = limits or Limits()
    gate = gate or Gate()
    metrics = Metrics(waiting=lambda: engine.waiting, running=lambda: engine.running)
    template = template_for(tokenizer)
    encoder = Encoder(tokenizer, template, engine.block_size or 0, limits)
    ends = {"completion": frozenset({tokenizer.eot_id}),
            "chat": frozenset({tokenizer.eot_id, template.end_of_turn})}
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, gate=gate, api_key=api_key,
                       max_body_bytes=limits.max_body_bytes, metrics=metrics)
    app.state.metrics, app.state.gate = metrics, gate

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(err.detail), type=kind), err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(err).__name__}",
                                       type="server_error"), 500)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "lmforge"}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return INDEX.format(model=model_name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "waiting": engine.waiting,
                "running": engine.running}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise unknown_model(name, model_name)
        return model_card()

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        start = time.monotonic()
        body = parse(CompletionRequest, await request.body())
        if body.model != model_name:
            raise unknown_model(body.model, model_name)
        prompts = await asyncio.to_thread(encoder.completion, body)
        return await generate(request, Answer.new("completion", model_name), prompts, body,
                              start)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        start = time.monotonic()
        body = parse(ChatCompletionRequest, await request.body())
        if body.model != model_name:
            raise unknown_model(body.model, model_name)
        prompt = await asyncio.to_thread(encoder.chat, body)
        return await generate(request, Answer.new("chat", model_name), [prompt], body, start)

    async def generate(request: Request, answer: Answer, prompts: list[list[int]],
                       body: CompletionRequest | ChatCompletionRequest,
                       start: float) -> Response:
        params = [encoder.sampling(body, ids) for ids in prompts]
        sequences = submit(prompts, params, body.stop, ends[answer.kind])
        n = body.n or 1
        # the tokens the model reads (the engine crops a prompt to its context), once a prompt
        prompt_tokens = sum(s.handle.prompt_tokens for s in sequences[::n])
        deadline = asyncio.get_running_loop().time() + limits.request_timeout - (
            time.monotonic() - start)
        timing = Timing(metrics, answer.kind, start)

        async def gone() -> None:  # the body is read: the next message is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                pass

        stream = deltas(sequences, gone=gone)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = sse(answer, stream, sequences, deadline, timing,
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
                                         tokenizer=tokenizer, logprobs=params[0][0].logprobs))

    def submit(prompts: list[list[int]], params: list[list[SamplingParams]], stops: list[str],
               end: frozenset[int]) -> list[Sequence]:
        """Each prompt with each of its settings (n); all or none: a full queue cancels those
        already in."""
        sequences: list[Sequence] = []
        try:
            for ids, settings in zip(prompts, params, strict=True):
                for p in settings:
                    handle = engine.submit(ids, p)
                    sequences.append(Sequence(len(sequences), handle,
                                              TextStream(tokenizer, ids, stops), end))
        except (QueueFull, EngineStopped, ValueError) as err:
            for seq in sequences:
                seq.handle.cancel()
            if isinstance(err, QueueFull):
                raise queue_full() from None
            if isinstance(err, EngineStopped):
                raise draining_error() from None
            raise bad_request(str(err)) from None  # what the engine cannot run
        metrics.prompt_tokens.inc(sum(s.handle.prompt_tokens for s in sequences))
        return sequences

    async def sse(answer: Answer, stream: AsyncGenerator[Delta, None], sequences: list[Sequence],
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

    return app


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
