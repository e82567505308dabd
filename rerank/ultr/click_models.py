"""Classic click models fitted on a click log, and the measures they are compared by.

The models of Chuklin, Markov and de Rijke, *Click Models for Web Search* (2015), on sessions of
one query and its top-``L`` list (``a_qd``: attractiveness of a query-document pair; ranks from 1):

- ``pbm`` (position-based): ``P(C_r) = a_qd θ_r``, fitted by EM.
- ``cm`` (cascade): the user scans top-down and stops at the first click; MLE over the ranks up
  to the first click (all ranks of a session without a click).
- ``ubm`` (user browsing): ``P(C_r) = a_qd γ_{r,r'}``, ``r'`` the rank of the previous click (0:
  none), fitted by EM.
- ``dcm`` (dependent click, the book's simplified estimator): top-down; after a click at ``r``
  the user goes on with ``λ_r``, after a skip always. MLE that takes the last click as the end of
  the session: ``a_qd`` from the ranks up to the last click (all ranks without a click), ``λ_r``
  the share of clicks at ``r`` that are not the session's last.
- ``sdbn`` (simplified DBN, γ = 1): ``a_qd`` as DCM, satisfaction ``σ_qd`` the share of clicks
  on the pair that are the session's last; MLE.
- ``dbn`` (dynamic Bayesian network): after a click the user is satisfied with ``σ_qd`` and stops,
  else goes on with ``γ``; after a skip goes on with ``γ``. Exact EM (the posteriors of examination
  and satisfaction after the last click are computed in closed form per session).
- Baselines: ``gctr`` (one click rate), ``rctr`` (one per rank), ``dctr`` (one per query-document pair).

Every parameter is a ratio of (expected) counts with one pseudo-click and one pseudo-skip added
(Laplace smoothing; the MAP estimate under a Beta(2, 2) prior for EM), so a query-document pair
the training log never showed has attractiveness (and satisfaction) 0.5, as PyClick's MLE models.

Measures (the book's chapter 4, as PyClick computes them), on test sessions:

- ``log_likelihood``: the mean over shown results of ``ln P(C_r = c_r | c_1 .. c_{r-1})`` (the
  log-probability of the sessions' clicks, per result; PyClick's normalisation);
- ``perplexity_by_rank[r]``: ``2^(-mean over sessions of log2 P(C_r = c_r))`` with the model's
  unconditional click probability ``P(C_r = 1)``; ``perplexity``: their mean over ranks.
Probabilities are kept within [1e-6, 1 - 1e-6] (a cascade model's second click would otherwise
have probability 0).

Sessions are folded into distinct (query, shown list, clicks) rows with a count (the sample's
35,064 training sessions are 8,272 rows), and every step is vectorised over rows with numpy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .log import ClickSession

FITTED = ("pbm", "cm", "ubm", "dcm", "sdbn", "dbn")
BASELINES = ("gctr", "rctr", "dctr")
MODELS = BASELINES + FITTED
PROB_MIN = 1e-6
EM_MODELS = ("pbm", "ubm", "dbn")


@dataclass
class SessionRows:
    """A log folded into distinct (query, shown list, clicks) rows. ``pair[i, r]`` indexes the
    (query, document) shown at rank ``r`` in ``keys`` (``len(keys)`` for a pair outside them and
    for padding); ``mask`` marks the ranks a session showed; ``weight`` counts the sessions."""

    pair: np.ndarray  # [n, L] int64
    clicks: np.ndarray  # [n, L] float64, 0/1
    mask: np.ndarray  # [n, L] bool
    weight: np.ndarray  # [n] float64
    keys: dict[tuple[str, str], int]
    queries: set[str]
    sessions: int
    unseen_shown: int = 0  # results showing a pair outside ``keys`` (given keys only)

    @property
    def list_size(self) -> int:
        return int(self.pair.shape[1])

    def last_click(self) -> np.ndarray:
        """Rank (0-based) of each row's last click, -1 without one."""
        c = self.clicks > 0
        return np.where(c.any(axis=1), self.list_size - 1 - np.argmax(c[:, ::-1], axis=1), -1)

    def first_click(self) -> np.ndarray:
        """Rank (0-based) of each row's first click, -1 without one."""
        c = self.clicks > 0
        return np.where(c.any(axis=1), np.argmax(c, axis=1), -1)

    def previous_click(self) -> np.ndarray:
        """[n, L]: the rank of the last click above each rank, -1 for none."""
        n, width = self.clicks.shape
        ranks = np.broadcast_to(np.arange(width), (n, width))
        clicked = np.where(self.clicks > 0, ranks, -1)
        upto = np.maximum.accumulate(clicked, axis=1)
        return np.concatenate([np.full((n, 1), -1), upto[:, :-1]], axis=1)


