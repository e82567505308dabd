"""What the server takes: per-request limits, slow-client and shutdown bounds, and the extra it needs."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MissingDependency


def require_serve() -> None:
    """FastAPI, uvicorn, the Swagger UI assets and Prometheus' client, or the one-line hint that installs them."""
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependency("rerank serve", "serve", (e.name or "fastapi").replace("_", "-")) from None


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how many the server takes at once."""

    max_documents: int = 1000
    max_request_bytes: int = 8 * 1024 * 1024
    max_query_chars: int = 32_768
    max_document_chars: int = 1_000_000
    max_json_depth: int = 32  # nesting of the request body's JSON, checked before it is parsed
    max_queue: int = 256  # requests accepted and not yet answered; more get 429
    timeout_s: float = 60.0
    threads: int = 64  # worker threads waiting on the model: how many requests can share one round
    body_timeout_s: float = 30.0  # a request's whole body must arrive within this; else 408
