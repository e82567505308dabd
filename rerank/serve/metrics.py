"""Prometheus metrics, and the middleware that counts each request by the status it was truly
answered with: a 500 from an unexpected error is a 500, a client that hung up before its answer is
``status="disconnected"`` (logged as one line, not a traceback)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger("rerank")


class Metrics:
    def __init__(self, service: Service) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
        from prometheus_client.core import CounterMetricFamily

        disable_created_metrics()  # no *_created series beside every counter

        self.registry = CollectorRegistry()
        self.requests = Counter("rerank_requests", "Requests by endpoint and status (or 'disconnected')",
                                ["endpoint", "status"], registry=self.registry)
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


class Counted:
    """ASGI middleware: requests to ``endpoints`` counted by the status sent (500 when the app
    raised before answering), or as ``disconnected`` when the client left before its answer."""

    def __init__(self, app: Any, metrics: Metrics, endpoints: set[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.endpoints:
            await self.app(scope, receive, send)
            return
        status: int | None = None
        gone = False

        async def receiving() -> Any:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and status is None:
                gone = True
            return message

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receiving, sending)
        finally:
            path = scope["path"]
            label = "disconnected" if gone else str(status or 500)
            if gone:
                log.info("%s %s: the client disconnected before its answer", scope["method"], path)
            self.metrics.requests.labels(path, label).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)
