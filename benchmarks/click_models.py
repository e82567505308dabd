"""Classic click models on a real click log: the Yandex WSCD 2012 sample (PyClick's; 20 queries,
35,064 training and 21,413 test sessions, top 10).

Every model of ``rerank.ultr.click_models`` (the CTR baselines, PBM, CM, UBM, DCM, SDBN, DBN) is
fitted on the training sessions and measured on the test sessions of queries seen in training:
log-likelihood per shown result and perplexity (overall and by rank), as in Chuklin, Markov and de
Rijke, *Click Models for Web Search*. Also: how close the log lets any model get, the perplexity of
a click rate per (query, document, rank) measured on the test sessions themselves (an in-sample
floor, not a model). Prints the CPU, a table, PBM's θ, and writes
benchmarks/results/click-models-yandex.json as {"model": {"log_likelihood", "perplexity",
"perplexity_by_rank", ...}, "machine": ...}.

    python benchmarks/click_models.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, announce_cpu, write_result  # noqa: E402


def floor(rows) -> float:  # type: ignore[no-untyped-def]
    """Perplexity of the click rate of each (query, document, rank) of ``rows``, measured on them."""
    width = rows.list_size
    w = rows.weight[:, None] * rows.mask
    key = (rows.pair * width + np.arange(width)[None, :]).ravel()
    shown = np.bincount(key, w.ravel())
    clicks = np.bincount(key, (w * rows.clicks).ravel())
    p = np.clip((clicks / np.maximum(shown, 1))[key].reshape(w.shape), 1e-6, 1 - 1e-6)
    observed = np.where(rows.clicks > 0, p, 1 - p)
    return float(np.exp2(-(w * np.log2(observed)).sum(axis=0) / w.sum(axis=0)).mean())


def main() -> None:
    from rerank.env import shared_data_dir
    from rerank.ultr.click_models import MODELS, fit_click_model, fold_sessions
    from rerank.ultr.log import read_yandex

    default = shared_data_dir()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str((default or Path("../shared/data")) / "clicks" / "yandex-wscd2012-sample"))
    ap.add_argument("--iterations", type=int, default=200, help="EM rounds at most (as clicks fit)")
    ap.add_argument("--out", default=str(RESULTS / "click-models-yandex.json"))
    args = ap.parse_args()
    facts = announce_cpu()
    data = Path(args.data)
    t0 = time.perf_counter()
    train = fold_sessions(read_yandex(data / "trainSample"))
    test = fold_sessions(read_yandex(data / "testSample"), keys=train.keys, queries=train.queries)
    print(f"train {train.sessions:,} sessions ({len(train.weight):,} distinct), test {test.sessions:,} of seen queries "
          f"({test.unseen_shown:,} results of unseen pairs); read and folded in {time.perf_counter() - t0:.1f} s")
    result: dict = {}
    print(f"{'model':<6} {'log-lik.':>9} {'perplexity':>10} {'fit s':>6}  perplexity by rank")
    for name in MODELS:
        t = time.perf_counter()
        model = fit_click_model(name, train, iterations=args.iterations)
        seconds = time.perf_counter() - t
        r = model.evaluate(test)
        r["fit_seconds"] = round(seconds, 3)
        if model.iterations:
            r["em_iterations"] = model.iterations
        if name == "pbm":
            r["theta"] = [round(float(v), 4) for v in model.rank]
        if name == "dbn":
            r["gamma"] = round(model.gamma, 4)
        if name == "dcm":
            r["continuation"] = [round(float(v), 4) for v in model.rank]
        result[name] = r
        print(f"{name:<6} {r['log_likelihood']:>9.4f} {r['perplexity']:>10.4f} {seconds:>6.2f}  "
              + " ".join(f"{v:.3f}" for v in r["perplexity_by_rank"]), flush=True)
    result["in_sample_floor"] = {"perplexity": round(floor(fold_sessions(read_yandex(data / "testSample"))), 6),
                                 "note": "click rate per (query, document, rank) measured on the test sessions themselves"}
    print(f"in-sample floor (test click rate per query, document, rank): {result['in_sample_floor']['perplexity']:.4f}")
    print("PBM θ: " + " ".join(f"{v:.3f}" for v in result["pbm"]["theta"]))
    result["machine"] = facts
    result["command"] = "python benchmarks/click_models.py"
    write_result(result, args.out)


if __name__ == "__main__":
    main()
