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


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                max_in_flight: int = 0) -> Iterator[R]:
    """fn over items, in order. workers=0 runs in this process (no start-up cost, for small
    inputs); otherwise in that many freshly spawned processes, which share nothing with this
    one (no inherited threads or locks: the tokenizer library's thread pool does not survive
    a fork)."""
    if workers <= 0:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    limit = max_in_flight or 2 * workers + 2
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
