"""Where an LLM reranker's time goes on this machine: one FIRST window (20 DL19 BM25 passages, the
prompt ``benchmarks/llm_engines.py`` scores) through rerank's torch engine under ``torch.profiler``,
beside the CPU's own bf16/fp32 matrix-multiply rate for the model's shapes.

It answers "could another engine be much faster here?": when a prompt's forward pass spends most
of its time in the model's matrix multiplies at close to the rate the CPU reaches on those very
shapes alone, an engine that runs the same multiplies (vLLM's CPU build: oneDNN as well) cannot
be much faster on prompt-bound methods (FIRST, the yes/no judge, PRP); only generation, where
the work per token is small and overheads dominate, leaves room.

    python benchmarks/llm_profile.py                    # Qwen2.5-Coder-1.5B-Instruct, bf16 where the CPU has it
    python benchmarks/llm_profile.py --model SmolLM2-135M-Instruct --dtype float32

Prints the CPU model and flags, a table of the operators' share of the forward pass and the
achieved vs measured-peak FLOP/s; writes benchmarks/results/llm-profile.json.
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


def gemm_rate(m: int, k: int, n: int, dtype: Any, repeat: int = 5) -> float:
    """FLOP/s of an (m x k) @ (k x n) multiply in ``dtype`` on this CPU, best of ``repeat``."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # noqa: B018 - warm-up (oneDNN picks and packs its kernel)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b  # noqa: B018
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="Qwen2.5-Coder-1.5B-Instruct", help="an offline model's name, or a folder")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from common import RESULTS, announce_cpu, machine, model_folder, write_result
    from torch.profiler import ProfilerActivity, profile

    from rerank import load_dataset
    from rerank.rerankers.listwise import First

    facts = announce_cpu()
    path = model_folder(args.model)
    ds = load_dataset("trec-dl-19")
    q = ds.queries[0]
    top = ds.candidate_run("bm25")[q.qid][:20]
    first = First(path, window=20, stride=10, depth=20, backend="torch", dtype=args.dtype)
    llm = first.llm
    prompt = first.window_prompt(q.text, [h.text or "" for h in top])  # the shipped candidates carry their texts
    candidates = first.identifier_ids
    llm.next_token_logits([prompt], candidates)  # warm-up: first-call kernel set-up
    t0 = time.perf_counter()
    llm.next_token_logits([prompt], candidates)
    seconds = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        llm.next_token_logits([prompt], candidates)
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    rows = sorted(({"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count,
                    "share": round(e.self_cpu_time_total / total, 4)} for e in ops), key=lambda r: -r["self_ms"])[:12]

    cfg = llm.model.config
    hidden, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    head_dim = hidden // heads
    tokens = len(prompt)
    shapes = {"qkv": (hidden, (heads + 2 * kv) * head_dim), "o": (hidden, hidden), "up+gate": (hidden, 2 * inter),
              "down": (inter, hidden)}
    dtype = llm.dtype
    linear_flops = 2 * tokens * layers * sum(k * n for k, n in shapes.values())
    attention_flops = 4 * layers * heads * head_dim * tokens * tokens / 2  # causal: half of QK^T and of PV
    peak = {name: gemm_rate(tokens, k, n, dtype) for name, (k, n) in shapes.items()}
    # the time the linear layers would take at the rate this CPU reaches on their shapes alone
    linear_at_peak = 2 * tokens * layers * sum(k * n / peak[name] for name, (k, n) in shapes.items())
    achieved = (linear_flops + attention_flops) / seconds
    print(f"\n{path}: one FIRST window, {tokens} prompt tokens, {dtype}; forward {seconds:.2f} s "
          f"({tokens / seconds:.0f} prompt tokens/s)")
    print(f"{'operator':<40} {'self ms':>9} {'calls':>6} {'share':>7}")
    for r in rows:
        print(f"{r['op'][:40]:<40} {r['self_ms']:>9.1f} {r['calls']:>6} {r['share']:>7.1%}")
    print(f"\nmodel FLOPs: linear {linear_flops / 1e12:.2f} T, attention {attention_flops / 1e12:.2f} T; "
          f"achieved {achieved / 1e12:.2f} TFLOP/s")
    for name, rate in peak.items():
        print(f"  this CPU on the {name} multiply alone ({tokens} x {shapes[name][0]} x {shapes[name][1]}, {dtype}): "
              f"{rate / 1e12:.2f} TFLOP/s")
    print(f"linear layers at those rates: {linear_at_peak:.2f} s of the forward's {seconds:.2f} s; the rest (elementwise "
          f"ops, attention) {seconds - linear_at_peak:.2f} s: an engine running the same multiplies is at most "
          f"{seconds / linear_at_peak:.2f}x faster, with all the rest at no cost")
    write_result({"benchmark": "where an LLM reranker's forward pass spends its time (torch engine)",
                  "cpu": facts, "machine": machine(), "args": vars(args), "model": path, "dtype": str(dtype),
                  "prompt_tokens": tokens, "forward_s": round(seconds, 3), "prompt_tokens_per_s": round(tokens / seconds, 1),
                  "linear_tflop": round(linear_flops / 1e12, 3), "attention_tflop": round(attention_flops / 1e12, 3),
                  "achieved_tflops": round(achieved / 1e12, 3),
                  "gemm_peak_tflops": {k: round(v / 1e12, 3) for k, v in peak.items()},
                  "linear_at_peak_s": round(linear_at_peak, 3), "ops": rows},
                 args.out or str(RESULTS / "llm-profile.json"))


if __name__ == "__main__":
    main()
