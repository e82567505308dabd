"""Corpora larger than memory: the document store on disk against today's in-memory dict.

A corpus of N documents is made from real text: every sentence of the SciFact abstracts, the
CISI abstracts and the TREC DL 2019 candidate passages in ../shared/data (about 60,000 distinct
sentences), each document 3-8 sentences drawn with a seeded generator, written once as JSONL
under benchmarks/work/. For N in --sizes, each job runs in its own process (so peak RSS is the
job's own) with each store:

  build    reading the corpus into the store (dict: into memory; disk: DiskDocStore.build)
  bm25     a bm25s index over the store's documents (rerank's BM25: streaming tokenization, token ids
           kept as int32 arrays), then --queries SciFact queries searched (top 100; queries/s)
  disk     bm25:disk, the same scores built in bounded memory (--memory-gb) and searched memory-mapped
           (pruned: MaxScore), then searched again exhaustively (postings read per query, both ways)
  lucene   the anchor: Lucene through pyserini (bm25:lucene, 2 threads), built and searched the same way
  stream   bm25:disk's builder fed straight from the JSONL (no document store open: the peak is the
           builder's own, not the pages of a memory-mapped store it read), then searched
  ray      bm25:disk built in 2 shards and searched by a local Ray cluster of 2 workers (one a shard)

--dense-sizes N,...: dense beyond memory, on synthetic unit vectors (384 dimensions, 1,000 Gaussian
clusters; encoding millions of documents with a model is out of reach of a 2-core machine):
written in chunks to a float16 .npy, IVF-PQ trained on a sample and filled a chunk at a time
(build seconds, peak RSS), its recall@100 against exact search (the memory-mapped flat search,
200 stored vectors as queries) and the queries/s of both.
  bm25s    the baseline: bm25s as its README uses it (the texts in a list, bm25s.tokenize, then
           BM25.index; token ids as Python lists), same stemmer, stopwords, k1 and b; store "dict" only
  random   100 random documents read by id right after opening the store (cold pages: a disk read
           each), then the same 100 again (warm); per-read latency
  rerank   the texts of 1,000 queries' top-100 hits fetched by id, a query's at a time (what a first
           stage hands a reranker)

Peak RSS counts the pages of memory-mapped files a job touched (shared with other processes and
dropped by the kernel under pressure); "own" is the job's anonymous resident memory at its end.
Prints a table with the CPU, memory and the ratios disk/dict, and writes benchmarks/results/scale.json.

    python benchmarks/scale.py --sizes 100000,1000000,5000000 --bm25-max 1000000
    python benchmarks/scale.py --sizes 1000000,5000000 --jobs bm25,bm25s --bm25-max 5000000 --baseline-max 1000000 \
        --stores-at-max disk --out benchmarks/results/scale-bm25.json
    python benchmarks/scale.py --sizes 1000000 --jobs disk,bm25,lucene --stores-at-max disk --memory-gb 4 \
        --out benchmarks/results/scale-bm25-disk-1m.json

Build figures are the index build alone (the store already open); "search" rows time the
queries after one warm-up query (numba's kernel is compiled once and cached on disk).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rerank.data.store import DocStore
    from rerank.types import Query

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, WORK, announce_cpu, write_result  # noqa: E402

JOBS = ("build", "bm25", "bm25s", "random", "rerank", "disk", "lucene", "stream", "ray")
ENGINES = {"bm25": "bm25s", "disk": "disk", "lucene": "lucene"}  # job: BM25 backend


def sentences(shared: Path) -> list[str]:
    from rerank.data import load_dataset
    from rerank.data.formats import iter_beir_corpus

    texts = [t for _, t in iter_beir_corpus(shared / "beir" / "scifact" / "corpus.jsonl")]
    dl19 = load_dataset(str(shared / "trec-dl" / "dl19"))
    texts += list(dict(dl19.docs.items()).values()) if dl19.docs is not None else []
    out = {s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if 20 <= len(s.strip()) <= 400}
    return sorted(out)


def make_corpus(n: int, shared: Path) -> Path:
    path = WORK / f"scale-{n}.jsonl"
    if path.is_file():
        return path
    pool = sentences(shared)
    rng = random.Random(n)
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for i in range(n):
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(3, 8)))
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
    tmp.replace(path)
    return path


def queries(shared: Path, n: int) -> list[Query]:
    """The first ``n`` SciFact queries (train and test: 1,109), real questions over these sentences."""
    from rerank.types import Query

    rows = [json.loads(line) for line in (shared / "beir" / "scifact" / "queries.jsonl").read_text().splitlines() if line]
    return [Query(str(r["_id"]), r["text"]) for r in rows[:n]]


def dense_job(n: int, options: argparse.Namespace) -> dict[str, float]:
    """IVF-PQ over ``n`` synthetic embeddings streamed from disk: build, recall@100, queries/s."""
    import faiss
    import numpy as np

    from rerank.retrieve import dense

    path = WORK / f"scale-emb-{n}.npy"
    rng = np.random.default_rng(n)
    if not path.is_file():
        centers = rng.standard_normal((1000, 384)).astype(np.float32)
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, 384))
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            v = centers[rng.integers(0, 1000, m)] + 0.8 * rng.standard_normal((m, 384)).astype(np.float32)
            out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
            out.flush()
            dense.release_pages(out)  # written: not this job's memory
        del out
        tmp.replace(path)
    emb = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    index = dense.build_faiss_index("ivfpq", emb, faiss.METRIC_INNER_PRODUCT, nlist=options.nlist,
                                    train_rows=options.train_rows)
    out_ = {"seconds": time.perf_counter() - t0, "nlist": index.nlist, "pq_m": index.pq.M}
    out_.update({f"build_{k}": v for k, v in peaks().items()})
    t1 = time.perf_counter()
    out_["recall_at_100"] = dense.exact_recall(index, emb, faiss.METRIC_INNER_PRODUCT, nprobe=options.nprobe)
    out_["recall_seconds"] = time.perf_counter() - t1  # 200 exact searches (memory-mapped) + 200 IVF-PQ ones
    q = np.asarray(emb[rng.choice(n, 1000, replace=False)], dtype=np.float32)
    t2 = time.perf_counter()
    index.search(q, 100)
    out_["queries_per_s"] = 1000 / (time.perf_counter() - t2)
    t3 = time.perf_counter()
    dense.FlatShard(emb).search(q[:100], 100)
    out_["exact_queries_per_s"] = 100 / (time.perf_counter() - t3)
    out_["nprobe"] = options.nprobe
    out_.update(peaks())
    return out_


def stream_job(corpus: Path, root: Path, options: argparse.Namespace) -> dict[str, float]:
    """bm25:disk built from the JSONL as it is read, then searched: the builder's own memory."""
    import shutil

    from rerank.data.formats import iter_beir_corpus
    from rerank.retrieve import bm25disk
    from rerank.retrieve.bm25 import _Disk, bm25s_tokenizer

    n = int(corpus.stem.rsplit("-", 1)[1])
    folder = root / "stream"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    stats = bm25disk.build(folder, iter_beir_corpus(corpus, unique=False), bm25s_tokenizer(), k1=0.9, b=0.4,
                           memory_bytes=int(options.memory_gb * 2**30), n_docs=n)
    out = {"seconds": time.perf_counter() - t0, "postings": stats["postings"], "terms": stats["terms"]}
    out.update({f"build_{k}": v for k, v in peaks().items()})
    index = _Disk(0.9, 0.4, 2, options.memory_gb, 1)
    index.load(folder)
    texts = [q.text for q in queries(Path(options.shared), options.queries)]
    index.search(texts[:1], 100)
    t1 = time.perf_counter()
    found = index.search(texts, 100)
    out["search_seconds"] = time.perf_counter() - t1
    out["queries_per_s"] = len(texts) / out["search_seconds"]
    out["hits"] = sum(len(h) for h in found)
    out.update(peaks())
    return out


