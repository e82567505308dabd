"""Cross-encoders learnt from clicks on a log that identifies position bias: SciFact train shown by
three logging rankers sharing the sessions (BM25, the all-MiniLM-L6-v2 dense retriever, their
hybrid), reranking SciFact test BM25 top-100.

    python benchmarks/ultr_text_mixed.py                          # PBM and cascade, 3 seeds, 200,000 sessions
    python benchmarks/ultr_text_mixed.py --click-models pbm --seeds 1 --learners naive,dla
    python benchmarks/ultr_text_mixed.py --memory 1000000,10000000   # peak memory of folding the log

Each session draws a train query uniformly and one of the three rankers (a third each); the ranker
shows its top 10 and the user clicks by a position-based model with ULTRA's θ or by the cascade
model, binary attractiveness (0.1 unjudged, 1.0 relevant), as benchmarks/ultr_text.py. The same
document is shown at different ranks by different rankers, so the log identifies θ: intervention
harvesting (rerank.ultr.harvest) estimates it from the clicks alone, and DLA starts from that
estimate (``propensity_start``; ``--ranker-first`` epochs of the ranker alone with those weights,
then joint training) and is pulled back toward it (``--dla-anchor`` λ: without it, joint training
with a ranker that has had one epoch moved θ̂ from 0.007 to 0.54 off the truth). Learners, all
the MiniLM body with a fresh head trained on the folded log (one group per query and shown list:
at most 3 x 809): naive, IPW with the true examination (``ipw-true``: θ per rank under PBM, each
list's exact examination under cascade), DLA; ``labels`` (opt-in) is naive on the same sessions
with clicks = the labels, the protocol's full-information ceiling. ``--report`` writes the JSON
from the models already trained (the acceptance JSON comes from
``--click-models pbm,cascade --sessions 2000000 --learners naive,ipw-true,dla,labels --report``). The 50 dev
queries (held out of the clicks) pick the epoch. Seed s draws the log and initialises the head.
``--expected`` trains on the log's expectation instead of a sample (each shown list's expected
sessions, clicks = sessions x click rate): what each learner learns from an unlimited log, written
with ``--out`` to a file of its own.
Opt-in learners for cascade browsing (``--learners naive-cascade,dla-cascade``, written with
``--out`` to a file of their own): the likelihood of the clicks on the ranks each session reached
(``browsing="cascade"`` in rerank.ultr.learn), DLA's θ̂ then the examination of a reached rank
(from flat, no anchor; its theta_max_error against the click model's, 1 at every rank in the classic
cascade).

Rows (benchmarks/results/ultr-text-mixed.json): {"learner": "naive|ipw-true|dla|bm25",
"click_model": "pbm|cascade", "log": NAME, "seed": S, "nDCG@10": x, "theta_max_error": y}, with
theta_max_error = max_r |θ̂_r/θ̂_1 - θ_r/θ_1| for DLA (and the harvest estimate beside it). Trained
models go to benchmarks/work/ultr-mixed-<key>/ (git-ignored, keyed by every setting; a finished one
is reused, so runs accumulate). The logged lists are cached in benchmarks/work/ too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from common import RESULTS, WORK, announce_cpu, cpu_facts, machine, mean_sd, offline, paired, scifact_train_test, write_result

from rerank.env import atomic_write
from rerank.ultr.simulate import ULTRA_THETA, LoggingPolicy, ShownList

METRICS = ["nDCG@10", "RR@10"]
CLICK_MODELS: dict[str, dict[str, Any]] = {
    "pbm": {"model_name": "position_biased_model", "click_prob": [0.1, 1.0], "exam_prob": ULTRA_THETA},
    "cascade": {"model_name": "cascade_model", "click_prob": [0.1, 1.0], "exam_prob": [1.0]}}
LEARNERS = ("naive", "ipw-true", "dla")
#: opt-in: the learners of cascade browsing (rerank.ultr.learn's browsing="cascade": the likelihood of the
#: clicks on the ranks each session reached; DLA's θ̂ is then the examination of a reached rank, from flat)
CASCADE_LEARNERS = {"naive-cascade": "naive", "dla-cascade": "dla"}
# The ceiling of the protocol: the naive learner on the same sessions with clicks = the labels
# (no position bias, no noise clicks), i.e. the same cross-encoder trained on full information.
ORACLE = {"model_name": "position_biased_model", "click_prob": [0.0, 1.0], "exam_prob": [1.0]}


def logging_rankers() -> dict[str, str]:
    dense = offline("all-MiniLM-L6-v2")
    return {"bm25": "bm25", "dense": f"dense:{dense}", "hybrid": f"hybrid:bm25+dense:{dense}"}


def logged_lists(train: Any, qrels: dict[str, dict[str, int]]) -> list[LoggingPolicy]:
    """Each logging ranker's top 10 for every train query, labelled (cached: retrieval runs once)."""
    from rerank.specs import stage
    from rerank.ultr.simulate import run_lists

    rankers = logging_rankers()
    cache = WORK / f"ultr-mixed-lists-{hashlib.blake2b(json.dumps(rankers).encode(), digest_size=6).hexdigest()}.json"
    if not cache.is_file():
        out = {}
        for name, spec in rankers.items():
            run = stage(spec, train, k=10, with_text=False)(train.queries)
            out[name] = [[s.qid, list(s.docs), list(s.labels), s.query] for s in run_lists(train.queries, run, qrels, 10)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as f:
            json.dump(out, f)
    stored = json.loads(cache.read_text())
    return [LoggingPolicy(name, [ShownList(q, tuple(d), tuple(y), t) for q, d, y, t in rows], 1.0)
            for name, rows in stored.items()]


def expected_log(policies: list[LoggingPolicy], model: Any, sessions: int, source: str) -> Any:
    """The limit of the simulated log as sessions grow, scaled to ``sessions``: each (query, shown
    list) gets its expected number of sessions (queries drawn uniformly, the rankers sharing a query's
    sessions by their shares) and clicks = sessions x the click model's click rate per rank. The
    learners trained on it show what each would learn from an unlimited log (no sampling noise)."""
    from rerank.ultr.log import ClickGroup, ClickStats

    per_query: dict[str, list[tuple[ShownList, float]]] = {}
    for p in policies:
        for s in p.lists:
            if s.docs:
                per_query.setdefault(s.qid, []).append((s, p.share))
    stats = ClickStats([], 10, source=source)
    index: dict[tuple[str, tuple[str, ...]], Any] = {}
    for qid, shown in per_query.items():
        total = sum(share for _, share in shown)
        for s, share in shown:
            n = sessions / len(per_query) * share / total
            docs, labels = s.docs[:10], s.labels[:10]
            g = index.get((qid, docs))
            if g is None:
                g = index[(qid, docs)] = ClickGroup(qid, docs, 0, np.zeros(len(docs)), s.query)
                stats.groups.append(g)
            g.sessions += round(n)
            g.clicks += n * model.click_rates(labels)
    stats.sessions = sessions
    stats.clicks = round(sum(float(g.clicks.sum()) for g in stats.groups))
    return stats


def memory_job(sessions: int) -> dict[str, float]:
    """Simulate and fold the mixed log (PBM) as it streams: seconds, groups kept, peak RSS."""
    from rerank.ultr.log import aggregate
    from rerank.ultr.simulate import load_click_model, simulate

    train, _, _ = scifact_train_test()
    policies = logged_lists(train, train.require_qrels())
    t = time.perf_counter()
    stats = aggregate(simulate(policies, load_click_model(CLICK_MODELS["pbm"]), sessions, seed=0), 10)
    return {"seconds": time.perf_counter() - t, "groups": len(stats.groups),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def memory(sizes: list[int], out: str) -> None:
    rows = []
    for n in sizes:
        r = subprocess.run([sys.executable, __file__, "--memory-job", str(n)], capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append({"sessions": n, **{k: round(v, 2) for k, v in res.items()}})
        print(f"{n:>11,} sessions: {res['seconds']:.0f} s, {res['groups']:,} groups, peak RSS {res['peak_rss_mb']:.0f} MB",
              flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak RSS largest / smallest: {ratio:.3f}")
    write_result({"machine": cpu_facts(), "rows": rows, "rss_largest_over_smallest": round(ratio, 3)}, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learners", default=",".join(LEARNERS),
                    help="of naive, ipw-true, dla and labels (the same learner on clicks = labels: the ceiling)")
    ap.add_argument("--click-models", default="pbm,cascade")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed+seeds-1")
    ap.add_argument("--sessions", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4, help="shown lists per step")
    ap.add_argument("--lr", type=float, default=7e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--ranker-first", type=float, default=0.5, help="DLA: epochs of the ranker alone (harvest θ̂ weights)")
    ap.add_argument("--dla-anchor", type=float, default=10.0,
                    help="DLA: strength of the pull of θ̂ toward the harvest estimate (0: start there only)")
    ap.add_argument("--depth", type=int, default=100, help="test BM25 candidates reranked")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-queries", type=int, help="a smoke run: only the first N train queries get sessions")
    ap.add_argument("--test-queries", type=int, help="a smoke run: rerank only the first N test queries")
    ap.add_argument("--out", default=str(RESULTS / "ultr-text-mixed.json"))
    ap.add_argument("--expected", action="store_true",
                    help="train on the expected log (clicks = sessions x click rate): an unlimited log's limit")
    ap.add_argument("--report", action="store_true",
                    help="write the rows of the models already trained and tested; train nothing")
    ap.add_argument("--memory", help="sessions, comma-separated: measure folding memory instead of training")
    ap.add_argument("--memory-job", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_job:
        print(json.dumps(memory_job(args.memory_job)))
        return
    facts = announce_cpu()
    if args.memory:
        memory([int(x) for x in args.memory.split(",")], str(RESULTS / "ultr-text-mixed-memory.json"))
        return
    run_benchmark(args, facts)


def run_benchmark(args: argparse.Namespace, facts: dict[str, Any]) -> None:
    from rerank.evaluate import compare, evaluate
    from rerank.rerankers.pointwise import CrossEncoder
    from rerank.retrieve.bm25 import BM25
    from rerank.train.crossencoder import split_dev
    from rerank.train.trainer import HISTORY, TrainConfig
    from rerank.ultr.harvest import Cells, harvest_propensities
    from rerank.ultr.learn import TextScorer, train_from_clicks
    from rerank.ultr.log import aggregate, fold_ranks
    from rerank.ultr.simulate import load_click_model, simulate

    body = offline("all-MiniLM-L6-v2")
    train, test, _ = scifact_train_test()
    qrels, test_qrels = train.require_qrels(), test.require_qrels()
    _, dev_q = split_dev(train.queries, qrels, 50, 0)
    dev_ids = {q.qid for q in dev_q}
    policies = logged_lists(train, qrels)
    if args.train_queries:
        keep = {q.qid for q in [q for q in train.queries if q.qid not in dev_ids][: args.train_queries]}
        policies = [LoggingPolicy(p.name, [s for s in p.lists if s.qid in keep], p.share) for p in policies]
    test_queries = test.queries[: args.test_queries] if args.test_queries else test.queries
    test_qrels = {q.qid: test_qrels[q.qid] for q in test_queries if q.qid in test_qrels}
    label = {(s.qid, d): y for p in policies for s in p.lists for d, y in zip(s.docs, s.labels, strict=True)}
    dev_candidates = BM25(train, k=30)(dev_q)
    test_run = BM25(test, k=args.depth)(test_queries)
    base = evaluate(test_run, test_qrels, METRICS)
    print(f"BM25 test nDCG@10 {base.metrics['nDCG@10']:.4f} ({len(test_queries)} queries)", flush=True)
    log_name = f"scifact-train/{'+'.join(p.name for p in policies)}/{'expected' if args.expected else args.sessions}"
    rows: list[dict[str, Any]] = []
    bias: dict[str, dict[str, Any]] = {}
    learners = args.learners.split(",")
    unknown = set(learners) - {*LEARNERS, "labels", *CASCADE_LEARNERS}
    if unknown:
        raise SystemExit(f"error: unknown learner(s) {sorted(unknown)}: of {', '.join([*LEARNERS, 'labels', *CASCADE_LEARNERS])}")
    for cm in args.click_models.split(","):
        model = load_click_model(CLICK_MODELS[cm])
        shown = [s for p in policies for s in p.lists if len(s.docs) == 10]
        exam = np.mean([model.examination(s.labels) for s in shown], axis=0)
        truth = exam / exam[0]  # PBM: θ_r/θ_1; cascade: mean examination of the logged lists
        reached = np.resize(np.asarray(CLICK_MODELS[cm]["exam_prob"], dtype=np.float64), 10)  # examination of a reached
        reached[len(CLICK_MODELS[cm]["exam_prob"]):] = CLICK_MODELS[cm]["exam_prob"][-1]       # rank (PBM: θ)
        reached /= reached[0]
        bias[cm] = naive_misorders(shown, model)
        print(f"{cm}: relevant below non-relevant in expected clicks (what naive's optimum gets wrong): "
              f"{bias[cm]['misordered']:,} of {bias[cm]['pairs']:,} pairs in a shown list ({bias[cm]['share']:.2%}); "
              f"relevant shown at rank 1: {bias[cm]['relevant_at_rank_1']:.0%}", flush=True)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rows.append({"learner": "bm25", "click_model": cm, "log": log_name, "seed": seed,
                         "nDCG@10": round(base.metrics["nDCG@10"], 4), "theta_max_error": None,
                         "per_query": base.per_query["nDCG@10"]})
            if args.expected:
                stats = expected_log(policies, model, args.sessions, f"{log_name}/{cm}")
            else:
                stats = aggregate(simulate(policies, model, args.sessions, seed=seed), 10, f"{log_name}/{cm}/{seed}")
            stats.groups = [g for g in stats.groups if g.qid not in dev_ids]
            harvest = harvest_propensities(Cells.of(fold_ranks(simulate(policies, model, args.sessions, seed=seed), 10)))
            harvest_error = float(np.nanmax(np.abs(harvest - truth)))
            print(f"{cm} seed {seed}: {len(stats.groups):,} lists; harvest θ̂ " + " ".join(f"{v:.3f}" for v in harvest)
                  + f" (max |error| {harvest_error:.3f})", flush=True)

            def exact(g: Any, model: Any = model) -> np.ndarray:
                return model.examination([label[(g.qid, d)] for d in g.docs])

            for learner in learners:
                alg = {"ipw-true": "ipw", "labels": "naive", **CASCADE_LEARNERS}.get(learner, learner)
                settings = {**vars(args), "out": None, "learners": None, "click_models": None, "seeds": None,
                            "memory": None, "memory_job": None, "device": None,
                            "cm": "labels" if learner == "labels" else cm, "learner": learner, "seed": seed, "v": 3}
                for flag in ("report", "first_seed"):  # keys of models trained before these flags stay as they were
                    settings.pop(flag)
                if not args.expected:
                    settings.pop("expected")
                if learner != "dla":
                    settings.pop("dla_anchor")  # naive and IPW do not depend on it
                key = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=6).hexdigest()
                folder = WORK / f"ultr-mixed-{settings['cm']}-{learner}-{seed}-{key}"
                history = folder / HISTORY
                scored = folder / "test.json"
                if args.report and not scored.is_file():
                    print(f"{cm} seed {seed} {learner}: not trained yet (--report trains nothing)", flush=True)
                    continue
                t = time.perf_counter()
                if not (history.is_file() and json.loads(history.read_text()).get("finished")):
                    used = stats
                    if learner == "labels":
                        oracle = load_click_model(ORACLE)
                        used = (expected_log(policies, oracle, args.sessions, f"{log_name}/labels") if args.expected else
                                aggregate(simulate(policies, oracle, args.sessions, seed=seed), 10, f"{log_name}/labels/{seed}"))
                        used.groups = [g for g in used.groups if g.qid not in dev_ids]
                    scorer = TextScorer(body, used.groups, {q.qid: q.text for q in train.queries}, train.docs,
                                        max_length=args.max_length, device=args.device, seed=seed,
                                        dev=(qrels, dev_q, dev_candidates, train.rel))
                    cfg = TrainConfig(loss="softmax", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                      checkpoint_every=50)
                    train_from_clicks(used, scorer, folder, cfg, algorithm=alg, device=args.device,
                                      propensities=exact if alg == "ipw" else None, ranker_first=args.ranker_first,
                                      propensity_start=harvest.tolist() if learner == "dla" else None,
                                      propensity_anchor=args.dla_anchor if learner == "dla" else 0.0, overwrite=True,
                                      browsing="cascade" if learner in CASCADE_LEARNERS else "position")
                train_s = time.perf_counter() - t
                if scored.is_file():
                    row = {**json.loads(scored.read_text()), "click_model": cm}  # labels: one model for both
                else:
                    run = CrossEncoder(str(folder), max_length=args.max_length, depth=args.depth,
                                       device=args.device)(test_queries, test_run)
                    ev = evaluate(run, test_qrels, METRICS)
                    cmp = {c.metric: c for c in compare(base, ev)}
                    saved = json.loads(history.read_text())
                    row = {"learner": learner, "click_model": cm, "log": log_name, "seed": seed,
                           "nDCG@10": round(ev.metrics["nDCG@10"], 4), "theta_max_error": None,
                           "RR@10": round(ev.metrics["RR@10"], 4), "p_vs_bm25": round(cmp["nDCG@10"].randomization_pvalue, 4),
                           "per_query": ev.per_query["nDCG@10"],
                           "dev": [round(h.get("dev nDCG@10", 0), 4) for h in saved["history"]],
                           "saved_epoch": saved["saved_epoch"], "train_s": round(train_s, 1)}
                    if learner == "dla":
                        row["dla_anchor"] = args.dla_anchor
                    info = json.loads((folder / "clicks.json").read_text())
                    if "propensity" in info:
                        est = np.asarray(info["propensity"])
                        row["propensity"] = [round(float(v), 4) for v in est]
                        target = reached if learner in CASCADE_LEARNERS else truth
                        row["theta_max_error"] = round(float(np.max(np.abs(est / est[0] - target))), 4)
                        if learner == "dla":
                            row["harvest_theta_max_error"] = round(harvest_error, 4)
                    with atomic_write(scored) as f:
                        json.dump(row, f)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_query"}), flush=True)
                write_result({"benchmark": "cross-encoders from clicks of three logging rankers on SciFact",
                              "machine": machine(), "cpu": facts, "args": vars(args),
                              "naive_bias": bias, "summary": summary(rows), "paired": paired_tests(rows),
                              "rows": [{k: v for k, v in r.items() if k != "per_query"} for r in rows]}, args.out)
    print(f"CPU: {facts['cpu']} ({facts['cores']} cores; {facts['flags']})")
    for key, s in summary(rows).items():
        cm, learner = key.split("/")
        print(f"{cm:<8} {learner:<9} nDCG@10 {s['mean']:.4f} ± {s['sd']:.4f}  {s['runs']}"
              + (f"  θ max error {s['theta_max_error']['mean']:.3f}" if "theta_max_error" in s else ""))


def naive_misorders(shown: list[ShownList], model: Any) -> dict[str, Any]:
    """How much position bias the naive learner meets on these lists: pairs (relevant,
    non-relevant) of one shown list whose expected click rates (examination x attractiveness)
    put the relevant one below. Naive's loss is minimised by scores that follow the click rates,
    so these are the orders it learns wrong; IPW with the true θ learns none of them wrong."""
    pairs = wrong = top = relevant = 0
    for s in shown:
        rate, y = model.click_rates(s.labels), np.asarray(s.labels)
        for r in np.flatnonzero(y > 0):
            relevant += 1
            top += int(r == 0)
            others = rate[y == 0]
            pairs += len(others)
            wrong += int((rate[r] < others).sum())
    return {"pairs": pairs, "misordered": wrong, "share": round(wrong / max(pairs, 1), 5),
            "relevant_at_rank_1": round(top / max(relevant, 1), 4)}


def paired_tests(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each learner against naive on the same click model and seed, per test query (each row's
    ``p_vs_bm25`` is the test against BM25): {"cm/learner/seed": [delta, p]}, p of the paired
    randomization test."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r["learner"] in ("bm25", "naive") or "per_query" not in r:
            continue
        naive = [o for o in rows if o["learner"] == "naive" and o["click_model"] == r["click_model"]
                 and o["seed"] == r["seed"] and "per_query" in o]
        if naive:
            out[f"{r['click_model']}/{r['learner']}/{r['seed']}"] = list(paired(naive[0], r))
    return out


def summary(rows: list[dict[str, Any]]) -> dict[Any, Any]:
    """Mean ± sd of nDCG@10 (and DLA's θ error) per click model and learner."""
    out: dict[Any, Any] = {}
    for cm in dict.fromkeys(r["click_model"] for r in rows):
        for learner in dict.fromkeys(r["learner"] for r in rows):
            mine = [r for r in rows if r["click_model"] == cm and r["learner"] == learner]
            if mine:
                s = mean_sd([r["nDCG@10"] for r in mine])
                errors = [r["theta_max_error"] for r in mine if r.get("theta_max_error") is not None]
                if errors:
                    s["theta_max_error"] = mean_sd(errors)
                out[f"{cm}/{learner}"] = s
    return out


if __name__ == "__main__":
    main()
