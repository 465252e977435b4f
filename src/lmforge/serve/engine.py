"""Continuous batching: many requests share the forward passes of one model.

A request joins the running batch at the next step and leaves it when done, each with its
own KV cache rows (a GPT) or recurrent state row, its own sampling settings and its own
seeded generator. One step of the engine:

1. admits waiting requests while fewer than max_batch are running, and drops cancelled ones;
2. prefills: up to prefill_chunk prompt tokens in all, oldest request first, each request's
   chunk a forward of its own into a one-row cache (a KVCache; a recurrent model's state),
   so a long prompt takes several steps and never stalls the others for more than a chunk;
   a request whose prompt is done samples its first token and joins the decoding rows;
3. decodes: one batched forward of the newest token of every decoding row (those that
   joined in this step's prefill too), then one token sampled per row.

A cancel takes effect at the next step: the request's final "cancelled" event comes then,
and a waiting request takes the freed slot in that same step. `max_tokens=0` ends at
admission with a final "length" event and no token.

The decoding rows of a GPT live in a RowCache (models/layers.py), rows 0..n-1, each at its
own length: every row's new token gets its own position (position embedding or rotary
angle) and attends to its own keys only, through one mask per step shared by the layers. A
prefilled prompt is copied into row n; a leaving row's place is taken by the last row, so
the rows in use stay at the front and a step slices the cache without gathering it. A
recurrent model's rows are the batch rows of its state, handled the same way.

Determinism: each request samples with a torch.Generator of its own, seeded with its seed,
one uniform number a token (rows.sample_rows), exactly as `lmforge generate` samples one
sequence; so a request's tokens do not depend on what else runs beside it (up to the
floating-point rounding of a batched matrix product, which can flip a near tie).

Context (GPT): a request never runs past block_size positions. A prompt longer than
block_size - max_tokens + 1 tokens is cropped to its last that many tokens (as `lmforge
generate` crops to the last block_size), so that all max_tokens new tokens fit;
max_tokens above block_size is refused (ValueError at submit). `prompt_tokens` counts the
tokens kept. Recurrent models have no window: nothing is cropped.

End of a request: at max_tokens (the last token's event carries finish_reason "length"), at
the end-of-text token (an event with token_id None, finish_reason "stop": the eot token is
not part of the output and not counted in completion_tokens; with SamplingParams.ignore_eos
it is a token like the others), at cancel ("cancelled", at the next step), or when its
forward or sampling fails ("error", handle.error says why; the engine goes on with the
others). Every request gets exactly one final event.

Threads: `start` runs the steps on a background thread; `submit`, `cancel` and the
iterators are safe from any thread (and `events` from an asyncio loop). Without `start`,
`step` can be called directly (tests drive the engine step by step). On a CPU a step runs
on as many of torch's threads as it is worth (threads.py). The engine owns the model from then on: it switches it to eval mode, stores its weights for
decoding (models/decode_layout.py: no value changes) and runs it under
torch.inference_mode().
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any

import torch
from torch import Tensor

from lmforge.generate import sampling_problem
from lmforge.models.decode_layout import use_decode_layout
from lmforge.models.gpt import GPT
from lmforge.models.layers import KVCache, RowCache
from lmforge.models.rnn import RecurrentLM
from lmforge.serve.requests import (
    MAX_SEED,
    EngineStopped,
    QueueFull,
    RequestHandle,
    SamplingParams,
    TokenEvent,
    Wakes,
    wake_all,
)
from lmforge.serve.rows import (
    DONE,
    PREFILL,
    QUEUED,
    RUNNING,
    EngineRequest,
    add_row,
    drop_row,
    sample_first,
    sample_rows,
)
from lmforge.threads import StepThreads

__all__ = ["Engine", "EngineStopped", "QueueFull", "RequestHandle", "SamplingParams",
           "TokenEvent"]


class Engine:
    """Continuous batching over one GPT or recurrent model (see the module's docstring)."""

    def __init__(self, model: GPT | RecurrentLM, *, eot_id: int, max_batch: int = 16,
                 max_queue: int = 64, prefill_chunk: int = 64, device: str = "cpu",
                 seed: int | None = None) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError(f"need max_batch >= 1, max_queue >= 0 and prefill_chunk >= 1; "
                             f"got {max_batch}, {max_queue} and {prefill_chunk}")
        if not isinstance(model, GPT | RecurrentLM):
            raise TypeError(f"the engine serves a GPT or a recurrent model, not "
                            f"{type(model).__name__}")
        self.device = torch.device(device)
        weight = model.wte.weight
        if weight.device.type != self.device.type:
            raise ValueError(f"the model is on {weight.device}, the engine on {self.device}")
        self.model = use_decode_layout(model.eval())  # the engine only infers with it
        self._gpt = model if isinstance(model, GPT) else None
        self.recurrent = self._gpt is None
        self.vocab_size = model.cfg.vocab_size
        self.block_size = None if self._gpt is None else model.cfg.block_size
        self.eot_id = eot_id
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        # the decoding rows: a GPT's RowCache, a recurrent model's batched state
        self._cache: RowCache | None = (None if self._gpt is None
                                        else self._gpt.new_row_cache(max_batch, device=self.device))
        self._state: Any = None
        self._rows: list[EngineRequest] = []
        self._prefilling: list[EngineRequest] = []
        self._spare: list[KVCache] = []  # one-row prefill caches, reused
        self._queue: deque[EngineRequest] = deque()
        self._cancels: deque[EngineRequest] = deque()
        self._requests: dict[int, EngineRequest] = {}  # id(handle) -> request, until it ends
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inflight = 0  # submitted and not yet finished
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seeds = random.Random(seed)
        self.steps = 0  # steps run, for tests and statistics
        self.last_error: str | None = None
        self.threads = StepThreads(torch.get_num_threads())
        self._wakes: Wakes | None = None  # during a step: the consumers to wake at its end

    # ------------------------------------------------------------------------ stats

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet admitted."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Requests admitted: prefilling or decoding."""
        return len(self._rows) + len(self._prefilling)

    def prompt_limit(self, max_tokens: int) -> int | None:
        """The most prompt tokens a request with max_tokens keeps (older ones are cropped),
        or None for a recurrent model, which keeps them all."""
        return None if self.block_size is None else self.block_size - max_tokens + 1

    # ------------------------------------------------------------------------ submitting

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        """Queue a request; its events come through the handle. ValueError for a request
        that cannot run (no prompt, ids outside the vocabulary, bad sampling settings,
        max_tokens beyond the context), QueueFull when max_queue requests wait,
        EngineStopped once stop or drain began."""
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise ValueError("the prompt needs at least one token (the end-of-text token "
                             "for no prompt)")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt token ids must be between 0 and {self.vocab_size - 1}")
        problem = sampling_problem(temperature=params.temperature, top_k=params.top_k,
                                   top_p=params.top_p)
        if problem:
            raise ValueError(problem)
        if params.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {params.max_tokens}")
        limit = self.prompt_limit(params.max_tokens)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"max_tokens={params.max_tokens} does not fit the model's "
                                 f"context of {self.block_size} tokens with a prompt")
            prompt = prompt[-limit:]
        if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and 2**64 - 1, got {params.seed}")
        with self._cond:
            if not self._accepting:
                raise EngineStopped("the engine is stopping: it takes no new requests")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting already")
            seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
            handle = RequestHandle(self._cancel_requested, len(prompt), seed)
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            request = EngineRequest(handle, prompt, params, generator)
            self._requests[id(handle)] = request
            self._queue.append(request)
            self._inflight += 1
            self._cond.notify_all()
        return handle

    def _cancel_requested(self, handle: RequestHandle) -> None:
        request = self._requests.get(id(handle))
        if request is not None:
            self._cancels.append(request)  # deque.append: safe from any thread
            with self._cond:
                self._cond.notify_all()

    # ------------------------------------------------------------------------ running

    def start(self) -> None:
        """Run the steps on a background thread until stop() or drain()."""
        with self._cond:
            if self._thread is not None or self._stopping:
                raise RuntimeError("an engine starts once")
            self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and self._inflight == 0:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as err:  # keep serving the requests to come
                self._fail_admitted(err)

    def drain(self, timeout: float | None = None) -> None:
        """Refuse new requests, let those in flight (queued ones too) finish, then stop. After
        `timeout` seconds the rest are cancelled. Without start(), steps in this thread."""
        with self._cond:
            self._accepting = False
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is None:
            while self._inflight and (deadline is None or time.monotonic() < deadline):
                self.step()
        else:
            with self._cond:
                self._cond.wait_for(lambda: self._inflight == 0,
                                    None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.stop()

    def stop(self) -> None:
        """Refuse new requests, cancel all in flight (a final "cancelled" event each) and stop
        the thread, after the step it is in."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._cond:
            queued = list(self._queue)
            self._queue.clear()
        for request in [*queued, *self._prefilling, *self._rows]:
            self._finish(request, TokenEvent(None, None, "cancelled"))
        self._prefilling.clear()
        self._rows.clear()
        self._state = None
        self.threads.use(self.threads.most)  # as the engine found them

    def step(self) -> bool:
        """One step: admit, prefill, decode. True while requests remain in flight. The
        asyncio consumers of the step's events are woken together at its end."""
        self._wakes = []
        try:
            with torch.inference_mode():
                self._admit()
                if self.device.type == "cpu":
                    work = len(self._rows) + sum(len(r.prompt) - r.done
                                                 for r in self._prefilling)
                    self.threads.use(self.threads.worth(work))
                if self._prefilling:
                    self._prefill()
                if self._rows:
                    self._decode()
        finally:
            wakes, self._wakes = self._wakes, None
            wake_all(wakes)
        self.steps += 1
        return self._inflight > 0

    # ------------------------------------------------------------------------ a step's parts

    def _admit(self) -> None:
        while self._cancels:
            request = self._cancels.popleft()
            if request.where == QUEUED:
                with self._cond:
                    self._queue.remove(request)
            elif request.where == PREFILL:
                self._prefilling.remove(request)
                self._release(request)
            elif request.where == RUNNING:
                self._leave(request.row)
            else:
                continue
            self._finish(request, TokenEvent(None, None, "cancelled"))
        free = self.max_batch - len(self._rows) - len(self._prefilling)
        if free <= 0 or not self._queue:
            return
        with self._cond:
            admitted = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
        for request in admitted:
            if request.max_tokens == 0:
                self._finish(request, TokenEvent(None, None, "length"))
                continue
            request.where = PREFILL
            if self._gpt is not None:
                cache = self._spare.pop() if self._spare else self._gpt.new_cache(1)
                cache.pos = 0
                request.state = cache
            self._prefilling.append(request)

    def _prefill(self) -> None:
        budget = self.prefill_chunk
        for request in list(self._prefilling):
            if budget <= 0:
                break
            take = min(budget, len(request.prompt) - request.done)
            chunk = torch.tensor([request.prompt[request.done:request.done + take]],
                                 device=self.device)  # (1, take)
            budget -= take
            request.done += take
            last = request.done == len(request.prompt)
            try:
                logits: Tensor | None = None
                if self._gpt is None:
                    out, request.state = self.model(chunk, request.state)
                    logits = out[:, -1]  # (1, V)
                else:  # the output layer only where a token is sampled
                    hidden = self._gpt.hidden(chunk, request.state)  # (1, take, C)
                    logits = self._gpt.logits(hidden[:, -1]) if last else None
                token, logprob = (sample_first(request, logits[0]) if last and logits is not None
                                  else (0, None))
            except Exception as err:
                self._prefilling.remove(request)
                self._release(request)
                self._fail(request, err)
                continue
            if not last:
                continue
            self._prefilling.remove(request)
            if self._emit(request, token, logprob):
                self._release(request)
            else:
                self._join(request)

    def _decode(self) -> None:
        rows = self._rows
        n = len(rows)
        tokens = torch.tensor([r.last for r in rows], device=self.device)[:, None]  # (n, 1)
        try:
            if self.recurrent:
                out, self._state = self.model(tokens, self._state)
            else:
                out, _ = self.model(tokens, self._cache)
        except Exception as err:  # every row of the forward fails
            for i in range(n - 1, -1, -1):
                request = rows[i]
                self._leave(i)
                self._fail(request, err)
            return
        logits = out[:, -1]  # (n, V)
        chosen, failed, logprobs = sample_rows(logits, rows)
        for i in range(n - 1, -1, -1):  # from the end: a leaving row's place takes the last
            request = rows[i]
            if i in failed:
                self._leave(i)
                self._fail(request, failed[i])
            elif self._emit(request, chosen[i],
                            logprobs[i] if logprobs is not None and request.logprobs else None):
                self._leave(i)

    def _emit(self, request: EngineRequest, token: int, logprob: float | None) -> bool:
        """Hand a sampled token to the request; True when that ends it."""
        if token == self.eot_id and request.ends:
            self._finish(request, TokenEvent(None, None, "stop"))
            return True
        request.produced += 1
        request.handle.completion_tokens = request.produced
        if request.produced >= request.max_tokens:
            self._finish(request, TokenEvent(token, logprob, "length"))
            return True
        request.handle._push(TokenEvent(token, logprob, None), self._wakes)
        request.last = token
        return False

    # ------------------------------------------------------------------------ rows

    def _join(self, request: EngineRequest) -> None:
        """A prefilled request becomes decoding row n."""
        n = len(self._rows)
        if self._cache is not None:
            self._cache.load(n, request.state)
            self._release(request)
        else:
            self._state = add_row(self._state, request.state)
            request.state = None
        request.where, request.row = RUNNING, n
        self._rows.append(request)

    def _leave(self, i: int) -> None:
        """Row i leaves the batch; the last row takes its place."""
        rows = self._rows
        last = len(rows) - 1
        if i != last:
            rows[i] = rows[last]
            rows[i].row = i
            if self._cache is not None:
                self._cache.move(last, i)
        rows.pop()
        if self.recurrent:
            self._state = drop_row(self._state, i, last) if rows else None

    def _release(self, request: EngineRequest) -> None:
        """Give back a request's one-row prefill cache."""
        if isinstance(request.state, KVCache):
            self._spare.append(request.state)
        request.state = None

    # ------------------------------------------------------------------------ endings

    def _finish(self, request: EngineRequest, event: TokenEvent) -> None:
        if request.where == DONE:
            return
        request.where = DONE
        request.handle.finish_reason = event.finish_reason
        request.handle._push(event, self._wakes)
        with self._cond:
            self._requests.pop(id(request.handle), None)
            self._inflight -= 1
            if self._inflight == 0:
                self._cond.notify_all()

    def _fail(self, request: EngineRequest, err: Exception) -> None:
        request.handle.error = f"{type(err).__name__}: {err}"
        self.last_error = request.handle.error
        self._finish(request, TokenEvent(None, None, "error"))

    def _fail_admitted(self, err: Exception) -> None:
        """An unexpected failure of a step: end every admitted request with an error."""
        for request in [*self._prefilling, *self._rows]:
            self._fail(request, err)
        self._prefilling.clear()
        self._rows.clear()
        self._state = None
