"""Rerankers trained by reinforcement learning (GRPO): ProRank and Rank-R1 (issue 35).

    python benchmarks/rl_rerankers.py                                  # ProRank, Qwen2.5-Coder-0.5B-Instruct
    python benchmarks/rl_rerankers.py --model SmolLM2-135M-Instruct --train-queries 8 --steps 2 --group 2 \\
        --test-queries 5 --ce-steps 2                                  # the smallest setting: a smoke run
    python benchmarks/rl_rerankers.py --part rank-r1 --model Qwen2.5-Coder-1.5B-Instruct

``--part prorank`` (default): SciFact train -> test, BM25 top 20 of ``--test-queries`` test
queries reranked by: BM25 itself; ``llm-pointwise:MODEL`` zero-shot (the yes-no template); after
ProRank stage 1 (GRPO warm-up on the yes/no prompt: ``--steps`` steps of ``--batch`` prompts,
``--group`` completions each, reward = correct judgement + exact format); after stage 2 (the
yes-no logit trained with ListNet on lists of a relevant passage and ``--list-size`` - 1 BM25 negatives,
``--stage2-steps`` steps of ``--batch`` lists at ``--stage2-lr``; stage 1 and stage 2 are each
kept under a key of their settings, so one warm-up serves several stage-2 settings); and a
MiniLM cross-encoder (all-MiniLM-L6-v2 body) trained on the same training queries and negatives
(``--ce-steps`` steps of 4 lists, lr 5e-5). Training uses the first ``--train-queries`` judged
SciFact train queries, BM25 top-30 negatives, LoRA rank 16. Each row is compared with BM25 and
with the zero-shot start on the same queries (paired randomization test of nDCG@10:
``delta_vs_NAME`` and ``p_vs_NAME`` in the row).

``--part rank-r1``: TREC DL19, the shipped BM25 top 20 of ``--test-queries`` queries, reranked by
``rank-r1:MODEL`` zero-shot and after GRPO on SciFact train (sets of ``--set-size``, one relevant,
``--max-new-tokens`` for reasoning and answer; out of domain for DL19), beside FIRST and
llm-pointwise with the same model; generated tokens per query, answers repaired and the reward
curve reported. Both Rank-R1 rows rank by heap sort to the top 10 in sets of 20 (``num_child`` 19,
the paper's) and reason within the same ``--max-new-tokens`` as the training.
Needs the Rank-R1 reranker (rerank.rerankers.setwise).

Each trained model is kept in benchmarks/work/ (git-ignored) under a key of all its settings and
reused by later runs. Prints the CPU model and flags; writes benchmarks/results/rl_rerankers.json
(or rl_rerankers-rank-r1.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    RESULTS,
    WORK,
    announce_cpu,
    cached_row,
    installed,
    machine,
    paired,
    scifact_train_test,
    settings_key,
    write_result,
)

from rerank.evaluate import evaluate
from rerank.models.loading import pick_device
from rerank.specs import RERANKER, RETRIEVER, stage
from rerank.train.trainer import HISTORY, TrainConfig

METRICS = ["nDCG@10"]


def model_path(name: str) -> str:
    """An installed offline model's folder, else the name (a hub id or a path)."""
    return installed(name) or name


def cached(kind: str, settings: dict[str, Any]) -> Path:
    """The work folder of a model trained with these settings (a key of all of them)."""
    return WORK / f"{kind}-{settings_key(settings)}"


def finished(folder: Path) -> bool:
    history = folder / HISTORY
    return history.is_file() and bool(json.loads(history.read_text()).get("finished"))


