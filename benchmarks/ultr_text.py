"""Cross-encoders learnt from simulated clicks on SciFact train, reranking SciFact test BM25 top-100.

    python benchmarks/ultr_text.py                          # naive and DLA, 20,000 PBM sessions
    python benchmarks/ultr_text.py --algorithms dla --sessions 50000

BM25 logs its top 10 for every SciFact train query; sessions pick a query uniformly and click by
a position-based model with ULTRA's θ and binary attractiveness (0.1 for unjudged, 1.0 for
relevant). The all-MiniLM-L6-v2 body with a fresh head learns from the click counts (naive, or
DLA with its propensity model); the 50 dev queries (held out of the clicks) pick the epoch.
Compare with BM25 and with the same body trained on the labels (benchmarks/train_ce.py).
Models go to benchmarks/work/ultr-ce-<algorithm>/ (git-ignored; a finished one is reused).
Results: benchmarks/results/ultr-text.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, WORK, machine, offline, scifact_train_test, write_result

from rerank.evaluate import compare, evaluate
from rerank.rerankers.pointwise import CrossEncoder
from rerank.retrieve.bm25 import BM25
from rerank.train.crossencoder import split_dev
from rerank.train.trainer import HISTORY, TrainConfig
from rerank.ultr.learn import TextScorer, train_from_clicks
from rerank.ultr.log import aggregate
from rerank.ultr.simulate import ULTRA_THETA, load_click_model, run_lists, simulate

METRICS = ["nDCG@10", "RR@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", default="naive,dla")
    ap.add_argument("--sessions", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4, help="shown lists per step")
    ap.add_argument("--lr", type=float, default=7e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--depth", type=int, default=100, help="test BM25 candidates reranked")
    ap.add_argument("--out", default=str(RESULTS / "ultr-text.json"))
    args = ap.parse_args()
    body = offline("all-MiniLM-L6-v2")
    train, test, _ = scifact_train_test()
    qrels = train.require_qrels()
    _, dev_q = split_dev(train.queries, qrels, 50, 0)
    dev_ids = {q.qid for q in dev_q}
    logged = BM25(train, k=30)(train.queries)
    lists = run_lists(train.queries, logged, qrels, 10)
    pbm = load_click_model({"model_name": "position_biased_model", "click_prob": [0.1, 1.0], "exam_prob": ULTRA_THETA})
    stats = aggregate(simulate(lists, pbm, args.sessions, seed=0), 10, f"scifact-train/pbm/{args.sessions}")
    stats.groups = [g for g in stats.groups if g.qid not in dev_ids]
    test_run = BM25(test, k=args.depth)(test.queries)
    base = evaluate(test_run, test.require_qrels(), METRICS)
    rows = [{"system": "bm25", **{m: round(v, 4) for m, v in base.metrics.items()}}]
    result = {"benchmark": "cross-encoders from simulated clicks on SciFact", "machine": machine(), "args": vars(args),
              "clicks": stats.summary(), "rows": rows}
    print(json.dumps(stats.summary()))
    for alg in args.algorithms.split(","):
        folder = WORK / f"ultr-ce-{alg}-{args.sessions}"
        t = time.perf_counter()
        history = folder / HISTORY
        if not (history.is_file() and json.loads(history.read_text()).get("finished")):
            scorer = TextScorer(body, stats.groups, {q.qid: q.text for q in train.queries}, train.docs,
                                max_length=args.max_length, dev=(qrels, dev_q, logged, train.rel))
            cfg = TrainConfig(loss="softmax", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0,
                              checkpoint_every=50)
            train_from_clicks(stats, scorer, folder, cfg, algorithm=alg)
        train_s = time.perf_counter() - t
        saved = json.loads(history.read_text())
        t = time.perf_counter()
        run = CrossEncoder(str(folder), max_length=args.max_length, depth=args.depth)(test.queries, test_run)
        rerank_s = time.perf_counter() - t
        ev = evaluate(run, test.require_qrels(), METRICS)
        cmp = {c.metric: c for c in compare(base, ev)}  # delta = from clicks - BM25
        info = json.loads((folder / "clicks.json").read_text())
        rows.append({"system": f"MiniLM CE from clicks ({alg})", **{m: round(v, 4) for m, v in ev.metrics.items()},
                     "delta_vs_bm25": round(cmp["nDCG@10"].delta, 4), "p": round(cmp["nDCG@10"].randomization_pvalue, 4),
                     "dev": [round(h.get("dev nDCG@10", 0), 4) for h in saved["history"]], "steps": saved["steps"],
                     "train_s": round(train_s, 1), "rerank_s": round(rerank_s, 1), "propensity": info.get("propensity")})
        print(rows[-1], flush=True)
    write_result(result, args.out)
    print(f"{'system':<34}{'nDCG@10':>9}{'RR@10':>8}{'Δ':>9}{'p':>8}")
    for r in rows:
        print(f"{r['system']:<34}{r['nDCG@10']:>9.4f}{r['RR@10']:>8.4f}{r.get('delta_vs_bm25', 0):>+9.4f}{r.get('p', 1):>8.3f}")


if __name__ == "__main__":
    main()
