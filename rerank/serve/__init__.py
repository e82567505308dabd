"""``rerank serve``: a reranker over HTTP for RAG apps (FastAPI + uvicorn, extra ``serve``).

Endpoints (see :func:`create_app`):

* ``POST /v1/rerank``, ``POST /v2/rerank``: Cohere's shape (also infinity's, vLLM's, LiteLLM's);
* ``POST /rerank``: text-embeddings-inference's shape;
* ``POST /v1/search``: retrieve then rerank, when a first stage and a collection are loaded;
* ``GET /health`` (200 once the model has answered a warm-up call), ``GET /metrics`` (Prometheus).

Requests run in worker threads on the reranker's :class:`~rerank.models.batching.Combiner`, so
concurrent requests share model batches. A bounded number of requests is accepted at once (more
get 429 with ``Retry-After``); one that outlives ``timeout_s`` gets 504 and its pairs are dropped
if they have not run; so are those of a client that disconnects. Bad input gets a 4xx whose
``message`` names the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DataError, MissingDependency, RerankError
from ..models.batching import Cancelled, Ticket
from ..rerankers.base import _valid_text
from ..types import Query

if TYPE_CHECKING:
    from ..rerankers.base import RankedDoc, Reranker
    from ..types import Stage

log = logging.getLogger("rerank")


def require_serve() -> None:
    """FastAPI and uvicorn, or the one-line hint that installs them."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependency("rerank serve", "serve", e.name or "fastapi") from None


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how many the server takes at once."""

    max_documents: int = 1000
    max_request_bytes: int = 8 * 1024 * 1024
    max_query_chars: int = 32_768
    max_document_chars: int = 1_000_000
    max_queue: int = 256  # requests accepted and not yet answered; more get 429
    timeout_s: float = 60.0
    threads: int = 64  # worker threads waiting on the model: how many requests can share one round


class HTTPProblem(Exception):
    """A request refused: its status, one line naming the problem, and extra headers."""

    def __init__(self, status: int, message: str, kind: str = "Validation", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


# ---------------------------------------------------------------- request checking
def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HTTPProblem(422, "the request body must be a JSON object")
    return body


def _fields(body: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise HTTPProblem(422, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                               f"this endpoint takes {', '.join(sorted(allowed))}")
    missing = sorted(required - set(body))
    if missing:
        raise HTTPProblem(422, f"missing field {missing[0]!r}")


def _query(body: dict[str, Any], limits: Limits) -> str:
    q = body["query"]
    if not isinstance(q, str):
        raise HTTPProblem(422, f"query must be a string, got {type(q).__name__}")
    if not q.strip():
        raise HTTPProblem(422, "query is empty")
    if len(q) > limits.max_query_chars:
        raise HTTPProblem(422, f"query has {len(q)} characters; the limit is {limits.max_query_chars}")
    return _valid_text(q, "query")


def _texts(docs: Any, field: str, limits: Limits, objects: bool) -> list[str]:
    if not isinstance(docs, list):
        raise HTTPProblem(422, f"{field} must be a list")
    if len(docs) > limits.max_documents:
        raise HTTPProblem(422, f"{field} has {len(docs)} entries; the limit is {limits.max_documents} per request")
    out = []
    for i, d in enumerate(docs):
        if objects and isinstance(d, dict):
            d = d.get("text")
            if not isinstance(d, str):
                raise HTTPProblem(422, f"{field}[{i}] is an object without a string 'text'")
        if not isinstance(d, str):
            kinds = "a string or an object with 'text'" if objects else "a string"
            raise HTTPProblem(422, f"{field}[{i}] must be {kinds}, got {type(d).__name__}")
        if len(d) > limits.max_document_chars:
            raise HTTPProblem(422, f"{field}[{i}] has {len(d)} characters; the limit is {limits.max_document_chars}")
        out.append(_valid_text(d, f"{field}[{i}]"))
    return out


def _positive(body: dict[str, Any], name: str, default: int | None) -> int | None:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise HTTPProblem(422, f"{name} must be a positive integer, got {v!r}")
    return v


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    v = body.get(name, default)
    if not isinstance(v, bool):
        raise HTTPProblem(422, f"{name} must be true or false, got {v!r}")
    return v


# ---------------------------------------------------------------- the service
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


# ---------------------------------------------------------------- metrics
class _Metrics:
    def __init__(self, service: Service) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
        from prometheus_client.core import CounterMetricFamily

        disable_created_metrics()  # no *_created series beside every counter

        self.registry = CollectorRegistry()
        self.requests = Counter("rerank_requests", "Requests by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("rerank_request_seconds", "Request latency", ["endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        Gauge("rerank_queue_depth", "Requests accepted and not yet answered", registry=self.registry
              ).set_function(lambda: service.inflight)
        Gauge("rerank_waiting_requests", "Requests waiting for the model", registry=self.registry
              ).set_function(lambda: service.reranker.combiner.waiting)
        self.batch = Histogram("rerank_batch_items", "Items (pairs or lists) per combined model round", registry=self.registry,
                               buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
        self.batch_requests = Histogram("rerank_batch_requests", "Requests per combined model round", registry=self.registry,
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        def on_round(requests: int, items: int) -> None:
            self.batch.observe(items)
            self.batch_requests.observe(requests)

        service.reranker.combiner.on_round = on_round
        cost = service.reranker.cost

        class _Cost:
            def collect(self) -> Any:
                yield CounterMetricFamily("rerank_items_scored", f"Model items run ({cost.unit})", value=cost.calls)
                yield CounterMetricFamily("rerank_tokens_scored", "Tokens fed to the model", value=cost.tokens)
                yield CounterMetricFamily("rerank_model_seconds", "Seconds spent in the model", value=cost.seconds)

        self.registry.register(_Cost())  # type: ignore[arg-type]


# ---------------------------------------------------------------- the app
def create_app(service: Service, *, api_key: str | None = None) -> Any:
    """The FastAPI app over ``service``. ``api_key``: every endpoint but /health needs
    ``Authorization: Bearer <key>`` (compared in constant time)."""
    require_serve()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics = _Metrics(service)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await asyncio.get_running_loop().run_in_executor(service.pool, service.warm_up)
        log.info("serving %s", service.model_name)
        yield
        service.pool.shutdown(wait=True)

    app = FastAPI(title="rerank", version=_version(), lifespan=lifespan,
                  description="Rerank documents for a query (Cohere- and TEI-shaped), search a loaded collection.")

    def problem(p: HTTPProblem) -> Any:
        return JSONResponse({"message": p.message, "error": p.message, "error_type": p.kind}, status_code=p.status,
                            headers=p.headers)

    def check_key(request: Request) -> None:
        """Every endpoint but /health: the bearer key, compared in constant time."""
        if api_key is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(),
                                                           f"Bearer {api_key}".encode()):
            raise HTTPProblem(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "Unauthorized",
                              {"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> dict[str, Any]:
        check_key(request)
        declared = request.headers.get("content-length")
        limit = service.limits.max_request_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPProblem(413, f"the request has {declared} bytes; the limit is {limit}", "PayloadTooLarge")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPProblem(413, f"the request is over the limit of {limit} bytes", "PayloadTooLarge")
        try:
            return _object(json.loads(body))
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPProblem(400, f"the request body is not valid JSON ({e})") from None

    def endpoint(name: str, handler: Callable[[dict[str, Any], Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
        async def route(request: Request) -> Any:
            t0 = time.perf_counter()
            status = 200
            try:
                out = await handler(await read_json(request), request)
                return JSONResponse(out)
            except HTTPProblem as p:
                status = p.status
                return problem(p)
            except (DataError, ValueError) as e:
                status = 422
                return problem(HTTPProblem(422, str(e)))
            except RerankError as e:
                status = 500
                log.error("%s: %s", name, e)
                return problem(HTTPProblem(500, str(e), "Internal"))
            finally:
                metrics.requests.labels(name, str(status)).inc()
                metrics.latency.labels(name).observe(time.perf_counter() - t0)
        route.__name__ = name.strip("/").replace("/", "_")
        route.__annotations__ = {"request": Request, "return": Any}  # FastAPI reads these; the module's are strings
        return route

    async def cohere(body: dict[str, Any], request: Request, version: str) -> dict[str, Any]:
        # Cohere's fields; model and priority are accepted and ignored (one model is served)
        _fields(body, {"model", "query", "documents", "top_n", "return_documents", "max_tokens_per_doc", "priority"},
                {"query", "documents"})
        query = _query(body, service.limits)
        texts = _texts(body["documents"], "documents", service.limits, objects=True)
        top_n = _positive(body, "top_n", None)
        max_tokens = _positive(body, "max_tokens_per_doc", None)
        return_documents = _flag(body, "return_documents", version == "1")  # Cohere: v1 returns them by default, v2 not
        ranked, counts = await service.rank(query, texts, max_tokens, request.receive)
        results = []
        for r in ranked[:top_n]:
            item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
            if return_documents:
                item["document"] = {"text": texts[r.index]}
            results.append(item)
        meta: dict[str, Any] = {"api_version": {"version": version}, "billed_units": {"search_units": 1}}
        if counts:
            meta["tokens"] = {"input_tokens": counts["input_tokens"], "output_tokens": 0}
            meta["truncated"] = {k: counts[k] for k in ("truncated_to_max_tokens", "truncated_to_model_window")}
        return {"id": str(uuid.uuid4()), "results": results, "meta": meta}

    async def v1(body: dict[str, Any], request: Request) -> Any:
        return await cohere(body, request, "1")

    async def v2(body: dict[str, Any], request: Request) -> Any:
        return await cohere(body, request, "2")

    async def tei(body: dict[str, Any], request: Request) -> Any:
        _fields(body, {"query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction"}, {"query", "texts"})
        query = _query(body, service.limits)
        texts = _texts(body["texts"], "texts", service.limits, objects=False)
        raw = _flag(body, "raw_scores", False)
        return_text = _flag(body, "return_text", False)
        _flag(body, "truncate", False)  # documents are always cut to the model's window (from their end)
        if body.get("truncation_direction", "Right") not in ("Right", "right"):
            raise HTTPProblem(422, "truncation_direction: only 'Right' (documents lose their end)")
        ranked, _ = await service.rank(query, texts, None, request.receive)
        logit = raw and getattr(service.reranker, "activation", None) == "sigmoid"
        out = []
        for r in ranked:
            score = math.log(max(r.score, 1e-12) / max(1 - r.score, 1e-12)) if logit else r.score
            item: dict[str, Any] = {"index": r.index, "score": score}
            if return_text:
                item["text"] = texts[r.index]
            out.append(item)
        return out

    async def search(body: dict[str, Any], request: Request) -> Any:
        _fields(body, {"query", "top_n"}, {"query"})
        query = _query(body, service.limits)
        top_n = _positive(body, "top_n", 10)
        assert top_n is not None
        return {"results": await service.search(query, top_n, request.receive)}

    for path, handler in (("/v1/rerank", v1), ("/v2/rerank", v2), ("/rerank", tei), ("/v1/search", search)):
        app.add_api_route(path, endpoint(path, handler), methods=["POST"], summary=_SUMMARIES[path][0],
                          openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                              "schema": _SUMMARIES[path][1]}}}})

    @app.get("/health", summary="200 once the model is loaded and has answered; 503 before")
    async def health() -> Any:
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": service.model_name}

    async def prometheus(request: Request) -> Any:
        try:
            check_key(request)
        except HTTPProblem as p:
            return problem(p)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    prometheus.__annotations__ = {"request": Request, "return": Any}
    app.add_api_route("/metrics", prometheus, methods=["GET"], summary="Prometheus metrics")

    app.state.service = service
    return app


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "additionalProperties": False, "properties": props}


_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer", "minimum": 1}, {"type": "boolean"}
_DOCS = {"type": "array", "items": {"oneOf": [_STR, _obj(["text"], text=_STR)]}}
_COHERE = _obj(["query", "documents"], model=_STR, query=_STR, documents=_DOCS, top_n=_INT, return_documents=_BOOL,
               max_tokens_per_doc=_INT)
_SUMMARIES: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/rerank": ("Cohere v1 rerank: {query, documents, top_n?, return_documents?} -> {id, results, meta}", _COHERE),
    "/v2/rerank": ("Cohere v2 rerank: {model?, query, documents, top_n?, return_documents?, max_tokens_per_doc?}", _COHERE),
    "/rerank": ("text-embeddings-inference rerank: {query, texts, raw_scores?, return_text?} -> [{index, score, text?}]",
                _obj(["query", "texts"], query=_STR, texts={"type": "array", "items": _STR}, raw_scores=_BOOL,
                     return_text=_BOOL, truncate=_BOOL, truncation_direction={"enum": ["Right"]})),
    "/v1/search": ("Retrieve from the loaded collection, then rerank: {query, top_n?} -> {results: [{id, text, score, rank}]}",
                   _obj(["query"], query=_STR, top_n=_INT)),
}


def _version() -> str:
    from .. import __version__

    return __version__


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log_level: str = "info") -> None:
    """Run the server until SIGTERM/SIGINT: it then stops accepting, finishes what it accepted, returns."""
    require_serve()
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    app = create_app(service, api_key=api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=None)

    class Server(uvicorn.Server):
        """uvicorn's server, except that a SIGTERM/SIGINT that it has handled gracefully (stop
        accepting, answer what was accepted) ends the process normally (exit 0) instead of being
        raised again after the shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", None)
                if captured:
                    log.info("stopped by signal %s after answering every accepted request", captured[0])
                    captured.clear()

    server = Server(config)
    server.run()
    if not server.started:
        raise RerankError(f"could not serve on {host}:{port} (is the port in use?)")