def ray_job(docs: DocStore, root: Path, options: argparse.Namespace) -> dict[str, float]:
    """bm25:disk in 2 shards, searched by 2 Ray workers (a local cluster) against one process."""
    import numpy as np

    from rerank.distributed import RayOptions, connect, search_bm25_shards
    from rerank.retrieve.bm25 import BM25, query_ids

    stage = BM25(docs, backend="disk", k=100, index_root=root / "ray", shards=2, with_text=False, threads=2,
                 memory_gb=options.memory_gb)
    t0 = time.perf_counter()
    folder = stage.index()
    out = {"seconds": time.perf_counter() - t0}
    out.update({f"build_{k}": v for k, v in peaks().items()})
    qs = queries(Path(options.shared), options.queries)
    stage(qs[:1])
    t1 = time.perf_counter()
    local = stage(qs)
    out["one_process_queries_per_s"] = len(qs) / (time.perf_counter() - t1)
    ray_options = RayOptions(workers=2)
    connect(ray_options)
    tok = stage._impl._tok  # noqa: SLF001 - the index's own tokenizer, as the stage uses it
    ids, keep = query_ids(tok, [q.text for q in qs])
    terms = [np.asarray(ids[i], dtype=np.int64) for i in keep]
    search_bm25_shards(folder, terms[:2], 100, ray_options)  # warm-up: the workers start, map their shards
    t2 = time.perf_counter()
    found = search_bm25_shards(folder, terms, 100, ray_options, batch=250)
    out["queries_per_s"] = len(terms) / (time.perf_counter() - t2)
    out["same_as_one_process"] = float(sum(len(h) for h in found) == sum(len(h) for h in local.values()))
    out.update(peaks())
    return out


