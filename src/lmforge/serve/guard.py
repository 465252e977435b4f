"""What every HTTP request passes before the app sees it: the draining gate (503 once SIGTERM
came), the API key (401; compared in constant time; all but `GET /`, the page, which holds no
secret and asks for the key itself), the body's size (413, from its Content-Length or as it
arrives) and the count of answers by path and status."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from lmforge.serve.errors import ApiError, draining, too_large, unauthorized
from lmforge.serve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Gate:
    """Open while the server takes requests; closed for good when it starts draining."""

    open: bool = True

    def close(self) -> None:
        self.open = False


def _is_page(scope: Scope) -> bool:
    """`GET /`: the page, served without the key (requests made from it send one)."""
    return scope.get("method") == "GET" and scope.get("path") == "/"


class Guard:
    """ASGI middleware (plain ASGI, so that streamed answers pass through untouched)."""

    def __init__(self, app: App, *, gate: Gate, api_key: str | None, max_body_bytes: int,
                 metrics: Metrics) -> None:
        self.app, self.gate, self.max_body_bytes, self.metrics = app, gate, max_body_bytes, metrics
        self.key = api_key.encode() if api_key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            refused = self._refusal(scope)
            if refused is not None:
                await JSONResponse(refused.body(), refused.status)(scope, receive, counted)
            else:
                await self.app(scope, self._bounded(receive), counted)
        finally:
            self.metrics.answered(scope.get("path", ""), status)

    def _refusal(self, scope: Scope) -> ApiError | None:
        if not self.gate.open:
            return draining()
        headers = dict(scope.get("headers") or [])
        if self.key is not None and not _is_page(scope):
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                return unauthorized()
        length = headers.get(b"content-length", b"0")
        if not length.isdigit():
            return ApiError(400, "Content-Length is not a number")
        if int(length) > self.max_body_bytes:
            return too_large(self.max_body_bytes)
        return None

    def _bounded(self, receive: Receive) -> Receive:
        """`receive` that fails with 413 once more than the limit has arrived (a chunked body
        has no Content-Length to judge by)."""
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise too_large(self.max_body_bytes)
            return message

        return bounded
