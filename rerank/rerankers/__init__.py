"""Rerankers by name: ``cross-encoder:NAME``, ``llm-pointwise:NAME``, ``splade:NAME``,
``prp:NAME[:allpair|sorting|sliding]``, ``first[:NAME]``, ``listwise-gen:NAME``."""

from __future__ import annotations

from typing import Any

from ..errors import RerankError
from .base import ListReranker, RankedDoc, Reranker

KINDS = ("cross-encoder", "llm-pointwise", "splade", "prp", "first", "listwise-gen")
LIST_OPTIONS = ("window", "stride", "k", "mode", "max_passage_tokens")

__all__ = ["KINDS", "ListReranker", "RankedDoc", "Reranker", "make_reranker", "reranker_class"]


def _parse(spec: str, options: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """A ``KIND:MODEL`` spec's class, model and options (those that are None dropped, the spec's
    own added), checked: list options only go to the pairwise and listwise rerankers."""
    from .listwise import First, ListwiseGenerate
    from .pairwise import METHODS, PRP
    from .pointwise import CrossEncoder, LLMPointwise, Splade

    kind, _, model = spec.partition(":")
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "first" and not model:
        model = First.DEFAULT_MODEL
    if kind == "prp" and model.rsplit(":", 1)[-1] in METHODS:
        model, options["method"] = model.rsplit(":", 1)
    classes: dict[str, Any] = {"cross-encoder": CrossEncoder, "llm-pointwise": LLMPointwise, "splade": Splade,
                               "prp": PRP, "first": First, "listwise-gen": ListwiseGenerate}
    if kind not in classes or not model:
        raise RerankError(f"unknown reranker {spec!r}; use one of: " + ", ".join(f"{k}:MODEL" for k in KINDS)
                          + " (prp:MODEL:allpair|sorting|sliding; first alone uses " + First.DEFAULT_MODEL + ")")
    if kind in ("cross-encoder", "llm-pointwise", "splade"):
        given = sorted(k for k in LIST_OPTIONS if k in options)
        if given:
            raise RerankError(f"{', '.join(given)} apply to pairwise and listwise rerankers, not {kind}")
    else:
        if kind == "prp":
            for k in ("window", "stride"):
                if k in options:
                    raise RerankError(f"{k} applies to the listwise rerankers (first, listwise-gen), not prp")
        elif "k" in options or "mode" in options:
            raise RerankError("k and mode apply to prp, not the listwise rerankers")
    return classes[kind], model, options


def reranker_class(spec: str, **options: Any) -> Any:
    """The class a ``KIND:MODEL`` spec makes, after checking the spec and options (no model is loaded)."""
    return _parse(spec, options)[0]


def make_reranker(spec: str, **options: Any) -> Reranker:
    """A reranker from a ``KIND:MODEL`` spec (MODEL: a Hugging Face id or a local path).
    Options that are None are left to the reranker's defaults; list options (window, stride,
    k, mode, max_passage_tokens) only go to the pairwise and listwise rerankers."""
    cls, model, options = _parse(spec, options)
    return cls(model, **options)
