"""Running the app under uvicorn: bounded shutdown, slow clients limited, exit 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import RerankError
from .limits import require_serve
from .service import Service

log = logging.getLogger("rerank")


@dataclass(frozen=True)
class Connections:
    """What slow or idle clients may hold, and how long a shutdown may take."""

    max_connections: int = 1000  # open connections (and requests in progress); more get 503
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    shutdown_s: float = 30.0  # after SIGTERM: accepted requests may take this long; then they are cancelled
    max_header_bytes: int = 64 * 1024  # a request's head (line and headers)


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log_level: str = "info", connections: Connections | None = None) -> None:
    """Run the server until SIGTERM/SIGINT: it then stops accepting, refuses bodies still arriving,
    answers what it accepted (for at most ``connections.shutdown_s``), and returns."""
    require_serve()
    import uvicorn

    from .app import create_app

    conn = connections or Connections()
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    app = create_app(service, api_key=api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=max(1, round(conn.shutdown_s)), limit_concurrency=conn.max_connections,
                            timeout_keep_alive=max(1, round(conn.keep_alive_s)),
                            h11_max_incomplete_event_size=conn.max_header_bytes)
    loop: list[asyncio.AbstractEventLoop] = []

    class Server(uvicorn.Server):
        """uvicorn's server, except that a SIGTERM/SIGINT also tells the app to refuse bodies still
        arriving (they are not accepted requests), and one that it has handled gracefully ends the
        process normally (exit 0) instead of being raised again after the shutdown."""

        async def startup(self, sockets: Any = None) -> None:
            loop.append(asyncio.get_running_loop())
            await super().startup(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if loop:
                loop[0].call_soon_threadsafe(service.stopping.set)

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
