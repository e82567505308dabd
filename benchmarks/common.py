"""Helpers shared by the benchmark scripts: offline model folders, machine facts, writing results."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from rerank.env import atomic_write
from rerank.models import model_folders

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "work"  # trained models and cached runs (git-ignored)


def installed(name: str) -> str | None:
    """The folder of an installed offline model (../shared/tools/offline-models), else None."""
    for folder in model_folders():
        if (folder / name / "config.json").is_file():
            return str(folder / name)
    return None


def offline(name: str) -> str:
    """The folder of an installed offline model; exits naming how to install it when it is not."""
    path = installed(name)
    if path is None:
        raise SystemExit(f"{name} not installed: ../shared/tools/offline-models {name}")
    return path


def seeded_cross_encoder() -> str:
    """The all-MiniLM-L6-v2 body with a fixed-seed one-logit head: the architecture and cost of
    ms-marco-MiniLM-L-6-v2 (which does not install offline), for speed measurements."""
    out = WORK / "minilm-l6-ce-seeded"
    if not (out / "config.json").is_file():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        src = offline("all-MiniLM-L6-v2")
        AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(out)
        AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def dl19_pairs(n: int) -> list[tuple[str, str]]:
    """The first ``n`` DL19 (query, BM25 candidate passage) pairs, query by query."""
    from rerank import load_dataset

    ds = load_dataset("trec-dl-19")
    text = {q.qid: q.text for q in ds.queries}
    pairs = [(text[q], h.text or "") for q, hits in ds.candidate_run("bm25").items() for h in hits]
    return pairs[:n]


def scifact_train_test() -> tuple[Any, Any, Any]:
    """(SciFact train, SciFact test, test qrels), with INFO logging on: the setup of the training benchmarks."""
    import logging

    from rerank.data import load_dataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    test = load_dataset("scifact", split="test")
    return load_dataset("scifact", split="train"), test, test.require_qrels()


#: the CPU flags that decide model speed: vector width, int8 dot products (VNNI), bf16 instructions
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu_facts() -> dict[str, Any]:
    """The CPU model, its cores, the flags that decide model speed, and the memory (every benchmark prints them)."""
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    meminfo = Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").is_file() else []
    mem = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    return {"cpu": model, "cores": os.cpu_count(),
            "flags": " ".join(f for f in SPEED_FLAGS if f in flags) or "none of avx2/avx512",
            "memory_gb": round(mem / 2**20, 1)}


def announce_cpu() -> dict[str, Any]:
    """:func:`cpu_facts`, printed first (a benchmark's figures are read beside the CPU that made them)."""
    facts = cpu_facts()
    print(f"CPU: {facts['cpu']} ({facts['cores']} cores; flags {facts['flags']}; {facts['memory_gb']} GB)", flush=True)
    return facts


def model_folder(name: str) -> str:
    """``name`` when it is a folder, else the folder of the offline model of that name."""
    return name if Path(name).is_dir() else offline(name)


def machine() -> dict[str, Any]:
    """What ran a benchmark (printed with its figures): the CPU, its speed flags, torch, any GPU."""
    import torch

    facts = cpu_facts()
    out = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        **facts,
    }
    print(f"machine: {facts['cpu']}, {facts['cores']} cores, {facts['flags']}, torch {torch.__version__}"
          + (f", {out['cuda']}" if out["cuda"] else ""))
    return out


def settings_key(settings: dict[str, Any]) -> str:
    """A short key of every setting (sorted JSON, SHA-256)."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def cached_row(group: str, settings: dict[str, Any], compute: Any) -> dict[str, Any]:
    """A result row computed once per settings (benchmarks/work/GROUP/KEY.json), so a stopped run
    resumes where it was and a changed setting measures again."""
    path = WORK / group / f"{settings_key(settings)}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    row = {**settings, **compute()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(row, path)
    return row


def write_result(result: dict[str, Any], out: str | Path) -> None:
    with atomic_write(out) as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


def versus_baseline(rows: list[dict[str, Any]], n: int, unit: str, title: str, agreement: dict[str, float]) -> dict[str, float]:
    """Rates for rows of rerank vs sentence-transformers at float32 and bfloat16 (``seconds`` for
    ``n`` items), the three speed ratios against the baseline, printed as a table; returns the ratios."""
    rate = f"{unit}_per_s"
    for r in rows:
        r[rate] = round(n / r["seconds"], 1)
        r["seconds"] = round(r["seconds"], 2)
    by = {(r["system"], r["dtype"]): r[rate] for r in rows}
    ratios = {"fp32_vs_st_fp32": by["rerank", "float32"] / by["sentence-transformers", "float32"],
              "bf16_vs_st_bf16": by["rerank", "bfloat16"] / by["sentence-transformers", "bfloat16"],
              "bf16_vs_st_fp32": by["rerank", "bfloat16"] / by["sentence-transformers", "float32"]}
    print(title)
    print(f"{'system':<22} {'dtype':<9} {'seconds':>8} {unit + '/s':>9}")
    for r in rows:
        print(f"{r['system']:<22} {r['dtype']:<9} {r['seconds']:>8.2f} {r[rate]:>9.1f}")
    for k, v in ratios.items():
        print(f"ratio {k:<18} {v:5.2f}x")
    for k, v in agreement.items():
        print(f"{k:<28} {v:.6g}")
    return {k: round(v, 3) for k, v in ratios.items()}


def mean_sd(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one run) and the runs, rounded to 4 places."""
    import statistics

    return {"mean": round(statistics.mean(values), 4), "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "runs": [round(v, 4) for v in values]}


def paired(base: dict[str, Any], row: dict[str, Any], metric: str = "nDCG@10") -> tuple[float, float]:
    """``row`` against ``base`` on the same queries (both with ``metric`` and its ``per_query``
    values): the difference of the means and the paired randomization test's p (rerank.evaluate.compare)."""
    from rerank.evaluate import Evaluation, compare

    def ev(r: dict[str, Any]) -> Evaluation:
        return Evaluation({metric: r[metric]}, {metric: r["per_query"]}, 1)

    c = compare(ev(base), ev(row))[0]
    return round(c.delta, 4), round(c.randomization_pvalue, 4)
