"""Serving a reranker to many concurrent clients: `rerank serve` against infinity-emb on the same
model folder, the in-process one-request-at-a-time loop, and the offline ceiling (every pair in
one ``score`` call), in one run.

Requests: the DL19 queries, each with the texts of its BM25 top 50 (Cohere's shape for rerank
serve, infinity's own /rerank). Closed-loop clients (each sends its next request when the last
is answered) at 1 / 8 / 32 / 64 at once; throughput in pairs/s and latency percentiles per level.
The clients run on the same machine as the server, for every system alike.

    python benchmarks/serve.py                      # rerank only
    python benchmarks/serve.py --infinity /path/to/venv/bin/infinity_emb

infinity-emb pins its own transformers and torch: install it in a venv of its own
(PIP_CONSTRAINT=constraints.txt pip install 'infinity-emb[all]'; then pip uninstall torchvision,
which the local torch wheel does not match). The model: --model DIR, else all-MiniLM-L6-v2's
body with a seeded one-logit head (the architecture and cost of ms-marco-MiniLM-L-6-v2, whose
weights do not install offline; speed does not depend on the head's values).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, announce_cpu, machine, seeded_cross_encoder, write_result


def dl19_requests(docs: int) -> list[tuple[str, list[str]]]:
    from rerank import load_dataset

    ds = load_dataset("trec-dl-19")
    text = {q.qid: q.text for q in ds.queries}
    return [(text[qid], [h.text or "" for h in hits[:docs]]) for qid, hits in ds.candidate_run("bm25").items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], what: str, seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{what} was not ready after {seconds:.0f} s")


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def load(url: str, body_of: Any, requests: list[tuple[str, list[str]]], clients: int, total: int) -> dict[str, Any]:
    """``total`` requests from ``clients`` closed-loop clients (after one warm-up request each)."""
    import httpx

    latencies: list[float] = []
    pairs = 0
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        async def client(budget: int, record: bool) -> None:
            nonlocal pairs
            for _ in range(budget):
                q, docs = requests[next(counter) % len(requests)]
                t0 = time.perf_counter()
                r = await http.post(url, json=body_of(q, docs))
                r.raise_for_status()
                if record:
                    latencies.append(time.perf_counter() - t0)
                    pairs += len(docs)

        await asyncio.gather(*(client(1, False) for _ in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(total // clients + (i < total % clients), True) for i in range(clients)))
        seconds = time.perf_counter() - t0
    return {"clients": clients, "requests": len(latencies), "seconds": round(seconds, 2),
            "pairs_per_s": round(pairs / seconds, 1), "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * percentile(latencies, 95), 1),
            "p99_ms": round(1000 * percentile(latencies, 99), 1)}


def one_client_against_rank(url: str, body_of: Any, requests: list[tuple[str, list[str]]], ce: Any) -> dict[str, Any]:
    """One client's latency through the server and a bare in-process ``rank`` call, request by request in turn."""
    import httpx

    served, bare = [], []
    with httpx.Client(timeout=600) as http:
        for q, docs in requests:
            t0 = time.perf_counter()
            http.post(url, json=body_of(q, docs)).raise_for_status()
            served.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ce.rank(q, docs)
            bare.append(time.perf_counter() - t0)
    return {"served_p50_ms": round(1000 * statistics.median(served), 1), "bare_p50_ms": round(1000 * statistics.median(bare), 1),
            "served_vs_bare": round(statistics.median(served) / statistics.median(bare), 3)}


