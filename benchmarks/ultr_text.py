"""Cross-encoders learnt from simulated clicks on SciFact train, reranking SciFact test BM25 top-100.

    python benchmarks/ultr_text.py                                   # PBM and cascade, naive/IPW/DLA, 3 seeds
    python benchmarks/ultr_text.py --click-models pbm --seeds 1 --algorithms naive,dla

BM25 logs its top 10 for every SciFact train query (the same list every time: no document is shown
at two ranks, so the log alone cannot separate position from relevance); sessions pick a query
uniformly and click by a position-based model with ULTRA's θ, or by the cascade model, with binary
attractiveness (0.1 for unjudged, 1.0 for relevant). The all-MiniLM-L6-v2 body with a fresh head
learns from the click counts: naive, IPW with the true examination probabilities (PBM: θ per rank;
cascade: each list's exact ones), and DLA (``--ranker-first``: the fraction of training in which the
ranker learns alone). The 50 dev queries (held out of the clicks) pick the epoch. Seed s draws the
log and initialises the head. DLA's θ̂_r/θ̂_1 is compared with the truth (PBM) or with the mean
examination of the logged lists (cascade).
Models go to benchmarks/work/ultr-ce-<key>/ (git-ignored, keyed by every setting; a finished one is
reused). Results: benchmarks/results/ultr-text.json (a run with the same settings keeps the click models it
did not run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from common import RESULTS, WORK, announce_cpu, machine, mean_sd, offline, scifact_train_test, write_result

from rerank.env import atomic_write
from rerank.evaluate import compare, evaluate
from rerank.rerankers.pointwise import CrossEncoder
from rerank.retrieve.bm25 import BM25
from rerank.train.crossencoder import split_dev
from rerank.train.trainer import HISTORY, TrainConfig
from rerank.ultr.learn import ALGORITHMS, TextScorer, propensity_error, train_from_clicks
from rerank.ultr.log import aggregate
from rerank.ultr.simulate import ULTRA_THETA, load_click_model, run_lists, simulate

METRICS = ["nDCG@10", "RR@10"]
CLICK_MODELS = {"pbm": {"model_name": "position_biased_model", "click_prob": [0.1, 1.0], "exam_prob": ULTRA_THETA},
                "cascade": {"model_name": "cascade_model", "click_prob": [0.1, 1.0], "exam_prob": [1.0]}}



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", default="naive,ipw,dla")
    ap.add_argument("--click-models", default="pbm,cascade")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4, help="shown lists per step")
    ap.add_argument("--lr", type=float, default=7e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--ranker-first", type=float, default=0.5, help="DLA: fraction of training before θ̂ learns")
    ap.add_argument("--depth", type=int, default=100, help="test BM25 candidates reranked")
    ap.add_argument("--out", default=str(RESULTS / "ultr-text.json"))
    args = ap.parse_args()
    facts = announce_cpu()
    body = offline("all-MiniLM-L6-v2")
    train, test, _ = scifact_train_test()
    qrels, test_qrels = train.require_qrels(), test.require_qrels()
    _, dev_q = split_dev(train.queries, qrels, 50, 0)
    dev_ids = {q.qid for q in dev_q}
    logged = BM25(train, k=30)(train.queries)
    lists = run_lists(train.queries, logged, qrels, 10)
    labels = {s.qid: np.asarray(s.labels) for s in lists}
    test_run = BM25(test, k=args.depth)(test.queries)
    base = evaluate(test_run, test_qrels, METRICS)
    result: dict[str, Any] = {"benchmark": "cross-encoders from simulated clicks on SciFact", "machine": machine(),
                              "cpu": facts, "args": vars(args),
                              "bm25": {m: round(v, 4) for m, v in base.metrics.items()}, "click_models": {}}
    print(f"BM25 test nDCG@10 {base.metrics['nDCG@10']:.4f}", flush=True)
    same = {k: v for k, v in vars(args).items() if k not in ("click_models", "seeds", "algorithms")}
    if Path(args.out).is_file():  # keep the other click models of a run with the same settings
        before = json.loads(Path(args.out).read_text())
        if {k: v for k, v in before.get("args", {}).items() if k in same} == same:
            result["click_models"] = {k: v for k, v in before["click_models"].items()
                                      if k not in args.click_models.split(",")}
    algorithms = args.algorithms.split(",")
    for cm in args.click_models.split(","):
        model = load_click_model(CLICK_MODELS[cm])
        exam = np.mean([model.examination(s.labels) for s in lists if len(s.docs) == 10], axis=0)
        truth = (exam / exam[0]).tolist()  # PBM: θ_r/θ_1; cascade: mean examination of the logged lists
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in algorithms}
        for seed in range(args.seeds):
            stats = aggregate(simulate(lists, model, args.sessions, seed=seed), 10, f"scifact-train/{cm}/{args.sessions}/{seed}")
            stats.groups = [g for g in stats.groups if g.qid not in dev_ids]

            def exact(g: Any, model: Any = model) -> np.ndarray:
                return model.examination(labels[g.qid][: len(g.docs)])

            for alg in algorithms:
                key = json.dumps({**vars(args), "out": None, "algorithms": None, "click_models": None, "seeds": None,
                                  "cm": cm, "alg": alg, "seed": seed, "v": 2}, sort_keys=True)
                folder = WORK / f"ultr-ce-{cm}-{alg}-{seed}-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}"
                history = folder / HISTORY
                t = time.perf_counter()
                if not (history.is_file() and json.loads(history.read_text()).get("finished")):
                    scorer = TextScorer(body, stats.groups, {q.qid: q.text for q in train.queries}, train.docs,
                                        max_length=args.max_length, dev=(qrels, dev_q, logged, train.rel))
                    cfg = TrainConfig(loss="softmax", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                      checkpoint_every=50)
                    train_from_clicks(stats, scorer, folder, cfg, algorithm=alg, propensities=exact if alg == "ipw" else None,
                                      ranker_first=args.ranker_first, overwrite=True)
                train_s = time.perf_counter() - t
                saved = json.loads(history.read_text())
                scored = folder / "test.json"  # the model's test figures (the folder is keyed by every setting)
                if scored.is_file():
                    row = json.loads(scored.read_text())
                else:
                    run = CrossEncoder(str(folder), max_length=args.max_length, depth=args.depth)(test.queries, test_run)
                    ev = evaluate(run, test_qrels, METRICS)
                    cmp = {c.metric: c for c in compare(base, ev)}  # delta = from clicks - BM25
                    row = {"seed": seed, **{m: round(v, 4) for m, v in ev.metrics.items()},
                           "delta_vs_bm25": round(cmp["nDCG@10"].delta, 4),
                           "p": round(cmp["nDCG@10"].randomization_pvalue, 4),
                           "dev": [round(h.get("dev nDCG@10", 0), 4) for h in saved["history"]],
                           "saved_epoch": saved["saved_epoch"], "train_s": round(train_s, 1)}
                    with atomic_write(scored) as f:
                        json.dump(row, f)
                info = json.loads((folder / "clicks.json").read_text())
                if "propensity" in info:
                    row["propensity"] = [round(v, 4) for v in info["propensity"]]
                    row["propensity_max_abs_error_ranks_2_10"] = round(
                        float(np.max(np.abs(np.asarray(info["propensity"][1:]) - np.asarray(truth[1:])))), 4)
                runs[alg].append(row)
                print(f"{cm} seed {seed} {alg}: " + json.dumps(row), flush=True)
        res: dict[str, Any] = {"seeds": args.seeds, "truth": [round(v, 4) for v in truth], "runs": runs,
                               **{a: mean_sd([r["nDCG@10"] for r in runs[a]]) for a in algorithms}}
        if "dla" in runs:
            props = np.mean([r["propensity"] for r in runs["dla"]], axis=0)
            res["dla_propensity"] = [round(float(v), 4) for v in props]
            res["dla_propensity_max_abs_error_ranks_2_10"] = round(float(np.max(np.abs(props[1:] - np.asarray(truth[1:])))), 4)
            res["dla_propensity_error"] = propensity_error(props, truth)
        result["click_models"][cm] = res
        write_result(result, args.out)
    print(f"CPU: {facts['cpu']} ({facts['cores']} cores; {facts['flags']})")
    print(f"{'clicks':<9}{'learner':<8}{'nDCG@10 mean':>13}{'sd':>8}{'vs BM25':>9}   runs")
    for cm, res in result["click_models"].items():
        for a in [a for a in ALGORITHMS if a in res]:
            r = res[a]
            print(f"{cm:<9}{a:<8}{r['mean']:>13.4f}{r['sd']:>8.4f}{r['mean'] - base.metrics['nDCG@10']:>+9.4f}   {r['runs']}")
        if "dla_propensity" in res:
            print(f"{cm:<9}θ̂/θ̂1 DLA   " + " ".join(f"{v:.3f}" for v in res["dla_propensity"]))
            print(f"{cm:<9}θ/θ1 truth  " + " ".join(f"{v:.3f}" for v in res["truth"])
                  + f"   (max |error| at ranks 2-10: {res['dla_propensity_max_abs_error_ranks_2_10']:.3f})")


if __name__ == "__main__":
    main()
