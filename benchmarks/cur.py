"""Cross-encoder search by CUR factorisation (ANNCUR, ADACUR) vs retrieve-then-rerank at equal
scorer budgets: top-k recall against the scorer's exact top k, and end-to-end nDCG@10.

    python benchmarks/cur.py                                  # both settings below
    python benchmarks/cur.py --settings scifact-splade --budgets 50,100,200

Settings (a scorer, a collection, anchor queries, test queries):
* ``scifact-splade``: SPLADE-tiny (MS MARCO) on SciFact's 5,183 abstracts; anchors = the 809
  train queries, test = the 300 test queries (the full set the papers' protocol asks for).
* ``cranfield-ce``: the MiniLM cross-encoder trained in this project (``benchmarks/train_ce.py
  --losses listnet --epochs 2``; raw logits, 128 tokens, bf16) on Cranfield's 1,400 abstracts;
  anchors = 125 of the 225 queries, test = the other 100 (seeded split). SciFact's exact matrix
  for a cross-encoder (1,109 x 5,183 = 5.7M pairs at ~95 pairs/s here) would take 17 hours.

The anchor matrix is built by the library (``CUR.index``, the real scorer, stored under
``indexes/``), the test queries' exact scores by the same scorer (cached in benchmarks/work/).
The searches then run the library's CUR stage with a scorer that looks those exact scores up,
counting every call; a check re-runs ADACUR with the real scorer on a few queries and reports
the agreement. Methods at budget B calls per query: ``bm25>>scorer`` and ``dense>>scorer``
(MiniLM bi-encoder) rerank their top B; ``anncur`` (uniform anchors k_i = B/2, then the top
B/2 of the approximation), ``adacur`` (B/(r+1) uniform anchors, then r rounds),
``adacur+bm25`` (first round = BM25's top B/(r+1)). Writes benchmarks/results/cur.json and cur.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from common import RESULTS, WORK, machine, offline, write_result

from rerank.data import load_dataset
from rerank.evaluate import compare, evaluate
from rerank.models.engine import Cost
from rerank.rerankers.base import Reranker, with_tail
from rerank.retrieve.bm25 import BM25
from rerank.retrieve.cur import CUR
from rerank.retrieve.dense import Dense
from rerank.types import Hit, Query, Ranking

KS = (1, 10, 50, 100)


class Lookup(Reranker):
    """The exact scores of the test queries, looked up: the real scorer's answers, at no cost."""

    def __init__(self, real: Reranker, queries: Sequence[Query], docs: Sequence[str], matrix: np.ndarray) -> None:
        super().__init__(depth=10**9)
        self.name, self.model_key = real.name, real.model_key
        self.table = {(q.text, d): float(matrix[i, j]) for i, q in enumerate(queries) for j, d in enumerate(docs)}
        self._cost = Cost()

    @property
    def cost(self) -> Cost:
        return self._cost

    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [self.table[p] for p in pairs]


def setting(name: str) -> dict[str, Any]:
    from rerank.rerankers.pointwise import CrossEncoder, Splade

    if name == "scifact-splade":
        train, test = load_dataset("scifact", split="train"), load_dataset("scifact", split="test")
        return {"ds": test, "anchors": train.queries, "test": test.queries, "qrels": test.require_qrels(),
                "scorer": Splade(offline("splade-tiny-msmarco")), "scorer_name": "splade-tiny-msmarco",
                "collection": "BEIR SciFact (5,183 abstracts)"}
    if name == "cranfield-ce":
        ds = load_dataset("cranfield")
        order = np.random.default_rng(0).permutation(len(ds.queries))
        anchors = [ds.queries[i] for i in sorted(order[:125])]
        test_queries = [ds.queries[i] for i in sorted(order[125:])]
        model = WORK / "ce-listnet-e2-g8-lr7e-05-s0"
        if not (model / "config.json").is_file():
            raise SystemExit(f"{model} missing: python benchmarks/train_ce.py --losses listnet --epochs 2")
        return {"ds": ds, "anchors": anchors, "test": test_queries, "qrels": ds.require_qrels(),
                "scorer": CrossEncoder(str(model), activation="none", max_length=128, dtype="bfloat16"),
                "scorer_name": "MiniLM cross-encoder trained on SciFact (listnet), raw logit, 128 tokens",
                "collection": "Cranfield (1,400 abstracts)"}
    raise SystemExit(f"unknown setting {name!r}")


