"""Dense retrieval: encoding speed against sentence-transformers, and FAISS index types.

encode  rerank's Encoder vs plain ``SentenceTransformer.encode`` (the baseline, batch 32, its
        default) on the same SciFact abstracts and the same model in one run: fp32 vs fp32,
        bf16 vs bf16, and rerank bf16 vs sentence-transformers fp32 (its default), with the
        smallest cosine between our embeddings and the baseline's.
ann     flat vs IVF vs HNSW over >= 200k vectors: build seconds, queries per second (one batch
        of real queries, k=10), recall@10 against the flat index, index bytes. The vectors are
        real all-MiniLM-L6-v2 embeddings of every text the shared data has (SciFact abstracts
        and their sentences, DL19 candidate passages, Cranfield), topped up to --vectors with
        synthetic ones drawn from a Gaussian with the real vectors' mean and covariance
        (normalised); the table says how many are synthetic and how many of the true top-10
        neighbours are. Queries are real (SciFact, DL19, Cranfield). With faiss-gpu and a GPU,
        flat and IVF are timed on the GPU too.
quality SciFact test nDCG@10 / RR@10 / R@100 of BM25, each --models encoder (flat), and RRF of
        BM25 with each (top 1000 from each part), beside the published figures; embeddings are
        reused from $RERANK_INDEXES when built before.

    python benchmarks/dense.py encode [--docs 2000] [--model all-MiniLM-L6-v2]
    python benchmarks/dense.py ann [--vectors 200000]
    python benchmarks/dense.py quality [--models all-MiniLM-L6-v2 all-mpnet-base-v2]

Each part writes benchmarks/results/dense-<part>.json.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, offline, versus_baseline, write_result

from rerank import Pipeline, load_dataset
from rerank.models.encoder import Encoder
from rerank.retrieve.dense import _faiss, build_faiss_index, default_nlist, set_search_params


def scifact_texts(n: int) -> list[str]:
    docs = load_dataset("scifact").docs
    assert docs is not None  # SciFact comes with its corpus
    return [t for _, t in docs.items()][:n]


def encode(args: argparse.Namespace) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    texts = scifact_texts(args.docs)
    path = offline(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, embs = [], {}
    for dtype in ("float32", "bfloat16"):
        st = SentenceTransformer(path, device=device, model_kwargs={"dtype": getattr(torch, dtype)})
        st.encode(texts[:64], batch_size=args.st_batch)  # warm-up
        t0 = time.perf_counter()
        embs["st", dtype] = st.encode(texts, batch_size=args.st_batch, convert_to_numpy=True).astype(np.float32)
        rows.append({"system": "sentence-transformers", "dtype": dtype, "seconds": time.perf_counter() - t0})
        ours = Encoder(path, dtype=dtype, device=device, batch_tokens=args.batch_tokens)
        ours.encode_docs(texts[:64])
        t0 = time.perf_counter()
        embs["rerank", dtype] = ours.encode_docs(texts)
        rows.append({"system": "rerank", "dtype": dtype, "seconds": time.perf_counter() - t0,
                     "batch_tokens": ours.engine.batch_tokens})

    def min_cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    agreement = {"min_cosine_fp32_vs_st_fp32": min_cos(embs["rerank", "float32"], embs["st", "float32"]),
                 "min_cosine_bf16_vs_st_fp32": min_cos(embs["rerank", "bfloat16"], embs["st", "float32"])}
    ratios = versus_baseline(rows, len(texts), "docs", f"{len(texts)} SciFact abstracts, {args.model}, on {device}", agreement)
    return {"docs": len(texts), "model": args.model, "device": device, "rows": rows,
            "ratios": ratios, "agreement": agreement}


def real_texts() -> tuple[list[str], list[str]]:
    """Every text of the shared data that embeds as a document, and every query."""
    sf, dl, cran = load_dataset("scifact"), load_dataset("trec-dl-19"), load_dataset("cranfield")
    assert sf.docs is not None and dl.docs is not None and cran.docs is not None  # corpora (DL19: at least its candidates)
    docs = [t for _, t in sf.docs.items()]
    docs += [s for t in list(docs) for s in re.split(r"(?<=[.!?])\s+", t) if len(s) > 20]
    docs += [t for _, t in dl.docs.items()] + [t for _, t in cran.docs.items()]
    queries = [q.text for ds in (sf, dl, cran) for q in ds.queries]
    return docs, queries


def ann(args: argparse.Namespace) -> dict:
    faiss = _faiss()
    enc = Encoder(offline(args.model), batch_tokens=args.batch_tokens)
    docs, queries = real_texts()
    t0 = time.perf_counter()
    real = enc.encode_docs(docs)
    qv = enc.encode_queries(queries)
    encode_s = time.perf_counter() - t0
    print(f"encoded {len(docs)} real texts and {len(queries)} queries in {encode_s:.0f}s", flush=True)
    rng = np.random.default_rng(0)
    n_syn = max(0, args.vectors - len(real))
    mean, cov = real.mean(0), np.cov(real, rowvar=False)
    syn = rng.multivariate_normal(mean, cov, size=n_syn, method="cholesky").astype(np.float32)
    syn /= np.linalg.norm(syn, axis=1, keepdims=True)
    base = np.concatenate([real, syn]).astype(np.float16)  # as Dense stores them
    n = len(base)
    metric = faiss.METRIC_INNER_PRODUCT
    k = 10
    configs: list[tuple[str, dict[str, int], dict[str, int]]] = [("flat", {}, {})]
    configs += [("ivf", {"nlist": default_nlist(n)}, {"nprobe": p}) for p in args.nprobe]
    configs += [
        ("hnsw", {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}, {"ef_search": e}) for e in args.ef_search
    ]
    rows, truth, built = [], None, {}
    for kind, build_params, search_params in configs:
        key = (kind, tuple(sorted(build_params.items())))
        if key not in built:
            t0 = time.perf_counter()
            built[key] = (build_faiss_index(kind, base, metric, **build_params), time.perf_counter() - t0)
        index, build_s = built[key]
        set_search_params(index, kind, k, search_params.get("nprobe", 1), search_params.get("ef_search", 16))
        index.search(qv[:16], k)  # warm-up
        t0 = time.perf_counter()
        _, ids = index.search(qv, k)
        search_s = time.perf_counter() - t0
        if truth is None:
            truth = ids
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth, strict=True)]))
        row = {"index": kind, **build_params, **search_params, "build_s": round(build_s, 2),
               "qps": round(len(qv) / search_s, 1), "recall@10": round(recall, 4),
               "index_mb": round(faiss.serialize_index(index).nbytes / 2**20, 1), "device": "cpu"}
        rows.append(row)
        print(row, flush=True)
    assert truth is not None  # set by the first (flat) configuration
    if faiss.get_num_gpus() > 0:
        for kind, build_params, search_params in configs:
            if kind == "hnsw":
                continue
            index = faiss.index_cpu_to_all_gpus(built[(kind, tuple(sorted(build_params.items())))][0])
            set_search_params(index, kind, k, search_params.get("nprobe", 1), 16)
            index.search(qv[:16], k)
            t0 = time.perf_counter()
            _, ids = index.search(qv, k)
            search_s = time.perf_counter() - t0
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth, strict=True)]))
            rows.append({"index": kind, **build_params, **search_params, "qps": round(len(qv) / search_s, 1),
                         "recall@10": round(recall, 4), "device": "gpu"})
            print(rows[-1], flush=True)
    synthetic_share = float(np.mean(truth >= len(real)))
    print(f"\n{n} vectors ({len(real)} real, {n_syn} synthetic), dim {base.shape[1]}, {len(qv)} real queries, k={k}; "
          f"{synthetic_share:.1%} of the true top-10 are synthetic")
    print(f"{'index':<6} {'params':<44} {'build s':>8} {'QPS':>9} {'R@10':>7} {'MB':>8} {'dev':>4}")
    flat_qps = rows[0]["qps"]
    for r in rows:
        params = ", ".join(f"{p}={r[p]}" for p in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search") if p in r)
        print(f"{r['index']:<6} {params:<44} {r.get('build_s', float('nan')):>8.2f} {r['qps']:>9.1f} {r['recall@10']:>7.4f} "
              f"{r.get('index_mb', float('nan')):>8.1f} {r['device']:>4}   ({r['qps'] / flat_qps:.1f}x flat QPS)")
        r["qps_vs_flat"] = round(r["qps"] / flat_qps, 2)
    return {"vectors": n, "real": len(real), "synthetic": n_syn, "dim": int(base.shape[1]), "queries": len(qv), "k": k,
            "model": args.model, "encode_seconds": round(encode_s, 1), "true_top10_synthetic_share": round(synthetic_share, 4),
            "rows": rows}


PUBLISHED = {"all-MiniLM-L6-v2": 0.645, "all-mpnet-base-v2": 0.656}  # SciFact nDCG@10 (BEIR/MTEB leaderboards)


def quality(args: argparse.Namespace) -> dict:
    from rerank import BM25, RRF, Dense, evaluate

    ds = load_dataset("scifact")
    assert ds.docs is not None and ds.qrels is not None  # SciFact comes with its corpus and judgments
    metrics = ["nDCG@10", "RR@10", "R@100"]
    bm25 = BM25(ds.docs, k=1000)
    stages: list[tuple[str, Pipeline, float | None]] = [("bm25", bm25 % 100, None)]
    for name in args.models:
        dense = Dense(f"sentence-transformers/{name}", ds.docs, k=1000, progress=True)
        stages += [(name, dense % 100, PUBLISHED.get(name)), (f"rrf(bm25, {name})", RRF(bm25, dense) % 100, None)]
    rows = []
    print(f"{'pipeline':<36} {'nDCG@10':>8} {'RR@10':>7} {'R@100':>7} {'published':>9} {'seconds':>8}")
    for label, stage, published in stages:
        t0 = time.perf_counter()
        m = evaluate(stage(ds.queries), ds.qrels, metrics, ds.rel).metrics
        row = {"pipeline": label, **{k: round(v, 4) for k, v in m.items()}, "published_nDCG@10": published,
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{label:<36} {m['nDCG@10']:>8.4f} {m['RR@10']:>7.4f} {m['R@100']:>7.4f} {published or '':>9} "
              f"{row['seconds']:>8.1f}",
              flush=True)
    return {"dataset": "scifact test", "queries": len(ds.queries), "note": "seconds include encoding the corpus when not stored "
                                                                           "yet",
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["encode", "ann", "quality"])
    ap.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "all-mpnet-base-v2"])
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--docs", type=int, default=2000, help="SciFact abstracts to encode (encode)")
    ap.add_argument("--st-batch", type=int, default=32, help="sentence-transformers batch size (its default)")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--vectors", type=int, default=200_000, help="index size (ann)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--ef-search", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--output")
    args = ap.parse_args()
    part = {"encode": encode, "ann": ann, "quality": quality}[args.part]
    result = {"benchmark": f"dense-{args.part}", "machine": machine(), **part(args)}
    write_result(result, Path(args.output or RESULTS / f"dense-{args.part}.json"))


if __name__ == "__main__":
    main()
