"""Hosted rerankers behind an HTTP API, as pointwise stages: ``api:cohere:rerank-v3.5``,
``api:jina:jina-reranker-v2-base-multilingual``, ``api:voyage:rerank-2``, or ``api:URL`` for any
Cohere- or TEI-shaped ``/rerank`` (text-embeddings-inference, infinity, ``rerank serve``).

* Keys come from the environment (``COHERE_API_KEY``/``CO_API_KEY``, ``JINA_API_KEY``,
  ``VOYAGE_API_KEY``; ``RERANK_API_KEY`` for a URL, optional); a missing one is an error before
  any request.
* A query's documents are split into requests within the provider's limits (documents per
  request, and characters per request where the provider limits tokens).
* 429 and 5xx answers (and dropped connections) are retried with exponential backoff, honouring
  ``Retry-After``; 401/403 and 400/422 are one-line errors naming the provider and its message.
* For a URL, the request shape is found out once: Cohere's ``{query, documents}`` first, and
  TEI's ``{query, texts}`` when the server answers 422 (a missing field).
* The run's cost counts documents (``model_calls``), requests (``batches``) and the tokens the
  provider reports; scores are cached like any reranker's (``cache=``).
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import MissingDependency, RerankError
from ..models.engine import Cost, finite_scores
from .base import Reranker

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Provider:
    name: str
    url: str
    keys: tuple[str, ...]  # environment variables holding the key, first found wins
    shape: str  # "cohere" (query, documents -> results), "voyage" (-> data), "tei" (query, texts -> list)
    max_docs: int
    max_chars: int = 0  # per request (0: no limit); a provider that limits tokens gets ~4 characters a token


PROVIDERS = {
    "cohere": Provider("cohere", "https://api.cohere.com/v2/rerank", ("COHERE_API_KEY", "CO_API_KEY"), "cohere", 1000),
    "jina": Provider("jina", "https://api.jina.ai/v1/rerank", ("JINA_API_KEY",), "cohere", 1000),
    "voyage": Provider("voyage", "https://api.voyageai.com/v1/rerank", ("VOYAGE_API_KEY",), "voyage", 1000, 1_000_000),
}
#: a server given by URL: Cohere-shaped until it asks for TEI's shape; TEI takes 32 texts a request by default
URL_KEYS = ("RERANK_API_KEY",)
TEI_MAX_DOCS = 32


@dataclass
class APICost(Cost):
    """:class:`Cost` of a hosted reranker: documents sent (``calls``), requests (``batches``), retries."""

    unit: ClassVar[str] = "documents"
    retries: int = 0

    def as_dict(self) -> dict[str, float]:
        return {**super().as_dict(), "requests": self.batches, "retries": self.retries}


def retry_after(headers: Any, attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the answer's ``Retry-After`` (seconds or
    an HTTP date) when it gives one, else exponential backoff with jitter."""
    value = (headers.get("retry-after") or "").strip() if headers is not None else ""
    if value:
        try:
            return min(cap, max(0.0, float(value)))
        except ValueError:
            pass
        try:
            return min(cap, max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time()))
        except (TypeError, ValueError):
            pass  # neither seconds nor a date: back off as without one
    return min(cap, base * 2**attempt) * (0.5 + random.random() / 2)


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise MissingDependency("hosted rerankers (api:...)", "serve", "httpx") from None
    return httpx


def _message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:200]
    return str(body)[:200]