def exact_matrix(tag: str, scorer: Reranker, queries: Sequence[Query], docs: Sequence[str]) -> tuple[np.ndarray, float | None]:
    """The scorer's exact scores of the test queries against every item (cached, resumable per
    block) and the seconds they took (None when an older cache did not record them)."""
    key = hashlib.blake2b((scorer.model_key + "".join(q.text for q in queries) + str(len(docs))).encode(),
                          digest_size=6).hexdigest()
    path = WORK / f"cur-exact-{tag}-{key}.npy"
    took = path.with_suffix(".json")
    if path.is_file():
        return np.load(path), json.loads(took.read_text())["seconds"] if took.is_file() else None
    part = path.with_suffix(".partial.npy")
    out = np.load(part) if part.is_file() else np.full((len(queries), len(docs)), np.nan, dtype=np.float32)
    step = max(1, 20000 // len(docs))
    t0 = time.perf_counter()
    for start in range(0, len(queries), step):
        if not np.isnan(out[start]).any():
            continue
        out[start : start + step] = scorer.score_matrix([q.text for q in queries[start : start + step]], docs)
        np.save(part, out)
        print(f"  exact scores: {min(start + step, len(queries))}/{len(queries)} queries, {time.perf_counter() - t0:.0f}s",
              flush=True)
    np.save(path, out)
    part.unlink(missing_ok=True)
    seconds = round(time.perf_counter() - t0, 1)
    took.write_text(json.dumps({"seconds": seconds}))
    return out, seconds


def rerank_top(
    first: Ranking, budget: int, lookup: Lookup, queries: Sequence[Query], texts: dict[str, str]
) -> tuple[Ranking, float]:
    """Retrieve-then-rerank at ``budget`` calls: the first stage's top ``budget`` by exact score, then its rest."""
    out, calls = {}, 0
    for q in queries:
        hits = first.get(q.qid, [])
        head = hits[:budget]
        scores = lookup.score([(q.text, texts[h.docid]) for h in head])
        calls += len(head)
        ranked = sorted((Hit(h.docid, s) for h, s in zip(head, scores, strict=True)), key=lambda h: -h.score)
        out[q.qid] = with_tail(ranked, hits[budget:])[:100]
    return out, calls / len(queries)


def topk_recall(ranking: Ranking, queries: Sequence[Query], exact_top: list[list[str]]) -> dict[str, float]:
    out = {}
    for k in KS:
        vals = [
            len({h.docid for h in ranking.get(q.qid, [])[:k]} & set(top[:k])) / k
            for q, top in zip(queries, exact_top, strict=True)
        ]
        out[f"recall@{k}"] = round(float(np.mean(vals)), 4)
    return out


def run_setting(name: str, budgets: list[int], rounds: int, check: int) -> dict[str, Any]:
    st = setting(name)
    ds, anchors, test, scorer = st["ds"], st["anchors"], st["test"], st["scorer"]
    docids = [d for d, _ in ds.docs.items()]
    texts = dict(ds.docs.items())
    doc_texts = [texts[d] for d in docids]
    print(f"== {name}: {len(anchors)} anchor queries, {len(test)} test queries, {len(docids)} items", flush=True)
    real = CUR(scorer, ds, anchors, budget=max(budgets), progress=True)
    path = real.index()
    from rerank.indexes import read_manifest

    build_s = (read_manifest(path) or {}).get("build_seconds")
    print(f"  anchor matrix {real.matrix[0].shape} in {path} (build {build_s}s)", flush=True)
    exact, exact_s = exact_matrix(name, scorer, test, doc_texts)
    lookup = Lookup(scorer, test, doc_texts, exact)
    exact_order = np.argsort(-exact, axis=1, kind="stable")[:, :100]
    exact_top = [[docids[j] for j in row] for row in exact_order]
    exact_run = {q.qid: [Hit(docids[j], float(exact[i, j])) for j in exact_order[i]] for i, q in enumerate(test)}
    tested = {q.qid for q in test}
    qrels = {qid: judged for qid, judged in st["qrels"].items() if qid in tested}  # Cranfield: the anchors have qrels too
    evals: dict[tuple[str, int], Any] = {}

    def ndcg(run: Ranking, key: tuple[str, int] | None = None) -> float:
        e = evaluate(run, qrels, ["nDCG@10"])
        if key is not None:
            evals[key] = e
        return round(e.metrics["nDCG@10"], 4)

    bm25 = BM25(ds, k=1000, with_text=False)(test)
    dense = Dense(offline("all-MiniLM-L6-v2"), ds, k=1000, with_text=False)(test)
    rows: list[dict[str, Any]] = []
    runs: dict[tuple[str, int], Ranking] = {}
    for b in budgets:
        for method, first in (("bm25>>scorer", bm25), ("dense>>scorer", dense)):
            run, calls = rerank_top(first, b, lookup, test, texts)
            runs[method, b] = run
            rows.append({"method": method, "budget": b, "calls_per_query": calls, **topk_recall(run, test, exact_top),
                         "nDCG@10": ndcg(run, (method, b))})
        for method, r, init in (
            ("anncur", 1, None),
            ("adacur", rounds, None),
            ("adacur+bm25", rounds, BM25(ds, k=b, with_text=False)),
        ):
            stage = CUR(lookup, ds, anchors, budget=b, rounds=r, init=init, k=100, with_text=False)
            t1 = time.perf_counter()
            run = stage(test)
            seconds = time.perf_counter() - t1
            runs[method, b] = run
            rows.append({"method": method, "budget": b, "anchor_items": stage.anchor_items, "rounds": r,
                         "calls_per_query": stage.calls / len(test), **topk_recall(run, test, exact_top),
                         "nDCG@10": ndcg(run, (method, b)), "search_seconds_excluding_scorer": round(seconds, 2)})
        for row in rows[-5:]:
            print(f"  B={b:<4} {row['method']:<14} calls {row['calls_per_query']:6.1f}  "
                  + "  ".join(f"R@{k} {row[f'recall@{k}']:.3f}" for k in KS) + f"  nDCG@10 {row['nDCG@10']:.4f}", flush=True)
    significance = []
    for b in budgets:
        for method in ("anncur", "adacur", "adacur+bm25"):
            c = compare(evals["bm25>>scorer", b], evals[method, b])[0]
            significance.append({"method": method, "versus": "bm25>>scorer", "budget": b, "delta_nDCG@10": round(c.delta, 4),
                                 "p": round(c.randomization_pvalue, 4)})
    # the simulation against the real thing: ADACUR with the real scorer on the first `check` queries
    b = 100 if 100 in budgets else budgets[0]
    live = CUR(scorer, ds, anchors, budget=b, rounds=rounds, k=100, with_text=False)
    t1 = time.perf_counter()
    live_run = live(test[:check])
    live_s = time.perf_counter() - t1
    sim = {q.qid: runs["adacur", b][q.qid] for q in test[:check]}
    overlap10 = np.mean([len({h.docid for h in live_run[q.qid][:10]} & {h.docid for h in sim[q.qid][:10]}) / 10
                         for q in test[:check]])
    diffs = [abs(h.score - sim[q.qid][i].score) for q in test[:check] for i, h in enumerate(live_run[q.qid][:b])
             if sim[q.qid][i].docid == h.docid]
    live_recall = topk_recall(live_run, test[:check], exact_top[:check])["recall@10"]
    sim_recall = topk_recall(sim, test[:check], exact_top[:check])["recall@10"]
    print(f"  live ADACUR (B={b}) on {check} queries: top-10 overlap with the simulation {overlap10:.0%}, recall@10 "
          f"{live_recall:.3f} (simulated {sim_recall:.3f}), max |score diff| {max(diffs):.2g}, {live_s:.1f}s", flush=True)
    return {"collection": st["collection"], "scorer": st["scorer_name"], "anchor_queries": len(anchors),
            "test_queries": len(test), "items": len(docids), "index_build_seconds": build_s,
            "exact_test_seconds": exact_s, "exact_nDCG@10": ndcg(exact_run), "bm25_nDCG@10": ndcg(bm25),
            "dense_nDCG@10": ndcg(dense), "rows": rows, "vs_bm25_rerank": significance,
            "live_check": {"budget": b, "queries": check, "top10_overlap": float(overlap10), "recall@10": live_recall,
                           "simulated_recall@10": sim_recall, "max_score_diff": float(max(diffs)),
                           "seconds": round(live_s, 1), "calls_per_query": live.calls / check}}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, axes = plt.subplots(len(settings), len(KS), figsize=(4 * len(KS), 3.4 * len(settings)), squeeze=False)
    for row, (name, res) in enumerate(settings.items()):
        methods = list(dict.fromkeys(r["method"] for r in res["rows"]))
        for col, k in enumerate(KS):
            ax = axes[row][col]
            for m in methods:
                pts = [(r["calls_per_query"], r[f"recall@{k}"]) for r in res["rows"] if r["method"] == m]
                ax.plot(*zip(*pts, strict=True), marker="o", label=m, linestyle="--" if ">>" in m else "-")
            ax.set_title(f"{name}: top-{k} recall", fontsize=10)
            ax.set_xlabel("scorer calls per query")
            ax.set_xscale("log")
            budgets = sorted({r["budget"] for r in res["rows"]})
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.minorticks_off()
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="scifact-splade,cranfield-ce")
    ap.add_argument("--budgets", default="25,50,100,200,400")
    ap.add_argument("--rounds", type=int, default=9, help="ADACUR rounds after the first")
    ap.add_argument("--check", type=int, default=30, help="test queries re-run with the real scorer")
    ap.add_argument("--out", default=str(RESULTS / "cur.json"))
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON in --out")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    budgets = [int(b) for b in args.budgets.split(",")]
    result: dict[str, Any] = {"benchmark": "CUR cross-encoder search vs retrieve-then-rerank", "machine": machine(),
                              "args": vars(args), "settings": {}}
    for name in args.settings.split(","):
        result["settings"][name] = run_setting(name, budgets, args.rounds, args.check)
        write_result(result, args.out)
    plot(result, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
