"""Feature-based LTR: the MLP ranker trained with each loss vs LightGBM LambdaMART, on the
LightGBM lambdarank example set and the MSLR-WEB10K sample (../shared/data/ltr).

    python benchmarks/ltr.py                    # every loss, 3 seeds, both sets
    python benchmarks/ltr.py --losses listnet,lambdaloss --seeds 1

Both learners see the same split: 20% of the training queries held out as dev (early stopping
for LightGBM, best epoch for the MLP; a second LightGBM row uses the fixed settings of
LightGBM's lambdarank example instead, as early stopping on a few dev queries is noisy); test nDCG@10 is
ir_measures' (trec_eval gains = labels), over test queries with at least one relevant document.
Writes benchmarks/results/ltr.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from common import RESULTS, machine, write_result

from rerank.env import shared_data_dir
from rerank.train.features import FeatureRanker, letor_ndcg, read_letor, split_queries, train_feature_ranker
from rerank.train.losses import LOSSES
from rerank.train.trainer import TrainConfig

SETS = {"lightgbm-lambdarank": ("ltr/lightgbm-lambdarank/rank.train", "ltr/lightgbm-lambdarank/rank.test"),
        "mslr-web10k-sample": ("ltr/mslr-web10k-sample/msn1.fold1.train.5k.txt", "ltr/mslr-web10k-sample/msn1.fold1.test.5k.txt")}


def lightgbm_run(fit, dev, test, seed: int, early_stopping: bool) -> tuple[float, float, int]:
    """LambdaMART with early stopping on dev (lr 0.05, up to 2,000 trees), or with the settings of
    LightGBM's own lambdarank example (100 trees, lr 0.1, min 50 rows a leaf)."""
    import warnings

    import lightgbm as lgb

    group = list(map(int, fit.offsets[1:] - fit.offsets[:-1]))
    t = time.perf_counter()
    if early_stopping:
        model = lgb.LGBMRanker(objective="lambdarank", n_estimators=2000, learning_rate=0.05, num_leaves=31,
                               min_child_samples=20, random_state=seed, verbose=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eval_set's deprecation in lightgbm 4.7; older ones lack the new names
            model.fit(fit.features, fit.labels, group=group, eval_set=[(dev.features, dev.labels)],
                      eval_group=[list(map(int, dev.offsets[1:] - dev.offsets[:-1]))], eval_at=[10],
                      callbacks=[lgb.early_stopping(100, verbose=False)])
        trees = int(model.best_iteration_ or 0)
    else:
        model = lgb.LGBMRanker(objective="lambdarank", n_estimators=100, learning_rate=0.1, num_leaves=31,
                               min_child_samples=50, min_child_weight=5.0, random_state=seed, verbose=-1)
        model.fit(fit.features, fit.labels, group=group)
        trees = 100
    seconds = time.perf_counter() - t
    return letor_ndcg(test, model.predict(test.features))["nDCG@10"], seconds, trees


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", default=",".join(n for n in LOSSES if n != "ranknet-weighted"))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a small MLP is fastest on one)")
    ap.add_argument("--out", default=str(RESULTS / "ltr.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("../shared/data not found (set RERANK_SHARED_DATA)")
    result: dict[str, Any] = {"benchmark": "feature LTR: MLP x loss vs LightGBM LambdaMART", "machine": machine(),
                              "args": vars(args), "sets": {}}
    for name in args.sets.split(","):
        tr, te = SETS[name]
        train = read_letor(shared / tr)
        test = read_letor(shared / te, num_features=train.num_features)
        rows = []
        lgbm = ["lightgbm-lambdamart", "lightgbm-lambdamart-example"]
        for system in lgbm + [f"mlp {loss}" for loss in args.losses.split(",")]:
            scores, secs, extra = [], [], []
            for seed in range(args.seeds):
                fit, dev = split_queries(train, 0.2, seed)
                if system in lgbm:
                    s, t, it = lightgbm_run(fit, dev, test, seed, early_stopping=system == "lightgbm-lambdamart")
                    extra.append(it)
                else:
                    cfg = TrainConfig(loss=system.split()[1], epochs=args.epochs, batch_size=8, lr=args.lr, warmup=0.05,
                                      weight_decay=0.01, seed=seed, checkpoint_every=10**9)
                    with tempfile.TemporaryDirectory() as out:
                        t0 = time.perf_counter()
                        hist = train_feature_ranker(fit, out, cfg, dev=dev)
                        t = time.perf_counter() - t0
                        s = letor_ndcg(test, FeatureRanker.load(out).predict(test))["nDCG@10"]
                    extra.append(hist["saved_epoch"])
                scores.append(s)
                secs.append(t)
            row: dict[str, Any] = {"system": system, "ndcg10_mean": round(statistics.mean(scores), 4),
                                   "ndcg10_std": round(statistics.stdev(scores), 4) if len(scores) > 1 else 0.0,
                                   "per_seed": [round(x, 4) for x in scores], "seconds_mean": round(statistics.mean(secs), 1),
                                   ("best_iterations" if system.startswith("lightgbm") else "best_epochs"): extra}
            rows.append(row)
            print(f"{name:<22} {system:<24} {row['ndcg10_mean']:.4f} ± {row['ndcg10_std']:.4f}  ({row['seconds_mean']:.1f} s)",
                  flush=True)
        base = max(r["ndcg10_mean"] for r in rows[:2])  # the better LightGBM
        for r in rows:
            r["vs_lightgbm"] = round(r["ndcg10_mean"] - base, 4)
        result["sets"][name] = {"train_queries": len(train), "test_queries": len(test.qrels()), "features": train.num_features,
                                "rows": rows}
        write_result(result, args.out)
    print(f"\ntest nDCG@10, mean ± std over {args.seeds} seed(s) (dev = 20% of train queries)")
    for name, res in result["sets"].items():
        print(f"\n{name}: {res['train_queries']} train queries, {res['test_queries']} judged test queries, {res['features']} "
              f"features")
        print(f"{'system':<26}{'nDCG@10':>9}{'± std':>8}{'vs LGBM':>9}{'secs':>7}")
        for r in res["rows"]:
            print(f"{r['system']:<26}{r['ndcg10_mean']:>9.4f}{r['ndcg10_std']:>8.4f}{r['vs_lightgbm']:>+9.4f}{r['seconds_mean']:>7.1f}")


if __name__ == "__main__":
    main()
