"""Pointwise reranking: speed against sentence-transformers, quality on TREC DL 2019.

throughput  rerank's CrossEncoder vs sentence-transformers CrossEncoder.predict (the baseline)
            on the same model and the same DL19 (query, passage) pairs, in one run: fp32 vs
            fp32, bf16 vs bf16, and rerank bf16 vs sentence-transformers fp32 (its default).
            The model is the all-MiniLM-L6-v2 body with a fixed-seed head (no MS MARCO
            cross-encoder installs offline): speed does not depend on the head's training.
quality     nDCG@10 / RR@10 on DL19 BM25 top-100 (rel >= 2) after reranking the top --depth
            hits with SPLADE (splade-tiny-msmarco) and LLMPointwise (Qwen2.5-Coder 0.5B and
            1.5B), beside BM25's 0.5058, with cost (model calls, tokens, seconds).
splade      rerank's Splade vs sentence-transformers SparseEncoder (the baseline: encode the
            distinct queries and passages, then each pair's dot product) on splade-tiny-msmarco
            and the same DL19 pairs, on PyTorch in fp32 and bf16; plus rerank on its default
            backend (OpenVINO where installed). rerank projects passages onto the query terms only.

    python benchmarks/pointwise.py throughput [--pairs 2000]
    python benchmarks/pointwise.py quality [--depth 20] [--llm-depth 20] [--models ...]
    python benchmarks/pointwise.py splade [--pairs 2000]

Each part writes benchmarks/results/pointwise-<part>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, dl19_pairs, machine, offline, versus_baseline, write_result

from rerank import evaluate, load_dataset
from rerank.rerankers.pointwise import CrossEncoder, LLMPointwise, Splade


def throughput(args: argparse.Namespace) -> dict:
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = dl19_pairs(args.pairs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # warm-up: on a GPU every new batch shape costs a kernel choice (bf16 most: a first pass over these pairs ran
    # at a third of the second's speed on an H200), so there the warm-up is one whole pass; on a CPU 64 pairs
    warm = pairs if device == "cuda" else pairs[:64]
    rows, scores = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        src = offline("all-MiniLM-L6-v2")
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        for dtype in ("float32", "bfloat16"):
            st = STCrossEncoder(tmp, device=device, model_kwargs={"dtype": getattr(torch, dtype)})
            st.predict(warm, batch_size=args.st_batch, show_progress_bar=False)
            t0 = time.perf_counter()
            scores[("st", dtype)] = np.asarray(
                st.predict(pairs, batch_size=args.st_batch, show_progress_bar=False), dtype=np.float64
            )
            rows.append({"system": "sentence-transformers", "dtype": dtype, "seconds": time.perf_counter() - t0})
            ours = CrossEncoder(tmp, dtype=dtype, device=device, batch_tokens=args.batch_tokens)
            ours.score(warm)
            t0 = time.perf_counter()
            scores[("rerank", dtype)] = np.asarray(ours.score(pairs), dtype=np.float64)
            rows.append({"system": "rerank", "dtype": dtype, "seconds": time.perf_counter() - t0,
                         "batch_tokens": ours.engine.batch_tokens})
    agreement = {
        "max_abs_diff_fp32": float(np.abs(scores["rerank", "float32"] - scores["st", "float32"]).max()),
        "spearman_bf16_vs_st_fp32": float(spearmanr(scores["rerank", "bfloat16"], scores["st", "float32"]).statistic),
    }
    ratios = versus_baseline(rows, len(pairs), "pairs", f"{len(pairs)} DL19 pairs on {device}", agreement)
    return {"pairs": len(pairs), "device": device, "rows": rows, "ratios": ratios,
            "agreement": agreement}


def splade(args: argparse.Namespace) -> dict:
    import torch
    from sentence_transformers import SparseEncoder

    pairs = dl19_pairs(args.pairs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    src = offline("splade-tiny-msmarco")
    queries, docs = list(dict.fromkeys(q for q, _ in pairs)), list(dict.fromkeys(d for _, d in pairs))
    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, str], np.ndarray] = {}
    for dtype in ("float32", "bfloat16"):
        st = SparseEncoder(src, device=device, model_kwargs={"dtype": getattr(torch, dtype)})
        st.max_seq_length = 256  # as rerank's Splade window
        st.encode_document(docs[:32], batch_size=args.st_batch)  # warm-up
        t0 = time.perf_counter()
        qv = st.encode_query(queries, batch_size=args.st_batch, convert_to_tensor=True).to_dense()
        dv = st.encode_document(docs, batch_size=args.st_batch, convert_to_tensor=True).to_dense()
        qi, di = {q: i for i, q in enumerate(queries)}, {d: i for i, d in enumerate(docs)}
        scores["st", dtype] = np.array([float(qv[qi[q]].float() @ dv[di[d]].float()) for q, d in pairs])
        rows.append({"system": "sentence-transformers", "dtype": dtype, "seconds": time.perf_counter() - t0})
        ours = Splade(src, dtype=dtype, device=device, backend="torch")
        ours.score(pairs[:32])
        ours = Splade(src, dtype=dtype, device=device, backend="torch", batch_tokens=args.batch_tokens)
        t0 = time.perf_counter()
        scores["rerank", dtype] = np.asarray(ours.score(pairs), dtype=np.float64)
        rows.append({"system": "rerank", "dtype": dtype, "seconds": time.perf_counter() - t0})
    agreement = {"max_abs_diff_fp32": float(np.abs(scores["rerank", "float32"] - scores["st", "float32"]).max()),
                 "max_score_fp32": float(scores["st", "float32"].max())}
    ratios = versus_baseline(rows, len(pairs), "pairs", f"SPLADE-tiny, {len(pairs)} DL19 pairs on {device}, PyTorch",
                             agreement)
    st32 = next(r["pairs_per_s"] for r in rows if r["system"] == "sentence-transformers" and r["dtype"] == "float32")
    ours32 = next(r["pairs_per_s"] for r in rows if r["system"] == "rerank" and r["dtype"] == "float32")

    def timed(system: str, model: Splade) -> tuple[dict, np.ndarray]:
        t0 = time.perf_counter()
        out = np.asarray(model.score(pairs), dtype=np.float64)
        row: dict[str, Any] = {"system": system, "dtype": "float32", "backend": model.backend,
                               "seconds": round(time.perf_counter() - t0, 2)}
        row["pairs_per_s"] = round(len(pairs) / row["seconds"], 1)
        return row, out

    auto = Splade(src, dtype="float32", device=device)
    auto.score(pairs[:32])
    extra, auto_scores = timed("rerank", auto)
    extra["max_abs_diff_vs_st_fp32"] = float(np.abs(auto_scores - scores["st", "float32"]).max())
    extra["vs_st_fp32"] = round(extra["pairs_per_s"] / st32, 3)
    print(f"rerank on its default backend ({auto.backend}, fp32): {extra['seconds']:.2f} s, "
          f"{extra['pairs_per_s']:.1f} pairs/s, {extra['vs_st_fp32']:.2f}x sentence-transformers fp32")
    whole = Splade(src, dtype="float32", device=device, backend="torch")
    whole.whole_above = 0.0  # every passage's whole vector, as before the projection onto query terms
    w, _ = timed("rerank, whole vectors", whole)
    print(f"rerank with whole passage vectors (torch, fp32): {w['seconds']:.2f} s; on the query terms only: "
          f"{ours32 / w['pairs_per_s']:.2f}x that")
    return {"pairs": len(pairs), "queries": len(queries), "passages": len(docs), "device": device, "rows": rows,
            "ratios": ratios, "agreement": agreement, "default_backend": extra, "whole_vectors": w,
            "query_terms_vs_whole": round(ours32 / w["pairs_per_s"], 3)}


def quality(args: argparse.Namespace) -> dict:
    ds = load_dataset("trec-dl-19")
    bm25 = ds.candidate_run("bm25")
    assert ds.qrels is not None  # TREC DL 2019 comes with NIST's judgments (ir_datasets and the local copy)
    metrics = ["nDCG@10", "RR@10"]
    base = evaluate(bm25, ds.qrels, metrics, rel=ds.rel).metrics
    rows = [{"reranker": "none (BM25)", "depth": 0, **{k: round(v, 4) for k, v in base.items()}}]
    print(f"{'reranker':<36} {'depth':>5} {'nDCG@10':>8} {'RR@10':>7} {'calls':>6} {'tokens':>8} {'seconds':>8}")
    print(f"{rows[0]['reranker']:<36} {0:>5} {base['nDCG@10']:>8.4f} {base['RR@10']:>7.4f}")
    for name in args.models:
        model: Splade | LLMPointwise
        if name.startswith("splade"):
            model, depth = Splade(offline(name), depth=args.depth), args.depth
        else:
            model, depth = LLMPointwise(offline(name), depth=args.llm_depth), args.llm_depth
        t0 = time.perf_counter()
        run = model(ds.queries, bm25)
        seconds = time.perf_counter() - t0
        m = evaluate(run, ds.qrels, metrics, rel=ds.rel).metrics
        row = {"reranker": model.name.split("/")[-1], "depth": depth, **{k: round(v, 4) for k, v in m.items()},
               **model.cost.as_dict(), "wall_seconds": round(seconds, 1), "dtype": str(model.dtype)}
        rows.append(row)
        print(f"{row['reranker']:<36} {depth:>5} {m['nDCG@10']:>8.4f} {m['RR@10']:>7.4f} {row['model_calls']:>6} "
              f"{row['tokens']:>8} {seconds:>8.1f}", flush=True)
    return {"queries": len(ds.queries), "candidates": "bm25 top-100", "relevance_threshold": ds.rel, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["throughput", "quality", "splade"])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--st-batch", type=int, default=32, help="sentence-transformers batch size (its default)")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--depth", type=int, default=100, help="rerank depth for SPLADE")
    ap.add_argument("--llm-depth", type=int, default=20, help="rerank depth for the LLMs (100 on a GPU)")
    ap.add_argument(
        "--models", nargs="+", default=["splade-tiny-msmarco", "Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct"]
    )
    ap.add_argument("--output")
    args = ap.parse_args()
    result = {"benchmark": f"pointwise-{args.part}", "machine": machine(),
              **{"throughput": throughput, "quality": quality, "splade": splade}[args.part](args)}
    write_result(result, Path(args.output or RESULTS / f"pointwise-{args.part}.json"))


if __name__ == "__main__":
    main()
