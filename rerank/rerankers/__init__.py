"""Rerankers by name: ``cross-encoder:NAME``, ``llm-pointwise:NAME``, ``splade:NAME``."""

from __future__ import annotations

from typing import Any

from ..errors import RerankError
from .base import RankedDoc, Reranker

KINDS = ("cross-encoder", "llm-pointwise", "splade")

__all__ = ["KINDS", "RankedDoc", "Reranker", "make_reranker"]


def make_reranker(spec: str, **options: Any) -> Reranker:
    """A reranker from a ``KIND:MODEL`` spec (MODEL: a Hugging Face id or a local path)."""
    from .pointwise import CrossEncoder, LLMPointwise, Splade

    kind, _, model = spec.partition(":")
    classes = {"cross-encoder": CrossEncoder, "llm-pointwise": LLMPointwise, "splade": Splade}
    if kind not in classes or not model:
        raise RerankError(f"unknown reranker {spec!r}; use one of: " + ", ".join(f"{k}:MODEL" for k in KINDS))
    return classes[kind](model, **options)
