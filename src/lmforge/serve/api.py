"""The HTTP app: OpenAI's completions, chat completions and models endpoints over an Engine,
plus /health, /metrics and the page at / where a person tries the model (page.py).

A generation request is validated (schemas), encoded (prompts), submitted to the engine as
n sequences per prompt, and answered whole or streamed as server-sent events ending with
`data: [DONE]`. Every failure is an error body in OpenAI's shape with its status (errors.py).
The model is named after the run's directory; any other name is a 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from lmforge.data.tokenizer import Tokenizer
from lmforge.serve.engine import Engine
from lmforge.serve.errors import ApiError, error_body, unknown_model
from lmforge.serve.generation import Generation
from lmforge.serve.guard import Gate, Guard
from lmforge.serve.limits import Limits
from lmforge.serve.metrics import CONTENT_TYPE, Metrics
from lmforge.serve.page import PageFacts, render
from lmforge.serve.prompts import Encoder
from lmforge.serve.responses import Answer
from lmforge.serve.schemas import ChatCompletionRequest, CompletionRequest, parse
from lmforge.tasks.chat import template_for

log = logging.getLogger("lmforge.serve")
Body = TypeVar("Body", CompletionRequest, ChatCompletionRequest)


def create_app(engine: Engine, tokenizer: Tokenizer, model_name: str, *,
               limits: Limits | None = None, api_key: str | None = None,
               gate: Gate | None = None, page: PageFacts | None = None) -> FastAPI:
    """The app serving `engine` (started by the caller) as `model_name`; `gate` is closed by
    the server when it starts draining (503 from then on); `page`: what the page at / says
    about the model (by default its name only)."""
    limits = limits or Limits()
    facts = page if page is not None else PageFacts(model_name)
    if facts.name != model_name:
        raise ValueError(f"the page's model {facts.name!r} is not the one served, {model_name!r}")
    gate = gate or Gate()
    metrics = Metrics(waiting=lambda: engine.waiting, running=lambda: engine.running)
    template = template_for(tokenizer)
    encoder = Encoder(tokenizer, template, engine.block_size or 0, limits)
    ends = {"completion": frozenset({tokenizer.eot_id}),
            "chat": frozenset({tokenizer.eot_id, template.end_of_turn})}
    generation = Generation(engine, tokenizer, encoder, metrics, limits, ends)
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, gate=gate, api_key=api_key,
                       max_body_bytes=limits.max_body_bytes, metrics=metrics)
    app.state.metrics, app.state.gate = metrics, gate

    _answer_errors_as_openai_does(app)

    _add_page_route(app, facts, encoder)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "waiting": engine.waiting,
                "running": engine.running}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    _add_model_routes(app, model_name)

    async def read(request: Request, schema: type[Body]) -> Body:
        body = parse(schema, await request.body())
        if body.model != model_name:
            raise unknown_model(body.model, model_name)
        return body

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        start = time.monotonic()
        body = await read(request, CompletionRequest)
        prompts = await asyncio.to_thread(encoder.completion, body)
        return await generation.respond(request, Answer.new("completion", model_name), prompts,
                                        body, start)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        start = time.monotonic()
        body = await read(request, ChatCompletionRequest)
        prompt = await asyncio.to_thread(encoder.chat, body)
        return await generation.respond(request, Answer.new("chat", model_name), [prompt],
                                        body, start)

    return app


def _answer_errors_as_openai_does(app: FastAPI) -> None:
    """Every failure as an error body in OpenAI's shape, with its status."""

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


def _add_model_routes(app: FastAPI, model_name: str) -> None:
    """GET /v1/models and /v1/models/NAME: the one model served, by the run's name."""

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "lmforge"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if name != model_name:
            raise unknown_model(name, model_name)
        return model_card()


def _add_page_route(app: FastAPI, facts: PageFacts, encoder: Encoder) -> None:
    """GET /: the page where a person tries the model (page.py)."""

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        shown = render(facts, max_tokens=encoder.max_new_tokens)  # a fresh nonce each time
        return HTMLResponse(shown.html, headers={
            "Content-Security-Policy": shown.csp, "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
