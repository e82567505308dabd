"""The endpoints' request bodies as pydantic models: FastAPI validates them and writes the OpenAPI
schema from them. Wrong types, unknown and missing fields are refused here with one line naming the
field (see :func:`.problems.validation_message`); the per-server limits (documents per request,
characters) are checked by the endpoints, which know the server's :class:`.Limits`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, StrictStr, field_validator, model_validator

from ..errors import DataError
from ..rerankers.base import _valid_text

_EXAMPLE_QUERY = "what is a reranker?"
_EXAMPLE_DOCS: list[JsonValue] = ["A reranker reorders retrieved passages by their relevance to a query.", "Bananas are yellow."]


def _text(value: str, what: str) -> str:
    try:
        return _valid_text(value, what)
    except DataError as e:
        raise ValueError(str(e)) from None


class _Body(BaseModel):
    """A request body: a JSON object with the model's fields only (strict types: no "5" for 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    required: ClassVar[tuple[str, ...]] = ("query",)

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object")
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"this endpoint takes {', '.join(sorted(cls.model_fields))}")
        missing = [f for f in cls.required if f not in data]
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        return data

    @field_validator("query", mode="after", check_fields=False)
    @classmethod
    def _query(cls, q: str) -> str:
        if not q.strip():
            raise ValueError("query is empty")
        return _text(q, "query")


class TextDocument(BaseModel):
    """A document as an object (Cohere's v1 form); fields other than ``text`` are ignored."""

    model_config = ConfigDict(extra="allow")
    text: str


class CohereRequest(_Body):
    """Cohere's rerank body (v1 and v2). ``model`` and ``priority`` are accepted and not used (one
    model is served)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"query": _EXAMPLE_QUERY, "documents": _EXAMPLE_DOCS}]})
    required = ("query", "documents")
    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | TextDocument]
    top_n: int | None = Field(None, ge=1)
    return_documents: StrictBool | None = Field(None, description="v1: true by default, v2: false (as Cohere)")
    max_tokens_per_doc: int | None = Field(None, ge=1, description="cut each document to this many tokens first")
    priority: int | None = None
    raw_scores: StrictBool = Field(False, description="relevance_score: the model's raw score instead of a probability")

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, docs: Any) -> Any:
        if not isinstance(docs, list):
            raise ValueError("documents must be a list")
        out = []
        for i, d in enumerate(docs):
            if isinstance(d, dict):
                d = d.get("text")
                if not isinstance(d, str):
                    raise ValueError(f"documents[{i}] is an object without a string 'text'")
            if not isinstance(d, str):
                raise ValueError(f"documents[{i}] must be a string or an object with 'text', got {type(d).__name__}")
            out.append(_text(d, f"documents[{i}]"))
        return out

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class TEIRequest(_Body):
    """text-embeddings-inference's rerank body. Documents are always cut to the model's window from
    their end (``truncate`` is accepted, ``truncation_direction`` must be Right)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"query": _EXAMPLE_QUERY, "texts": _EXAMPLE_DOCS}]})
    required = ("query", "texts")
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = Field(False, description="score: the model's raw score (a logit) instead of a probability")
    return_text: StrictBool = False
    truncate: StrictBool = False
    truncation_direction: Literal["Right", "right"] = "Right"

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _direction(cls, v: Any) -> Any:
        if v not in ("Right", "right"):
            raise ValueError("truncation_direction: only 'Right' (documents lose their end)")
        return v

    @field_validator("texts", mode="after")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        return [_text(t, f"texts[{i}]") for i, t in enumerate(texts)]


class SearchRequest(_Body):
    """A query for the loaded collection: its first stage's hits reranked, the best ``top_n``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"query": _EXAMPLE_QUERY, "top_n": 5}]})
    query: StrictStr
    top_n: int | None = Field(None, ge=1, description="hits answered [default: 10]")
