"""``rerank serve``: a reranker over HTTP for RAG apps (FastAPI + uvicorn, extra ``serve``).

Endpoints (see :func:`.app.create_app`):

* ``POST /v1/rerank``, ``POST /v2/rerank``: Cohere's shape (also infinity's, vLLM's, LiteLLM's);
* ``POST /rerank``: text-embeddings-inference's shape;
* ``POST /v1/search``: retrieve then rerank, when a first stage and a collection are loaded;
* ``GET /health`` (200 once the model has answered a warm-up call), ``GET /metrics`` (Prometheus),
  ``GET /docs`` (Swagger UI, served from the package: no CDN).

Requests run in worker threads on the reranker's :class:`~rerank.models.batching.Combiner`, so
concurrent requests share model batches. A bounded number of requests is accepted at once (more
get 429 with ``Retry-After``); one that outlives ``timeout_s`` gets 504 and its pairs are dropped
if they have not run; so are those of a client that disconnects. Bad input gets a 4xx whose
``message`` names the problem.

The modules: :mod:`.limits` (what a request may hold, the extra), :mod:`.problems` (refusals and
their one shape), :mod:`.requests` (the request bodies as pydantic models), :mod:`.body` (reading
a body: key, size, time, encoding, nesting), :mod:`.scores` (relevance in [0, 1] or raw),
:mod:`.service` (the model side), :mod:`.metrics`, :mod:`.app` (the FastAPI app), :mod:`.runner`
(uvicorn). Only :mod:`.app` and :mod:`.requests` import FastAPI and pydantic at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .limits import Limits, require_serve
from .problems import HTTPProblem
from .runner import Connections, serve
from .service import Service

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["Connections", "HTTPProblem", "Limits", "Service", "create_app", "require_serve", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # imports FastAPI: only when asked for, after the extra is checked
        require_serve()
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
