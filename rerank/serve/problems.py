"""Refusals and their one shape: ``{"message", "error", "error_type"}`` (``error`` and
``error_type`` as text-embeddings-inference answers), whoever raised them: the endpoints,
request validation, FastAPI's own 404 and 405."""

from __future__ import annotations

from typing import Any


class HTTPProblem(Exception):
    """A request refused: its status, one line naming the problem, and extra headers."""

    def __init__(self, status: int, message: str, kind: str = "Validation", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


KINDS = {400: "Validation", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 408: "Timeout",
         413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "Validation", 429: "Overloaded", 503: "Unavailable"}


def response(p: HTTPProblem) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"message": p.message, "error": p.message, "error_type": p.kind}, status_code=p.status,
                        headers=p.headers)


def _where(loc: tuple[Any, ...]) -> str:
    """``("body", "documents", 3)`` as ``documents[3]``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "the request body"


def validation_message(error: dict[str, Any]) -> str:
    """One of pydantic's errors as one line naming the field."""
    kind, where, value = error["type"], _where(tuple(error["loc"])), error.get("input")
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where} must be a JSON object" if where != "the request body" else "the request body must be a JSON object"
    if kind == "string_type":
        return f"{where} must be a string, got {type(value).__name__}"
    if kind == "bool_type":
        return f"{where} must be true or false, got {value!r}"
    if kind in ("int_type", "greater_than_equal", "int_from_float"):
        return f"{where} must be a positive integer, got {value!r}"
    if kind == "list_type":
        return f"{where} must be a list, got {type(value).__name__}"
    return f"{where}: {error['msg']}"


def install(app: Any) -> None:
    """Every refusal of ``app`` in the one shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def problem(request: Any, exc: HTTPProblem) -> Any:
        return response(exc)

    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        errors = exc.errors()
        status = 400 if errors and errors[0]["type"] == "json_invalid" else 422
        return response(HTTPProblem(status, validation_message(errors[0]) if errors else "invalid request"))

    async def http(request: Any, exc: HTTPException) -> Any:
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (allowed: {(exc.headers or {}).get('Allow', '')})"
        else:
            message = str(exc.detail)
        return response(HTTPProblem(exc.status_code, message, KINDS.get(exc.status_code, "Error"), dict(exc.headers or {})))

    app.add_exception_handler(HTTPProblem, problem)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)
