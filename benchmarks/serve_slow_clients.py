"""Slow and idle clients against `rerank serve`: does a crowd of connections that send nothing, a
request head and no end, or a body and no end slow the normal clients down, and does SIGTERM
still end the server within its bound?

1. the server alone: ``--requests`` DL19 requests (BM25 top ``--docs``) from ``--clients``
   closed-loop clients: p50 / p95 latency;
2. the same with ``--slow`` connections held open (a third each: connected and silent, a request
   head without its blank line, headers with ``Content-Length: 100`` and one byte of body);
   phases 1 and 2 alternate ``--rounds`` times, so a machine's changing load falls on both alike;
   the figures: the medians of the rounds' p50s, and the median of the rounds' ratios;
3. SIGTERM with the slow connections open: seconds until the process exits, its exit code, and
   what the unfinished bodies were answered; against ``--shutdown-timeout``. (``--body-timeout``
   is set beyond the run, so the bodies are still unfinished at SIGTERM.)

Everything runs over loopback on this machine, with bounded loops.

    python benchmarks/serve_slow_clients.py                       # all-MiniLM-L6-v2 body, seeded head
    python benchmarks/serve_slow_clients.py --model DIR --rounds 9 --requests 60 --out benchmarks/results/serve-slow-clients.json

The committed figures use a 2-layer BERT cross-encoder (hidden 64: tests/conftest.py's tiny_ce,
saved to a folder named tiny-ce), so that the server's own costs, which slow connections could
raise, are most of each request's time; a bigger model only dilutes them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import cpu_facts, seeded_cross_encoder, write_result
from serve import dl19_requests, free_port, load, wait_healthy


def hold(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that never finish: silent, a head without its end, a body without its end."""
    kinds = [b"", b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
             b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"]
    held = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if kinds[i % 3]:
            s.sendall(kinds[i % 3])
        held.append(s)
    return held


def answer_of(s: socket.socket) -> str:
    s.settimeout(2)
    try:
        return s.recv(4096).split(b"\r\n", 1)[0].decode() or "closed"
    except (TimeoutError, ConnectionError):
        return "no answer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="cross-encoder folder [the all-MiniLM-L6-v2 body with a seeded head]")
    ap.add_argument("--slow", type=int, default=300, help="connections held open in phase 2")
    ap.add_argument("--requests", type=int, default=40, help="timed requests per phase and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--shutdown-timeout", type=float, default=30.0, help="passed to rerank serve")
    ap.add_argument("--out")
    args = ap.parse_args()

    model = args.model or seeded_cross_encoder()
    requests = dl19_requests(args.docs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-c", "from rerank.cli import main; main()"]
    proc = subprocess.Popen([*cli, "serve", "--reranker", f"cross-encoder:{model}", "--port", str(port), "-q",
                             "--shutdown-timeout", str(args.shutdown_timeout), "--body-timeout", "3600"])
    held: list[socket.socket] = []
    try:
        wait_healthy(url, proc, "rerank serve")

        def body(q: str, docs: list[str]) -> dict[str, Any]:
            return {"query": q, "documents": docs}

        alone: list[dict[str, Any]] = []
        crowded: list[dict[str, Any]] = []
        for r in range(args.rounds):
            alone.append(asyncio.run(load(f"{url}/v2/rerank", body, requests, args.clients, args.requests)))
            held = hold(port, args.slow)
            time.sleep(0.5)
            crowded.append(asyncio.run(load(f"{url}/v2/rerank", body, requests, args.clients, args.requests)))
            print(f"round {r + 1}: p50 alone {alone[-1]['p50_ms']} ms, with {args.slow} slow connections "
                  f"{crowded[-1]['p50_ms']} ms", flush=True)
            if r < args.rounds - 1:
                for s in held:
                    s.close()
                held = []
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(args.shutdown_timeout + 30)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.monotonic() - t0
        answers: dict[str, int] = {}
        for s in held[2::3]:  # the unfinished bodies
            a = answer_of(s)
            answers[a] = answers.get(a, 0) + 1
    finally:
        for s in held:
            s.close()
        if proc.poll() is None:
            proc.kill()
    result = {
        "cpu": cpu_facts(), "model": Path(model).name, "clients": args.clients, "docs_per_request": args.docs, "slow": args.slow,
        "rounds": args.rounds, "alone": alone, "with_slow_connections": crowded,
        "p50_alone_ms": statistics.median(a["p50_ms"] for a in alone),
        "p50_with_slow_ms": statistics.median(c["p50_ms"] for c in crowded),
        "p50_ratio_per_round_median": round(statistics.median(
            c["p50_ms"] / a["p50_ms"] for a, c in zip(alone, crowded, strict=True)), 3),
        "sigterm": {"exit_code": code, "seconds_to_exit": round(exit_s, 2), "bound_s": args.shutdown_timeout,
                    "unfinished_bodies_answered": answers},
    }
    result["p50_ratio"] = round(result["p50_with_slow_ms"] / result["p50_alone_ms"], 3)
    print(f"p50 with {args.slow} slow connections / alone: {result['p50_ratio']} (median of the rounds' ratios "
          f"{result['p50_ratio_per_round_median']}); SIGTERM: exit {code} after {exit_s:.2f} s "
          f"(bound {args.shutdown_timeout:g} s); unfinished bodies answered {answers}")
    if args.out:
        write_result(result, args.out)


if __name__ == "__main__":
    main()
