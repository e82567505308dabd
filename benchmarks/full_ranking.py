"""Full ranking vs sliding windows with long-context LLMs (Liu et al. 2024, "Sliding Windows Are Not
the End"), zero-shot and fine-tuned with complete labels (LM loss vs importance-aware loss).

    python benchmarks/full_ranking.py --shuffle            # the acceptance run (for a GPU; days on 2 CPU cores)
    python benchmarks/full_ranking.py --models SmolLM2-135M-Instruct --train-model SmolLM2-135M-Instruct \\
        --dl19-queries 2 --scifact-queries 2 --depth 20 --window 10 --train-lists 4 --steps 2 \\
        --max-passage-tokens 30 --out /tmp/full_ranking-smoke.json   # every path, a few minutes on 2 cores

1. Zero-shot, DL19 BM25 top ``--depth`` (the shared candidates, with texts): each of ``--models``
   as a generative listwise reranker (``listwise-gen``) over sliding windows of ``--window``
   (stride half of it) and with full ranking (``window=all``, one prompt a query); nDCG@10,
   prompt tokens, model calls and seconds per query.
2. Fine-tuned: ``--train-model`` with LoRA (rank ``--lora``) on SciFact train: complete labels of
   the BM25 top ``--depth`` (qrels grades, BM25 order within a grade), ``--train-lists`` of them
   drawn with seed 0, ``--steps`` steps of one list (the same lists and steps for both losses; with
   fewer lists than steps, whole epochs over them), loss ``lm``
   and ``importance``; each evaluated on SciFact test (``--scifact-queries``) and DL19 with full
   ranking and with sliding windows. ``--shuffle`` shows each list's passages in a new order each
   step: labels in BM25 order otherwise teach a model to copy its input (docs/benchmarks.md).
   Each row is tested (paired randomization) against BM25, full ranking against the sliding
   windows of the same model, the importance-aware model against the LM-loss one.

Models and runs are cached under benchmarks/work/ by a key of every setting that changes them
(a changed setting trains again; a killed run resumes from the trainer's checkpoint). Prints the
CPU model and flags; writes ``--out`` (benchmarks/results/full_ranking.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, WORK, announce_cpu, cached_row, machine, offline, paired, write_result
from common import settings_key as key

from rerank.data import load_dataset
from rerank.evaluate import evaluate
from rerank.rerankers.listwise import ListwiseGenerate
from rerank.retrieve.bm25 import BM25
from rerank.train.first import add_lora
from rerank.train.full_ranking import FullRankTask, complete_labels, label_lists
from rerank.train.trainer import HISTORY, TrainConfig, Trainer

METRIC = "nDCG@10"


def cached(settings: dict[str, Any], compute: Any) -> dict[str, Any]:
    return cached_row("full-ranking-runs", settings, compute)


def ndcg(run: dict[str, Any], ds: Any, queries: list[Any]) -> dict[str, Any]:
    """nDCG@10 over ``queries`` (their qrels only: a subset is not scored 0 on the queries left out),
    with its value per query (for the paired tests)."""
    qrels = ds.require_qrels()
    ev = evaluate(run, {q.qid: qrels[q.qid] for q in queries}, [METRIC], rel=ds.rel)
    return {METRIC: round(ev.metrics[METRIC], 4), "per_query": ev.per_query[METRIC]}


def paired_tests(result: dict[str, Any], bm25: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Paired randomization tests on the same queries: every row against BM25 (``vs_bm25``), a full
    ranking against the sliding windows of the same model (``vs_sliding``), an importance-aware
    model against the LM-loss one in the same mode (``vs_lm``); each ``[delta, p]``. The values per
    query are dropped from the rows afterwards (kept in the row cache)."""
    rows = [r for r in result["zero_shot"] + result["fine_tuned"] if "per_query" in r]

    def find(**want: Any) -> dict[str, Any] | None:
        return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)

    for row in rows:
        row["vs_bm25"] = list(paired(bm25[row["dataset"]], row))
        same = {k: row.get(k) for k in ("part", "dataset", "model", "model_key")}
        if row["mode"] == "full" and (other := find(**same, mode="sliding")):
            row["vs_sliding"] = list(paired(other, row))
        lm = find(part=row["part"], dataset=row["dataset"], mode=row["mode"], loss="lm")
        if row.get("loss") == "importance" and lm:
            row["vs_lm"] = list(paired(lm, row))
    for row in rows:
        del row["per_query"]
    return result