def fold_sessions(sessions: Iterable[ClickSession], list_size: int = 10, *,
                  keys: dict[tuple[str, str], int] | None = None, queries: set[str] | None = None) -> SessionRows:
    """Fold sessions (cut to ``list_size`` results) into :class:`SessionRows`. With ``keys`` (a
    fitted model's pairs) the pairs are indexed by them and others counted in ``unseen_shown``;
    with ``queries`` only sessions of those queries are kept (test sessions of queries seen in
    training)."""
    if list_size < 1:
        raise ValueError(f"list_size must be >= 1, got {list_size}")
    rows: Counter[tuple[str, tuple[str, ...], tuple[int, ...]]] = Counter()
    for s in sessions:
        if queries is not None and s.qid not in queries:
            continue
        rows[(s.qid, s.docs[:list_size], s.clicks[:list_size])] += 1
    if not rows:
        raise DataError("no session to fold" + (" of a query seen in training" if queries is not None else ""))
    grow = keys is None
    index: dict[tuple[str, str], int] = {} if keys is None else keys
    n = len(rows)
    pair = np.zeros((n, list_size), dtype=np.int64)
    clicks = np.zeros((n, list_size))
    mask = np.zeros((n, list_size), dtype=bool)
    weight = np.zeros(n)
    raw: list[list[int]] = []
    unseen = 0
    for i, ((qid, docs, clk), count) in enumerate(rows.items()):
        ids = []
        for d in docs:
            k = index.setdefault((qid, d), len(index)) if grow else index.get((qid, d), -1)
            unseen += count * (k < 0)
            ids.append(k)
        raw.append(ids)
        clicks[i, : len(clk)] = clk
        mask[i, : len(docs)] = True
        weight[i] = count
    outside = len(index)
    for i, ids in enumerate(raw):
        pair[i] = outside
        pair[i, : len(ids)] = [k if k >= 0 else outside for k in ids]
    return SessionRows(pair, clicks, mask, weight, index, {q for q, _, _ in rows}, int(weight.sum()), unseen)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``(num + 1) / (den + 2)``: a count ratio with one pseudo-click and one pseudo-skip."""
    return (num + 1.0) / (den + 2.0)


def _per_key(key: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(key.ravel(), weights=values.ravel(), minlength=size)[:size]


def _cascade_probs(a: np.ndarray, after_click: np.ndarray, after_skip: float, clicks: np.ndarray,
                   mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Click probabilities of the cascade family (CM, DCM, SDBN, DBN): top-down, the user goes on
    with ``after_click[i, r]`` after a click at ``r`` and ``after_skip`` after a skip. Returns
    (``P(C_r = c_r | clicks above)``, ``P(C_r = 1)``)."""
    n, width = a.shape
    cond = np.ones((n, width))
    full = np.zeros((n, width))
    exam = np.ones(n)  # P(E_r = 1 | clicks above)
    reach = np.ones(n)  # P(E_r = 1)
    for r in range(width):
        ar, m = a[:, r], mask[:, r]
        p = ar * exam
        clicked = clicks[:, r] > 0
        cond[:, r] = np.where(clicked, p, 1 - p)
        full[:, r] = ar * reach
        skip = np.divide(exam * (1 - ar) * after_skip, 1 - p, out=np.zeros(n), where=1 - p > 0)
        exam = np.where(m, np.where(clicked, after_click[:, r], skip), exam)
        reach = np.where(m, reach * (after_click[:, r] * ar + after_skip * (1 - ar)), reach)
    return cond, full


