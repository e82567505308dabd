"""Cross-request batching: concurrent callers of one model share its batches.

Many threads (an app's workers, a server's requests, ``asyncio.to_thread`` tasks) call one
reranker at once, each with a few pairs. A :class:`Combiner` queues their requests; one model
thread takes whatever waits (oldest first, up to ``max_items`` items, always at least one
request), runs it as one call (for a model, one engine run: length-sorted, token-budgeted
batches over every request's pairs) and hands each caller its own results. Requests that arrive
while a round runs go into the next one, so under load the batches fill by themselves; a lone
caller's request runs as soon as it arrives. ``max_wait_ms`` lets a round that follows
concurrent traffic wait that long for more requests, which helps a device that wants larger
batches. The model runs in that one thread only (started on demand, gone after a few idle
seconds): callers' threads never touch it, so its memory stays in one allocator arena (with the
model run in many threads, glibc's per-thread arenas grew a server's memory without bound).

A request whose :class:`Ticket` is cancelled (its client went away or timed out, its ``arank``
task was cancelled) is dropped from the queue before it runs; a round whose every request is
cancelled stops at the engine's next batch (:func:`check_cancelled`). The ticket travels in a
context variable, so a server sets it around its call (``with Ticket() as t: ...``) and
``asyncio.to_thread`` carries it into the worker thread. A round that raises is re-run request
by request, so one request's error is its own and never its neighbours'.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import RerankError

T = TypeVar("T")
R = TypeVar("R")


class Cancelled(RerankError):
    """The request was cancelled (its client disconnected or its deadline passed) before it ran."""


class Ticket:
    """A cancellation flag for the calls made inside ``with ticket:`` (in this thread or context)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self._token: contextvars.Token[Ticket | None] | None = None

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when the ticket is cancelled (at once if it is already)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __enter__(self) -> Ticket:
        self._token = _TICKET.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _TICKET.reset(self._token)
            self._token = None


_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("rerank_ticket", default=None)
_ROUND = threading.local()  # the tickets of the round the model thread is running


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when every request of the round this (model) thread runs was
    cancelled: the engine asks before each batch, so nobody's pairs keep the model busy. Outside a
    round, or while one request of it still waits for its results, nothing happens."""
    tickets = getattr(_ROUND, "tickets", None)
    if tickets and all(t is not None and t.cancelled for t in tickets):
        raise Cancelled("every request of the round was cancelled")


@dataclass
class _Request(Generic[T, R]):
    items: Sequence[T]
    ticket: Ticket | None
    event: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    result: list[R] | None = None
    error: BaseException | None = None


@dataclass
class RoundStats:
    """What the rounds so far held: how many, requests and items in all, the largest."""

    rounds: int = 0
    requests: int = 0
    items: int = 0
    largest: int = 0


class Combiner(Generic[T, R]):
    """Runs ``run(items) -> results`` (one result per item, in order) for concurrent callers,
    combining the requests that wait into one call, in one model thread (see the module docstring)."""

    idle_s = 2.0  # the model thread ends after this long without requests (and starts again on demand)

    def __init__(self, run: Callable[[list[T]], list[R]], *, max_items: int = 512, max_wait_ms: float = 0.0,
                 on_round: Callable[[int, int], None] | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be positive, got {max_items}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run = run
        self.max_items = max_items
        self.max_wait_ms = max_wait_ms
        self.on_round = on_round  # (requests, items) of each round, for a server's metrics
        self.stats = RoundStats()
        self._cv = threading.Condition()
        self._queue: deque[_Request[T, R]] = deque()
        self._worker: threading.Thread | None = None
        self._last_round = 0
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """A forked child has none of its parent's threads: start afresh (its own lock, queue, model thread)."""
        self._cv = threading.Condition()
        self._queue = deque()
        self._worker = None
        self._pid = os.getpid()

    @property
    def waiting(self) -> int:
        """Requests queued and not yet running."""
        return len(self._queue)

    def submit(self, items: Sequence[T]) -> list[R]:
        """``run``'s results for ``items``, computed with whatever other requests wait beside them."""
        if not items:
            return []
        ticket = _TICKET.get()
        if ticket is not None and ticket.cancelled:
            raise Cancelled("the request was cancelled")
        req: _Request[T, R] = _Request(items, ticket)
        if self._pid != os.getpid():
            self._after_fork()
        with self._cv:
            self._queue.append(req)
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="rerank-model", daemon=True)
                self._worker.start()
            self._cv.notify_all()
        if ticket is not None:
            ticket.on_cancel(req.event.set)  # wakes the caller, which finds its request not finished
        req.event.wait()
        if not req.finished:
            with self._cv, contextlib.suppress(ValueError):
                self._queue.remove(req)  # not run yet: dropped; running: its result is not waited for
            raise Cancelled("the request was cancelled")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _serve(self) -> None:
        """The model thread: rounds while requests come, gone after ``idle_s`` without any."""
        while True:
            with self._cv:
                while not self._queue:
                    if not self._cv.wait(self.idle_s) and not self._queue:
                        self._worker = None
                        return
                batch, size = self._take()
            if batch:
                try:
                    self._run_round(batch, size)
                finally:
                    for r in batch:
                        r.finished = True
                        r.event.set()

    def _take(self) -> tuple[list[_Request[T, R]], int]:
        """The requests of the next round (lock held), after ``max_wait_ms`` for company when the
        last round had it."""
        if self.max_wait_ms and self._last_round > 1:
            deadline = time.monotonic() + self.max_wait_ms / 1000
            while sum(len(r.items) for r in self._queue) < self.max_items and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
        batch: list[_Request[T, R]] = []
        size = 0
        while self._queue:
            nxt = self._queue[0]
            if nxt.ticket is not None and nxt.ticket.cancelled:
                self._queue.popleft()  # its caller raises Cancelled when it looks
                continue
            if batch and size + len(nxt.items) > self.max_items:
                break
            batch.append(self._queue.popleft())
            size += len(nxt.items)
        self._last_round = len(batch)
        return batch, size

    def _run_round(self, batch: list[_Request[T, R]], size: int) -> None:
        stats = self.stats
        stats.rounds += 1
        stats.requests += len(batch)
        stats.items += size
        stats.largest = max(stats.largest, size)
        if self.on_round is not None:
            self.on_round(len(batch), size)
        _ROUND.tickets = [r.ticket for r in batch]
        try:
            out = self.run([x for r in batch for x in r.items])
            if len(out) != size:
                raise RerankError(f"a batched call returned {len(out)} results for {size} items")
        except BaseException as e:  # noqa: BLE001 - delivered to the callers
            if len(batch) == 1 or isinstance(e, Cancelled):  # cancelled: every caller has gone
                for r in batch:
                    r.error = e
                return
            for r in batch:  # alone, each request gets its own result or its own error
                _ROUND.tickets = [r.ticket]
                try:
                    r.result = self.run(list(r.items))
                except BaseException as own:  # noqa: BLE001
                    r.error = own
            return
        finally:
            _ROUND.tickets = None
        a = 0
        for r in batch:
            r.result = out[a : a + len(r.items)]
            a += len(r.items)
