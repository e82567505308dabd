"""PG-Rank vs contrastive training of a bi-encoder, warm-started from all-MiniLM-L6-v2.

    python benchmarks/pgrank.py                        # both objectives, 1 epoch of SciFact train
    python benchmarks/pgrank.py --objectives pgrank --epochs 2

Both train the same body on the same lists (SciFact train: one relevant document and 19 BM25
top-30 negatives per query, 4 lists a step, lr 2e-5, 128 tokens, 50 dev queries held out, best
epoch kept): PG-Rank samples 8 rankings a list from the Plackett-Luce policy of ``20·cos`` and
follows the REINFORCE gradient of nDCG@10 with the leave-one-out baseline; contrastive is the
softmax cross-entropy of the positive against the list (InfoNCE with hard negatives). Test:
rerank SciFact test candidates, BM25 and dense (the warm-start model) fused by RRF, top 100, by the
cosine of each model's embeddings. Writes benchmarks/results/pgrank.json and pgrank-utility.png
(PG-Rank's mean sampled nDCG@10 per step); models go to benchmarks/work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from common import RESULTS, WORK, machine, offline, scifact_train_test, write_result

from rerank.evaluate import compare, evaluate
from rerank.models.encoder import Encoder
from rerank.specs import stage
from rerank.train.biencoder import train_bi_encoder
from rerank.train.trainer import HISTORY, TrainConfig
from rerank.types import Hit

METRICS = ["nDCG@10", "RR@10", "R@100"]


def rerank_by(encoder: Encoder, queries, candidates, docs) -> dict:
    """Candidates reordered by cosine; each distinct document is embedded once."""
    ids = sorted({h.docid for hits in candidates.values() for h in hits})
    emb = encoder.encode_docs([docs[d] for d in ids])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    row = {d: i for i, d in enumerate(ids)}
    qe = encoder.encode_queries([q.text for q in queries])
    qe /= np.linalg.norm(qe, axis=1, keepdims=True)
    run = {}
    for q, v in zip(queries, qe, strict=True):
        hits = candidates.get(q.qid, [])
        s = emb[[row[h.docid] for h in hits]] @ v
        run[q.qid] = [Hit(hits[i].docid, float(s[i])) for i in np.argsort(-s, kind="stable")]
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objectives", default="pgrank,contrastive")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS / "pgrank.json"))
    args = ap.parse_args()
    body = offline("all-MiniLM-L6-v2")
    train, test, qrels = scifact_train_test()
    t = time.perf_counter()
    candidates = stage(f"hybrid:bm25+dense:{body}", test, k=100)(test.queries)
    first_s = time.perf_counter() - t
    base = evaluate(candidates, qrels, METRICS)
    warm = evaluate(rerank_by(Encoder(body, max_length=args.max_length), test.queries, candidates, test.docs), qrels, METRICS)
    rows = [{"system": "BM25 + dense (RRF), top 100", **{m: round(v, 4) for m, v in base.metrics.items()}},
            {"system": "all-MiniLM-L6-v2 (warm start)", **{m: round(v, 4) for m, v in warm.metrics.items()}}]
    result: dict[str, Any] = {"benchmark": "PG-Rank vs contrastive bi-encoder training on SciFact", "machine": machine(),
                              "args": vars(args), "first_stage_s": round(first_s, 1), "rows": rows, "utility": {}}
    for objective in args.objectives.split(","):
        loss, options = ("pgrank", {"samples": args.samples, "k": 10}) if objective == "pgrank" else ("softmax", {})
        folder = WORK / f"bi-{objective}-{args.epochs}"
        cfg = TrainConfig(loss=loss, loss_options=options, epochs=args.epochs, batch_size=4, lr=args.lr, seed=0,
                          checkpoint_every=50)
        t = time.perf_counter()
        history = folder / HISTORY
        if not (history.is_file() and json.loads(history.read_text()).get("finished")):  # else reuse the finished model
            train_bi_encoder(body, train, folder, cfg, group_size=20, max_length=args.max_length)
        saved = json.loads(history.read_text())
        train_s = time.perf_counter() - t
        run = rerank_by(Encoder(str(folder), max_length=args.max_length), test.queries, candidates, test.docs)
        ev = evaluate(run, qrels, METRICS)
        cmp = {c.metric: c for c in compare(warm, ev)}  # delta = trained - warm start
        utility = [s["mean_utility"] for s in saved["loss_per_step"] if "mean_utility" in s]
        rows.append({"system": f"MiniLM bi-encoder, {objective}", **{m: round(v, 4) for m, v in ev.metrics.items()},
                     "delta_vs_warm_start": round(cmp["nDCG@10"].delta, 4),
                     "p": round(cmp["nDCG@10"].randomization_pvalue, 4), "steps": saved["steps"],
                     "saved_epoch": saved["saved_epoch"], "dev": [round(h.get("dev nDCG@10", 0), 4) for h in saved["history"]],
                     "train_s": round(train_s, 1)})
        if utility:
            result["utility"][objective] = [round(u, 4) for u in utility]
        print(rows[-1], flush=True)
    write_result(result, args.out)
    print(f"\n{'system':<34}{'nDCG@10':>9}{'RR@10':>8}{'R@100':>8}{'Δ vs warm':>11}{'p':>7}")
    for r in rows:
        print(f"{r['system']:<34}{r['nDCG@10']:>9.4f}{r['RR@10']:>8.4f}{r['R@100']:>8.4f}"
              f"{r.get('delta_vs_warm_start', 0):>+11.4f}{r.get('p', 1):>7.3f}")
    if result["utility"]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for name, u in result["utility"].items():
            w = max(1, len(u) // 20)
            smooth = np.convolve(u, np.ones(w) / w, mode="valid")
            ax.plot(range(1, len(u) + 1), u, alpha=0.3)
            ax.plot(range(w, len(u) + 1), smooth, label=f"{name} (moving mean of {w})")
        ax.set_xlabel("step")
        ax.set_ylabel("mean sampled nDCG@10")
        ax.set_title("PG-Rank on SciFact train: utility of the sampled rankings", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        png = Path(args.out).with_name("pgrank-utility.png")
        fig.savefig(png, dpi=110)
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