class FittedClickModel:
    """One of :data:`MODELS`, fitted on :class:`SessionRows` (:func:`fit_click_model`)."""

    def __init__(self, name: str, keys: dict[tuple[str, str], int], list_size: int) -> None:
        if name not in MODELS:
            raise ValueError(f"unknown click model {name!r}: choose one of {', '.join(MODELS)}")
        self.name, self.keys, self.list_size = name, keys, list_size
        self.attractiveness = np.full(len(keys), 0.5)  # per pair (dctr: its click rate)
        self.satisfaction = np.full(len(keys), 0.5)  # sdbn, dbn
        self.rank = np.full(list_size, 0.5)  # pbm θ_r; dcm λ_r; rctr click rate
        self.ubm = np.full((list_size, list_size + 1), 0.5)  # γ[r, r' + 1], r' = -1: no click above
        self.gamma = 1.0  # dbn continuation
        self.ctr = 0.5  # gctr
        self.iterations = 0
        self.sessions = 0
        self.pair_clicks = np.zeros(len(keys))  # clicks on each pair in the fitted log

    def _pairs(self, values: np.ndarray, rows: SessionRows) -> np.ndarray:
        if rows.keys is not self.keys or rows.list_size != self.list_size:
            raise ValueError("rows were folded with other pair keys or list size: fold them with keys=model.keys "
                             "and the model's list_size")
        return np.append(values, 0.5)[rows.pair]  # outside the keys (and padding): the prior, 0.5

    def probabilities(self, rows: SessionRows) -> tuple[np.ndarray, np.ndarray]:
        """(``P(C_r = c_r | clicks above)``, ``P(C_r = 1)``) for every row and rank, clipped."""
        n, width = rows.clicks.shape
        c = rows.clicks > 0
        name = self.name
        if name in ("gctr", "rctr", "dctr", "pbm", "ubm"):
            if name == "gctr":
                p = np.full((n, width), self.ctr)
            elif name == "rctr":
                p = np.broadcast_to(self.rank, (n, width)).copy()
            elif name == "dctr":
                p = self._pairs(self.attractiveness, rows)
            elif name == "pbm":
                p = self._pairs(self.attractiveness, rows) * self.rank[None, :]
            else:
                p = self._pairs(self.attractiveness, rows) * self.ubm[np.arange(width)[None, :], rows.previous_click() + 1]
            cond = np.where(c, p, 1 - p)
            full = p if name != "ubm" else self._ubm_full(rows)
        else:
            a = self._pairs(self.attractiveness, rows)
            if name == "cm":
                after, skip = np.zeros((n, width)), 1.0
            elif name == "dcm":
                after, skip = np.broadcast_to(self.rank, (n, width)), 1.0
            else:
                after, skip = self.gamma * (1 - self._pairs(self.satisfaction, rows)), self.gamma
            cond, full = _cascade_probs(a, after, skip, rows.clicks, rows.mask)
        cond = np.clip(cond, PROB_MIN, 1 - PROB_MIN)
        full = np.clip(full, PROB_MIN, 1 - PROB_MIN)
        return cond, full

    def _ubm_full(self, rows: SessionRows) -> np.ndarray:
        """``P(C_r = 1)`` under UBM, summing over the rank of the last click above."""
        a = self._pairs(self.attractiveness, rows)
        n, width = a.shape
        state = np.zeros((n, width + 1))  # P(last click above = j), column j + 1
        state[:, 0] = 1.0
        full = np.zeros((n, width))
        for r in range(width):
            g = self.ubm[r, : r + 1]  # j = -1 .. r - 1
            click = state[:, : r + 1] * g[None, :] * a[:, r : r + 1]
            full[:, r] = click.sum(axis=1)
            state[:, : r + 1] -= click
            state[:, r + 1] = full[:, r]
        return full

    def evaluate(self, rows: SessionRows) -> dict[str, Any]:
        """Log-likelihood per shown result and perplexity (overall and by rank) on ``rows``."""
        cond, full = self.probabilities(rows)
        w = rows.weight[:, None] * rows.mask
        ll = float((w * np.log(cond)).sum() / w.sum())
        observed = np.where(rows.clicks > 0, full, 1 - full)
        shown = w.sum(axis=0)
        by_rank = np.exp2(-np.divide((w * np.log2(observed)).sum(axis=0), shown, out=np.zeros(rows.list_size),
                                     where=shown > 0))
        by_rank = by_rank[shown > 0]
        return {"log_likelihood": round(ll, 6), "perplexity": round(float(by_rank.mean()), 6),
                "perplexity_by_rank": [round(float(v), 6) for v in by_rank], "sessions": rows.sessions}

    def to_json(self, source: str = "") -> dict[str, Any]:
        """Parameters in a layout :func:`rerank.ultr.simulate.load_click_model` reads (ULTRA's for
        pbm, cm and ubm). ``click_prob`` (ULTRA's by relevance label) is what a simulation uses for
        the pairs the fit did not see; ``attractiveness`` lists the fitted ones."""
        from .simulate import NAMES, ULTRA_CLICK_PROB

        if self.name not in FITTED:
            raise ValueError(f"{self.name} is a baseline, not a click model to simulate with")
        pairs = list(self.keys)
        out: dict[str, Any] = {"model_name": {"pbm": NAMES["pbm"], "cm": NAMES["cascade"], "ubm": NAMES["ubm"],
                                              "dcm": "dependent_click_model", "sdbn": "dynamic_bayesian_network_model",
                                              "dbn": "dynamic_bayesian_network_model"}[self.name],
                               "click_prob": list(ULTRA_CLICK_PROB)}
        if self.name == "pbm":
            out["exam_prob"] = [round(float(v), 6) for v in self.rank]
        elif self.name == "ubm":  # ULTRA's layout: row r holds γ[r][d - 1], d = distance to the last click, last: none
            out["exam_prob"] = [[round(float(self.ubm[r, r - d + 1]), 6) for d in range(1, r + 1)]
                                + [round(float(self.ubm[r, 0]), 6)] for r in range(self.list_size)]
        else:
            out["exam_prob"] = [1.0]
        if self.name == "dcm":
            out["continuation"] = [round(float(v), 6) for v in self.rank]
        if self.name in ("sdbn", "dbn"):
            out["gamma"] = round(float(self.gamma), 6)
            weights = self.pair_clicks if self.pair_clicks.sum() > 0 else None
            out["sat_unseen"] = round(float(np.average(self.satisfaction, weights=weights)), 6)
            out["satisfaction"] = [[q, d, round(float(v), 6)] for (q, d), v in zip(pairs, self.satisfaction, strict=True)]
        out["attractiveness"] = [[q, d, round(float(v), 6)] for (q, d), v in zip(pairs, self.attractiveness, strict=True)]
        out["fitted"] = {"model": self.name, "source": source, "sessions": self.sessions, "list_size": self.list_size,
                         "iterations": self.iterations}
        return out


