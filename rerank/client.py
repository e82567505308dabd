"""A small HTTP client for ``rerank serve`` (or any Cohere-shaped ``/v2/rerank``), with the same
``rank`` / ``arank`` as a local :class:`~rerank.Reranker`, so the adapters take either.

    from rerank.client import Client
    Client("http://127.0.0.1:8000").rank("query", ["doc a", "doc b"], top_k=1)

Needs httpx (extra ``serve``). 429 and 503 answers are retried, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from .errors import MissingDependency, RerankError
from .rerankers.api import retry_after
from .rerankers.base import RankedDoc, _rank_items

RETRY_STATUSES = (429, 502, 503)


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise MissingDependency("the rerank client", "serve", "httpx") from None
    return httpx


class Client:
    """``rank(query, docs, top_k)`` answered by a server at ``url`` (its ``/v2/rerank``); the scores
    are the server's ``relevance_score``, in [0, 1] (a local reranker's are its own raw scores)."""

    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None, timeout: float = 60.0,
                 retries: int = 3) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.name = f"client:{self.url}"
        self._sync: Any = None

    def _payload(self, query: str, texts: list[str], top_k: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "documents": texts}
        if top_k is not None:
            body["top_n"] = top_k
        if self.model:
            body["model"] = self.model
        return body

    @staticmethod
    def _wait(response: Any, attempt: int) -> float:
        return retry_after(response.headers, attempt, base=0.25, cap=8.0)

    def _ranked(self, response: Any, items: list[tuple[str, str | None, Any]]) -> list[RankedDoc]:
        if response.status_code != 200:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise RerankError(f"{self.url} answered {response.status_code}: {message}")
        out = []
        for r in response.json()["results"]:
            i = int(r["index"])
            out.append(RankedDoc(i, float(r["relevance_score"]), *items[i]))
        return out

    def rank(self, query: str, docs: Sequence[Any], top_k: int | None = None) -> list[RankedDoc]:
        """``docs`` ranked by the server for ``query``, best first (``top_k`` of them when given)."""
        httpx = _httpx()
        items = _rank_items(query, docs, top_k)
        if not items:
            return []
        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout, headers=self.headers)
        body = self._payload(query, [t for t, _, _ in items], top_k)
        for attempt in range(self.retries + 1):
            response = self._sync.post(f"{self.url}/v2/rerank", json=body)
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                break
            time.sleep(self._wait(response, attempt))
        return self._ranked(response, items)

    async def arank(self, query: str, docs: Sequence[Any], top_k: int | None = None) -> list[RankedDoc]:
        """``rank`` without blocking the event loop."""
        httpx = _httpx()
        items = _rank_items(query, docs, top_k)
        if not items:
            return []
        body = self._payload(query, [t for t, _, _ in items], top_k)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            for attempt in range(self.retries + 1):
                response = await client.post(f"{self.url}/v2/rerank", json=body)
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    break
                await asyncio.sleep(self._wait(response, attempt))
        return self._ranked(response, items)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None


def resolve(reranker: Any) -> Any:
    """What the adapters rank with: a server URL becomes a :class:`Client`, a spec string a local
    reranker (``cross-encoder:MODEL``), and anything with ``rank`` is used as it is."""
    if isinstance(reranker, str):
        if reranker.startswith(("http://", "https://")):
            return Client(reranker)
        from .rerankers import make_reranker

        return make_reranker(reranker)
    if not callable(getattr(reranker, "rank", None)):
        raise TypeError(f"expected a Reranker, a Client, a server URL or a reranker spec, got {type(reranker).__name__}")
    return reranker