def rerank_row(model: str, window: Any, ds: Any, queries: list[Any], run: dict[str, Any], args: Any) -> dict[str, Any]:
    """nDCG@10 and cost of one listwise-gen configuration over ``run``."""
    stride = max(1, args.window // 2)
    reranker = ListwiseGenerate(model, window=window, stride=stride, depth=args.depth, device=args.device,
                                max_passage_tokens=args.max_passage_tokens, backend=args.backend)
    t = time.perf_counter()
    out = reranker(queries, run)
    seconds = time.perf_counter() - t
    c = reranker.cost
    row = {**ndcg(out, ds, queries),
           "prompt_tokens": c.tokens, "calls": c.calls, "generated_tokens": c.generated, "repaired": c.repaired,
           "seconds_per_query": round(seconds / max(1, len(queries)), 2)}
    if window == "all":
        d = c.as_dict()
        row.update({k: d[k] for k in ("full_ranked_lists", "window_fallback_lists", "sliding_window_prompts",
                                      "sliding_window_tokens")})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="Qwen2.5-Coder-1.5B-Instruct,Qwen2.5-Coder-0.5B-Instruct", help="zero-shot models")
    ap.add_argument("--train-model", default="Qwen2.5-Coder-0.5B-Instruct")
    ap.add_argument("--depth", type=int, default=100, help="candidates reranked (BM25 top N)")
    ap.add_argument("--window", type=int, default=20, help="sliding window (stride: half)")
    ap.add_argument("--dl19-queries", type=int, default=43)
    ap.add_argument("--scifact-queries", type=int, default=300)
    ap.add_argument("--train-lists", type=int, default=400)
    ap.add_argument("--steps", type=int, default=400, help="training steps of one list, for each loss")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora", type=int, default=16)
    ap.add_argument("--max-passage-tokens", type=int, default=100)
    ap.add_argument("--shuffle", action="store_true",
                    help="fine-tuning: show each list's passages in a new order every epoch (the label moves with them)")
    ap.add_argument("--losses", default="lm,importance", help="fine-tuning losses ('': zero-shot part only)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "vllm"),
                    help="the zero-shot rows' engine (the same prompts and greedy answers; vLLM's CPU build generates faster)")
    ap.add_argument("--skip-zero-shot", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "full_ranking.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the trainer's progress
    facts = announce_cpu()

    dl19 = load_dataset("trec-dl-19")
    dl19_q = [q for q in dl19.queries if q.qid in dl19.require_qrels()][: args.dl19_queries]
    dl19_run = {qid: hits[: args.depth] for qid, hits in dl19.candidate_run("bm25").items() if qid in {q.qid for q in dl19_q}}
    bm25 = {"dl19": ndcg(dl19_run, dl19, dl19_q)}
    base = {"bm25": bm25["dl19"][METRIC]}
    result: dict[str, Any] = {"benchmark": "full ranking vs sliding windows", "cpu": facts, "machine": machine(),
                              "args": vars(args), "dl19_bm25": base, "zero_shot": [], "fine_tuned": []}
    common = {"depth": args.depth, "window": args.window, "max_passage_tokens": args.max_passage_tokens}
    scored = {"scored_over": "the evaluated queries"}  # rows of an older layout (scored over all judged queries) are not reused

    if not args.skip_zero_shot:
        for name in args.models.split(","):
            model = offline(name)
            for window in (args.window, "all"):
                settings = {"part": "zero-shot", "model": name, "dataset": "dl19", "queries": len(dl19_q), **common, **scored,
                            "mode": "full" if window == "all" else "sliding",
                            **({"backend": args.backend} if args.backend != "auto" else {})}
                row = cached(settings, lambda model=model, window=window: rerank_row(model, window, dl19, dl19_q, dl19_run, args))
                result["zero_shot"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_query"}), flush=True)

    losses = [x for x in args.losses.split(",") if x]
    if not losses:
        write_result(paired_tests(result, bm25), args.out)
        return
    train = load_dataset("scifact", split="train")
    test = load_dataset("scifact", split="test")
    test_q = [q for q in test.queries if q.qid in test.require_qrels()][: args.scifact_queries]
    test_run = BM25(test, k=args.depth)(test_q)
    bm25["scifact-test"] = ndcg(test_run, test, test_q)
    result["scifact_test_bm25"] = {"bm25": bm25["scifact-test"][METRIC]}
    train_qrels = train.require_qrels()
    train_q = [q for q in train.queries if q.qid in train_qrels]
    labels = complete_labels(train_q, BM25(train, k=args.depth)(train_q), qrels=train_qrels, depth=args.depth, rel=train.rel)
    labels = random.Random(0).sample(labels, min(args.train_lists, len(labels)))
    lists = label_lists(labels, train.docs)
    base_model = offline(args.train_model)
    for loss in losses:
        settings = {"model": args.train_model, "loss": loss, "lists": [r["qid"] for r in labels], "steps": args.steps,
                    "lr": args.lr, "lora": args.lora, **common, "seed": 0, "objective": "full-rank",
                    **({"shuffle": True} if args.shuffle else {})}  # keys of unshuffled runs as before
        folder = WORK / f"full-ranking-{args.train_model}-{loss}-{key(settings)}"
        t = time.perf_counter()
        history = folder / HISTORY
        if not (history.is_file() and json.loads(history.read_text()).get("finished")):
            reranker = ListwiseGenerate(base_model, window="all", depth=args.depth, dtype="float32", device=args.device,
                                        max_passage_tokens=args.max_passage_tokens)
            wrapped = add_lora(reranker.llm.model, args.lora) if args.lora else None
            use = lists[: args.steps]  # the budget: --steps lists of one step each, epochs over them when there are fewer
            task = FullRankTask(reranker, use, loss=loss, lora=wrapped, shuffle=args.shuffle)
            cfg = TrainConfig(loss="task", epochs=max(1, args.steps // len(use)), batch_size=1, lr=args.lr, warmup=0.1,
                              checkpoint_every=25)
            Trainer(reranker.llm.model, task, cfg, folder).train()
        train_s = time.perf_counter() - t
        saved = json.loads(history.read_text()) if history.is_file() else {"loss_per_step": []}
        steps = saved.get("loss_per_step", [])
        for ds_name, ds, queries, run in (("scifact-test", test, test_q, test_run), ("dl19", dl19, dl19_q, dl19_run)):
            for window in (args.window, "all"):
                eval_settings = {"part": "fine-tuned", "model_key": key(settings), "loss": loss, "dataset": ds_name,
                                 "queries": len(queries), **common, **scored, "mode": "full" if window == "all" else "sliding"}
                row = cached(eval_settings, lambda ds=ds, queries=queries, run=run, window=window, folder=folder:
                             rerank_row(str(folder), window, ds, queries, run, args))
                row.update({"train_s": round(train_s, 1), "steps": len(steps),
                            "loss_first_last": [round(steps[0]["loss"], 4), round(steps[-1]["loss"], 4)] if steps else None})
                result["fine_tuned"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_query"}), flush=True)
    write_result(paired_tests(result, bm25), args.out)
    print(f"\n{'part':<11}{'model/loss':<34}{'data':<14}{'mode':<9}{METRIC:>9}{'tokens':>10}{'calls':>7}{'s/q':>8}"
          "  paired tests [delta, p]")
    for r in result["zero_shot"] + result["fine_tuned"]:
        who = r.get("model") or f"{args.train_model} {r['loss']}"
        tests = "  ".join(f"{k} {r[k]}" for k in ("vs_bm25", "vs_sliding", "vs_lm") if k in r)
        print(f"{r['part']:<11}{who[:33]:<34}{r['dataset']:<14}{r['mode']:<9}{r[METRIC]:>9.4f}{r['prompt_tokens']:>10}"
              f"{r['calls']:>7}{r['seconds_per_query']:>8.2f}  {tests}")


if __name__ == "__main__":
    main()
