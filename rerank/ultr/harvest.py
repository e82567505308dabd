"""Position bias from the documents a log moves: intervention harvesting, and a bootstrap band.

A log identifies the examination propensities θ (position-based model, ``P(click) = θ_r α_qd``)
only through (query, document) pairs it shows at more than one rank: several logging rankers
sharing the traffic, a stochastic ranker, swapped pairs (Agarwal et al., WSDM 2019; Fang et al.,
SIGIR 2019). For two ranks ``k, k'`` and the pairs shown at both, the click rates at ``k`` and
``k'`` of the same pair estimate ``θ_k α`` and ``θ_k' α``, so

    R_kk' = Σ_qd w_qd ĉ_qd(k) / Σ_qd w_qd ĉ_qd(k'),   w_qd = n_k n_k' / (n_k + n_k')

estimates ``θ_k / θ_k'`` whatever the α (``n``: the pair's sessions at each rank). The ratios of
all rank pairs are combined by weighted least squares on ``log θ`` with ``θ_1 = 1`` (weights
``Σ w``); a rank that no chain of such pairs links to rank 1 is not identified (``nan``).
:func:`bootstrap` resamples queries (the log's independent units) for a confidence band of any
such estimator (this one, or :func:`rerank.ultr.learn.pbm_em_propensities`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError

NOT_IDENTIFIED = ("the log does not identify θ: no document is shown (and clicked) at two ranks for a query, so position "
                  "and relevance cannot be told apart (Chen et al., ICML 2024); log with result variation (several "
                  "rankers, clicks simulate --temperature or --randpair, --randomize)")


@dataclass
class Cells:
    """(query-document pair, rank, clicks, sessions) cells, as ``RankStats.cells()`` gives them,
    with the query of each pair: what the estimators read."""

    pair: np.ndarray
    rank: np.ndarray
    clicks: np.ndarray
    shown: np.ndarray
    query: np.ndarray  # per pair
    list_size: int

    @classmethod
    def of(cls, stats: Any) -> Cells:
        """From a :class:`~rerank.ultr.log.RankStats` (``fold_ranks``)."""
        k, r, c, n = stats.cells()
        queries: dict[str, int] = {}
        query = np.asarray([queries.setdefault(q, len(queries)) for q, _ in stats.pairs], dtype=np.int64)
        return cls(k, r, c, n, query, stats.list_size)

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.pair, self.rank, self.clicks, self.shown

    def reweighted(self, per_query: np.ndarray) -> Cells:
        """Every query's counts times its weight (a bootstrap replicate: how often it was drawn)."""
        w = per_query[self.query[self.pair]]
        keep = w > 0
        return Cells(self.pair[keep], self.rank[keep], self.clicks[keep] * w[keep], self.shown[keep] * w[keep],
                     self.query, self.list_size)


def harvest_propensities(cells: Cells) -> np.ndarray:
    """``θ̂_r / θ̂_1`` by intervention harvesting (see the module docstring); ``nan`` for ranks the
    log does not link to rank 1. Raises when it links none."""
    width = cells.list_size
    pairs = int(cells.pair.max()) + 1 if len(cells.pair) else 0
    n = np.zeros((pairs, width))
    c = np.zeros((pairs, width))
    np.add.at(n, (cells.pair, cells.rank), cells.shown)
    np.add.at(c, (cells.pair, cells.rank), cells.clicks)
    moved = (n > 0).sum(axis=1) > 1
    n, c = n[moved], c[moved]
    ctr = np.divide(c, n, out=np.zeros_like(c), where=n > 0)
    rows, weights, targets = [], [], []
    for k in range(width):
        for k2 in range(k + 1, width):
            both = (n[:, k] > 0) & (n[:, k2] > 0)
            if not both.any():
                continue
            w = n[both, k] * n[both, k2] / (n[both, k] + n[both, k2])
            num, den = float((w * ctr[both, k]).sum()), float((w * ctr[both, k2]).sum())
            if num <= 0 or den <= 0:  # no click at one of the ranks: no ratio to take a log of
                continue
            row = np.zeros(width)
            row[k], row[k2] = 1.0, -1.0
            rows.append(row)
            weights.append(float(w.sum()))
            targets.append(np.log(num / den))
    linked = _linked(rows, width)
    if not linked[1:].any():
        raise DataError(NOT_IDENTIFIED)
    a = np.asarray(rows)[:, linked][:, 1:]  # log θ_1 = 0: drop its column
    sw = np.sqrt(np.asarray(weights))
    solution, *_ = np.linalg.lstsq(a * sw[:, None], np.asarray(targets) * sw, rcond=None)
    out = np.full(width, np.nan)
    out[0] = 1.0
    out[np.flatnonzero(linked)[1:]] = np.exp(solution)
    return out


def _linked(rows: list[np.ndarray], width: int) -> np.ndarray:
    """Ranks connected to rank 1 through the rank pairs that have a ratio."""
    linked = np.zeros(width, dtype=bool)
    linked[0] = True
    edges = [tuple(np.flatnonzero(r)) for r in rows]
    grew = True
    while grew:
        grew = False
        for a, b in edges:
            if linked[a] != linked[b]:
                linked[a] = linked[b] = True
                grew = True
    return linked


def bootstrap(cells: Cells, estimator: Callable[[Cells], np.ndarray], rounds: int = 200, seed: int = 0,
              level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) percentile band of ``estimator`` over ``rounds`` resamplings of the queries
    with replacement; a rank a replicate leaves unidentified counts as unknown (the band widens to
    ``nan`` when over half the replicates miss it)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    rng = np.random.default_rng(seed)
    queries = int(cells.query.max()) + 1
    draws = []
    for _ in range(rounds):
        weight = np.bincount(rng.integers(queries, size=queries), minlength=queries).astype(np.float64)
        try:
            with np.errstate(invalid="ignore", divide="ignore"):  # pairs of queries not drawn: 0/0, never read
                draws.append(estimator(cells.reweighted(weight)))
        except DataError:
            draws.append(np.full(cells.list_size, np.nan))
    d = np.asarray(draws)
    low, high = np.full(cells.list_size, np.nan), np.full(cells.list_size, np.nan)
    ok = np.isfinite(d).sum(axis=0) * 2 > rounds
    tail = (1 - level) / 2 * 100
    low[ok] = np.nanpercentile(d[:, ok], tail, axis=0)
    high[ok] = np.nanpercentile(d[:, ok], 100 - tail, axis=0)
    return low, high
