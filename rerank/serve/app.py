"""The FastAPI app: the endpoints over a :class:`.Service`, their checks and their answers."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import DataError, RerankError
from . import problems
from .body import ClientGone, check_key, parse_json, read_body
from .metrics import Counted, Metrics
from .problems import HTTPProblem
from .requests import CohereRequest, SearchRequest, TEIRequest
from .service import Service

log = logging.getLogger("rerank")

ENDPOINTS = {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/search"}


def create_app(service: Service, *, api_key: str | None = None) -> Any:
    """The FastAPI app over ``service``. ``api_key``: the endpoints that run the model and /metrics
    need ``Authorization: Bearer <key>`` (scheme in any case, key compared in constant time);
    /health, /docs, /redoc, /openapi.json and the docs' assets stay open: they describe the API and
    hold no data, and a browser cannot send the key to load a page."""
    limits = service.limits
    metrics = Metrics(service)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await asyncio.get_running_loop().run_in_executor(service.pool, service.warm_up)
        log.info("serving %s; relevance scores: %s", service.model_name, service.scores.what)
        yield
        service.pool.shutdown(wait=True)

    app = FastAPIOffline(title="rerank", version=_version(), lifespan=lifespan,
                         description="Rerank documents for a query (Cohere- and TEI-shaped), search a loaded collection.")
    problems.install(app)
    app.add_middleware(Counted, metrics=metrics, endpoints=ENDPOINTS)
    bearer = [Depends(HTTPBearer(auto_error=False))] if api_key is not None else []  # for the schema: Swagger's Authorize

    class Checked(APIRoute):
        """A route whose key, and body (size, arrival time, encoding, nesting), are checked before
        FastAPI parses and validates it."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    check_key(request.headers.get("authorization"), api_key)
                    if request.method == "POST":
                        body = await read_body(request.headers, request.receive, limits, service.stopping)
                        data = parse_json(body, limits)
                        request = Request({**request.scope, "headers": [
                            *(h for h in request.scope["headers"] if h[0] != b"content-type"),
                            (b"content-type", b"application/json")]}, request.receive)  # the body is JSON, however labelled
                        request._body, request._json = body, data
                    return await handler(request)
                except HTTPProblem as p:
                    return problems.response(p)
                except ClientGone:
                    return problems.response(HTTPProblem(499, "the client went away", "Cancelled"))
                except (DataError, ValueError) as e:
                    return problems.response(HTTPProblem(422, str(e)))
                except RerankError as e:
                    log.error("%s: %s", request.url.path, e)
                    return problems.response(HTTPProblem(500, str(e), "Internal"))

            return route

    def check(texts: list[str], field: str, query: str) -> None:
        """The server's own limits, beyond the request's types."""
        if len(query) > limits.max_query_chars:
            raise HTTPProblem(422, f"query has {len(query)} characters; the limit is {limits.max_query_chars}")
        if len(texts) > limits.max_documents:
            raise HTTPProblem(422, f"{field} has {len(texts)} entries; the limit is {limits.max_documents} per request")
        for i, t in enumerate(texts):
            if len(t) > limits.max_document_chars:
                raise HTTPProblem(422, f"{field}[{i}] has {len(t)} characters; the limit is {limits.max_document_chars}")

    async def cohere(body: CohereRequest, request: Request, version: str) -> dict[str, Any]:
        texts = body.texts()
        check(texts, "documents", body.query)
        return_documents = body.return_documents if body.return_documents is not None else version == "1"
        ranked, counts = await service.rank(body.query, texts, body.max_tokens_per_doc, request.receive)
        score = service.scores.raw if body.raw_scores else service.scores.relevance
        results = []
        for r in ranked[: body.top_n]:
            item: dict[str, Any] = {"index": r.index, "relevance_score": score(r.score)}
            if return_documents:
                item["document"] = {"text": texts[r.index]}
            results.append(item)
        meta: dict[str, Any] = {"api_version": {"version": version}, "billed_units": {"search_units": 1}}
        if counts:
            meta["tokens"] = {"input_tokens": counts["input_tokens"], "output_tokens": 0}
            meta["truncated"] = {k: counts[k] for k in ("truncated_to_max_tokens", "truncated_to_model_window")}
        return {"id": str(uuid.uuid4()), "results": results, "meta": meta}

    async def v1(body: CohereRequest, request: Request) -> Any:
        return await cohere(body, request, "1")

    async def v2(body: CohereRequest, request: Request) -> Any:
        return await cohere(body, request, "2")

    async def tei(body: TEIRequest, request: Request) -> Any:
        check(body.texts, "texts", body.query)
        ranked, _ = await service.rank(body.query, body.texts, None, request.receive)
        score = service.scores.raw if body.raw_scores else service.scores.relevance
        out = []
        for r in ranked:
            item: dict[str, Any] = {"index": r.index, "score": score(r.score)}
            if body.return_text:
                item["text"] = body.texts[r.index]
            out.append(item)
        return out

    async def search(body: SearchRequest, request: Request) -> Any:
        check([], "documents", body.query)
        return {"results": await service.search(body.query, body.top_n or 10, request.receive)}

    for path, handler, summary in (
        ("/v1/rerank", v1, "Cohere v1 rerank: {query, documents, top_n?, return_documents?} -> {id, results, meta}"),
        ("/v2/rerank", v2, "Cohere v2 rerank: {model?, query, documents, top_n?, return_documents?, max_tokens_per_doc?}"),
        ("/rerank", tei, "text-embeddings-inference rerank: {query, texts, raw_scores?, return_text?} -> "
                         "[{index, score, text?}]"),
        ("/v1/search", search, "Retrieve from the loaded collection, then rerank: {query, top_n?} -> "
                               "{results: [{id, text, score, rank}]}"),
    ):
        app.router.add_api_route(path, handler, methods=["POST"], summary=summary, dependencies=bearer,
                          route_class_override=Checked)

    async def health() -> Any:
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": service.model_name}

    app.add_api_route("/health", health, methods=["GET"], summary="200 once the model is loaded and has answered; 503 before")
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # probes that ask for headers only

    async def prometheus() -> Any:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.router.add_api_route("/metrics", prometheus, methods=["GET"], summary="Prometheus metrics", dependencies=bearer,
                      route_class_override=Checked)
    app.state.service = service
    return app


def _version() -> str:
    from .. import __version__

    return __version__
