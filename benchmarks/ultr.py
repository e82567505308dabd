"""Unbiased learning to rank from simulated and real clicks.

    python benchmarks/ultr.py                      # both LETOR sets, PBM and cascade, 5 seeds
    python benchmarks/ultr.py --sets lightgbm-lambdarank --click-models pbm --seeds 1

Protocol (as in the DLA paper and ULTRA): 20% of the training queries are held out as a labelled
dev set (best epoch kept); a weak logging ranker (the feature MLP trained on the labels of 1% of
the remaining queries) shows its top 10 of every query; sessions pick a query uniformly and click
by the click model (ULTRA's PBM or cascade parameters). Each learner trains the same feature MLP
with the softmax loss on the click counts: naive (clicks as labels), IPW with the true
propensities (PBM: θ per rank; cascade: each list's exact examination probabilities), DLA, and
the full-label upper bound (all candidates of the same queries with their labels). Test
nDCG@10 is ir_measures' over test queries with a relevant document. Seeds vary the simulated log
and the initialisation; the logging ranker and the split are fixed.

Also: DLA's and result randomization's propensities against the true θ (PBM), DLA's propensities
on the real Yandex WSCD 2012 sample (table ranker: one score per query-document), and the click
log's own cost: write, then stream and fold, ``--io-sessions`` sessions.
Writes benchmarks/results/ultr.json and ultr-propensity.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from common import RESULTS, announce_cpu, machine, mean_sd, write_result

from rerank.env import shared_data_dir
from rerank.train.features import FeatureRanker, letor_ndcg, read_letor, split_queries, train_feature_ranker
from rerank.train.trainer import TrainConfig
from rerank.ultr.learn import (
    FeatureScorer,
    TableScorer,
    pbm_em_propensities,
    propensity_error,
    randomization_propensities,
    train_from_clicks,
    train_logging_ranker,
)
from rerank.ultr.log import aggregate, iter_sessions, write_click_log
from rerank.ultr.simulate import letor_lists, load_click_model, position_propensities, simulate

SETS = {"lightgbm-lambdarank": ("ltr/lightgbm-lambdarank/rank.train", "ltr/lightgbm-lambdarank/rank.test"),
        "mslr-web10k-sample": ("ltr/mslr-web10k-sample/msn1.fold1.train.5k.txt", "ltr/mslr-web10k-sample/msn1.fold1.test.5k.txt")}
YANDEX = "clicks/yandex-wscd2012-sample/trainSample"


def config(args: argparse.Namespace, seed: int) -> TrainConfig:
    return TrainConfig(loss="softmax", epochs=args.epochs, batch_size=16, lr=args.lr, warmup=0.0, weight_decay=0.0,
                       seed=seed, precision="fp32", checkpoint_every=10**9)



def run_set(name: str, shared: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tr, te = SETS[name]
    train = read_letor(shared / tr)
    test = read_letor(shared / te, num_features=train.num_features)
    fit, dev = split_queries(train, 0.2, 0)
    logger = train_logging_ranker(fit, work / f"{name}-logger", fraction=0.01, seed=0)
    lists = letor_lists(fit, logger.predict(fit), 10)
    labels = {s.qid: np.asarray(s.labels) for s in lists}
    out: dict[str, Any] = {"train_queries": len(fit), "dev_queries": len(dev), "test_queries": len(test.qrels()),
                           "logging_ranker": round(letor_ndcg(test, logger.predict(test))["nDCG@10"], 4)}
    full = []
    for seed in range(args.seeds):
        folder = work / f"{name}-full-{seed}"
        train_feature_ranker(fit, folder, config(args, seed), dev=dev, overwrite=True)
        full.append(letor_ndcg(test, FeatureRanker.load(folder).predict(test))["nDCG@10"])
    out["full_labels"] = mean_sd(full)
    print(f"{name}: {len(fit)} train / {len(dev)} dev / {out['test_queries']} test queries; logging ranker "
          f"{out['logging_ranker']:.4f}, full labels {out['full_labels']['mean']:.4f}", flush=True)
    for cm in args.click_models.split(","):
        model = load_click_model(cm)
        rows: dict[str, list[float]] = {"naive": [], "ipw": [], "dla": []}
        props: list[list[float]] = []
        seconds: dict[str, list[float]] = {k: [] for k in rows}
        ctr = []
        for seed in range(args.seeds):
            stats = aggregate(simulate(lists, model, args.sessions, seed=1000 + seed), 10, f"{name}/{cm}/{seed}")
            ctr.append(stats.clicks / stats.sessions)

            def truth(g: Any, model: Any = model) -> np.ndarray:
                return model.examination(labels[g.qid][: len(g.docs)])

            for alg, values in rows.items():
                folder = work / f"{name}-{cm}-{alg}-{seed}"
                t = time.perf_counter()
                r = train_from_clicks(stats, FeatureScorer(fit, stats.groups, dev), folder, config(args, seed), algorithm=alg,
                                      propensities=truth if alg == "ipw" else None, propensity_lr=args.propensity_lr,
                                      ranker_first=args.ranker_first,
                                      overwrite=True)
                seconds[alg].append(time.perf_counter() - t)
                values.append(letor_ndcg(test, FeatureRanker.load(folder).predict(test))["nDCG@10"])
                if alg == "dla":
                    props.append(r["propensity"])
            print(f"  {cm} seed {seed}: " + " ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()), flush=True)
        res: dict[str, Any] = {k: mean_sd(v) for k, v in rows.items()}
        res["train_seconds"] = {k: round(statistics.mean(v), 1) for k, v in seconds.items()}
        res["clicks_per_session"] = round(statistics.mean(ctr), 3)
        res["dla_minus_naive"] = round(res["dla"]["mean"] - res["naive"]["mean"], 4)
        res["dla_minus_ipw"] = round(res["dla"]["mean"] - res["ipw"]["mean"], 4)
        est = np.mean(np.asarray(props), axis=0)
        res["dla_propensity"] = [round(float(v), 4) for v in est]
        if cm == "pbm":
            theta = position_propensities(model, 10)
            res["true_propensity"] = [round(v / theta[0], 4) for v in theta]
            res["dla_propensity_error"] = propensity_error(est, theta)
            res["dla_propensity_error_per_seed"] = [propensity_error(p, theta) for p in props]
            rand = aggregate(simulate(lists, model, args.sessions, seed=2000, randomize=True), 10, "randomized")
            r_est, r_se = randomization_propensities(rand)
            res["randomization_propensity"] = [round(float(v), 4) for v in r_est]
            res["randomization_stderr"] = [round(float(v), 4) for v in r_se]
            res["randomization_propensity_error"] = propensity_error(r_est, theta)
            em = pbm_em_propensities(rand)  # the same randomized log, fitted as a PBM by EM
            res["em_propensity_randomized_log"] = [round(float(v), 4) for v in em]
            res["em_propensity_error"] = propensity_error(em, theta)
        else:  # no per-rank propensity: compare with the mean examination of the logged lists
            exam = np.mean([model.examination(s.labels) for s in lists if len(s.docs) == 10], axis=0)
            res["mean_examination"] = [round(float(v / exam[0]), 4) for v in exam]
            res["dla_vs_mean_examination"] = propensity_error(est, exam)
        out[cm] = res
    return out


def yandex(shared: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    path = shared / YANDEX
    stats = aggregate(iter_sessions(path), 10, str(path))
    t = time.perf_counter()
    cfg = TrainConfig(loss="softmax", epochs=100, batch_size=16, lr=0.05, warmup=0.0, weight_decay=0.0, seed=0,
                      precision="fp32", checkpoint_every=10**9)
    r = train_from_clicks(
        stats, TableScorer(stats.groups), work / "yandex", cfg, algorithm="dla", propensity_lr=args.propensity_lr,
        ranker_first=args.ranker_first
    )
    ctr = stats.ctr_by_rank()
    return {"log": YANDEX, **{k: v for k, v in stats.summary().items() if k != "source"},
            "dla_propensity": [round(v, 4) for v in r["propensity"]],
            "em_propensity": [round(float(v), 4) for v in pbm_em_propensities(stats)],
            "same_document_ratio": same_document_ratios(stats),
            "ctr_relative": [round(float(v / ctr[0]), 4) for v in ctr], "seconds": round(time.perf_counter() - t, 1)}


def same_document_ratios(stats: Any) -> list[float]:
    """θ_r/θ_1 from documents shown at both rank 1 and rank r (a check without any model):
    Σ w·CTR(d at r) / Σ w·CTR(d at 1), w = the smaller of the two impression counts."""
    clicks: dict[tuple[str, str], np.ndarray] = {}
    shown: dict[tuple[str, str], np.ndarray] = {}
    for g in stats.groups:
        for r, d in enumerate(g.docs):
            clicks.setdefault((g.qid, d), np.zeros(10))[r] += g.clicks[r]
            shown.setdefault((g.qid, d), np.zeros(10))[r] += g.sessions
    num, den = np.zeros(10), np.zeros(10)
    for k, n in shown.items():
        both = (n > 0) & (n[0] > 0)
        w = np.minimum(n, n[0])
        ctr = np.divide(clicks[k], n, out=np.zeros(10), where=n > 0)
        num += np.where(both, w * ctr, 0)
        den += np.where(both, w * ctr[0], 0)
    return [round(float(v), 4) for v in np.divide(num, den, out=np.zeros(10), where=den > 0)]


def log_io(sessions: int, shared: Path, work: Path) -> dict[str, Any]:
    """Write a simulated log of ``sessions`` and stream it back into the aggregate."""
    train = read_letor(shared / SETS["mslr-web10k-sample"][0])
    lists = letor_lists(train, np.random.default_rng(0).random(len(train.labels)), 10)
    path = work / "big.jsonl.gz"
    t = time.perf_counter()
    write_click_log(simulate(lists, load_click_model("pbm"), sessions, seed=0), path)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    stats = aggregate(iter_sessions(path), 10, str(path))
    read_s = time.perf_counter() - t
    tracemalloc.start()  # a second pass, traced: the most memory Python held while streaming
    aggregate(iter_sessions(path), 10, str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"sessions": sessions, "distinct_lists": len(stats.groups), "file_mb": round(path.stat().st_size / 2**20, 1),
            "write_s": round(write_s, 1), "read_and_fold_s": round(read_s, 1), "sessions_per_s_read": round(sessions / read_s),
            "peak_python_mb_while_reading": round(peak / 2**20, 2)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, r["pbm"]) for n, r in result["sets"].items() if "pbm" in r]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.4), squeeze=False)
    ranks = np.arange(1, 11)
    for ax, (name, r) in zip(axes[0], panels, strict=False):
        ax.plot(ranks, r["true_propensity"], "k--", label="true θ (PBM)")
        ax.plot(ranks, r["dla_propensity"], "o-", label="DLA")
        ax.errorbar(ranks, r["randomization_propensity"], yerr=r["randomization_stderr"], fmt="s:", capsize=2,
                    label="randomization")
        ax.set_title(f"{name}: simulated PBM", fontsize=9)
    if "yandex" in result:
        ax = axes[0][-1]
        y = result["yandex"]
        ax.plot(ranks, y["dla_propensity"], "o-", label="DLA")
        ax.plot(ranks, y["em_propensity"], "s--", label="PBM fitted by EM")
        ax.plot(ranks, y["same_document_ratio"], "^-.", label="same document, rank 1 vs r")
        ax.plot(ranks, y["ctr_relative"], "x:", label="click rate (biased)")
        ax.set_title(f"Yandex WSCD sample: {y['sessions']:,} sessions", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("rank")
        ax.set_ylabel("θ / θ1")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--click-models", default="pbm,cascade")
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--propensity-lr", type=float, default=0.05)
    ap.add_argument("--ranker-first", type=float, default=0.5, help="DLA: epochs of the ranker alone before θ̂ learns")
    ap.add_argument("--io-sessions", type=int, default=1_000_000)
    ap.add_argument("--out", default=str(RESULTS / "ultr.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # a small MLP is fastest on one thread
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("../shared/data not found (set RERANK_SHARED_DATA)")
    facts = announce_cpu()
    result: dict[str, Any] = {"benchmark": "unbiased LTR from clicks: naive / IPW / DLA vs full labels", "machine": machine(),
                              "cpu": facts, "args": vars(args), "sets": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.sets.split(","):
            result["sets"][name] = run_set(name, shared, args, work)
        result["yandex"] = yandex(shared, args, work)
        if args.io_sessions:
            result["log_io"] = log_io(args.io_sessions, shared, work)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\n{'set':<22}{'clicks':<9}{'naive':>16}{'IPW (true θ)':>16}{'DLA':>16}{'DLA-naive':>10}"
          f"{'DLA-IPW':>9}{'full labels':>13}")
    for name, r in result["sets"].items():
        for cm in args.click_models.split(","):
            c = r[cm]
            cells = "".join(f"{c[k]['mean']:>9.4f} ±{c[k]['sd']:.3f}" for k in ("naive", "ipw", "dla"))
            print(f"{name:<22}{cm:<9}{cells}{c['dla_minus_naive']:>+10.4f}{c['dla_minus_ipw']:>+9.4f}"
                  f"{r['full_labels']['mean']:>13.4f}")
    print("\npropensity θ/θ1 by rank (PBM):")
    for name, r in result["sets"].items():
        if "pbm" in r:
            p = r["pbm"]
            print(f"  {name} truth        " + " ".join(f"{v:.3f}" for v in p["true_propensity"]))
            print(f"  {name} DLA          " + " ".join(f"{v:.3f}" for v in p["dla_propensity"])
                  + f"   max rel err {p['dla_propensity_error']['max_relative_error']:.3f}, r "
                    f"{p['dla_propensity_error']['pearson']:.4f}")
            print(f"  {name} randomization" + " ".join(f"{v:.3f}" for v in p["randomization_propensity"])
                  + f"   max rel err {p['randomization_propensity_error']['max_relative_error']:.3f}")
            print(f"  {name} EM (rand. log)" + " ".join(f"{v:.3f}" for v in p["em_propensity_randomized_log"])
                  + f"   max rel err {p['em_propensity_error']['max_relative_error']:.3f}")
    y = result["yandex"]
    print("  Yandex sample DLA  " + " ".join(f"{v:.3f}" for v in y["dla_propensity"]))
    print("  Yandex sample EM   " + " ".join(f"{v:.3f}" for v in y["em_propensity"]))
    print("  Yandex same doc    " + " ".join(f"{v:.3f}" for v in y["same_document_ratio"]))
    print("  Yandex sample CTR  " + " ".join(f"{v:.3f}" for v in y["ctr_relative"]))
    if "log_io" in result:
        print(f"\nclick log I/O: {result['log_io']}")
    write_result(result, args.out)
    plot(result, Path(args.out).with_name("ultr-propensity.png"))
    print(f"plot: {Path(args.out).with_name('ultr-propensity.png')} ({result['seconds']} s in all)")
    print(f"CPU: {facts['cpu']} ({facts['cores']} cores; {facts['flags']})")


if __name__ == "__main__":
    main()
