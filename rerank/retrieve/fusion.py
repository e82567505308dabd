"""Fusion of several stages' rankings into one.

* :class:`RRF`: reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009):
  score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1; a list that misses d adds nothing.
* :class:`Interpolate`: weighted sum of per-query normalised scores (min-max, z-score, or
  raw); a list that misses d contributes its own minimum normalised score, as if d were
  ranked just below its last hit.

Both are stages: first stages are run on the queries, and stages after ``>>`` get the incoming
ranking (so ``bm25 % 100 >> RRF(ce_a, ce_b)`` fuses two rerankers). Ties are broken by the best
rank a document reached, then by document id, so the output is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import RerankError
from ..types import Hit, Query, Ranking, Stage

if TYPE_CHECKING:
    from ..specs import Context, Spec

NORMS = ("minmax", "zscore", "none")


class _Fusion(Stage):
    def __init__(self, stages: Sequence[Stage], weights: Sequence[float] | None, depth: int | None) -> None:
        if len(stages) < 2:
            raise ValueError(f"fusion needs at least two stages, got {len(stages)}")
        for s in stages:
            if not isinstance(s, Stage):
                raise TypeError(f"fusion takes stages, got {type(s).__name__}")
        if weights is None:
            weights = [1.0] * len(stages)
        weights = [float(w) for w in weights]
        if len(weights) != len(stages):
            raise ValueError(f"{len(weights)} weights for {len(stages)} stages")
        if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth}")
        self.stages = list(stages)
        self.weights = weights
        self.depth = depth

    def _runs(self, queries: Sequence[Query], ranking: Ranking | None) -> list[Ranking]:
        runs = []
        for s in self.stages:
            run = s(queries, ranking)
            runs.append({qid: hits[: self.depth] for qid, hits in run.items()} if self.depth else run)
        return runs

    def _contributions(self, hits: list[Hit]) -> list[float]:
        raise NotImplementedError

    def _missing(self, contributions: list[float]) -> float:
        return 0.0

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        runs = self._runs(queries, ranking)
        out: Ranking = {}
        asked = {q.qid for q in queries}
        qids = list(dict.fromkeys([q.qid for q in queries] + [qid for run in runs for qid in run]))
        for qid in qids:
            score: dict[str, float] = {}
            best: dict[str, int] = {}
            text: dict[str, str | None] = {}
            lists = [(w, run.get(qid, [])) for w, run in zip(self.weights, runs, strict=True)]
            floors = []
            for w, hits in lists:
                contrib = self._contributions(hits)
                floors.append((w, self._missing(contrib), {h.docid for h in hits}))
                for rank, (h, c) in enumerate(zip(hits, contrib, strict=True)):
                    score[h.docid] = score.get(h.docid, 0.0) + w * c
                    best[h.docid] = min(best.get(h.docid, rank), rank)
                    if text.get(h.docid) is None:
                        text[h.docid] = h.text
            for w, floor, present in floors:
                if floor:
                    for d in score:
                        if d not in present:
                            score[d] += w * floor
            order = sorted(score, key=lambda d: (-score[d], best[d], d))
            if order or qid in asked:
                out[qid] = [Hit(d, score[d], text[d]) for d in order]
        return out


class RRF(_Fusion):
    """Reciprocal-rank fusion of ``stages``: ``RRF(bm25 % 1000, dense % 1000, k=60)``.
    ``depth``: fuse only each list's top ``depth``; ``weights``: one per stage."""

    kind, role = "hybrid", "retriever"
    spec_arg = "A+B[+C...]"
    spec_help = "reciprocal-rank fusion of retrievers, each contributing its top 1000, e.g. hybrid:bm25+dense:MODEL"
    spec_parts = "stages"
    FUSION_DEPTH = 1000  # hits each part of a hybrid contributes to the fusion

    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        if len(spec.parts) < 2:
            raise RerankError(f"--retriever {spec}: a hybrid needs two or more retrievers joined by '+', e.g. "
                              f"hybrid:bm25+dense:MODEL")
        depth = max(ctx.k, cls.FUSION_DEPTH)
        return cls(*[ctx.build(p, k=depth) for p in spec.parts]) % ctx.k

    def __init__(self, *stages: Stage, k: float = 60.0, weights: Sequence[float] | None = None, depth: int | None = None) -> None:
        super().__init__(stages, weights, depth)
        if not (k >= 0 and math.isfinite(k)):
            raise ValueError(f"RRF's k must be a finite non-negative number, got {k}")
        self.k = float(k)
        self.name = f"rrf({', '.join(s.name for s in self.stages)})"

    def _contributions(self, hits: list[Hit]) -> list[float]:
        return [1.0 / (self.k + r) for r in range(1, len(hits) + 1)]


class Interpolate(_Fusion):
    """Weighted sum of normalised scores: ``Interpolate(bm25, dense, weights=[0.3, 0.7])``.
    ``norm``: "minmax" (per query, to [0, 1]), "zscore" (per query), or "none"."""

    def __init__(
        self, *stages: Stage, weights: Sequence[float] | None = None, norm: str = "minmax", depth: int | None = None
    ) -> None:
        super().__init__(stages, weights, depth)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        self.norm = norm
        self.name = f"interpolate[{norm}]({', '.join(s.name for s in self.stages)})"

    def _contributions(self, hits: list[Hit]) -> list[float]:
        scores = [float(h.score) for h in hits]
        if not scores or self.norm == "none":
            return scores
        if self.norm == "minmax":
            lo, hi = min(scores), max(scores)
            return [(s - lo) / (hi - lo) if hi > lo else 1.0 for s in scores]
        mean = sum(scores) / len(scores)
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return [(s - mean) / sd if sd > 0 else 0.0 for s in scores]

    def _missing(self, contributions: list[float]) -> float:
        return min(contributions) if contributions else 0.0
