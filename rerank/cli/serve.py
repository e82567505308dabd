"""rerank serve: a reranker over HTTP (Cohere- and TEI-shaped endpoints, search over a loaded collection)."""

from __future__ import annotations

from typing import Any

import click

from ..errors import RerankError
from .common import DatasetArgs, ModelArgs, friendly, load, model_options, read_options, setup_logging, take


@click.command()
@click.option("--reranker", required=True, help="The reranker spec, e.g. cross-encoder:MODEL (see `rerank kinds`).")
@click.option("--pipeline", help="First stage(s) for POST /v1/search, e.g. 'bm25 % 100' (needs --dataset).")
@click.option("--dataset", "-d", help="The collection /v1/search retrieves from: alias, ir_datasets id, or path.")
@click.option("--split", default="test", show_default=True, help="Split of a BEIR folder (its queries are not used).")
@read_options()
@click.option("--depth", type=click.IntRange(min=1), help="/v1/search: hits the reranker rescores [default: 100].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 serves other machines too.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="RERANK_API_KEY", help="Require 'Authorization: Bearer KEY' [env: RERANK_API_KEY].")
@click.option("--max-documents", default=1000, show_default=True, type=click.IntRange(min=1), help="Documents per request.")
@click.option("--max-request-mb", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Request body size.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=1),
              help="Requests accepted at once; more are answered 429 with Retry-After.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a request may take before it is answered 504 and dropped.")
@click.option("--body-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a request's whole body may take to arrive; a slower one is answered 408.")
@click.option("--max-connections", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Open connections (idle ones included); more are answered 503.")
@click.option("--keep-alive", default=5.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds an idle kept-alive connection stays open.")
@click.option("--shutdown-timeout", default=30.0, show_default=True, type=click.FloatRange(min=1),
              help="After SIGTERM: seconds accepted requests may take to finish before they are cancelled.")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="After a round shared by several requests, how long the next waits for more (a lone request never waits).")
@model_options
@click.option("--quiet", "-q", is_flag=True, help="Warnings and errors only.")
@friendly
def serve(reranker: str, pipeline: str | None, depth: int | None, host: str, port: int, api_key: str | None, max_documents: int,
          max_request_mb: float, max_queue: int, timeout: float, body_timeout: float, max_connections: int, keep_alive: float,
          shutdown_timeout: float, max_wait_ms: float, quiet: bool, **kw: Any) -> None:
    """Serve a reranker over HTTP: POST /v1/rerank, /v2/rerank (Cohere), /rerank (TEI), /v1/search;
    GET /health, /metrics, /docs. Stops on SIGTERM after answering what it accepted (within
    --shutdown-timeout)."""
    from ..rerankers import make_reranker
    from ..serve import Connections, Limits, Service, require_serve
    from ..serve import serve as run_server
    from ..specs import pipeline as build_pipeline

    setup_logging(quiet)
    require_serve()  # before any model loads
    model = take(ModelArgs, kw)
    data = take(DatasetArgs, kw)
    if bool(pipeline) != bool(data.dataset):
        raise RerankError("--pipeline and --dataset go together: /v1/search retrieves from the dataset with the pipeline")
    ranker = make_reranker(reranker, depth=depth, **model.as_options())
    ranker.combiner.max_wait_ms = max_wait_ms
    first = None
    if pipeline and data.dataset:
        ds = load(data.dataset, data.split or "test", None, data.encoding_errors, data.read())
        if ds.docs is None or not ds.docs.complete:
            raise RerankError(f"{ds.name} has no full corpus here to search")
        first = build_pipeline(pipeline, ds, with_text=True)
    limits = Limits(max_documents=max_documents, max_request_bytes=int(max_request_mb * 1024 * 1024), max_queue=max_queue,
                    timeout_s=timeout, body_timeout_s=body_timeout)
    service = Service(ranker, first_stage=first, limits=limits)
    run_server(service, host=host, port=port, api_key=api_key or None, log_level="warning" if quiet else "info",
               connections=Connections(max_connections=max_connections, keep_alive_s=keep_alive, shutdown_s=shutdown_timeout))
