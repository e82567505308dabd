"""BM25 backends side by side: bm25s (default) vs Lucene via pyserini (the baseline).

Two corpora, both real text:
  * scifact      BEIR SciFact, 5,183 abstracts, 300 test queries with qrels.
  * scifact+130k SciFact plus real-text distractors: every DL19 candidate passage (MS MARCO),
                 Cranfield's abstracts and WordNet's synsets (lemmas + gloss; Debian package
                 wordnet-base). SciFact's test qrels still measure quality, now with ~25x more
                 competing documents; throughput is measured on all real queries at hand
                 (SciFact 1,109 + Cranfield 225 + DL19 43).

For each: index time, query throughput (top-100), nDCG@10 and R@100, and the ratio
bm25s / Lucene. Prints a table and writes benchmarks/results/bm25.json.

    python benchmarks/bm25.py [--threads N] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from rerank import BM25, MemoryDocStore, Query, evaluate, load_dataset
from rerank.data.formats import read_candidates
from rerank.env import atomic_write, shared_data_dir
from rerank.retrieve.bm25 import start_jvm

WORDNET = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))


def wordnet_docs() -> dict[str, str]:
    if not (WORDNET / "data.noun").is_file():
        sys.exit(f"WordNet not found at {WORDNET}: apt-get install wordnet-base (or set WORDNET_DIR)")
    docs = {}
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):
                    continue  # licence header
                head, _, gloss = line.partition("| ")
                fields = head.split()
                n = int(fields[3], 16)
                lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(n)]
                docs[f"wn-{pos}-{fields[0]}"] = f"{', '.join(lemmas)}: {gloss.strip()}"
    return docs


def big_corpus(scifact_docs: dict[str, str]) -> dict[str, str]:
    shared = shared_data_dir()
    assert shared is not None  # main() has already read SciFact's train split from it
    docs = dict(scifact_docs)
    for p in sorted((shared / "trec-dl" / "dl19").glob("*.top100.json")):
        for hits in read_candidates(p)[0].values():
            for h in hits:
                docs.setdefault(f"msmarco-{h.docid}", h.text or "")
    cran = load_dataset("cranfield")
    assert cran.docs is not None  # Cranfield comes with its abstracts
    docs.update((f"cran-{d}", t) for d, t in cran.docs.items())
    docs.update(wordnet_docs())
    return docs


def measure(name: str, store: MemoryDocStore, backend: str, eval_queries: list[Query], qrels: dict,
            load_queries: list[Query], threads: int, root: Path) -> dict:
    """``backend``: bm25s (automatic kernel choice), bm25s+numba (forced, compile excluded by the
    warm-up), or lucene."""
    stage = BM25(store, backend=backend.split("+")[0], k=100, threads=threads, index_root=root, rebuild=True,
                 numba=True if backend == "bm25s+numba" else None)
    t0 = time.perf_counter()
    stage.index()
    index_s = time.perf_counter() - t0
    stage(load_queries[:20])  # warm-up (JIT / JVM code paths)
    t0 = time.perf_counter()
    stage(load_queries)
    search_s = time.perf_counter() - t0
    m = evaluate(stage(eval_queries), qrels, ["nDCG@10", "R@100"]).metrics
    row = {"corpus": name, "backend": backend, "documents": len(store), "index_s": round(index_s, 2),
           "queries": len(load_queries), "search_s": round(search_s, 3), "qps": round(len(load_queries) / search_s, 1),
           "nDCG@10": round(m["nDCG@10"], 4), "R@100": round(m["R@100"], 4)}
    print(f"  {name:<14} {backend:<12} {row['documents']:>8} docs  index {row['index_s']:7.2f}s  "
          f"{row['qps']:8.1f} q/s  nDCG@10 {row['nDCG@10']:.4f}  R@100 {row['R@100']:.4f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "bm25.json"))
    args = ap.parse_args()

    start_jvm()  # JVM start-up is not Lucene's indexing time
    sci = load_dataset("scifact")
    assert sci.docs is not None and sci.qrels is not None  # SciFact comes with its corpus and judgments
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("../shared/data not found (set RERANK_SHARED_DATA)")
    sci_all = load_dataset(str(shared / "beir" / "scifact"), split="train")  # for more queries
    cran = load_dataset("cranfield")
    dl19 = load_dataset("trec-dl-19")
    every_query = list({q.qid: q for q in sci.queries + sci_all.queries}.values())
    load_queries = every_query + cran.queries + dl19.queries
    sci_docs = dict(sci.docs.items())
    corpora = [("scifact", MemoryDocStore(sci_docs, name="bench-scifact"), sci.queries),
               ("scifact+130k", MemoryDocStore(big_corpus(sci_docs), name="bench-scifact-big"), load_queries)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as tmp:
        for name, store, queries in corpora:
            for backend in ("bm25s", "bm25s+numba", "lucene"):
                rows.append(measure(name, store, backend, sci.queries, sci.qrels, queries, args.threads, Path(tmp)))

    print("\nbm25s vs Lucene (ratio > 1: bm25s faster)")
    print(f"{'corpus':<14} {'variant':<12} {'docs':>8} {'index speed-up':>15} {'query speed-up':>15} {'nDCG@10 diff':>13}")
    ratios = []
    for name, _, _ in corpora:
        by = {r["backend"]: r for r in rows if r["corpus"] == name}
        base = by["lucene"]
        for variant in ("bm25s", "bm25s+numba"):
            a = by[variant]
            r = {"corpus": name, "variant": variant, "documents": a["documents"],
                 "index_speedup": round(base["index_s"] / a["index_s"], 2), "query_speedup": round(a["qps"] / base["qps"], 2),
                 "ndcg10_diff": round(a["nDCG@10"] - base["nDCG@10"], 4)}
            ratios.append(r)
            print(f"{name:<14} {variant:<12} {r['documents']:>8} {r['index_speedup']:>14.2f}x {r['query_speedup']:>14.2f}x "
                  f"{r['ndcg10_diff']:>+13.4f}")
    out = {"benchmark": "bm25", "baseline": "lucene (pyserini 1.6.0)", "threads": args.threads,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "rows": rows, "ratios": ratios}
    with atomic_write(args.output) as f:
        json.dump(out, f, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
