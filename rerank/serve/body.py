"""Reading a request body before anyone parses it: the key, the size, the time it may take to
arrive, its encoding and its JSON nesting are checked first, so a slow, huge, compressed or deeply
nested body costs a bounded amount of time and memory and gets a one-line 4xx."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .limits import Limits
from .problems import HTTPProblem

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def check_key(authorization: str | None, api_key: str | None) -> None:
    """The bearer key (scheme case-insensitive, RFC 7235), compared in constant time."""
    if api_key is None:
        return
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), api_key.encode()):
        raise HTTPProblem(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "Unauthorized",
                          {"WWW-Authenticate": "Bearer"})


def json_depth(body: bytes) -> int:
    """How deep the JSON in ``body`` nests (strings' contents left out), without parsing it."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', body)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class ClientGone(Exception):
    """The client hung up before its body arrived."""


async def read_body(headers: Any, receive: Callable[[], Awaitable[Any]], limits: Limits,
                    stopping: asyncio.Event) -> bytes:
    """The whole body, or a refusal: 415 compressed, 413 over ``max_request_bytes``, 408 not there
    within ``body_timeout_s``, 503 when the server starts shutting down first (a body still on its
    way is not an accepted request); :class:`ClientGone` when the client hangs up."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPProblem(415, f"compressed bodies are not accepted (Content-Encoding: {encoding}); send plain JSON",
                          "UnsupportedMediaType")
    limit = limits.max_request_bytes
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"the request has {declared} bytes; the limit is {limit}", "PayloadTooLarge")
    body = bytearray()
    deadline = time.monotonic() + limits.body_timeout_s
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while True:
            message = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({message, stop}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if message not in done:
                message.cancel()
                if stop in done:
                    raise HTTPProblem(503, "the server is shutting down", "Unavailable", {"Connection": "close"})
                raise HTTPProblem(408, f"the request body did not arrive within {limits.body_timeout_s:g} s", "Timeout",
                                  {"Connection": "close"})
            m = message.result()
            if m["type"] == "http.disconnect":
                raise ClientGone
            body += m.get("body", b"")
            if len(body) > limit:
                raise HTTPProblem(413, f"the request is over the limit of {limit} bytes", "PayloadTooLarge")
            if not m.get("more_body", False):
                return bytes(body)
    finally:
        stop.cancel()


def parse_json(body: bytes, limits: Limits) -> Any:
    """``body`` parsed, after its nesting is checked (Python's parser recurses: 1,000 levels overflow it)."""
    brackets = body.count(b"[") + body.count(b"{")  # fewer than the limit cannot nest deeper (the usual case: no scan)
    depth = json_depth(body) if brackets > limits.max_json_depth else 0
    if depth > limits.max_json_depth:
        raise HTTPProblem(400, f"the request body nests {depth} levels deep; the limit is {limits.max_json_depth}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPProblem(400, f"the request body is not valid JSON ({e})") from None