def fit_click_model(name: str, rows: SessionRows, *, iterations: int = 200, tol: float = 1e-6) -> FittedClickModel:
    """Fit ``name`` (one of :data:`MODELS`) on ``rows``; EM models stop when no parameter moves by
    more than ``tol`` or after ``iterations`` rounds."""
    model = FittedClickModel(name, rows.keys, rows.list_size)
    model.sessions = rows.sessions
    n_pairs = len(rows.keys)
    w = rows.weight[:, None] * rows.mask
    c = rows.clicks
    model.pair_clicks = _per_key(rows.pair, w * c, n_pairs)
    width = rows.list_size
    ranks = np.broadcast_to(np.arange(width), c.shape)
    if name == "gctr":
        model.ctr = float((w * c).sum() / w.sum())
    elif name == "rctr":
        model.rank = _ratio((w * c).sum(axis=0), w.sum(axis=0))
    elif name == "dctr":
        model.attractiveness = _ratio(_per_key(rows.pair, w * c, n_pairs), _per_key(rows.pair, w, n_pairs))
    elif name in ("cm", "dcm", "sdbn"):
        stop = rows.first_click() if name == "cm" else rows.last_click()
        stop = np.where(stop < 0, width - 1, stop)
        seen = w * (ranks <= stop[:, None])
        model.attractiveness = _ratio(_per_key(rows.pair, seen * c, n_pairs), _per_key(rows.pair, seen, n_pairs))
        last = ranks == rows.last_click()[:, None]
        if name == "dcm":
            model.rank = _ratio((w * c * ~last).sum(axis=0), (w * c).sum(axis=0))
        elif name == "sdbn":
            model.satisfaction = _ratio(_per_key(rows.pair, w * c * last, n_pairs), _per_key(rows.pair, w * c, n_pairs))
    elif name in ("pbm", "ubm"):
        _fit_position_em(model, rows, iterations, tol)
    else:
        _fit_dbn_em(model, rows, iterations, tol)
    return model


def _fit_position_em(model: FittedClickModel, rows: SessionRows, iterations: int, tol: float) -> None:
    """EM for ``P(C) = a_qd · e_pos``, pos the rank (PBM) or (rank, previous click) (UBM)."""
    width, n_pairs = rows.list_size, len(rows.keys)
    w = rows.weight[:, None] * rows.mask
    c = rows.clicks
    if model.name == "pbm":
        pos = np.broadcast_to(np.arange(width), c.shape)
    else:
        pos = np.arange(width)[None, :] * (width + 1) + rows.previous_click() + 1
    n_pos = width * (width + 1) if model.name == "ubm" else width
    alpha = np.full(n_pairs + 1, 0.5)
    exam = np.full(n_pos, 0.5)
    shown_pair, shown_pos = _per_key(rows.pair, w, n_pairs), _per_key(pos, w, n_pos)
    for it in range(1, iterations + 1):
        a, e = alpha[rows.pair], exam[pos]
        miss = 1 - a * e
        p_attr = np.where(c > 0, 1.0, a * (1 - e) / miss)  # P(A = 1 | c), P(E = 1 | c)
        p_exam = np.where(c > 0, 1.0, e * (1 - a) / miss)
        new_alpha = np.append(_ratio(_per_key(rows.pair, w * p_attr, n_pairs), shown_pair), 0.5)
        new_exam = _ratio(_per_key(pos, w * p_exam, n_pos), shown_pos)
        moved = max(float(np.abs(new_alpha - alpha).max()), float(np.abs(new_exam - exam).max()))
        alpha, exam = new_alpha, new_exam
        model.iterations = it
        if moved < tol:
            break
    model.attractiveness = alpha[:-1]
    if model.name == "pbm":
        model.rank = exam
    else:
        model.ubm = exam.reshape(width, width + 1)


