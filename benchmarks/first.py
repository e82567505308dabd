"""The FIRST objective: fine-tune SmolLM2-135M-Instruct as a single-token listwise reranker.

    python benchmarks/first.py                               # λ = 10 and λ = 0, 40 windows
    python benchmarks/first.py --lambdas 10 --windows 400 --model Qwen2.5-Coder-0.5B-Instruct

Training windows: SciFact train queries, BM25 top 20 in BM25 order, gold order from the qrels
(queries without a relevant passage in their top 20 are left out); ``--windows`` of them drawn
with seed 0; 1 epoch, 2 windows a step, lr 2e-5, passages cut to 100 tokens, full fine-tuning
(float32 weights, bf16 autocast). Test: FIRST reranking of SciFact test BM25 top 20 (one window
of 20), before and after. λ = 0 is the language-model loss alone. Writes
benchmarks/results/first.json; models go to benchmarks/work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, WORK, machine, offline, scifact_train_test, write_result

from rerank.data.formats import read_trec_run, write_trec_run
from rerank.evaluate import Evaluation, compare, evaluate
from rerank.rerankers.listwise import First
from rerank.retrieve.bm25 import BM25
from rerank.train.first import FirstTask, label_windows
from rerank.train.trainer import HISTORY, TrainConfig, Trainer

METRICS = ["nDCG@10", "RR@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--lambdas", default="10,0")
    ap.add_argument("--windows", type=int, default=40, help="training windows (a step of 2 takes ~20 s on 2 CPU cores)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--out", default=str(RESULTS / "first.json"))
    args = ap.parse_args()
    model = offline(args.model)
    train, test, qrels = scifact_train_test()
    windows = label_windows(train.queries, BM25(train, k=20)(train.queries), train.require_qrels(), window=20, docs=train.docs)
    windows = random.Random(0).sample(windows, min(args.windows, len(windows)))
    test_run = BM25(test, k=20)(test.queries)
    base = evaluate(test_run, qrels, METRICS)
    rows = [{"system": "BM25 top 20", **{m: round(v, 4) for m, v in base.metrics.items()}}]

    def rerank(path: str) -> tuple[Evaluation, float]:
        t = time.perf_counter()
        run = First(path, window=20, depth=20, max_passage_tokens=100)(test.queries, test_run)
        return evaluate(run, qrels, METRICS), time.perf_counter() - t

    cached = WORK / f"first-{args.model}-base-run.trec"  # the untrained model's run, reused by later invocations
    if cached.is_file():
        before, secs = evaluate(read_trec_run(cached), qrels, METRICS), 0.0
    else:
        t = time.perf_counter()
        base_run = First(model, window=20, depth=20, max_passage_tokens=100)(test.queries, test_run)
        secs = time.perf_counter() - t
        write_trec_run(base_run, cached, "first-base")
        before = evaluate(base_run, qrels, METRICS)
    rows.append({"system": f"{args.model} FIRST, not fine-tuned", **{m: round(v, 4) for m, v in before.metrics.items()},
                 "rerank_s": round(secs, 1)})
    print(rows[-1], flush=True)
    result = {"benchmark": "FIRST objective on SciFact", "machine": machine(), "args": vars(args),
              "train_windows": len(windows), "rows": rows}
    for lam in [float(x) for x in args.lambdas.split(",")]:
        folder = WORK / f"first-{args.model}-l{lam:g}-{len(windows)}"
        history = folder / HISTORY
        t = time.perf_counter()
        if not (history.is_file() and json.loads(history.read_text()).get("finished")):
            reranker = First(model, window=20, dtype="float32", max_passage_tokens=100)
            task = FirstTask(reranker, windows, lam=lam)
            cfg = TrainConfig(loss="task", epochs=1, batch_size=2, lr=args.lr, warmup=0.1, checkpoint_every=25)
            Trainer(reranker.llm.model, task, cfg, folder).train()
        train_s = time.perf_counter() - t
        saved = json.loads(history.read_text())
        after, secs = rerank(str(folder))
        cmp = {c.metric: c for c in compare(before, after)}  # delta = fine-tuned - not fine-tuned
        steps = saved["loss_per_step"]
        tail = steps[-max(1, len(steps) // 10):]
        rows.append({"system": f"{args.model} FIRST, fine-tuned λ={lam:g}", **{m: round(v, 4) for m, v in after.metrics.items()},
                     "delta_vs_not_fine_tuned": round(cmp["nDCG@10"].delta, 4),
                     "p": round(cmp["nDCG@10"].randomization_pvalue, 4), "steps": saved["steps"],
                     "lm_loss_first_last": [round(steps[0]["lm_loss"], 4), round(sum(s["lm_loss"] for s in tail) / len(tail), 4)],
                     "ranknet_first_last": [round(steps[0]["ranknet"], 4), round(sum(s["ranknet"] for s in tail) / len(tail), 4)],
                     "train_s": round(train_s, 1), "rerank_s": round(secs, 1)})
        print(rows[-1], flush=True)
    write_result(result, args.out)
    print(f"\n{'system':<48}{'nDCG@10':>9}{'RR@10':>8}{'Δ':>9}{'p':>8}")
    for r in rows:
        delta = r.get("delta_vs_not_fine_tuned", 0)
        print(f"{r['system']:<48}{r['nDCG@10']:>9.4f}{r['RR@10']:>8.4f}{delta:>+9.4f}{r.get('p', 1):>8.3f}")


if __name__ == "__main__":
    main()
