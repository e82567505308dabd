"""CPU backends: rerank on PyTorch, ONNX Runtime and OpenVINO (fp32, bf16, int8) against
sentence-transformers on its own torch, onnx and openvino backends, in one run.

speed    cross-encoder pairs/s on 2,000 DL19 (query, BM25 passage) pairs, and the latency of one
         request (one query, 50 passages: p50/p95 of 30), for each rerank configuration and each
         sentence-transformers one (CrossEncoder.predict, batch 32, its default), on the same
         model: the all-MiniLM-L6-v2 body with a fixed-seed head (the architecture and cost of
         ms-marco-MiniLM-L-6-v2); then dense-encoder texts/s (2,000 DL19 passages,
         all-MiniLM-L6-v2) against SentenceTransformer.encode. Scores' agreement with rerank's
         PyTorch fp32 is printed beside each row.
quality  int8 against fp32 on the same model: SPLADE-tiny reranking DL19 BM25 top-100, a
         cross-encoder trained by `rerank train` reranking SciFact test BM25 top-100, and
         all-MiniLM-L6-v2 dense retrieval on SciFact (nDCG@10 each).

sentence-transformers' onnx backend needs optimum-onnx, whose releases pin transformers below
what rerank uses; its openvino backend needs optimum-intel, pinned likewise, and the two pin
different optimum releases. So each baseline runs in a virtual environment of its own, given
by --st-python (torch), --st-onnx-python and --st-openvino-python: this script runs itself
there as a worker (`--worker JOB.json`) that imports sentence-transformers only, e.g.

    python3 -m venv /tmp/st-onnx && /tmp/st-onnx/bin/pip install torch==2.13.0 \\
        sentence-transformers 'optimum-onnx[onnxruntime]' 'transformers<4.58'
    python3 -m venv /tmp/st-ov && /tmp/st-ov/bin/pip install torch==2.13.0 \\
        sentence-transformers 'optimum-intel[openvino]' 'transformers<5.6'
    python benchmarks/cpu_backends.py speed --st-onnx-python /tmp/st-onnx/bin/python \\
        --st-openvino-python /tmp/st-ov/bin/python
    python benchmarks/cpu_backends.py quality --ce benchmarks/work/minilm-scifact-ce [--ce-depth 30]

A baseline whose interpreter is not given is left out of the table (and says so). Each part
writes benchmarks/results/cpu-backends-<part>.json.
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
from typing import Any, cast

BATCH = 32  # sentence-transformers' default batch size
LATENCY_DOCS, LATENCY_REPS = 50, 30


# ------------------------------------------------------------------ the baseline worker
def worker(job_file: str) -> None:
    """Runs in a baseline's environment: sentence-transformers on one backend; prints JSON."""
    import shutil

    import numpy as np
    import sentence_transformers as st

    job = json.loads(Path(job_file).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "model")
        shutil.copytree(job["model"], model)  # its exports are written into the model's folder
        cls = st.CrossEncoder if job["kind"] == "cross-encoder" else st.SentenceTransformer
        kwargs: dict[str, Any] = {"device": "cpu", "backend": job["backend"]}
        if job["int8"]:
            first = cls(model, **kwargs)
            if job["backend"] == "onnx":
                config = "avx512_vnni" if "avx512_vnni" in Path("/proc/cpuinfo").read_text() else "avx2"
                st.export_dynamic_quantized_onnx_model(first, config, model)
                kwargs["model_kwargs"] = {"file_name": f"onnx/model_qint8_{config}.onnx"}
        t0 = time.perf_counter()
        m: Any = cls(model, **kwargs)  # a CrossEncoder or a SentenceTransformer, as job["kind"] says
        load = time.perf_counter() - t0
        items = job["items"]
        if job["kind"] == "cross-encoder":
            pairs = [tuple(p) for p in items]

            def run(x: list) -> Any:
                return m.predict(x, batch_size=BATCH, show_progress_bar=False)
        else:
            pairs = items

            def run(x: list) -> Any:
                return m.encode(x, batch_size=BATCH, show_progress_bar=False, normalize_embeddings=True)
        run(pairs[:64])
        t0 = time.perf_counter()
        out = np.asarray(run(pairs), dtype=np.float64)
        seconds = time.perf_counter() - t0
        latency = []
        if job["kind"] == "cross-encoder":
            request = [tuple(p) for p in job["request"]]
            for i in range(LATENCY_REPS + 3):
                t0 = time.perf_counter()
                run(request)
                if i >= 3:
                    latency.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": seconds, "load_seconds": load, "latency": latency, "outputs": out.tolist(),
                      "versions": {"sentence-transformers": st.__version__}}))


