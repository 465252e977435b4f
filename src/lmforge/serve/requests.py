"""What a submitter of the engine (serve/engine.py) deals in: a request's sampling settings,
the events it yields, the handle that reads them and cancels, and the two refusals."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

MAX_SEED = 2**64 - 1  # torch's generators take 64-bit seeds


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0   # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None    # None: a seed drawn from the engine's own generator
    logprobs: bool = False     # report each sampled token's log-probability
    ignore_eos: bool = False   # the end-of-text token is a token like any other: run to max_tokens


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One sampled token, or the end of a request. logprob (with SamplingParams.logprobs) is
    the token's log-probability under the model's own distribution, before temperature,
    top-k and top-p."""

    token_id: int | None       # None only on a final event without a token
    logprob: float | None
    finish_reason: str | None  # None while running; "length", "stop", "cancelled", "error"


class QueueFull(Exception):
    """submit while max_queue requests already wait."""


class EngineStopped(Exception):
    """submit after stop() or drain() began."""


class RequestHandle:
    """What the submitter holds of a request: its events, its counts, and cancel.

    Events are read once, by one consumer: iterate the handle (blocking) or `events()`
    (asyncio); both end after the final event, and once that is read they yield nothing.
    A consumer that stops listening early should `cancel()`, or the request runs to its end.
    """

    def __init__(self, on_cancel: Callable[[RequestHandle], None], prompt_tokens: int,
                 seed: int) -> None:
        self._on_cancel = on_cancel  # the engine's: the request ends at its next step
        self.prompt_tokens = prompt_tokens  # the tokens the model reads (after any crop)
        self.completion_tokens = 0  # tokens sampled so far, an end-of-text token not counted
        self.seed = seed  # the request's own, or the one drawn for it
        self.finish_reason: str | None = None  # set with the final event
        self.error: str | None = None  # why, with finish_reason "error"
        self._events: deque[TokenEvent] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._cancel = False
        self._read_final = False  # the consumer has had the final event

    def cancel(self) -> None:
        """End the request at the next step (finish_reason "cancelled"), freeing its slot; a
        request already finished is left as it is."""
        if not self._cancel:
            self._cancel = True
            self._on_cancel(self)

    def _push(self, event: TokenEvent, wakes: Wakes | None = None) -> None:
        """Called by the engine's thread. An asyncio consumer waiting for the event is woken
        at once, or, given `wakes`, when the engine wakes all of a step's together."""
        with self._cond:
            self._events.append(event)
            self._cond.notify()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if wakes is None:
                wake_all([waiter])
            else:
                wakes.append(waiter)

    def __iter__(self) -> Iterator[TokenEvent]:
        while not self._read_final:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                event = self._events.popleft()
            if event.finish_reason is not None:
                self._read_final = True
            yield event

    async def events(self) -> AsyncIterator[TokenEvent]:
        """The events as they come, for an asyncio consumer: the engine's thread wakes the
        loop with call_soon_threadsafe (no polling)."""
        loop = asyncio.get_running_loop()
        while not self._read_final:
            with self._cond:
                event = self._events.popleft() if self._events else None
                if event is None:
                    future: asyncio.Future[None] = loop.create_future()
                    self._waiter = (loop, future)
            if event is None:
                await future
                continue
            if event.finish_reason is not None:
                self._read_final = True
            yield event


Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
Wakes = list[Waiter]


def wake_all(waiters: Wakes) -> None:
    """Wake the asyncio consumers waiting in `waiters`: one call_soon_threadsafe a loop, so
    that a step of many rows costs its loop one wake-up (a write to its self-pipe and a turn
    of the loop), not one a row."""
    futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for loop, future in waiters:
        futures.setdefault(loop, []).append(future)
    for loop, waiting in futures.items():
        try:
            loop.call_soon_threadsafe(_wake, waiting)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