class API(Reranker):
    """A hosted reranker: ``API("cohere:rerank-v3.5")``, ``API("http://127.0.0.1:8080")``."""

    kind = "api"
    family = "pointwise"
    spec_arg = "cohere|jina|voyage:MODEL or URL"
    spec_help = "a hosted reranker (Cohere, Jina, Voyage) or any Cohere-/TEI-shaped /rerank URL (TEI, infinity, rerank serve)"
    spec_options: ClassVar[tuple[str, ...]] = ("depth", "block", "cache")
    backoff = 0.5  # seconds before the first retry (doubled each time) when the server gives no Retry-After

    def __init__(self, target: str, *, depth: int = 100, cache: Any = None, url: str | None = None, api_key: str | None = None,
                 retries: int = 5, timeout: float = 60.0, concurrency: int = 4) -> None:
        super().__init__(depth=depth, cache=cache)
        provider, _, model = target.partition(":")
        if target.startswith(("http://", "https://")):
            root = target.rstrip("/")
            self.provider = Provider("url", root if root.endswith("/rerank") else f"{root}/rerank", URL_KEYS, "cohere", 1000)
            self.model = ""
        elif provider in PROVIDERS and model:
            self.provider, self.model = PROVIDERS[provider], model
        else:
            raise RerankError(f"api:{target}: give cohere:MODEL, jina:MODEL, voyage:MODEL or a URL (http://HOST:PORT)")
        self.url = url or self.provider.url
        key = api_key or next((os.environ[k] for k in self.provider.keys if os.environ.get(k)), None)
        if key is None and self.provider.name != "url":
            raise RerankError(f"api:{target} needs an API key: set {' or '.join(self.provider.keys)}")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retries, self.timeout, self.concurrency = retries, timeout, max(1, concurrency)
        self.name = f"api:{target}"
        self.model_key = f"api|{self.provider.name}|{self.model}|{self.url}"
        self._cost = APICost()
        self._lock = threading.Lock()
        self._client: Any = None

    @property
    def cost(self) -> APICost:
        return self._cost

    # ------------------------------------------------------------ requests
    def _requests(self, docs: Sequence[str]) -> list[list[int]]:
        """Document indices cut into requests within the provider's limits."""
        limit = TEI_MAX_DOCS if self.provider.shape == "tei" else self.provider.max_docs
        out: list[list[int]] = []
        cur: list[int] = []
        chars = 0
        for i, d in enumerate(docs):
            if cur and (len(cur) >= limit or (self.provider.max_chars and chars + len(d) > self.provider.max_chars)):
                out.append(cur)
                cur, chars = [], 0
            cur.append(i)
            chars += len(d)
        if cur:
            out.append(cur)
        return out

    def _body(self, query: str, docs: list[str]) -> dict[str, Any]:
        if self.provider.shape == "tei":
            return {"query": query, "texts": docs, "raw_scores": False, "return_text": False}
        body: dict[str, Any] = {"query": query, "documents": docs}
        if self.model:
            body["model"] = self.model
        if self.provider.name in ("cohere", "jina", "url"):
            body["top_n"] = len(docs)
        if self.provider.name == "jina":
            body["return_documents"] = False
        if self.provider.name == "voyage":
            body["truncation"] = True
        return body

    def _parse(self, answer: Any, n: int) -> tuple[list[float], int]:
        """Scores in document order, and the tokens the provider says it used."""
        usage: Any = {}
        if isinstance(answer, list):
            rows, key = answer, "score"
        elif isinstance(answer, dict) and isinstance(answer.get("results"), list):
            rows, key = answer["results"], "relevance_score"
            usage = answer.get("usage") or (answer.get("meta") or {}).get("billed_units") or {}
        elif isinstance(answer, dict) and isinstance(answer.get("data"), list):
            rows, key, usage = answer["data"], "relevance_score", answer.get("usage") or {}
        else:
            raise RerankError(f"{self.name}: unexpected answer from {self.url}: {str(answer)[:120]}")
        scores: list[float | None] = [None] * n
        for row in rows:
            try:
                scores[int(row["index"])] = float(row[key])
            except (KeyError, IndexError, TypeError, ValueError):
                raise RerankError(f"{self.name}: unexpected result from {self.url}: {str(row)[:120]}") from None
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            raise RerankError(f"{self.name}: {self.url} returned no score for {len(missing)} of {n} documents")
        tokens = (usage.get("total_tokens") or usage.get("search_units") or 0) if isinstance(usage, dict) else 0
        return [float(s) for s in scores if s is not None], int(tokens or 0)

    def _post(self, query: str, docs: list[str]) -> list[float]:
        """One request, retried on 429/5xx and dropped connections."""
        httpx = _httpx()
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
        for attempt in range(self.retries + 1):
            shape = self.provider.shape
            try:
                response = self._client.post(self.url, json=self._body(query, docs))
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise RerankError(f"{self.name}: cannot reach {self.url} ({type(e).__name__}) after "
                                      f"{self.retries + 1} tries") from None
                self._count(retries=1)
                time.sleep(retry_after(None, attempt, self.backoff))
                continue
            status = response.status_code
            if status == 200:
                scores, tokens = self._parse(response.json(), len(docs))
                self._count(calls=len(docs), batches=1, tokens=tokens)
                return scores
            if status == 422 and self.provider.name == "url" and shape == "cohere" and (
                    "texts" in _message(response) or "unknown field" in _message(response)):
                with self._lock:  # a TEI server: it wants {query, texts}
                    self.provider = Provider("url", self.provider.url, URL_KEYS, "tei", TEI_MAX_DOCS)
                return [s for part in self._requests(docs) for s in self._post(query, [docs[i] for i in part])]
            if status in (401, 403):
                raise RerankError(f"{self.name}: {self.url} refused the API key ({status}: {_message(response)}); "
                                  f"check {' or '.join(self.provider.keys)}")
            if status not in RETRY_STATUSES or attempt == self.retries:
                raise RerankError(f"{self.name}: {self.url} answered {status}: {_message(response)}")
            self._count(retries=1)
            time.sleep(retry_after(response.headers, attempt, self.backoff))
        raise AssertionError("unreachable")

    def _count(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self._cost, k, getattr(self._cost, k) + v)

    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        t0 = time.perf_counter()
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            by_query.setdefault(q, []).append(i)
        jobs = []
        for q, idx in by_query.items():
            for part in self._requests([pairs[i][1] for i in idx]):
                jobs.append((q, [idx[j] for j in part]))
        scores: list[float] = [0.0] * len(pairs)

        def one(job: tuple[str, list[int]]) -> None:
            q, idx = job
            for i, s in zip(idx, self._post(q, [pairs[i][1] for i in idx]), strict=True):
                scores[i] = s

        if len(jobs) == 1 or self.concurrency == 1:
            for job in jobs:
                one(job)
        else:
            with ThreadPoolExecutor(self.concurrency) as pool:
                list(pool.map(one, jobs))
        self._cost.seconds += time.perf_counter() - t0
        return finite_scores(scores, self.name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
