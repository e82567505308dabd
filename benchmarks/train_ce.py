"""Cross-encoders trained from the all-MiniLM-L6-v2 body on SciFact train (BM25 hard negatives),
one per loss, then reranking SciFact test BM25 top-100, against BM25 itself.

    python benchmarks/train_ce.py                       # bce, ranknet, listnet, lambdaloss
    python benchmarks/train_ce.py --losses listnet --epochs 2

Trained models go to benchmarks/work/ce-<loss>/ (git-ignored); a finished one is reused, an
interrupted one resumes from its checkpoint. Results: benchmarks/results/train-ce.json.
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

from rerank.data.formats import read_trec_run, write_trec_run
from rerank.evaluate import compare, evaluate
from rerank.rerankers.pointwise import CrossEncoder
from rerank.retrieve.bm25 import BM25
from rerank.train.crossencoder import train_cross_encoder
from rerank.train.trainer import HISTORY, TrainConfig

METRICS = ["nDCG@10", "RR@10", "R@100"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", default="bce,ranknet,listnet,lambdaloss")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4, help="lists per step")
    ap.add_argument("--group-size", type=int, default=8, help="1 positive + group-1 BM25 negatives")
    ap.add_argument("--lr", type=float, default=7e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--negatives", default="bm25:30")
    ap.add_argument("--depth", type=int, default=100, help="test BM25 candidates reranked")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "train-ce.json"))
    args = ap.parse_args()
    body = offline("all-MiniLM-L6-v2")

    train, test, qrels = scifact_train_test()
    bm25_run = BM25(test, k=args.depth)(test.queries)
    base = evaluate(bm25_run, qrels, METRICS)
    rows = [{"system": "bm25", **{m: round(v, 4) for m, v in base.metrics.items()}}]
    result = {"benchmark": "cross-encoder training on SciFact", "machine": machine(), "body": "all-MiniLM-L6-v2",
              "args": vars(args), "rows": rows}
    for loss in args.losses.split(","):
        out = WORK / f"ce-{loss}-e{args.epochs}-g{args.group_size}-lr{args.lr:g}-s{args.seed}"
        done = out / HISTORY
        t0 = time.perf_counter()
        if not (done.is_file() and json.loads(done.read_text()).get("finished")):
            cfg = TrainConfig(loss=loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
            train_cross_encoder(body, train, out, cfg, negatives=args.negatives, group_size=args.group_size,
                                max_length=args.max_length, dev_queries=50)
        history = json.loads(done.read_text())
        train_s = time.perf_counter() - t0
        cached = out / f"test-run-bm25-top{args.depth}.trec"  # a finished model's test run is reused
        if cached.is_file():
            run, rerank_s = read_trec_run(cached), json.loads(cached.with_suffix(".json").read_text())["seconds"]
        else:
            reranker = CrossEncoder(str(out), activation="none", depth=args.depth)
            t1 = time.perf_counter()
            run = reranker(test.queries, bm25_run)
            rerank_s = time.perf_counter() - t1
            write_trec_run(run, cached, tag=loss)
            cached.with_suffix(".json").write_text(json.dumps({"seconds": rerank_s}))
        ev = evaluate(run, qrels, METRICS)
        cmp = {c.metric: c for c in compare(base, ev)}  # delta = reranked - BM25
        rows.append({"system": f"minilm-ce {loss}", **{m: round(v, 4) for m, v in ev.metrics.items()},
                     "delta_ndcg10_vs_bm25": round(cmp["nDCG@10"].delta, 4),
                     "p_ndcg10_vs_bm25": round(cmp["nDCG@10"].randomization_pvalue, 4),
                     "train_seconds": round(train_s, 1), "train_seconds_recorded": history.get("train_seconds_this_process"),
                     "rerank_seconds": round(rerank_s, 1), "steps": history["steps"], "dev": history["history"]})
        write_result(result, args.out)
    print(f"\nSciFact test, BM25 top-{args.depth} reranked ({args.epochs} epoch(s), group {args.group_size}, lr {args.lr:g})")
    print(f"{'system':<24}" + "".join(f"{m:>9}" for m in METRICS) + f"{'Δ nDCG':>9}{'p':>8}{'train s':>9}")
    for r in rows:
        extra = (f"{r['delta_ndcg10_vs_bm25']:>+9.4f}{r['p_ndcg10_vs_bm25']:>8.4f}{r['train_seconds_recorded'] or 0:>9.0f}"
                 if "delta_ndcg10_vs_bm25" in r else "")
        print(f"{r['system']:<24}" + "".join(f"{r[m]:>9.4f}" for m in METRICS) + extra)


if __name__ == "__main__":
    main()
