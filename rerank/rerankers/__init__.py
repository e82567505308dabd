"""Rerankers by name: ``cross-encoder:NAME``, ``llm-pointwise:NAME``, ``splade:NAME``,
``prp:NAME[:allpair|sorting|sliding]``, ``rank-r1:NAME[:heapsort|bubblesort]``, ``first[:NAME]``,
``listwise-gen:NAME`` (the kinds are registered in :mod:`rerank.specs`)."""

from __future__ import annotations

from typing import Any

from .base import ListReranker, RankedDoc, Reranker

__all__ = ["ListReranker", "RankedDoc", "Reranker", "make_reranker", "reranker", "reranker_class"]


def reranker_class(spec: str, **options: Any) -> type[Reranker]:
    """The class a ``KIND:MODEL`` spec makes, after checking the spec and options (no model is loaded)."""
    from ..specs import RERANKER, check_options, parse

    s = parse(spec, RERANKER, "reranker")
    if getattr(s.cls, "takes_every_option", False):  # auto:MODEL: the kind it picks
        from .auto import family

        s = parse(f"{family(s.arg)[0]}:{s.arg}", RERANKER, "reranker")
    check_options([s], options)
    cls = s.cls
    assert issubclass(cls, Reranker)
    cls.spec_model(s.arg, {})
    return cls


def make_reranker(spec: str, **options: Any) -> Reranker:
    """A reranker from a ``KIND:MODEL`` spec (MODEL: a Hugging Face id or a local path).
    Options that are None are left to the reranker's defaults; an option the kind does not take
    (``window`` for a cross-encoder) is an error."""
    from ..specs import RERANKER, stage

    r = stage(spec, None, role=RERANKER, **options)
    assert isinstance(r, Reranker)
    return r


def reranker(model: str, **options: Any) -> Reranker:
    """The reranker for ``model``, its family picked from the model's name and config
    (:mod:`rerank.rerankers.auto`): ``rerank.reranker("Qwen/Qwen3-Reranker-0.6B")``."""
    return make_reranker(f"auto:{model}", **options)