def postings_read(stage: object, reset: bool = False) -> int:
    """The postings bm25:disk's shards read in the searches so far (then counted from 0 again)."""
    shards = stage._impl._shards  # type: ignore[attr-defined]  # noqa: SLF001 - the disk backend's shards
    total = sum(s.postings_read for s in shards)
    for s in shards if reset else []:
        s.postings_read = 0
    return int(total)


def disk_postings(stage: object, qs: list[Query], pruned: Mapping[str, object]) -> dict[str, float]:
    """bm25:disk's postings read per query as searched (pruned), then the exhaustive search of
    the same queries: its queries/s and postings, and whether its run is the pruned one."""
    out = {"postings_read_per_query": postings_read(stage, reset=True) / len(qs)}
    stage._impl.prune = False  # type: ignore[attr-defined]  # noqa: SLF001
    t0, c0 = time.perf_counter(), time.process_time()
    run = stage(qs)  # type: ignore[operator]
    out["exhaustive_queries_per_s"] = len(qs) / (time.perf_counter() - t0)
    out["exhaustive_search_cpu_seconds"] = time.process_time() - c0
    out["exhaustive_postings_read_per_query"] = postings_read(stage) / len(qs)
    out["exhaustive_same_run"] = float(run == pruned)
    stage._impl.prune = True  # type: ignore[attr-defined]  # noqa: SLF001
    return out


def peaks() -> dict[str, float]:
    """Peak RSS so far and the anonymous (own, not file-backed) resident memory now, in MB."""
    status = Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").is_file() else []
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "anon_rss_mb": next((int(x.split()[1]) / 1024 for x in status if x.startswith("RssAnon:")), float("nan"))}