# ------------------------------------------------------------------ rerank's side
def configurations(bf16: bool) -> list[tuple[str, str, str]]:
    """(backend, quantize, dtype) rows of rerank, bf16 ones where the CPU has bf16 instructions."""
    rows = [("torch", "none", "float32")] + ([("torch", "none", "bfloat16")] if bf16 else [])
    rows += [("onnx", "none", "float32"), ("onnx", "int8", "float32"), ("openvino", "none", "float32")]
    rows += [("openvino", "none", "bfloat16")] if bf16 else []
    return rows + [("openvino", "int8", "float32")]


def _percentiles(latency: list[float]) -> dict[str, float]:
    q = statistics.quantiles(latency, n=20)
    return {"p50_ms": round(statistics.median(latency) * 1000, 1), "p95_ms": round(q[18] * 1000, 1)}


def _agreement(out: Any, ref: Any) -> dict[str, float]:
    import numpy as np
    from scipy.stats import spearmanr

    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if out.ndim == 2:  # embeddings: the cosine of each to its fp32 counterpart
        cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        return {"max_abs_diff": float(np.abs(out - ref).max()), "min_cosine": float(cos.min())}
    return {"max_abs_diff": float(np.abs(out - ref).max()), "spearman": float(spearmanr(out, ref).statistic)}


def ours_cross_encoder(model: str, pairs: list, request: list, config: tuple[str, str, str]) -> tuple[dict, Any]:
    from rerank.rerankers.pointwise import CrossEncoder

    backend, quantize, dtype = config
    t0 = time.perf_counter()
    ce = CrossEncoder(model, backend=backend, quantize=quantize, dtype=dtype)
    load = time.perf_counter() - t0
    ce._score(pairs[:64])
    t0 = time.perf_counter()
    out = ce._score(pairs)
    seconds = time.perf_counter() - t0
    query, docs = request
    latency = []
    for i in range(LATENCY_REPS + 3):
        t0 = time.perf_counter()
        ce._score([(query, d) for d in docs])
        if i >= 3:
            latency.append(time.perf_counter() - t0)
    return {"seconds": seconds, "load_seconds": load, **_percentiles(latency)}, out


def ours_encoder(texts: list[str], config: tuple[str, str, str]) -> tuple[dict, Any]:
    from rerank.models.encoder import Encoder

    backend, quantize, dtype = config
    t0 = time.perf_counter()
    enc = Encoder("all-MiniLM-L6-v2", backend=backend, quantize=quantize, dtype=dtype)
    load = time.perf_counter() - t0
    enc.encode_docs(texts[:64])
    t0 = time.perf_counter()
    out = enc.encode_docs(texts)
    return {"seconds": time.perf_counter() - t0, "load_seconds": load}, out