def _fit_dbn_em(model: FittedClickModel, rows: SessionRows, iterations: int, tol: float) -> None:
    """Exact EM for DBN. Up to the last click ``l`` everything is observed (examined; a click before
    ``l`` was not satisfying); after it, with ``nc_r = P(no click at r.. | E_r = 1)``:
    ``P(S_l = 1 | data) = σ / (σ + (1 - σ)(1 - γ + γ nc_{l+1}))``, and each later rank is examined
    with ``γ nc_r / (1 - γ + γ nc_r)`` given the one above was."""
    width, n_pairs = rows.list_size, len(rows.keys)
    w = rows.weight[:, None] * rows.mask
    c, m = rows.clicks, rows.mask
    n = len(c)
    ranks = np.broadcast_to(np.arange(width), c.shape)
    last = rows.last_click()
    has = last >= 0
    lc = np.maximum(last, 0)
    rows_i = np.arange(n)
    init = fit_click_model("sdbn", rows)
    alpha = np.append(init.attractiveness, 0.5)
    sigma = np.append(init.satisfaction, 0.5)
    gamma = 0.9
    shown_pair = _per_key(rows.pair, w, n_pairs)
    clicks_pair = _per_key(rows.pair, w * c, n_pairs)
    nxt = np.concatenate([m[:, 1:], np.zeros((n, 1), dtype=bool)], axis=1)  # a rank below to go on to
    for it in range(1, iterations + 1):
        a, s = alpha[rows.pair], sigma[rows.pair]
        nc = np.ones((n, width + 1))
        for r in range(width - 1, -1, -1):
            nc[:, r] = np.where(m[:, r], (1 - a[:, r]) * (1 - gamma + gamma * nc[:, r + 1]), 1.0)
        s_l, tail = s[rows_i, lc], 1 - gamma + gamma * nc[rows_i, lc + 1]
        p_sat = np.where(has, s_l / (s_l + (1 - s_l) * tail), 0.0)
        after = np.where(has, (1 - s_l) * gamma * nc[rows_i, lc + 1] / (s_l + (1 - s_l) * tail), 1.0)
        exam = np.zeros((n, width))
        for r in range(width):
            step = gamma * nc[:, r] / (1 - gamma + gamma * nc[:, r])
            prev = exam[:, r - 1] if r else np.ones(n)
            exam[:, r] = np.where(r <= last, 1.0, np.where(r == last + 1, after, prev * step))
        exam *= m
        below = ranks > last[:, None]
        p_attr = np.where(c > 0, 1.0, np.where(below, (1 - exam) * a, 0.0))
        at_last = ranks == last[:, None]
        cont_den = np.where(ranks < last[:, None], 1.0, np.where(at_last, 1 - p_sat[:, None], exam)) * nxt
        cont_num = np.where(ranks < last[:, None], 1.0, np.concatenate([exam[:, 1:], np.zeros((n, 1))], axis=1)) * nxt
        new_alpha = np.append(_ratio(_per_key(rows.pair, w * p_attr, n_pairs), shown_pair), 0.5)
        new_sigma = np.append(_ratio(_per_key(rows.pair, w * c * at_last * p_sat[:, None], n_pairs), clicks_pair), 0.5)
        den = float((rows.weight[:, None] * cont_den).sum())
        new_gamma = float(_ratio(np.asarray((rows.weight[:, None] * cont_num).sum()), np.asarray(den)))
        moved = max(float(np.abs(new_alpha - alpha).max()), float(np.abs(new_sigma - sigma).max()), abs(new_gamma - gamma))
        alpha, sigma, gamma = new_alpha, new_sigma, new_gamma
        model.iterations = it
        if moved < tol:
            break
    model.attractiveness, model.satisfaction, model.gamma = alpha[:-1], sigma[:-1], gamma
