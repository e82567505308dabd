"""Evaluation with ir_measures: aggregate and per-query scores, paired significance tests.

Measures are named in ir_measures syntax (``nDCG@10``, ``RR@10``, ``R@100``, ``AP``,
``RR(rel=2)@10``). A binary measure written without ``rel`` takes the dataset's relevance
threshold (``rel=2`` for TREC DL), and the result keeps the name as written. Judged queries
that a run has no results for count as 0 (trec_eval ``-c``), so a run cannot look better by
dropping hard queries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError
from .types import Ranking, validate_ranking

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100")
Qrels = Mapping[str, Mapping[str, int]]


def parse_metric(name: str, rel: int = 1) -> Any:
    """An ir_measures measure from its name; binary measures get ``rel`` unless it is given."""
    import ir_measures

    try:
        m = ir_measures.parse_measure(name)
    except (ValueError, NameError, SyntaxError, KeyError) as e:
        raise DataError(f"unknown measure {name!r} ({e}); use ir_measures names such as nDCG@10, RR@10, R@100, AP") from None
    if "rel" in m.SUPPORTED_PARAMS and "rel" not in m.params and rel != 1:
        m = m(rel=rel)
    return m


def _judged(qrels: Qrels) -> list[str]:
    return [qid for qid, docs in qrels.items() if docs]


@dataclass
class Evaluation:
    """Mean scores and per-query scores of one run. ``per_query[metric][qid]``."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    rel: int = 1
    missing: list[str] = field(default_factory=list)

    def table(self, title: str = "") -> str:
        return format_table([(title or "run", self.metrics)], list(self.metrics))

    def __str__(self) -> str:
        return self.table()


def evaluate(run: Ranking, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS, rel: int = 1) -> Evaluation:
    """Score ``run`` against ``qrels``: mean over every judged query (missing ones count 0)."""
    import ir_measures

    if not metrics:
        raise ValueError("no metrics asked for")
    validate_ranking(run, "run")
    measures = {name: parse_metric(name, rel) for name in metrics}
    judged = _judged(qrels)
    if not judged:
        raise DataError("the qrels judge no query")
    qrels_d = {q: dict(qrels[q]) for q in judged}
    run_d = {qid: {h.docid: float(h.score) for h in hits} for qid, hits in run.items() if qid in qrels_d and hits}
    # ir_measures orders by score (ties by docid, as trec_eval); make the score order the list order
    for qid, hits in run.items():
        if qid in run_d and any(hits[i].score < hits[i + 1].score for i in range(len(hits) - 1)):
            n = len(hits)
            run_d[qid] = {h.docid: float(n - i) for i, h in enumerate(hits)}
    per_query: dict[str, dict[str, float]] = {name: dict.fromkeys(judged, 0.0) for name in metrics}
    by_measure = {m: name for name, m in measures.items()}
    if run_d:
        for r in ir_measures.iter_calc(list(measures.values()), qrels_d, run_d):
            per_query[by_measure[r.measure]][r.query_id] = float(r.value)
    agg = {name: sum(v.values()) / len(v) for name, v in per_query.items()}
    return Evaluation(agg, per_query, rel, missing=[q for q in judged if q not in run_d])


# ---------------------------------------------------------------- significance
@dataclass(frozen=True)
class Comparison:
    metric: str
    mean_a: float
    mean_b: float
    delta: float
    t_pvalue: float
    randomization_pvalue: float
    queries: int


def compare(a: Evaluation, b: Evaluation, samples: int = 10000, seed: int = 0) -> list[Comparison]:
    """Paired two-sided t-test and randomization (sign-flip permutation) test, per metric, on
    the queries both evaluations share."""
    import numpy as np
    from scipy import stats

    out = []
    rng = np.random.default_rng(seed)
    for metric in a.per_query:
        if metric not in b.per_query:
            continue
        qids = sorted(set(a.per_query[metric]) & set(b.per_query[metric]))
        if not qids:
            raise DataError(f"{metric}: the two runs share no judged query")
        x = np.array([a.per_query[metric][q] for q in qids])
        y = np.array([b.per_query[metric][q] for q in qids])
        d = y - x
        if np.allclose(d, 0):
            t_p = r_p = 1.0
        else:
            t_p = float(stats.ttest_rel(y, x).pvalue)
            observed = abs(d.mean())
            signs = rng.choice((-1.0, 1.0), size=(samples, d.size))
            perm = np.abs((signs * d).mean(axis=1))
            r_p = float((np.sum(perm >= observed - 1e-12) + 1) / (samples + 1))
        out.append(Comparison(metric, float(x.mean()), float(y.mean()), float(d.mean()),
                              t_p if not math.isnan(t_p) else 1.0, r_p, len(qids)))
    return out


# ---------------------------------------------------------------- printing
def format_table(rows: Sequence[tuple[str, Mapping[str, float]]], metrics: Sequence[str], label: str = "run") -> str:
    """A plain aligned table: one row per run (or per ``label``: query), one column per metric."""
    w0 = max([len(label)] + [len(name) for name, _ in rows])
    widths = [max(len(m), 7) for m in metrics]
    head = "  ".join([label.ljust(w0)] + [m.rjust(w) for m, w in zip(metrics, widths, strict=True)])
    lines = [head, "-" * len(head)]
    for name, vals in rows:
        cells = [f"{vals[m]:.4f}".rjust(w) if m in vals else "-".rjust(w) for m, w in zip(metrics, widths, strict=True)]
        lines.append("  ".join([name.ljust(w0)] + cells))
    return "\n".join(lines)


def format_comparison(rows: Sequence[Comparison], name_a: str = "A", name_b: str = "B") -> str:
    """Two runs side by side, with the deltas and p-values; run names in full (columns widen)."""
    wm = max([len("metric")] + [len(c.metric) for c in rows])
    wa, wb = max(len(name_a), 7), max(len(name_b), 7)
    head = f"{'metric':<{wm}} {name_a:>{wa}} {name_b:>{wb}} {'delta':>8} {'t-test p':>9} {'rand. p':>9}"
    lines = [head, "-" * len(head)]
    for c in rows:
        lines.append(f"{c.metric:<{wm}} {c.mean_a:{wa}.4f} {c.mean_b:{wb}.4f} {c.delta:+8.4f} {c.t_pvalue:9.4f} "
                     f"{c.randomization_pvalue:9.4f}")
    return "\n".join(lines)


def format_per_query(ev: Evaluation) -> str:
    metrics = list(ev.per_query)
    qids = sorted(next(iter(ev.per_query.values())))
    return format_table([(q, {m: ev.per_query[m][q] for m in metrics}) for q in qids], metrics, label="query")