def job(kind: str, store: str, corpus: Path, root: Path, options: argparse.Namespace | None = None) -> dict[str, float]:
    """One measurement, in this process: seconds and peak RSS (MB)."""
    from rerank.data.formats import iter_beir_corpus
    from rerank.data.store import DiskDocStore, MemoryDocStore

    t0 = time.perf_counter()

    def open_store() -> DocStore:
        if store == "dict":
            return MemoryDocStore(dict(iter_beir_corpus(corpus)), name=corpus.stem)
        # as rerank.data.corpus_store reads it: the store, not the reader, finds a repeated id
        return DiskDocStore.for_source(corpus.stem, [corpus], lambda: iter_beir_corpus(corpus, unique=False), {}, root=root,
                                       rebuild=kind == "build")

    out: dict[str, float] = {}
    docs = open_store()
    out["open_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = len(docs)
    rng = random.Random(0)
    if kind == "ray":
        return {**out, **ray_job(docs, root, options)} if options else out
    if kind in ENGINES:
        from rerank.retrieve.bm25 import BM25

        extra = {"memory_gb": options.memory_gb} if kind == "disk" and options else {}
        stage = BM25(docs, backend=ENGINES[kind], k=100, index_root=root / f"{kind}-{store}", rebuild=True,
                     with_text=False, threads=2, **extra)
        stage.index()
        out["seconds"] = time.perf_counter() - t1
        out.update({f"build_{k}": v for k, v in peaks().items()})
        if options is not None and options.queries:
            qs = queries(Path(options.shared), options.queries)
            stage(qs[:1])  # warm-up: the JVM's searcher, numba's compiled kernel
            if kind == "disk":
                postings_read(stage, reset=True)
            t2, c2 = time.perf_counter(), time.process_time()
            run = stage(qs)
            out["search_seconds"] = time.perf_counter() - t2
            out["search_cpu_seconds"] = time.process_time() - c2  # all the process's threads (the JVM's too)
            out["queries_per_s"] = len(qs) / out["search_seconds"]
            out["hits"] = sum(len(h) for h in run.values())
            if kind == "disk":  # pruned (as searched above) against every posting of the query terms
                out.update(disk_postings(stage, qs, run))
            out.update(peaks())
        return out
    elif kind == "bm25s":
        import bm25s
        import Stemmer

        texts = [t for _, t in docs.items()]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)
        model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        model.index(tokens, show_progress=False)
        model.save(root / "bm25s-baseline")
    elif kind == "random":
        ids = [f"d{rng.randrange(n)}" for _ in range(100)]
        t1 = time.perf_counter()
        for d in ids:
            docs[d]
        out["ms_per_read"] = (time.perf_counter() - t1) * 1000 / len(ids)  # right after opening: the pages are cold
        t2 = time.perf_counter()
        for d in ids:
            docs[d]
        out["ms_per_read_warm"] = (time.perf_counter() - t2) * 1000 / len(ids)
    elif kind == "rerank":
        lists = [[f"d{rng.randrange(n)}" for _ in range(100)] for _ in range(1000)]
        t1 = time.perf_counter()
        total = sum(len(t or "") for ids in lists for t in docs.get_many(ids))
        out["chars"] = total
    out["seconds"] = time.perf_counter() - (t1 if kind != "build" else t0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # resident memory that is the process's own (not pages of memory-mapped files, which the
    # kernel shares between processes and drops under pressure), at the end of the job
    status = Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").is_file() else []
    out["anon_rss_mb"] = next((int(x.split()[1]) / 1024 for x in status if x.startswith("RssAnon:")), float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--bm25-max", type=int, default=1_000_000, help="largest N to index with BM25 (memory: see JOBS)")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "scale.json"))
    ap.add_argument("--jobs", default=",".join(j for j in JOBS if j != "bm25s"), help="which jobs to run")
    ap.add_argument("--baseline-max", type=int, default=1_000_000, help="largest N for the bm25s baseline")
    ap.add_argument("--stores-at-max", default="dict,disk", help="stores measured at the largest size")
    ap.add_argument("--memory-gb", type=float, default=4.0, help="bm25:disk's build memory budget")
    ap.add_argument("--queries", type=int, default=1000, help="queries searched after each BM25 build (0: none)")
    ap.add_argument("--dense-sizes", default="", help="sizes of the dense IVF-PQ job (synthetic embeddings)")
    ap.add_argument("--nlist", type=int, default=4096, help="IVF-PQ cells")
    ap.add_argument("--train-rows", type=int, default=262_144, help="IVF-PQ training sample")
    ap.add_argument("--nprobe", type=int, default=64, help="IVF-PQ cells searched")
    args = ap.parse_args()
    root = WORK / "scale-indexes"
    if args.job == "stream":
        print(json.dumps(stream_job(Path(args.corpus), root, args)))
        return
    if args.job == "ivfpq":
        print(json.dumps(dense_job(int(args.corpus), args)))
        return
    if args.job:  # a child process: one job
        print(json.dumps(job(args.job, args.store, Path(args.corpus), root, args)))
        return
    facts = announce_cpu()
    rows = []
    sizes = [int(x) for x in args.sizes.split(",") if x]
    jobs = [j for j in args.jobs.split(",") if j]
    for n in sizes:
        corpus = make_corpus(n, Path(args.shared))
        mb = corpus.stat().st_size / 1e6
        stores = args.stores_at_max.split(",") if n == max(sizes) else ["dict", "disk"]
        for store in stores:
            for kind in jobs:
                if (kind in ENGINES and n > args.bm25_max) or (kind == "bm25s" and (n > args.baseline_max or store != "dict")):
                    continue
                r = subprocess.run([sys.executable, __file__, "--job", kind, "--store", store, "--corpus", str(corpus),
                                    "--memory-gb", str(args.memory_gb), "--queries", str(args.queries), "--shared", args.shared],
                                   capture_output=True, text=True, check=True)
                result = json.loads(r.stdout.strip().splitlines()[-1])
                rows.append({"documents": n, "corpus_mb": round(mb, 1), "store": store, "job": kind,
                             **{k: round(v, 4) for k, v in result.items()}})
                print(f"{n:>9,} {store:<5} {kind:<7} {result['seconds']:9.3f} s  peak {result['peak_rss_mb']:8.0f} MB"
                      f"  own {result['anon_rss_mb']:8.0f} MB"
                      + (f"  {result['ms_per_read']:.4f} ms/read ({result['ms_per_read_warm']:.4f} warm)"
                         if "ms_per_read" in result else "")
                      + (f"  build peak {result['build_peak_rss_mb']:.0f} MB, {result['queries_per_s']:.1f} queries/s"
                         if "queries_per_s" in result else ""), flush=True)
    for n in [int(x) for x in args.dense_sizes.split(",") if x]:
        r = subprocess.run([sys.executable, __file__, "--job", "ivfpq", "--corpus", str(n), "--nlist", str(args.nlist),
                            "--train-rows", str(args.train_rows), "--nprobe", str(args.nprobe)],
                           capture_output=True, text=True, check=True)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append({"documents": n, "store": "embeddings", "job": "ivfpq", **{k: round(v, 4) for k, v in result.items()}})
        print(f"{n:>9,} ivfpq build {result['seconds']:.1f} s, build peak {result['build_peak_rss_mb']:.0f} MB, recall@100 "
              f"{result['recall_at_100']:.3f} (nprobe {args.nprobe}), {result['queries_per_s']:.1f} queries/s "
              f"(exact mmap: {result['exact_queries_per_s']:.2f})", flush=True)
    ratios = {}
    for n in sorted({r["documents"] for r in rows}):
        for kind in JOBS:
            if not any(r["documents"] == n and r["job"] == kind for r in rows):
                continue
            a = next((r for r in rows if r["documents"] == n and r["store"] == "dict" and r["job"] == kind), None)
            b = next((r for r in rows if r["documents"] == n and r["store"] == "disk" and r["job"] == kind), None)
            if a is None or b is None:
                continue
            ratios[f"{n}:{kind}"] = {"rss_disk_over_dict": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
                                     "seconds_disk_over_dict": round(b["seconds"] / max(a["seconds"], 1e-9), 3)}
    print("\ndisk / dict (peak RSS, seconds):")
    for key, ratio in ratios.items():
        print(f"  {key:<18} RSS x{ratio['rss_disk_over_dict']:<7} time x{ratio['seconds_disk_over_dict']}")
    baseline = {}
    for n in sorted({r["documents"] for r in rows}):
        ours = next((r for r in rows if r["documents"] == n and r["store"] == "dict" and r["job"] == "bm25"), None)
        theirs = next((r for r in rows if r["documents"] == n and r["job"] == "bm25s"), None)
        if ours and theirs:
            baseline[str(n)] = {"rss_rerank_over_bm25s": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
                                "seconds_rerank_over_bm25s": round(ours["seconds"] / max(theirs["seconds"], 1e-9), 3)}
    if baseline:
        print("\nrerank's BM25 build / bm25s's own (peak RSS, seconds; both hold the texts in a dict or list):")
        for key, ratio in baseline.items():
            print(f"  {key:<18} RSS x{ratio['rss_rerank_over_bm25s']:<7} time x{ratio['seconds_rerank_over_bm25s']}")
    write_result({"machine": facts, "rows": rows, "ratios": ratios, "vs_bm25s": baseline}, args.out)


if __name__ == "__main__":
    main()
