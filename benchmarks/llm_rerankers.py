"""LLM rerankers on TREC DL 2019 BM25 candidates: FIRST vs generative listwise, PRP variants vs
pointwise, and the input-order robustness check of the PRP paper.

listwise  FIRST and generative listwise on the same model, windows and queries: latency ratio
          (goal: FIRST <= 0.6x) and nDCG@10 (goal: within 0.01), each on the BM25 order and
          on its reverse.
pairwise  PRP allpair / sorting (top-10) / sliding-10 and LLMPointwise on the same model,
          queries and depth: nDCG@10 and prompts per query; PRP-allpair on the reversed list.

On a CPU, a subset of queries and a shallow depth keep this within minutes (the defaults:
the first --queries DL19 queries, --depth 20 for listwise (one window), --prp-depth 10);
on a GPU, --queries 43 --depth 100 runs the full sliding-window setting (9 windows a query).

    python benchmarks/llm_rerankers.py listwise [--model Qwen2.5-Coder-1.5B-Instruct] [--queries 10] [--depth 20]
    python benchmarks/llm_rerankers.py pairwise [--queries 5] [--prp-depth 10]

Each part writes benchmarks/results/llm-<part>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import RESULTS, machine, offline, write_result

from rerank import DataError, Hit, compare, evaluate, load_dataset
from rerank.rerankers.listwise import First, ListwiseGenerate
from rerank.rerankers.pairwise import PRP
from rerank.rerankers.pointwise import LLMPointwise

EVALS: dict[str, Any] = {}  # label -> Evaluation, for paired tests


def setup(n_queries: int, depth: int) -> tuple[Any, list, dict, dict]:
    ds = load_dataset("trec-dl-19")
    queries = ds.queries[:n_queries]
    bm25 = ds.candidate_run("bm25")
    top = {q.qid: bm25[q.qid][:depth] for q in queries}
    reverse = {q: [Hit(h.docid, float(i), h.text) for i, h in enumerate(reversed(hits))] for q, hits in top.items()}
    return ds, queries, top, reverse


def measure(label: str, reranker: Any, ds: Any, queries: list, ranking: dict) -> dict:
    before = reranker.cost.as_dict()
    t0 = time.perf_counter()
    run = reranker(queries, ranking)
    seconds = time.perf_counter() - t0
    after = reranker.cost.as_dict()
    ev = evaluate(run, {q.qid: ds.qrels[q.qid] for q in queries if q.qid in ds.qrels}, ["nDCG@10"], ds.rel)
    EVALS[label] = ev
    m = ev.metrics
    calls = after["model_calls"] - before["model_calls"]
    row = {
        "reranker": label,
        "nDCG@10": round(m["nDCG@10"], 4),
        "seconds": round(seconds, 1),
        "seconds_per_query": round(seconds / len(queries), 2),
        "prompts_per_query": round(calls / len(queries), 1),
        "prompt_tokens": after["tokens"] - before["tokens"],
        "generated_tokens": after.get("generated_tokens", 0) - before.get("generated_tokens", 0),
        "repaired_outputs": after.get("repaired_outputs", 0) - before.get("repaired_outputs", 0),
    }
    print(f"{label:<34} nDCG@10 {row['nDCG@10']:.4f}  {row['seconds']:>7.1f}s  {row['prompts_per_query']:>6} prompts/q  "
          f"{row['generated_tokens']:>6} generated  {row['repaired_outputs']} repaired", flush=True)
    return row


def listwise(args: argparse.Namespace) -> dict:
    ds, queries, top, reverse = setup(args.queries, args.depth)
    path = offline(args.model)
    base = evaluate(top, {q.qid: ds.qrels[q.qid] for q in queries}, ["nDCG@10"], ds.rel).metrics["nDCG@10"]
    print(f"{len(queries)} DL19 queries, BM25 top-{args.depth}, window {args.window} stride {args.stride}; BM25 nDCG@10 "
          f"{base:.4f}")
    opts = {"depth": args.depth, "window": args.window, "stride": args.stride, "max_passage_tokens": args.passage_tokens}
    first, gen = First(path, **opts), ListwiseGenerate(path, **opts)
    rows = [measure("FIRST", first, ds, queries, top), measure("listwise-gen", gen, ds, queries, top)]
    if not args.main_only:
        rows += [measure("FIRST (reversed input)", first, ds, queries, reverse),
                 measure("listwise-gen (reversed input)", gen, ds, queries, reverse)]
    from rerank.rerankers.listwise import STRATEGIES, identifier_tokens

    for strategy in () if args.main_only else STRATEGIES:  # how FIRST reads identifiers: every other way this tokenizer allows
        try:
            prime, labels, _ = identifier_tokens(first.llm.tokenizer, args.window, strategy)
        except DataError:  # not supported by this tokenizer
            continue
        if (prime, labels) != (first._prime, first.labels):
            other = First(path, identifiers=strategy, **opts)
            rows.append(measure(f"FIRST (identifiers: {strategy})", other, ds, queries, top))
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    diff = rows[0]["nDCG@10"] - rows[1]["nDCG@10"]
    test = compare(EVALS["listwise-gen"], EVALS["FIRST"])[0]
    print(f"FIRST / generative latency {ratio:.2f}x (goal <= 0.6x); nDCG@10 difference {diff:+.4f} (goal within 0.01; "
          f"paired t-test p={test.t_pvalue:.3f}, randomization p={test.randomization_pvalue:.3f})")
    return {"model": args.model, "queries": len(queries), "depth": args.depth, "window": args.window, "stride": args.stride,
            "bm25_nDCG@10": round(base, 4), "first_prime": first._prime, "first_labels": first.labels, "rows": rows,
            "first_vs_generative_latency": round(ratio, 3), "first_minus_generative_nDCG@10": round(diff, 4),
            "paired_test_first_vs_generative": {"p_ttest": test.t_pvalue, "p_randomization": test.randomization_pvalue}}


def pairwise(args: argparse.Namespace) -> dict:
    ds, queries, top, reverse = setup(args.queries, args.prp_depth)
    path = offline(args.model)
    base = evaluate(top, {q.qid: ds.qrels[q.qid] for q in queries}, ["nDCG@10"], ds.rel).metrics["nDCG@10"]
    print(f"{len(queries)} DL19 queries, BM25 top-{args.prp_depth}, passages cut to {args.prp_passage_tokens} tokens; "
          f"BM25 nDCG@10 {base:.4f}")
    opts = {"depth": args.prp_depth, "max_passage_tokens": args.prp_passage_tokens}
    allpair = PRP(path, method="allpair", **opts)
    rows = [measure("pointwise (yes/no)", LLMPointwise(path, depth=args.prp_depth), ds, queries, top),
            measure("PRP allpair", allpair, ds, queries, top),
            measure("PRP sorting (top-10)", PRP(path, method="sorting", k=10, **opts), ds, queries, top),
            measure("PRP sliding-10", PRP(path, method="sliding", k=10, **opts), ds, queries, top),
            measure("PRP allpair (reversed input)", allpair, ds, queries, reverse)]
    return {"model": args.model, "queries": len(queries), "depth": args.prp_depth, "passage_tokens": args.prp_passage_tokens,
            "bm25_nDCG@10": round(base, 4), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["listwise", "pairwise"])
    ap.add_argument("--model", default="Qwen2.5-Coder-1.5B-Instruct")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--stride", type=int, default=10)
    ap.add_argument("--passage-tokens", type=int, default=100)
    ap.add_argument("--prp-depth", type=int, default=10)
    ap.add_argument("--prp-passage-tokens", type=int, default=64)
    ap.add_argument("--main-only", action="store_true", help="listwise: skip the reversed input and the identifier readings")
    ap.add_argument("--output")
    args = ap.parse_args()
    result = {
        "benchmark": f"llm-{args.part}",
        "machine": machine(),
        **(listwise(args) if args.part == "listwise" else pairwise(args)),
    }
    write_result(result, Path(args.output or RESULTS / f"llm-{args.part}.json"))


if __name__ == "__main__":
    main()
