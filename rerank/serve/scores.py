"""What the Cohere- and TEI-shaped endpoints answer as a score: a relevance in [0, 1] by default,
as Cohere's clients assume (a 0.5 cut, LangChain's ``relevance_score``), or the model's raw score
on request (``raw_scores``). Each family's natural probability:

* cross-encoder, one label: sigmoid of the logit (as sentence-transformers and infinity do; the
  reranker's own score with ``activation=sigmoid``); raw: the logit. Two labels: p(relevant) =
  exp of the reranker's log p; raw: log p.
* llm-pointwise: p(yes) = sigmoid of the yes/no logit difference (``p-yes`` templates score it
  already); ``logit-yes`` templates: sigmoid of that logit. Raw: the logit.
* monot5: p(true) = exp of the reranker's log p(true); raw: log p(true).
* api: the remote service's own relevance, as it is.
* everything else (splade and colbert dot products, the pairwise and listwise rerankers' list
  scores: prp, duot5, first, lit5, ...) has no probability: relevance is a monotone squash, 0.5 + s / (2 (1 + |s|)), that keeps
  the order (0.5 is a score of 0, not a probability of one half); raw: the score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def squash(x: float) -> float:
    return 0.5 + x / (2 * (1 + abs(x)))


def _same(x: float) -> float:
    return x


@dataclass(frozen=True)
class Scores:
    """The two maps from a reranker's score: to a relevance in [0, 1], and to the raw model score."""

    relevance: Callable[[float], float]
    raw: Callable[[float], float]
    what: str  # said in the logs at start

    @classmethod
    def of(cls, reranker: Any) -> Scores:
        kind = getattr(reranker, "kind", "")
        if kind == "cross-encoder":
            config = getattr(getattr(reranker, "model", None), "config", None)
            if int(getattr(config, "num_labels", 1) or 1) > 1:
                return cls(math.exp, _same, "p(relevant) of a two-label cross-encoder")
            if getattr(reranker, "activation", "sigmoid") == "sigmoid":
                return cls(_same, logit, "sigmoid of the cross-encoder's logit")
            return cls(sigmoid, _same, "sigmoid of the cross-encoder's logit")
        if kind == "llm-pointwise":
            if getattr(getattr(reranker, "template", None), "score", "") == "p-yes":
                return cls(_same, logit, "p(yes) of the LLM judge")
            return cls(sigmoid, _same, "sigmoid of the LLM judge's logit")
        if kind == "monot5":
            return cls(math.exp, _same, "p(true) of monoT5")
        if kind == "api":
            return cls(_same, _same, "the remote service's relevance")
        return cls(squash, _same, f"a monotone squash of {kind or 'the'} scores (no probability)")