def baseline(python: str, kind: str, model: str, backend: str, int8: bool, items: list, request: list | None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"kind": kind, "model": model, "backend": backend, "int8": int8, "items": items,
                   "request": request}, fh)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_HUB_OFFLINE"] = "1"
    try:
        r = subprocess.run([python, __file__, "--worker", fh.name], capture_output=True, text=True, env=env, check=False)
    finally:
        os.unlink(fh.name)
    if r.returncode != 0:
        raise SystemExit(f"baseline {backend}{' int8' if int8 else ''} ({python}) failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _row(table: list[dict], system: str, backend: str, precision: str, n: int, unit: str, m: dict, agree: dict) -> None:
    row = {"system": system, "backend": backend, "precision": precision, "seconds": round(m["seconds"], 2),
           f"{unit}_per_s": round(n / m["seconds"], 1), "load_seconds": round(m["load_seconds"], 1),
           **{k: v for k, v in m.items() if k.endswith("_ms")}, **{k: round(v, 6) for k, v in agree.items()}}
    table.append(row)
    lat = f"{row.get('p50_ms', ''):>8}{row.get('p95_ms', ''):>8}"
    extra = "  ".join(f"{k} {v:.4g}" for k, v in agree.items())
    print(f"{system:<22}{backend:<10}{precision:<10}{row[f'{unit}_per_s']:>9.1f}{lat}  {extra}", flush=True)


def speed(args: argparse.Namespace) -> dict:
    from common import dl19_pairs, offline, seeded_cross_encoder

    from rerank.models.loading import cpu_supports_bf16

    pairs = dl19_pairs(args.pairs)
    request = [pairs[0][0], [d for q, d in pairs if q == pairs[0][0]][:LATENCY_DOCS]]
    model = args.model or seeded_cross_encoder()
    bf16 = cpu_supports_bf16()
    baselines = {"torch": args.st_python, "onnx": args.st_onnx_python, "openvino": args.st_openvino_python}
    result: dict[str, Any] = {"pairs": len(pairs), "model": model, "latency_request": f"1 query x {LATENCY_DOCS} passages"}
    for kind, items, unit in (("cross-encoder", pairs, "pairs"), ("encoder", [d for _, d in pairs], "texts")):
        print(f"\n{kind}: {len(items)} DL19 {'pairs' if unit == 'pairs' else 'passages'}"
              + (f"; latency of {result['latency_request']} (ms)" if unit == "pairs" else ""))
        print(f"{'system':<22}{'backend':<10}{'precision':<10}{unit + '/s':>9}{'p50':>8}{'p95':>8}")
        table: list[dict] = []
        ref = None
        for config in configurations(bf16):
            if kind == "cross-encoder":
                m, out = ours_cross_encoder(model, pairs, request, config)
            else:
                m, out = ours_encoder(cast(list[str], items), config)  # the encoder's items are passages
            ref = out if ref is None else ref
            precision = "int8" if config[1] == "int8" else config[2]
            _row(table, "rerank", config[0], precision, len(items), unit, m, _agreement(out, ref))
        st_model = model if kind == "cross-encoder" else offline("all-MiniLM-L6-v2")
        for backend, python in baselines.items():
            for int8 in (False, True):
                if int8 and backend != "onnx":
                    continue  # ST's torch has no int8; its openvino int8 calibrates on a hub data set
                if not python:
                    print(f"{'sentence-transformers':<22}{backend:<10}{'int8' if int8 else 'float32':<10}"
                          f"  not run: give --st-{'' if backend == 'torch' else backend + '-'}python")
                    continue
                req = [[request[0], d] for d in request[1]] if kind == "cross-encoder" else None
                b = baseline(python, kind, st_model, backend, int8, items, req)
                m = {"seconds": b["seconds"], "load_seconds": b["load_seconds"],
                     **(_percentiles(b["latency"]) if b["latency"] else {})}
                # sentence-transformers sets no precision on OpenVINO, whose default on a CPU with bf16
                # instructions is bf16
                precision = "int8" if int8 else "bfloat16" if backend == "openvino" and bf16 else "float32"
                _row(table, "sentence-transformers", backend, precision, len(items), unit, m, _agreement(b["outputs"], ref))
        result[kind] = {"rows": table, "ratios": ratios(table, unit, bf16)}
        for k, v in result[kind]["ratios"].items():
            print(f"ratio {k:<44} {v:5.2f}x")
    return result


def ratios(table: list[dict], unit: str, bf16: bool) -> dict[str, float]:
    """The issue's goals as ratios of throughput: rerank's best exact (fp32) and best overall
    against sentence-transformers' torch fp32 and its best backend at the same precision, and
    against rerank's own PyTorch bf16 (the speed before these backends)."""
    rate = f"{unit}_per_s"

    def best(system: str, precisions: tuple[str, ...]) -> float:
        return max((r[rate] for r in table if r["system"] == system and r["precision"] in precisions), default=0.0)
    out = {}
    st_torch = next((r[rate] for r in table if r["system"] == "sentence-transformers" and r["backend"] == "torch"), 0.0)
    if st_torch:
        out["rerank best fp32 / ST torch fp32"] = best("rerank", ("float32",)) / st_torch
        out["rerank best int8 / ST torch fp32"] = best("rerank", ("int8",)) / st_torch
    if best("sentence-transformers", ("float32",)):
        out["rerank best fp32 / ST best fp32"] = best("rerank", ("float32",)) / best("sentence-transformers", ("float32",))
    if best("sentence-transformers", ("bfloat16",)):
        out["rerank best bf16 / ST best bf16"] = best("rerank", ("bfloat16",)) / best("sentence-transformers", ("bfloat16",))
    if best("sentence-transformers", ("int8",)):
        out["rerank best int8 / ST best int8"] = best("rerank", ("int8",)) / best("sentence-transformers", ("int8",))
    torch_bf16 = next((r[rate] for r in table if r["system"] == "rerank" and r["backend"] == "torch"
                       and r["precision"] == "bfloat16"), 0.0)
    if bf16 and torch_bf16:
        out["rerank best bf16 / rerank torch bf16"] = best("rerank", ("bfloat16",)) / torch_bf16
    return {k: round(v, 3) for k, v in out.items()}


def quality(args: argparse.Namespace) -> dict:
    from rerank import evaluate, load_dataset
    from rerank.rerankers.pointwise import CrossEncoder, Splade
    from rerank.retrieve.dense import Dense

    metrics = ["nDCG@10"]
    configs = [("torch", "none", "float32"), ("onnx", "int8", "float32"), ("openvino", "int8", "float32")]
    rows: list[dict] = []
    print(f"{'task':<50}{'backend':<10}{'precision':<10}{'nDCG@10':>8}{'Δ fp32':>8}{'seconds':>9}")

    def record(task: str, config: tuple[str, str, str], run: Any, ds: Any, seconds: float) -> None:
        m = evaluate(run, ds.qrels, metrics, rel=ds.rel).metrics["nDCG@10"]
        base = next((r["nDCG@10"] for r in rows if r["task"] == task), m)
        row = {"task": task, "backend": config[0], "precision": "int8" if config[1] == "int8" else config[2],
               "nDCG@10": round(m, 4), "delta_vs_fp32": round(m - base, 4), "seconds": round(seconds, 1)}
        rows.append(row)
        print(f"{task:<50}{row['backend']:<10}{row['precision']:<10}{m:>8.4f}{row['delta_vs_fp32']:>+8.4f}"
              f"{seconds:>9.1f}", flush=True)

    dl19 = load_dataset("trec-dl-19")
    scifact = load_dataset("scifact", split="test")
    tasks: list[tuple[str, Any, Any]] = [
        ("SPLADE-tiny reranks DL19 BM25 top-100", dl19, lambda c: Splade("splade-tiny-msmarco", backend=c[0], quantize=c[1],
                                                                           dtype=c[2], depth=100)),
    ]
    if args.ce:
        tasks.append((f"{Path(args.ce).name} reranks SciFact BM25 top-{args.ce_depth}", scifact,
                      lambda c: CrossEncoder(args.ce, backend=c[0], quantize=c[1], dtype=c[2], depth=args.ce_depth,
                                             max_length=args.ce_max_length)))
    for task, ds, make in tasks:
        first = ds.candidate_run("bm25") if ds is dl19 else None
        if first is None:
            from rerank.retrieve.bm25 import BM25

            first = BM25(ds, k=100)(ds.queries)
        for config in configs:
            stage = make(config)
            t0 = time.perf_counter()
            run = stage(ds.queries, first)
            record(task, config, run, ds, time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            t0 = time.perf_counter()
            dense = Dense("all-MiniLM-L6-v2", scifact, k=100, index_root=tmp, backend=config[0], quantize=config[1],
                          dtype=config[2])
            record("all-MiniLM-L6-v2 dense retrieval on SciFact", config, dense(scifact.queries), scifact,
                   time.perf_counter() - t0)
    return {"rows": rows, "cross_encoder": args.ce, "ce_depth": args.ce_depth, "ce_max_length": args.ce_max_length}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return
    from common import RESULTS, announce_cpu, machine, write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["speed", "quality"])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--model", help="cross-encoder for the speed part [default: MiniLM-L6 with a seeded head]")
    ap.add_argument("--st-python", default=sys.executable, help="the interpreter of sentence-transformers' torch baseline")
    ap.add_argument("--st-onnx-python", help="an interpreter with sentence-transformers and optimum-onnx")
    ap.add_argument("--st-openvino-python", help="an interpreter with sentence-transformers and optimum-intel")
    ap.add_argument("--ce", help="a trained cross-encoder for the quality part (rerank train ... -o FOLDER)")
    ap.add_argument("--ce-depth", type=int, default=100, help="quality: hits the cross-encoder reranks per query")
    ap.add_argument("--ce-max-length", type=int, default=256, help="quality: the cross-encoder's window (as trained)")
    ap.add_argument("--output")
    args = ap.parse_args()
    facts = announce_cpu()
    result = {"benchmark": f"cpu-backends-{args.part}", "machine": machine(), "cpu": facts,
              **(speed(args) if args.part == "speed" else quality(args))}
    write_result(result, Path(args.output or RESULTS / f"cpu-backends-{args.part}.json"))


if __name__ == "__main__":
    main()