def first_scores(url: str, body: dict[str, Any], key: str) -> list[float]:
    import httpx

    results = httpx.post(url, json=body, timeout=120).json()
    results = results["results"] if isinstance(results, dict) else results
    return [r[key] for r in sorted(results, key=lambda r: r["index"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="cross-encoder folder [default: MiniLM-L6 with a seeded head]")
    ap.add_argument("--infinity", help="the infinity_emb executable of a venv with infinity-emb")
    ap.add_argument("--dtype", default="float32", help="dtype for both servers [default: float32]")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--docs", type=int, default=50)
    ap.add_argument("--per-client", type=int, default=3, help="requests per client per level (at least 48 in all)")
    ap.add_argument("--out", default=str(RESULTS / "serve.json"))
    args = ap.parse_args()
    facts = announce_cpu()
    model = args.model or seeded_cross_encoder()
    requests = dl19_requests(args.docs)
    levels = [int(c) for c in args.clients.split(",")]
    n_pairs = sum(len(d) for _, d in requests)
    print(f"model {model}, dtype {args.dtype}; {len(requests)} requests of {args.docs} documents ({n_pairs} pairs)")

    from rerank import CrossEncoder

    ce = CrossEncoder(model, dtype=args.dtype)
    ce.rank(*requests[0])  # warm-up
    t0 = time.perf_counter()
    ce.score([(q, d) for q, docs in requests for d in docs])
    ceiling = n_pairs / (time.perf_counter() - t0)
    # a lone caller: rank() (through the cross-request batcher and its model thread) against the
    # engine called directly, request by request in turn, so the VM's drift cancels
    lat, direct = [], []
    for q, docs in requests:
        t1 = time.perf_counter()
        ce.rank(q, docs)
        lat.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        ce._score([(q, d) for d in docs])
        direct.append(time.perf_counter() - t1)
    loop_rate = n_pairs / sum(lat)
    lone = {"rank_p50_ms": round(1000 * statistics.median(lat), 1), "engine_p50_ms": round(1000 * statistics.median(direct), 1),
            "rank_vs_engine": round(sum(lat) / sum(direct), 3)}
    print(f"a lone caller in process: rank() p50 {lone['rank_p50_ms']} ms, the engine alone {lone['engine_p50_ms']} ms "
          f"({lone['rank_vs_engine']}x in all)")
    rows: list[dict[str, Any]] = [
        {"system": "offline ceiling (one score call)", "clients": 0, "pairs_per_s": round(ceiling, 1)},
        {"system": "in-process loop (rank per request)", "clients": 1, "pairs_per_s": round(loop_rate, 1),
         "p50_ms": round(1000 * statistics.median(lat), 1), "p95_ms": round(1000 * percentile(lat, 95), 1),
         "p99_ms": round(1000 * percentile(lat, 99), 1)},
    ]
    expect = ce.score([(requests[0][0], d) for d in requests[0][1]])

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    systems: list[tuple[str, list[str], str, Any, str]] = [(
        "rerank serve", [sys.executable, "-c", "from rerank.cli import main; main()", "serve", "--reranker",
                         f"cross-encoder:{model}", "--dtype", args.dtype, "--port", "{port}", "-q"],
        "/v2/rerank", lambda q, d: {"query": q, "documents": d}, "relevance_score")]
    if args.infinity:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # rerank serve picks the GPU by itself
        systems.append(("infinity-emb", [args.infinity, "v2", "--model-id", model, "--port", "{port}", "--engine", "torch",
                                         "--device", device, "--dtype", args.dtype, "--no-bettertransformer",
                                         "--batch-size", "32", "--log-level", "warning"],
                        "/rerank", lambda q, d: {"query": q, "documents": d, "model": model}, "relevance_score"))
    else:
        print("infinity-emb: not measured (give --infinity PATH to its infinity_emb)")
    agreement = {}
    for name, cmd, path, body_of, key in systems:
        port = free_port()
        proc = subprocess.Popen([c.replace("{port}", str(port)) for c in cmd], env=env, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, name)
            got = first_scores(url + path, body_of(*requests[0]), key)
            agreement[name] = round(max(abs(a - b) for a, b in zip(got, expect, strict=True)), 6)
            if name == "rerank serve":
                lone.update(one_client_against_rank(url + path, body_of, requests, ce))
                print(f"one client, in turn with a bare rank() call: p50 {lone['served_p50_ms']} ms served, "
                      f"{lone['bare_p50_ms']} ms bare ({lone['served_vs_bare']}x)")
            for c in levels:
                r = asyncio.run(load(url + path, body_of, requests, c, max(48, args.per_client * c)))
                rows.append({"system": name, **r})
                print(f"  {name:<14} {c:>3} clients: {r['pairs_per_s']:>8.1f} pairs/s  p50 {r['p50_ms']:>8.1f} ms  "
                      f"p99 {r['p99_ms']:>8.1f} ms", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    by = {(r["system"], r["clients"]): r for r in rows}
    for r in rows:
        r["vs_ceiling"] = round(r["pairs_per_s"] / ceiling, 3)
        inf = by.get(("infinity-emb", r["clients"]))
        if r["system"] == "rerank serve" and inf:
            r["vs_infinity"] = round(r["pairs_per_s"] / inf["pairs_per_s"], 2)
            r["p99_vs_infinity"] = round(r["p99_ms"] / inf["p99_ms"], 2)
    print(f"\nServing {args.docs}-document DL19 requests, {args.dtype}, on {facts['cpu']} "
          f"({facts['cores']} cores; {facts['flags']})")
    print(f"{'system':<36} {'clients':>7} {'pairs/s':>9} {'x ceiling':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'x infinity':>10}")
    for r in rows:
        print(f"{r['system']:<36} {r['clients'] or '-':>7} {r['pairs_per_s']:>9.1f} {r['vs_ceiling']:>9.2f} "
              f"{r.get('p50_ms', '-'):>8} {r.get('p95_ms', '-'):>8} {r.get('p99_ms', '-'):>8} {r.get('vs_infinity', '-'):>10}")
    print(f"scores of the first request against the in-process model (max abs difference): {agreement}")
    print(f"a lone caller: {lone}")
    result = {"benchmark": "serve", "machine": {**machine(), **facts}, "model": model, "dtype": args.dtype, "docs": args.docs,
              "ceiling_pairs_per_s": round(ceiling, 1), "agreement": agreement, "lone_caller": lone, "rows": rows}
    write_result(result, args.out)
    plot(rows, Path(args.out).with_suffix(".png"), f"{facts['cpu']}, {args.dtype}")


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for system in dict.fromkeys(r["system"] for r in rows if r["clients"] and "p99_ms" in r and "loop" not in r["system"]):
        pts = [r for r in rows if r["system"] == system]
        ax.plot([r["pairs_per_s"] for r in pts], [r["p99_ms"] for r in pts], marker="o", label=f"{system} p99")
        ax.plot([r["pairs_per_s"] for r in pts], [r["p50_ms"] for r in pts], marker=".", linestyle="--", label=f"{system} p50")
        for r in pts:
            ax.annotate(str(r["clients"]), (r["pairs_per_s"], r["p99_ms"]), fontsize=7)
    ceiling = next(r["pairs_per_s"] for r in rows if r["clients"] == 0)
    ax.axvline(ceiling, color="grey", linestyle=":", label="offline ceiling")
    ax.set_xlabel("throughput (pairs/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