def measure(label: str, spec: str, queries: list, candidates: dict, qrels: dict, rel: int, **options: Any) -> dict:
    """Rerank ``candidates`` with the reranker ``spec``: nDCG@10, seconds per query, generated tokens.
    Each row is kept under a key of the reranker (an offline model's name, or a trained model's
    settings-keyed work folder), the queries and the options; a later run reuses it."""
    kind, _, model = spec.partition(":")
    path = Path(model)
    name = str(path.relative_to(WORK)) if path.is_relative_to(WORK) else path.name
    settings = {"system": label, "reranker": f"{kind}:{name}", "queries": [q.qid for q in queries],
                "depth": 20, **options}

    def compute() -> dict[str, Any]:
        reranker = stage(spec, role=RERANKER, depth=20, **options)
        t0 = time.perf_counter()
        run = reranker(queries, candidates)
        seconds = time.perf_counter() - t0
        cost = reranker.cost.as_dict() if hasattr(reranker, "cost") else {}
        ev = evaluate(run, qrels, METRICS, rel=rel)
        return {"nDCG@10": round(ev.metrics["nDCG@10"], 4),
                "seconds_per_query": round(seconds / len(queries), 3),
                "generated_tokens_per_query": round(cost.get("generated_tokens", 0) / len(queries), 1),
                "repaired_outputs": cost.get("repaired_outputs", 0), "model_calls": cost.get("model_calls", 0),
                "per_query": ev.per_query["nDCG@10"]}

    stored = cached_row("rl-rerankers-runs", settings, compute)
    keys = ("nDCG@10", "seconds_per_query", "generated_tokens_per_query", "repaired_outputs", "model_calls", "per_query")
    row = {"system": label, **{k: stored[k] for k in keys if k in stored}}
    print(f"{label:<44} nDCG@10 {row['nDCG@10']:.4f}  {row['seconds_per_query']:>7.3f} s/query", flush=True)
    return row


def bm25_row(candidates: dict, qrels: dict, rel: int) -> dict[str, Any]:
    """The first stage's own row: its nDCG@10 (and per query, for the paired tests)."""
    ev = evaluate(candidates, qrels, METRICS, rel=rel)
    print(f"{'BM25 top 20':<44} nDCG@10 {ev.metrics['nDCG@10']:.4f}")
    return {"system": "BM25 top 20", "nDCG@10": round(ev.metrics["nDCG@10"], 4), "seconds_per_query": 0.0,
            "per_query": ev.per_query["nDCG@10"]}


def paired_tests(rows: list[dict[str, Any]], baselines: tuple[str, ...]) -> None:
    """Each row's nDCG@10 against each baseline row's on the same queries (paired randomization
    test, rerank.evaluate.compare): ``delta_vs_<baseline>`` and ``p_vs_<baseline>``; the
    per-query values are dropped from the rows afterwards (kept in the row cache)."""
    for name in baselines:
        base = next((r for r in rows if r["system"] == name and "per_query" in r), None)
        for row in rows:
            if base is not None and row is not base and "per_query" in row:
                row[f"delta_vs_{name}"], row[f"p_vs_{name}"] = paired(base, row)
    for row in rows:
        if row.pop("per_query", None) is not None and row["system"] not in baselines:
            print(f"{row['system']:<44} " + "  ".join(f"vs {name}: {row[f'delta_vs_{name}']:+.4f} (p {row[f'p_vs_{name}']:.4f})"
                                                      for name in baselines if f"p_vs_{name}" in row))


