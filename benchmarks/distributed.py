"""Ray scale-out (rerank.distributed) against the single-process path, on this machine.

    python benchmarks/distributed.py                      # encode + rerank, workers 1 and 2
    python benchmarks/distributed.py --jobs rerank --configs 2x1

Jobs (the issue's acceptance):
* ``encode``: all-MiniLM-L6-v2 (bf16 on CPU) encodes SciFact (5,183 abstracts) and Cranfield
  (1,400): a fresh dense index each time; the embeddings must be bit-identical to one process.
* ``rerank``: DL19's 43 queries x BM25 top 100 (4,300 pairs) by a pointwise cross-encoder: the
  MiniLM cross-encoder trained by ``benchmarks/train_ce.py`` (benchmarks/work), else the MiniLM body
  with a seeded head; the runs must match one process (same documents in the same order; the
  largest score difference is reported).
* ``overhead``: Ray's coordination cost alone: a no-model stage over 200 blocks (per block), and
  the start of an actor pool (the first block's wait).

Configurations: ``single`` (one process, all cores) and ``WxC`` (W Ray workers of C CPUs each,
local cluster). Seconds are wall time of the whole job as a user sees it, worker start included;
Ray's own start (``ray.init``) is reported once, apart. With ``--gpus-per-worker`` (on a GPU
machine) the Ray configurations hold that many GPUs per worker and ``single`` runs on the GPU.
Writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from common import RESULTS, WORK, machine, offline, write_result

from rerank.data import load_dataset
from rerank.distributed import RayOptions, connect, encode_corpus, rerank
from rerank.evaluate import evaluate
from rerank.rerankers import make_reranker, reranker_class
from rerank.retrieve.dense import Dense
from rerank.types import Query, Ranking, Stage


class Echo(Stage):
    """A stage with no model: what Ray costs per block when the work is nothing."""

    name = "echo"

    def __call__(self, queries: Any, ranking: Ranking | None = None) -> Ranking:
        assert ranking is not None
        return {q: list(h) for q, h in ranking.items()}


def cross_encoder() -> tuple[str, str]:
    trained = WORK / "ce-listnet-e2-g8-lr7e-05-s0"
    if (trained / "config.json").is_file():
        return str(trained), "MiniLM cross-encoder trained by benchmarks/train_ce.py (listnet, 2 epochs)"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(tempfile.mkdtemp(prefix="minilm-ce-"))
    torch.manual_seed(0)
    src = offline("all-MiniLM-L6-v2")
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out), "all-MiniLM-L6-v2 body with a seeded head (no trained cross-encoder in benchmarks/work)"


def parse_config(c: str, gpus: float) -> RayOptions | None:
    if c == "single":
        return None
    w, _, cpus = c.partition("x")
    return RayOptions(workers=int(w), cpus_per_worker=float(cpus or 1), gpus_per_worker=gpus)


def encode_job(configs: list[str], gpus: float, device: str) -> dict[str, Any]:
    model = offline("all-MiniLM-L6-v2")
    datasets = [load_dataset("scifact"), load_dataset("cranfield")]
    n = 0
    for ds in datasets:
        assert ds.docs is not None  # SciFact and Cranfield come with their corpora
        n += len(ds.docs)
    rows, reference = [], None
    for c in configs:
        opts = parse_config(c, gpus)
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            embs = []
            for ds in datasets:
                dense = Dense(model, ds, index_root=root, device=device)
                if opts is None:
                    dense.index()
                else:
                    encode_corpus(dense, opts)
                embs.append(np.asarray(dense.embeddings[0]).copy())
            seconds = time.perf_counter() - t0
        if reference is None:
            reference = embs
        same = all(np.array_equal(a, b) for a, b in zip(embs, reference, strict=True))
        diff = max(float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()) for a, b in zip(embs, reference, strict=True))
        rows.append({"config": c, "seconds": round(seconds, 2), "docs_per_s": round(n / seconds, 1),
                     "bit_identical_to_first": same, "max_abs_diff": diff})
        print(f"encode {c:<8} {seconds:8.2f}s {n / seconds:8.1f} docs/s  identical={same} maxdiff={diff:.2g}", flush=True)
    return {"documents": n, "collections": ["scifact (5,183)", "cranfield (1,400)"], "model": "all-MiniLM-L6-v2",
            "rows": rows}


def rerank_job(configs: list[str], gpus: float, device: str) -> dict[str, Any]:
    ce, what = cross_encoder()
    ds = load_dataset("trec-dl-19")
    run = {q: h[:100] for q, h in ds.candidate_run("bm25").items()}
    pairs = sum(len(h) for h in run.values())
    factory = functools.partial(make_reranker, f"cross-encoder:{ce}", device=device)
    block = reranker_class(f"cross-encoder:{ce}").block
    rows, reference = [], None
    for c in configs:
        opts = parse_config(c, gpus)
        t0 = time.perf_counter()
        first: list[float] = []

        def note(done: int, total: int, first: list[float] = first, t0: float = t0) -> None:
            if not first:
                first.append(time.perf_counter() - t0)

        if opts is None:
            out = factory()(ds.queries, run)
        else:
            out, _ = rerank(factory, ds.queries, run, opts, block=block, on_block=note)
        seconds = time.perf_counter() - t0
        if reference is None:
            reference = out
        same_run = list(out) == list(reference) and all([h.docid for h in out[q]] == [h.docid for h in reference[q]]
                                                        for q in reference)
        a = {(q, h.docid): h.score for q, hs in out.items() for h in hs}
        diff = max(abs(a[(q, h.docid)] - h.score) for q, hs in reference.items() for h in hs)
        ndcg = evaluate(out, ds.require_qrels(), ["nDCG@10"], ds.rel).metrics["nDCG@10"]
        rows.append(
            {
                "config": c,
                "seconds": round(seconds, 2),
                "pairs_per_s": round(pairs / seconds, 1),
                "first_block_s": round(first[0], 2) if first else None,
                "same_run_as_first": same_run,
                "max_score_diff": diff,
                "ndcg@10": round(ndcg, 4),
            }
        )
        print(f"rerank {c:<8} {seconds:8.2f}s {pairs / seconds:8.1f} pairs/s  first block after "
              f"{first[0] if first else 0:.2f}s  same run={same_run} "
              f"maxdiff={diff:.2g} nDCG@10={ndcg:.4f}", flush=True)
    return {"pairs": pairs, "queries": len(run), "block_queries": block, "model": what, "rows": rows}


def overhead_job(gpus: float) -> dict[str, Any]:
    queries = [Query(f"q{i}", "text") for i in range(200)]
    from rerank.types import Hit

    run = {q.qid: [Hit(f"d{j}", float(-j), "passage text " * 50) for j in range(100)] for q in queries}
    out = {}
    for w in (1, 2):
        opts = RayOptions(workers=w, gpus_per_worker=0)
        t0 = time.perf_counter()
        first: list[float] = []

        def note(done: int, total: int, first: list[float] = first, t0: float = t0) -> None:
            if not first:
                first.append(time.perf_counter() - t0)

        rerank(Echo, queries, run, opts, block=1, on_block=note)
        seconds = time.perf_counter() - t0
        out[f"{w}_workers"] = {"blocks": 200, "seconds": round(seconds, 2), "first_block_s": round(first[0], 2),
                               "per_block_ms": round(1000 * (seconds - first[0]) / 199, 2)}
        print(f"overhead {w} workers: 200 blocks of 100 passages in {seconds:.2f}s, first after {first[0]:.2f}s, "
              f"then {out[f'{w}_workers']['per_block_ms']:.1f} ms a block", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", default="overhead,encode,rerank")
    p.add_argument("--configs", default="single,1x2,1x1,2x1", help="single and WxC (W workers of C CPUs)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--out", default=str(RESULTS / "distributed.json"))
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    device = "cuda" if args.gpus_per_worker else "cpu"
    configs = args.configs.split(",")
    biggest = max((cast(RayOptions, parse_config(c, args.gpus_per_worker)) for c in configs if c != "single"),  # None: single
                  key=lambda o: o.workers * o.cpus_per_worker, default=RayOptions(workers=1))
    t0 = time.perf_counter()
    connect(biggest)
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}  # other jobs' figures are kept
    result.update({"machine": machine(), "ray_init_s": round(time.perf_counter() - t0, 2), "configs": configs})
    print(f"ray.init (local cluster): {result['ray_init_s']:.2f}s")
    jobs = args.jobs.split(",")
    if "overhead" in jobs:
        result["overhead"] = overhead_job(args.gpus_per_worker)
    if "encode" in jobs:
        result["encode"] = encode_job(configs, args.gpus_per_worker, device)
    if "rerank" in jobs:
        result["rerank"] = rerank_job(configs, args.gpus_per_worker, device)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
