"""The sequences of one request, generated together: their tokens as text deltas, in the order
they come. A stop string or an end-of-turn token ends a sequence (its engine request is
cancelled); a client that goes away, a timeout or an error ends them all, and every engine
request still running is cancelled on the way out, so that its slot is free at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmforge.serve.decoding import TextStream

if TYPE_CHECKING:
    from lmforge.serve.engine import RequestHandle, TokenEvent


class ClientGone(Exception):
    """The client closed its connection."""


class GenerationFailed(Exception):
    """The engine ended a sequence with an error, or cancelled it on its own."""


@dataclass
class Sequence:
    """One choice: its engine request, its text, and how it ended."""

    index: int
    handle: RequestHandle
    text: TextStream
    ends: frozenset[int]  # tokens that end the answer: end of text, a chat's end of turn
    finish_reason: str | None = None
    generated: int = 0  # tokens the engine made, an ending one included


@dataclass(frozen=True)
class Delta:
    index: int
    text: str  # new text to show, maybe ""
    finish_reason: str | None  # set on the last delta of a sequence
    tokens: int = 0  # tokens the engine made for it (0 or 1)


async def deltas(sequences: list[Sequence], *,
                 gone: Callable[[], Awaitable[None]]) -> AsyncGenerator[Delta, None]:
    """Each sequence's deltas as its tokens arrive, until all have finished. `gone` returns
    when the client disconnects (ClientGone is raised then)."""
    queue: asyncio.Queue[tuple[Sequence, TokenEvent | BaseException] | None] = asyncio.Queue()

    async def pump(seq: Sequence) -> None:
        try:
            async for event in seq.handle.events():
                await queue.put((seq, event))
                if event.finish_reason is not None:
                    return
        except Exception as err:  # the engine failed: say so to the consumer
            await queue.put((seq, err))

    async def watch() -> None:
        await gone()
        await queue.put(None)

    tasks = [asyncio.ensure_future(pump(s)) for s in sequences]
    tasks.append(asyncio.ensure_future(watch()))
    try:
        left = len(sequences)
        while left:
            item = await queue.get()
            if item is None:
                raise ClientGone
            seq, event = item
            if seq.finish_reason is not None:  # ended here already (a stop string)
                continue
            if isinstance(event, BaseException):
                raise GenerationFailed(f"the engine failed: {event}") from event
            delta = _advance(seq, event)
            if delta.finish_reason is not None:
                left -= 1
            if delta.text or delta.finish_reason is not None or delta.tokens:
                yield delta
    finally:
        for task in tasks:
            task.cancel()
        for seq in sequences:
            if seq.finish_reason is None:
                seq.handle.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _advance(seq: Sequence, event: TokenEvent) -> Delta:
    text, finish = "", None
    if event.token_id is not None:
        seq.generated += 1
        if event.token_id in seq.ends:
            finish = "stop"
        else:
            text = seq.text.push(event.token_id, event.logprob)
            finish = "stop" if seq.text.stopped else None
        if finish is not None:
            seq.handle.cancel()  # a stop string, or a chat's end of turn the engine goes past
    if finish is None and event.finish_reason is not None:
        if event.finish_reason not in ("stop", "length"):
            raise GenerationFailed(f"the engine ended a sequence: {event.finish_reason}")
        finish = event.finish_reason
    if finish is not None:
        seq.finish_reason = finish
        text += seq.text.finish()
    return Delta(seq.index, text, finish, tokens=int(event.token_id is not None))