def prorank(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from rerank.train.crossencoder import train_cross_encoder
    from rerank.train.grpo import GRPOConfig
    from rerank.train.prorank import train_prorank

    train, test, qrels = scifact_train_test()
    queries = [q for q in test.queries if q.qid in qrels][: args.test_queries]
    candidates = stage("bm25", test, role=RETRIEVER, k=20, with_text=True)(queries)
    qrels = {q.qid: qrels[q.qid] for q in queries}
    rows = result["rows"]
    rows.append(bm25_row(candidates, qrels, test.rel))
    ce_settings = {"model": "all-MiniLM-L6-v2", "train_queries": args.train_queries, "steps": args.ce_steps,
                   "negatives": "bm25:30", "lr": 5e-5, "batch": 4, "group_size": 8, "seed": 0}
    ce = cached("minilm-ce", ce_settings)
    if not finished(ce):
        judged = [q for q in train.queries if q.qid in train.require_qrels()][: args.train_queries]
        subset = dataclasses.replace(train, queries=judged, _runs={})
        epochs = max(1, -(-args.ce_steps * 4 // len(judged)))
        train_cross_encoder(model_path("all-MiniLM-L6-v2"), subset, ce,
                            TrainConfig(loss="listnet", epochs=epochs, batch_size=4, lr=5e-5, checkpoint_every=100),
                            negatives="bm25:30", group_size=8, dev_queries=0, device=args.device)
    rows.append(measure("MiniLM cross-encoder (same training data)", f"cross-encoder:{ce}", queries, candidates, qrels,
                        test.rel))
    model = model_path(args.model)
    zero_shot = f"llm-pointwise:{args.model} zero-shot"
    rows.append(measure(zero_shot, f"llm-pointwise:{model}", queries, candidates, qrels, test.rel))
    # stage 1 and stage 2 are kept apart, each under a key of its settings: one warm-up serves several stage-2 runs
    stage1_settings = {"model": args.model, "train_queries": args.train_queries, "steps": args.steps,
                       "group": args.group, "batch": args.batch, "lr": args.lr, "max_new_tokens": args.max_new_tokens,
                       "negatives": "bm25:30", "lora": 16, "beta": args.beta, "seed": 0}
    stage2_settings = {"stage1": stage1_settings, "steps": args.stage2_steps, "lr": args.stage2_lr, "batch": args.batch,
                       "list_size": args.list_size, "loss": "listnet", "lora": 16, "seed": 0}
    first, folder = cached("prorank-stage1", stage1_settings), cached("prorank-stage2", stage2_settings)
    grpo = GRPOConfig(group=args.group, max_new_tokens=args.max_new_tokens, beta=args.beta)
    common = {"negatives": "bm25:30", "group_size": args.list_size, "max_queries": args.train_queries,
              "dev_queries": 0, "lora": 16, "device": args.device}
    cfg = TrainConfig(loss="listnet", batch_size=args.batch, lr=args.lr, warmup=0.0, checkpoint_every=5)
    t0 = time.perf_counter()
    trained = []
    if not finished(first):
        train_prorank(model, train, first, cfg, stages="1", steps=args.steps, grpo=grpo, **common)
        trained.append("stage1")
    result["prorank_stage1_train_s_this_run"] = round(time.perf_counter() - t0, 1)
    rows.append(measure("after ProRank stage 1 (GRPO warm-up)", f"llm-pointwise:{first}", queries, candidates,
                        qrels, test.rel))
    t0 = time.perf_counter()
    if not finished(folder):
        train_prorank(str(first), train, folder, dataclasses.replace(cfg, lr=args.stage2_lr), stages="2",
                      steps=args.stage2_steps, **common)
        trained.append("stage2")
    result["prorank_stage2_train_s_this_run"] = round(time.perf_counter() - t0, 1)
    result["prorank"] = {"stage1": str(first), "stage2": str(folder), "settings": stage2_settings,
                         "reward_curve": json.loads((first / HISTORY).read_text())["reward_curve"],
                         "stage2_loss": [s["loss"] for s in json.loads((folder / HISTORY).read_text())["loss_per_step"]],
                         "trained_now": trained}
    rows.append(measure("after ProRank stage 2 (score learning)", f"llm-pointwise:{folder}", queries, candidates, qrels,
                        test.rel))
    paired_tests(rows, ("BM25 top 20", zero_shot))


def rank_r1(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from rerank import load_dataset
    from rerank.train.grpo import GRPOConfig
    from rerank.train.rank_r1 import train_rank_r1

    ds = load_dataset("trec-dl-19")
    queries = ds.queries[: args.test_queries]
    bm25 = ds.candidate_run("bm25")
    candidates = {q.qid: bm25[q.qid][:20] for q in queries}
    judged = ds.require_qrels()
    qrels = {q.qid: judged[q.qid] for q in queries if q.qid in judged}
    rows = result["rows"]
    rows.append(bm25_row(candidates, qrels, ds.rel))
    model = model_path(args.model)
    settings = {"model": args.model, "train_queries": args.train_queries, "steps": args.steps, "group": args.group,
                "batch": args.batch, "lr": args.lr, "max_new_tokens": args.max_new_tokens, "set_size": args.set_size,
                "negatives": "bm25:30", "lora": 16, "beta": args.beta, "seed": 0}
    folder = cached("rank-r1", settings)
    if not finished(folder):
        train, _, _ = scifact_train_test()
        train_rank_r1(model, train, folder, TrainConfig(loss="task", batch_size=args.batch, lr=args.lr, warmup=0.0,
                                                        checkpoint_every=5),
                      steps=args.steps, grpo=GRPOConfig(group=args.group, max_new_tokens=args.max_new_tokens, beta=args.beta),
                      set_size=args.set_size, max_queries=args.train_queries, device=args.device)
    history = json.loads((folder / HISTORY).read_text())
    result["rank_r1"] = {"folder": str(folder), "settings": settings, "reward_curve": history["reward_curve"],
                         "completion_tokens": [s.get("completion_tokens") for s in history["loss_per_step"]],
                         "train_seconds": history.get("train_seconds_this_process")}
    print("reward per step", history["reward_curve"]["reward"], "format rate", history["reward_curve"]["format_rate"],
          "completion tokens", result["rank_r1"]["completion_tokens"])
    # Rank-R1 reasons within the budget it was trained with (--max-new-tokens), in sets of 20 (the paper's)
    reasoning = {"max_new_tokens": args.max_new_tokens}
    for label, spec, options in ((f"rank-r1:{args.model} zero-shot", f"rank-r1:{model}", reasoning),
                                 ("rank-r1 after GRPO on SciFact train", f"rank-r1:{folder}", reasoning),
                                 (f"FIRST:{args.model}", f"first:{model}", {}),
                                 (f"llm-pointwise:{args.model}", f"llm-pointwise:{model}", {})):
        rows.append(measure(label, spec, queries, candidates, qrels, ds.rel, **options))
    paired_tests(rows, ("BM25 top 20", f"rank-r1:{args.model} zero-shot"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["prorank", "rank-r1"], default="prorank")
    ap.add_argument("--model", help="[default: Qwen2.5-Coder-0.5B-Instruct; 1.5B for rank-r1]")
    ap.add_argument("--train-queries", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100, help="optimiser steps (ProRank: of stage 1)")
    ap.add_argument("--stage2-steps", type=int, help="ProRank stage 2's optimiser steps [default: --steps]")
    ap.add_argument("--stage2-lr", type=float, help="ProRank stage 2's learning rate [default: --lr]")
    ap.add_argument("--batch", type=int, default=4, help="prompts (stage 1, rank-r1) or lists (stage 2) per step")
    ap.add_argument("--group", type=int, default=8, help="GRPO completions per prompt")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--max-new-tokens", type=int, help="[default: 8 for prorank, 256 for rank-r1]")
    ap.add_argument("--set-size", type=int, default=4, help="rank-r1: candidates per training set")
    ap.add_argument("--list-size", type=int, default=8, help="ProRank stage 2: passages per list (1 relevant)")
    ap.add_argument("--ce-steps", type=int, default=100, help="cross-encoder training steps (4 lists each)")
    ap.add_argument("--test-queries", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out")
    args = ap.parse_args()
    args.model = args.model or ("Qwen2.5-Coder-1.5B-Instruct" if args.part == "rank-r1" else "Qwen2.5-Coder-0.5B-Instruct")
    args.max_new_tokens = args.max_new_tokens or (256 if args.part == "rank-r1" else 8)
    args.stage2_steps = args.stage2_steps or args.steps
    args.stage2_lr = args.stage2_lr or args.lr
    args.device = pick_device(args.device)
    facts = announce_cpu()
    result: dict[str, Any] = {"benchmark": f"RL-trained rerankers ({args.part})", "machine": {**machine(), **facts},
                              "args": vars(args), "command": "python " + " ".join(sys.argv), "rows": []}
    (prorank if args.part == "prorank" else rank_r1)(args, result)
    name = "rl_rerankers.json" if args.part == "prorank" else "rl_rerankers-rank-r1.json"
    write_result(result, args.out or RESULTS / name)


if __name__ == "__main__":
    main()
