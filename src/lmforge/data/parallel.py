"""Order-preserving map over worker processes, with a bounded number of tasks in flight.

`multiprocessing.Pool.imap` reads its whole input ahead of the workers, so on a corpus
larger than memory it would hold the corpus in memory; here at most `max_in_flight`
batches exist at once, and results come back in input order, so the output is the same
for any number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _in_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    # The worker processes are the parallelism: a library's own thread pool in each of them
    # (HF tokenizers' encode_batch) would only oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if initializer is not None:
        initializer(*initargs)


class WorkerPool:
    """Worker processes that serve several ordered maps, so that a pipeline of passes
    (prepare's clean pass, then its tokenize pass) spawns processes and imports modules once.
    Tasks carry what they need, or cache it per process; the processes start at the first
    map or at start(). workers=0 runs every map in this process (no start-up cost, for small
    inputs)."""

    def __init__(self, workers: int, *, initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        self.workers = workers
        self._initializer, self._initargs = initializer, initargs
        self._pool: Any = None

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, max_in_flight: int = 0) -> Iterator[R]:
        """fn over items, in order. The processes are spawned, so they share nothing with this
        one (no inherited threads or locks: the tokenizer library's thread pool does not
        survive a fork)."""
        if self.workers <= 0:
            if self._initializer is not None:
                self._initializer(*self._initargs)
            yield from map(fn, items)
            return
        self.start()
        limit = max_in_flight or 2 * self.workers + 2
        pending: deque = deque()
        for item in items:
            pending.append(self._pool.apply_async(fn, (item,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def start(self) -> None:
        """Start the processes now (else at the first map): they import while this process
        goes on, e.g. reading the first input, instead of after it."""
        if self.workers > 0 and self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.workers, initializer=_in_worker,
                                  initargs=(self._initializer, self._initargs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                max_in_flight: int = 0) -> Iterator[R]:
    """fn over items, in order, in a pool of its own (see WorkerPool)."""
    with WorkerPool(workers, initializer=initializer, initargs=initargs) as pool:
        yield from pool.map(fn, items, max_in_flight=max_in_flight)
