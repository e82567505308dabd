"""Propensity estimation from click logs of realistic size: streaming per-rank statistics against
the per-list groups, memory against the number of sessions.

Sessions are simulated with result randomization (each shows its query's top 10 in a uniformly
random order: RandTop-10, what the randomization estimator needs) under ULTRA's PBM, over the top
10 rows of every query of the LightGBM LambdaRank example (../shared/data/ltr), and consumed as
they are drawn (no file). Each job runs in its own process, so its peak RSS is its own:

  stream   rerank.ultr.log.fold_ranks: clicks and sessions per rank and per (query, document,
           rank), then randomization and EM estimates from them
  groups   the baseline: rerank.ultr.log.aggregate, one group per distinct (query, shown list)
           (what the learners train on), then the same estimates

Prints the CPU, memory, a table and the ratios, and writes benchmarks/results/ultr-stream.json.

    python benchmarks/ultr_stream.py --sessions 1000000,10000000 --groups-max 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, announce_cpu, write_result  # noqa: E402


def lists(shared: Path) -> list:
    from rerank.train.features import read_letor
    from rerank.ultr.simulate import ShownList

    data = read_letor(str(shared / "ltr" / "lightgbm-lambdarank" / "rank.train"))
    out = []
    for i, q in enumerate(data.qids):
        rows = data.rows(i)
        labels = data.labels[rows][:10]
        out.append(ShownList(str(q), tuple(str(j) for j in range(len(labels))), tuple(float(x) for x in labels)))
    return out


def job(kind: str, sessions: int, shared: Path) -> dict[str, float]:
    from rerank.ultr.learn import pbm_em_propensities, propensity_error, randomization_propensities
    from rerank.ultr.log import aggregate, fold_ranks
    from rerank.ultr.simulate import load_click_model, position_propensities, simulate

    shown = lists(shared)
    pbm = load_click_model("pbm")
    t0 = time.perf_counter()
    stream = simulate(shown, pbm, sessions, seed=0, randomize=True)
    stats = fold_ranks(stream, 10) if kind == "stream" else aggregate(stream, 10)
    folded = time.perf_counter() - t0
    est, _ = randomization_propensities(stats)
    t1 = time.perf_counter()
    em = pbm_em_propensities(stats)
    theta = position_propensities(pbm)
    out = {"fold_seconds": folded, "em_seconds": time.perf_counter() - t1,
           "randomization_max_rel_error": propensity_error(est, theta)["max_relative_error"],
           "em_max_rel_error": propensity_error(em, theta)["max_relative_error"],
           "kept": len(stats.counts) if kind == "stream" else len(stats.groups),  # type: ignore[union-attr]
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="1000000,10000000")
    ap.add_argument("--groups-max", type=int, default=1_000_000, help="largest log folded into groups (the baseline)")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(RESULTS / "ultr-stream.json"))
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        print(json.dumps(job(args.job, args.n, Path(args.shared))))
        return
    facts = announce_cpu()
    print(f"{'sessions':>11} {'job':<7} {'fold s':>8} {'EM s':>6} {'peak MB':>8} {'kept':>10} {'rand err':>9} {'EM err':>7}")
    rows = []
    for n in [int(x) for x in args.sessions.split(",")]:
        for kind in ("stream", "groups"):
            if kind == "groups" and n > args.groups_max:
                continue
            r = subprocess.run([sys.executable, __file__, "--job", kind, "--n", str(n), "--shared", args.shared],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append({"sessions": n, "job": kind, **{k: round(v, 4) for k, v in res.items()}})
            print(f"{n:>11,} {kind:<7} {res['fold_seconds']:8.1f} {res['em_seconds']:6.1f} {res['peak_rss_mb']:8.0f} "
                  f"{res['kept']:>10,} {res['randomization_max_rel_error']:9.4f} {res['em_max_rel_error']:7.4f}", flush=True)
    ratios = {}
    for n in sorted({r["sessions"] for r in rows}):
        s = next((r for r in rows if r["sessions"] == n and r["job"] == "stream"), None)
        g = next((r for r in rows if r["sessions"] == n and r["job"] == "groups"), None)
        if s and g:
            ratios[str(n)] = {"rss_stream_over_groups": round(s["peak_rss_mb"] / g["peak_rss_mb"], 3),
                              "seconds_stream_over_groups": round((s["fold_seconds"] + s["em_seconds"])
                                                                  / (g["fold_seconds"] + g["em_seconds"]), 3)}
    streams = sorted((r for r in rows if r["job"] == "stream"), key=lambda r: r["sessions"])
    if len(streams) > 1:
        ratios["stream_rss_largest_over_smallest"] = round(streams[-1]["peak_rss_mb"] / streams[0]["peak_rss_mb"], 3)
    print("\nratios:", json.dumps(ratios))
    write_result({"machine": facts, "rows": rows, "ratios": ratios}, args.out)


if __name__ == "__main__":
    main()
