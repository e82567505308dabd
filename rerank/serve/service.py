"""The model side of the server: checked requests in, ranked results out, on the reranker's
:class:`~rerank.models.batching.Combiner` from worker threads (no HTTP here)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..models.batching import Cancelled, Ticket
from ..types import Query
from .limits import Limits
from .problems import HTTPProblem
from .scores import Scores

if TYPE_CHECKING:
    from ..rerankers.base import RankedDoc, Reranker
    from ..types import Stage


class Service:
    """The model side of the server: checked requests in, ranked results out (no HTTP here, so the
    adapters' tests and the server share it)."""

    def __init__(self, reranker: Reranker, *, first_stage: Stage | None = None, limits: Limits | None = None,
                 model_name: str | None = None) -> None:
        self.reranker = reranker
        self.first_stage = first_stage
        self.limits = limits or Limits()
        self.model_name = model_name or reranker.name
        self.pool = ThreadPoolExecutor(self.limits.threads, thread_name_prefix="rerank-serve")
        self.inflight = 0
        self.ready = False
        self.stopping = asyncio.Event()  # set on SIGTERM/SIGINT: bodies still arriving are refused
        self.scores = Scores.of(reranker)
        self._first_lock = asyncio.Lock()
        tok = getattr(reranker, "tokenizer", None)
        self.tokenizer = tok if getattr(tok, "is_fast", False) else None
        self.window = int(getattr(reranker, "window", 0) or 0)

    def warm_up(self) -> None:
        self.reranker.rank("warm up", ["a passage"])
        self.ready = True

    def _measure(self, query: str, texts: list[str], max_tokens: int | None) -> tuple[list[str], dict[str, int]]:
        """Texts cut to ``max_tokens`` tokens each (Cohere's ``max_tokens_per_doc``) and the counts
        for ``meta``: input tokens, and documents the model's window cuts."""
        if self.tokenizer is None or not texts:
            return texts, {}
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=max_tokens is not None,
                             return_attention_mask=False, return_token_type_ids=False)
        ids = enc["input_ids"]
        cut_by_request = 0
        if max_tokens is not None:
            out = []
            for t, row, offsets in zip(texts, ids, enc["offset_mapping"], strict=True):
                if len(row) > max_tokens:
                    cut_by_request += 1
                    t = t[: offsets[max_tokens - 1][1]]
                out.append(t)
            texts = out
            ids = [row[:max_tokens] for row in ids]
        qlen = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        room = self.window - qlen - 4 if self.window else math.inf
        return texts, {"input_tokens": qlen * len(ids) + sum(map(len, ids)),
                       "truncated_to_max_tokens": cut_by_request,
                       "truncated_to_model_window": sum(len(r) > room for r in ids)}

    async def _call(self, fn: Callable[[], Any], disconnected: Callable[[], Awaitable[Any]] | None) -> Any:
        """``fn()`` in a worker thread under a ticket: cancelled when the client goes away (None) or
        the timeout passes (504)."""
        ticket = Ticket()

        def work() -> Any:
            with ticket:
                return fn()

        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self.pool, work)
        watch = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            done, _ = await asyncio.wait({job, watch} if watch else {job}, timeout=self.limits.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watch is not None and not watch.done():
                watch.cancel()
        if job in done:
            try:
                return job.result()
            except Cancelled:
                raise HTTPProblem(499, "the client went away", "Cancelled") from None
        ticket.cancel()
        job.add_done_callback(lambda f: f.exception())  # a late result is dropped quietly
        if watch is not None and watch in done:
            raise HTTPProblem(499, "the client went away", "Cancelled")
        raise HTTPProblem(504, f"the request took longer than {self.limits.timeout_s:g} s and was dropped", "Timeout")

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """A request counted as in progress, or refused: 503 while loading, 429 at ``max_queue``."""
        if not self.ready:
            raise HTTPProblem(503, "the model is still loading", "Unavailable", {"Retry-After": "1"})
        if self.inflight >= self.limits.max_queue:
            raise HTTPProblem(429, f"the server is at its limit of {self.limits.max_queue} requests in progress; retry",
                              "Overloaded", {"Retry-After": "1"})
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def rank(self, query: str, texts: list[str], max_tokens: int | None = None,
                   disconnected: Callable[[], Awaitable[Any]] | None = None) -> tuple[list[RankedDoc], dict[str, int]]:
        def fn() -> tuple[list[RankedDoc], dict[str, int]]:
            cut, counts = self._measure(query, texts, max_tokens)
            return self.reranker.rank(query, cut), counts

        with self._admitted():
            return await self._call(fn, disconnected)  # type: ignore[no-any-return]

    async def search(self, query: str, top_n: int,
                     disconnected: Callable[[], Awaitable[Any]] | None = None) -> list[dict[str, Any]]:
        if self.first_stage is None:
            raise HTTPProblem(404, "no collection is loaded: start the server with --pipeline and --dataset", "NotFound")
        with self._admitted():
            async with self._first_lock:  # first stages are fast and not all of them are thread-safe
                ranking = await asyncio.get_running_loop().run_in_executor(self.pool, self.first_stage, [Query("q", query)])
            hits = ranking.get("q", [])[: self.reranker.depth]
            ranked = await self._call(lambda: self.reranker.rank(query, [h.text or "" for h in hits], top_n), disconnected)
            return [{"id": hits[r.index].docid, "text": r.text, "score": r.score, "rank": i + 1}
                    for i, r in enumerate(ranked)]
