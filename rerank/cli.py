"""The ``rerank`` command line: run | eval | index | datasets."""

from __future__ import annotations

import functools
import json
import logging
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import RerankError

log = logging.getLogger("rerank")
RETRIEVERS_HELP = ("bm25 (bm25s backend), bm25:lucene (pyserini), dense:MODEL (sentence-transformers + FAISS), "
                   "hybrid:A+B[+C...] (reciprocal-rank fusion of retrievers, e.g. hybrid:bm25+dense:MODEL), "
                   "run:FILE (a TREC run or candidate file), "
                   "candidates:NAME (a candidate run shipped with the dataset, e.g. candidates:splade-pp-ed)")
FUSION_DEPTH = 1000  # hits each part of a hybrid retriever contributes to the fusion
RERANKERS_HELP = ("none, cross-encoder:MODEL, llm-pointwise:MODEL, splade:MODEL, prp:MODEL[:allpair|sorting|sliding], "
                  "first[:MODEL] (FIRST single-token listwise; default castorini/first_mistral), listwise-gen:MODEL "
                  "(MODEL: a Hugging Face id, a local path, or a folder name under $RERANK_MODEL_PATH / the offline models)")


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rerank: %(message)s"))
    root = logging.getLogger("rerank")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report user errors in one line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RerankError, ValueError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


DEFAULT_METRICS = "nDCG@10,RR@10,R@100"


def _metric_list(value: str | None) -> list[str]:
    names = [m.strip() for m in (value or DEFAULT_METRICS).split(",") if m.strip()]
    if not names:
        raise click.BadParameter("give at least one measure")
    return names


CONFIG_KEYS = {"name", "description", "dataset", "split", "retriever", "reranker", "top_k", "rerank_depth", "dtype", "dense_index",
               "window", "stride",
               "metrics", "rel", "expected", "tolerance"}


def read_config(path: str) -> dict[str, Any]:
    """A YAML pipeline: dataset, retriever, reranker, top_k, metrics and the scores it must reproduce."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RerankError(f"{path}: cannot read the config ({e})") from None
    if not isinstance(cfg, dict):
        raise RerankError(f"{path}: a config is a YAML mapping of {', '.join(sorted(CONFIG_KEYS))}")
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise RerankError(f"{path}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(CONFIG_KEYS))}")
    if "metrics" in cfg and isinstance(cfg["metrics"], list):
        cfg["metrics"] = ",".join(cfg["metrics"])
    expected = cfg.get("expected", {})
    if not isinstance(expected, dict) or not all(isinstance(v, (int, float)) for v in expected.values()):
        raise RerankError(f"{path}: 'expected' maps measure names to numbers")
    return cfg


def check_expected(cfg: dict[str, Any], measured: dict[str, float]) -> list[str]:
    """One line per expected score that the run did not reproduce within the tolerance."""
    tol = float(cfg.get("tolerance", 0.001))
    bad = []
    for name, want in cfg.get("expected", {}).items():
        got = measured.get(name)
        if got is None:
            bad.append(f"{name}: expected {want}, not measured (add it to metrics)")
        elif abs(got - want) > tol:
            bad.append(f"{name}: measured {got:.4f}, expected {want:.4f} (tolerance {tol})")
    return bad


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _dataset_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--dataset", "-d", help="Alias (see `rerank datasets`), ir_datasets id, or path."),
        click.option("--split", help="Qrels split of a BEIR folder [default: test]."),
        click.option("--qrels", type=click.Path(exists=True, dir_okay=False), help="Use these judgments instead of the dataset's."),
        click.option("--rel", type=int, help="Relevance grade from which a document counts as relevant for RR/R/P/AP "
                                               "(default: the dataset's, 2 for TREC DL, else 1)."),
        click.option("--metrics", help="Comma-separated ir_measures names [default: nDCG@10,RR@10,R@100]."),
        click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True,
                     help="What to do with bytes that are not UTF-8 in dataset files."),
        click.option("--quiet", "-q", is_flag=True, help="Only warnings and results."),
    ]):
        fn = opt(fn)
    return fn


def _load(dataset: str, split: str, qrels: str | None, encoding_errors: str) -> Any:
    from .data import load_dataset
    from .data.formats import read_qrels

    ds = load_dataset(dataset, split=split, encoding_errors=encoding_errors)
    if qrels:
        ds.qrels = read_qrels(qrels)
    return ds


def _full_corpus(ds: Any, spec: str) -> None:
    if ds.docs is None:
        raise RerankError(f"dataset {ds.name!r} has no documents to index; use --retriever run:FILE")
    if not ds.docs.complete:
        raise RerankError(f"{ds.name} has no full corpus here to index for --retriever {spec} (only candidate passages); "
                          f"use --retriever run:FILE or candidates:NAME (e.g. candidates:tas-b for a dense first stage)")


def split_hybrid(arg: str) -> list[str]:
    """``bm25+dense:org/model`` -> ``["bm25", "dense:org/model"]`` (a ``+`` inside a model name stays)."""
    return [p for p in re.split(r"\+(?=(?:bm25|dense|run|candidates|hybrid)(?::|\+|$))", arg) if p]


def build_first_stage(spec: str, ds: Any, top_k: int, threads: int = 0, rebuild: bool = False, with_text: bool = True,
                      dense: dict[str, Any] | None = None) -> Any:
    """The first stage named by a ``--retriever`` spec; ``dense``: options for dense retrievers
    (index, device, dtype, batch_tokens)."""
    from .retrieve.bm25 import BACKENDS, BM25
    from .retrieve.run import FromRun

    kind, _, arg = spec.partition(":")
    if kind == "bm25":
        backend = arg or "bm25s"
        if backend not in BACKENDS:
            raise RerankError(f"unknown BM25 backend {backend!r} in --retriever {spec}; choose bm25 or bm25:lucene")
        if ds.docs is not None and not ds.docs.complete and "bm25" in ds.candidates:
            log.info("%s has no full corpus here (only its candidate passages); using its published BM25 "
                     "candidates %s as the BM25 stage", ds.name, ds.candidates["bm25"])
            return FromRun(ds.candidate_run("bm25"), ds.docs, name="bm25 (published candidates)") % top_k
        _full_corpus(ds, spec)
        return BM25(ds, backend=backend, k=top_k, threads=threads, rebuild=rebuild, with_text=with_text)
    if kind == "dense":
        from .retrieve.dense import Dense

        if not arg:
            raise RerankError("--retriever dense needs a model: dense:MODEL (e.g. dense:sentence-transformers/all-MiniLM-L6-v2)")
        _full_corpus(ds, spec)
        return Dense(arg, ds, k=top_k, threads=threads, rebuild=rebuild, with_text=with_text, **(dense or {}))
    if kind == "hybrid":
        from .retrieve.fusion import RRF

        parts = split_hybrid(arg)
        if len(parts) < 2:
            raise RerankError(f"--retriever {spec}: a hybrid needs two or more retrievers joined by '+', e.g. hybrid:bm25+dense:MODEL")
        depth = max(top_k, FUSION_DEPTH)
        return RRF(*[build_first_stage(p, ds, depth, threads, rebuild, with_text, dense) for p in parts]) % top_k
    if kind == "run" and arg:
        return FromRun(arg, ds.docs if with_text else None) % top_k
    if kind == "candidates" and arg:
        return FromRun(ds.candidate_run(arg), ds.docs if with_text else None, name=f"candidates:{arg}") % top_k
    raise RerankError(f"unknown --retriever {spec!r}; use one of: {RETRIEVERS_HELP}")


def _dense_options(index: str, device: str, dtype: str | None, batch_tokens: int | None) -> dict[str, Any]:
    return {"index": index, "device": device, "dtype": dtype or "auto", "batch_tokens": batch_tokens}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rerank")
def main() -> None:
    """Neural retrieval and reranking: first stages, rerankers, evaluation."""


@main.command()
@click.option("--config", "-c", type=click.Path(exists=True, dir_okay=False),
              help="A YAML pipeline from configs/ (its values are defaults; it fails when its expected scores are not reproduced).")
@click.option("--retriever", "-r", help=RETRIEVERS_HELP)
@click.option("--reranker", help=f"Second stage: {RERANKERS_HELP} [default: none].")
@_dataset_options
@click.option("--top-k", "-k", type=click.IntRange(min=1), help="Hits kept per query [default: 100].")
@click.option("--rerank-depth", type=click.IntRange(min=1), help="Hits per query the reranker rescores [default: 100].")
@click.option("--window", type=click.IntRange(min=2, max=26), help="Listwise window (first, listwise-gen) [default: 20].")
@click.option("--stride", type=click.IntRange(min=1), help="Listwise stride [default: 10].")
@click.option("--dense-index", type=click.Choice(["flat", "ivf", "hnsw"]), help="FAISS index of a dense retriever [default: flat].")
@click.option("--batch-tokens", type=click.IntRange(min=1), help="Token budget per model batch [default: 4096 on CPU, more on GPU].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              help="auto (the default): bf16 on GPUs and on CPUs with bf16 instructions, else float32.")
@click.option("--score-cache", type=click.Path(dir_okay=False), help="SQLite file of scores by (model, query, document): repeats are free.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the run here (TREC format, atomically).")
@click.option("--metrics-json", type=click.Path(dir_okay=False), help="Write metrics and cost here as JSON.")
@click.option("--threads", default=0, type=int, help="Threads for retrieval (0: all cores).")
@click.option("--rebuild", is_flag=True, help="Rebuild the index even if a current one exists.")
@_friendly
def run(config: str | None, retriever: str | None, reranker: str | None, dataset: str | None, split: str | None,
        qrels: str | None, rel: int | None, metrics: str | None, encoding_errors: str, quiet: bool,
        top_k: int | None, rerank_depth: int | None, window: int | None, stride: int | None, dense_index: str | None, batch_tokens: int | None, device: str, dtype: str | None,
        score_cache: str | None, output: str | None, metrics_json: str | None, threads: int, rebuild: bool) -> None:
    """Run a pipeline on a dataset, print its metrics and write the run."""
    _setup_logging(quiet)
    cfg = read_config(config) if config else {}
    retriever = retriever or cfg.get("retriever")
    dataset = dataset or cfg.get("dataset")
    reranker = reranker or cfg.get("reranker", "none")
    metrics = metrics or cfg.get("metrics")
    top_k = top_k or int(cfg.get("top_k", 100))
    rerank_depth = rerank_depth or int(cfg.get("rerank_depth", 100))
    dtype = dtype or cfg.get("dtype", "auto")
    dense_index = dense_index or cfg.get("dense_index", "flat")
    rel = rel if rel is not None else cfg.get("rel")
    split = split or cfg.get("split", "test")
    if not retriever or not dataset:
        raise RerankError("rerank run needs --retriever and --dataset (or a --config that names them)")
    names = _metric_list(metrics)
    second = None
    if reranker != "none":
        from .rerankers import make_reranker

        second = make_reranker(reranker, depth=rerank_depth, batch_tokens=batch_tokens, device=device, dtype=dtype,
                               window=window or cfg.get("window"), stride=stride or cfg.get("stride"),
                               cache=score_cache)
    t0 = time.perf_counter()
    ds = _load(dataset, split, qrels, encoding_errors)
    load_s = time.perf_counter() - t0
    stage = build_first_stage(retriever, ds, top_k, threads, rebuild, with_text=second is not None,
                              dense=_dense_options(dense_index, device, dtype, batch_tokens))
    if second is not None:
        stage = stage >> second
    t1 = time.perf_counter()
    ranking = stage(ds.queries)
    seconds = time.perf_counter() - t1
    if output:
        from .data.formats import write_trec_run

        write_trec_run(ranking, output, tag=retriever)
        log.info("wrote %s (%d queries)", output, len(ranking))
    result: dict[str, Any] = {"dataset": ds.name, "pipeline": stage.name,
                              "cost": {"seconds": round(seconds, 3), "load_seconds": round(load_s, 3),
                                       "queries": len(ds.queries), "peak_rss_mb": _peak_rss_mb()}}
    if second is not None:
        result["cost"]["rerank"] = second.cost.as_dict()
        c = second.cost
        click.echo(f"reranker: {c.calls} pairs through the model ({c.tokens} tokens, {c.batches} batches, "
                   f"{c.cached} from cache) in {c.seconds:.2f}s")
    if ds.qrels is not None:
        from .evaluate import evaluate

        ev = evaluate(ranking, ds.qrels, names, rel if rel is not None else ds.rel)
        result["metrics"] = ev.metrics
        result["relevance_threshold"] = ev.rel
        click.echo(ev.table(f"{ds.name} {stage.name}"))
    else:
        log.warning("%s has no qrels: nothing to evaluate", ds.name)
    click.echo(f"{len(ds.queries)} queries in {seconds:.2f}s (dataset loaded in {load_s:.2f}s)")
    problems = check_expected(cfg, result.get("metrics", {})) if cfg.get("expected") else []
    if cfg.get("expected"):
        result["expected"] = cfg["expected"]
        result["reproduced"] = not problems
    if metrics_json:
        from .env import atomic_write

        with atomic_write(metrics_json) as f:
            json.dump(result, f, indent=2)
    if problems:
        click.echo(f"{config}: not reproduced\n  " + "\n  ".join(problems), err=True)
        sys.exit(1)
    if cfg.get("expected"):
        click.echo(f"{config}: expected scores reproduced")


@main.command("eval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_dataset_options
@click.option("--per-query", is_flag=True, help="Also print every query's scores.")
@click.option("--metrics-json", type=click.Path(dir_okay=False), help="Write the metrics (and comparisons) here as JSON.")
@_friendly
def eval_(runs: tuple[str, ...], dataset: str | None, split: str | None, qrels: str | None, rel: int | None, metrics: str | None,
          encoding_errors: str, quiet: bool, per_query: bool, metrics_json: str | None) -> None:
    """Evaluate runs (TREC run files or candidate JSON/JSONL). With several runs, the first is the
    baseline of a paired t-test and randomization test."""
    from .data.formats import read_run
    from .evaluate import compare, evaluate, format_comparison, format_per_query, format_table

    _setup_logging(quiet)
    if not dataset:
        raise RerankError("rerank eval needs --dataset (whose qrels judge the runs)")
    names = _metric_list(metrics)
    ds = _load(dataset, split or "test", qrels, encoding_errors)
    judgments = ds.require_qrels()
    threshold = rel if rel is not None else ds.rel
    evals = {}
    for path in runs:
        evals[path] = evaluate(read_run(path, encoding_errors), judgments, names, threshold)
        if evals[path].missing:
            log.warning("%s: %d judged queries have no results (scored 0)", path, len(evals[path].missing))
    click.echo(format_table([(Path(p).name, e.metrics) for p, e in evals.items()], names))
    if threshold != 1:
        click.echo(f"(binary measures count grade >= {threshold} as relevant)")
    out: dict[str, Any] = {"dataset": ds.name, "relevance_threshold": threshold,
                           "runs": {p: {"metrics": e.metrics} for p, e in evals.items()}}
    if per_query:
        for p, e in evals.items():
            click.echo(f"\n{p}\n{format_per_query(e)}")
    base = runs[0]
    for other in runs[1:]:
        rows = compare(evals[base], evals[other])
        click.echo(f"\n{Path(base).name} vs {Path(other).name} ({rows[0].queries} queries)")
        click.echo(format_comparison(rows, Path(base).name, Path(other).name))
        out["runs"][other]["vs_" + Path(base).name] = [r.__dict__ for r in rows]
    if len(runs) == 1:
        out["metrics"] = evals[base].metrics
    if metrics_json:
        from .env import atomic_write

        with atomic_write(metrics_json) as f:
            json.dump(out, f, indent=2)


@main.command()
@click.option("--retriever", "-r", default="bm25", show_default=True, help="bm25, bm25:lucene, dense:MODEL, or hybrid:A+B")
@click.option("--dataset", "-d", required=True, help="Alias, ir_datasets id, or path.")
@click.option("--split", default="test", show_default=True)
@click.option("--dense-index", type=click.Choice(["flat", "ivf", "hnsw"]), default="flat", show_default=True)
@click.option("--device", default="auto", show_default=True, help="Encoding device: auto, cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True)
@click.option("--batch-tokens", type=click.IntRange(min=1), help="Token budget per encoding batch.")
@click.option("--threads", default=0, type=int, help="Indexing threads (0: all cores).")
@click.option("--rebuild", is_flag=True, help="Rebuild even if a current index exists.")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@_friendly
def index(retriever: str, dataset: str, split: str, dense_index: str, device: str, dtype: str, batch_tokens: int | None,
          threads: int, rebuild: bool, encoding_errors: str) -> None:
    """Build (or check) the indexes a retriever needs, under indexes/."""
    from .retrieve.fusion import RRF

    _setup_logging(False)
    if retriever.split(":")[0] not in ("bm25", "dense", "hybrid"):
        raise RerankError(f"nothing to index for --retriever {retriever!r}; indexable: bm25, bm25:lucene, dense:MODEL, hybrid:A+B")
    ds = _load(dataset, split, None, encoding_errors)
    if ds.docs is None or not ds.docs.complete:
        raise RerankError(f"{ds.name} has no full corpus here to index")
    stage = build_first_stage(retriever, ds, 1000, threads, rebuild, dense=_dense_options(dense_index, device, dtype, batch_tokens))
    stages = stage.stages if hasattr(stage, "stages") else [stage]
    parts = [p for s in stages for p in (s.stages if isinstance(s, RRF) else [s])]
    for part in parts:
        if hasattr(part, "index"):
            t0 = time.perf_counter()
            path = part.index()
            click.echo(f"{part.name}: {path} ({len(ds.docs)} documents, {time.perf_counter() - t0:.1f}s)")


def _train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `rerank train` and `rerank train-ltr` (loss, schedule, seed, output)."""
    opts = [
        click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the model and its checkpoint."),
        click.option("--loss", default="listnet", show_default=True, help="bce, mse, ranknet, ranknet-weighted, hinge, lambdarank, ndcg1, ndcg2, lambdaloss (NDCG-Loss2++), "
                     "listnet, listmle, approxndcg, neuralndcg."),
        click.option("--epochs", default=1, type=click.IntRange(min=1), show_default=True),
        click.option("--batch-size", default=4, type=click.IntRange(min=1), show_default=True, help="Lists per micro-batch."),
        click.option("--accumulate", default=1, type=click.IntRange(min=1), show_default=True, help="Micro-batches per optimiser step."),
        click.option("--lr", default=5e-5, type=click.FloatRange(min=0, min_open=True), show_default=True),
        click.option("--seed", default=0, type=int, show_default=True),
        click.option("--checkpoint-every", default=100, type=click.IntRange(min=1), show_default=True, help="Steps between checkpoints."),
        click.option("--overwrite", is_flag=True, help="Train again into an output folder that holds a finished run."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _config(loss: str, epochs: int, batch_size: int, accumulate: int, lr: float, seed: int, checkpoint_every: int,
            precision: str = "auto") -> Any:
    from .train.trainer import TrainConfig

    return TrainConfig(loss=loss, epochs=epochs, batch_size=batch_size, accumulate=accumulate, lr=lr, seed=seed,
                       checkpoint_every=checkpoint_every, precision=precision)


def _report(result: dict[str, Any], output: str) -> None:
    for h in result["history"]:
        metrics = " ".join(f"{k} {v:.4f}" for k, v in h.items() if k not in ("epoch", "step"))
        click.echo(f"epoch {h['epoch']} (step {h['step']}): {metrics}")
    click.echo(f"saved epoch {result['saved_epoch']} to {output}")


@main.command()
@click.option("--model", "-m", required=True, help="Encoder body or cross-encoder: HF id, path or offline model name.")
@click.option("--dataset", "-d", required=True, help="Dataset with training queries and qrels (alias, ir_datasets id or path).")
@click.option("--split", default="train", show_default=True)
@click.option("--negatives", default="bm25:30", show_default=True, help="RETRIEVER:DEPTH mining hard negatives (any --retriever).")
@click.option("--group-size", default=8, type=click.IntRange(min=2), show_default=True, help="Items per list: positives + negatives.")
@click.option("--positives", default=1, type=click.IntRange(min=1), show_default=True,
              help="Relevant documents per list (at most; graded ones keep their grade as label).")
@click.option("--max-length", default=256, type=click.IntRange(min=16), show_default=True)
@click.option("--dev-queries", default=50, type=click.IntRange(min=0), show_default=True,
              help="Training queries held out to evaluate each epoch (best epoch kept).")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 autocast on GPUs and on CPUs with native bf16.")
@_train_options
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@_friendly
def train(model: str, dataset: str, split: str, negatives: str, group_size: int, positives: int, max_length: int, dev_queries: int, device: str,
          precision: str, output: str, loss: str, epochs: int, batch_size: int, accumulate: int, lr: float, seed: int,
          checkpoint_every: int, overwrite: bool, encoding_errors: str) -> None:
    """Train a cross-encoder reranker over candidate lists (resumes from OUTPUT's checkpoint)."""
    from .models.loading import pick_device
    from .train.crossencoder import train_cross_encoder

    _setup_logging(False)
    ds = _load(dataset, split, None, encoding_errors)
    cfg = _config(loss, epochs, batch_size, accumulate, lr, seed, checkpoint_every, precision)
    result = train_cross_encoder(model, ds, output, cfg, negatives=negatives, group_size=group_size, positives=positives, max_length=max_length,
                                 dev_queries=dev_queries, device=pick_device(device), overwrite=overwrite)
    _report(result, output)
    click.echo(f"use it: rerank run --reranker cross-encoder:{output} ...")


@main.command("train-ltr")
@click.option("--features", "features_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training data, SVMlight/LETOR (label qid:Q i:v ...; or LightGBM's with a .query file beside).")
@click.option("--valid", type=click.Path(exists=True, dir_okay=False), help="Dev data (default: --dev-fraction of the training queries).")
@click.option("--dev-fraction", default=0.2, type=click.FloatRange(0, 1, max_open=True), show_default=True)
@click.option("--test", "test_path", type=click.Path(exists=True, dir_okay=False), help="Report nDCG@10 on this file after training.")
@click.option("--hidden", default="256,128", show_default=True, help="MLP hidden layer widths.")
@click.option("--dropout", default=0.1, type=click.FloatRange(0, 1, max_open=True), show_default=True)
@click.option("--threads", default=1, type=click.IntRange(min=1), show_default=True, help="torch threads (small MLPs: 1 is fastest).")
@_train_options
@_friendly
def train_ltr(features_path: str, valid: str | None, dev_fraction: float, test_path: str | None, hidden: str, dropout: float,
              threads: int, output: str, loss: str, epochs: int, batch_size: int, accumulate: int, lr: float, seed: int,
              checkpoint_every: int, overwrite: bool) -> None:
    """Train an MLP ranker over LETOR features with any loss (the feature ranker loads with FeatureRanker.load)."""
    import torch

    from .train.features import FeatureRanker, letor_ndcg, read_letor, split_queries, train_feature_ranker

    _setup_logging(False)
    torch.set_num_threads(threads)
    try:
        widths = [int(w) for w in hidden.split(",") if w.strip()]
    except ValueError:
        raise RerankError(f"--hidden takes comma-separated widths, e.g. 256,128; got {hidden!r}") from None
    data = read_letor(features_path)
    if valid:
        train_data, dev = data, read_letor(valid, num_features=data.num_features)
    elif dev_fraction > 0:
        train_data, dev = split_queries(data, dev_fraction, seed)
    else:
        train_data, dev = data, None
    cfg = _config(loss, epochs, batch_size, accumulate, lr, seed, checkpoint_every, "fp32")
    result = train_feature_ranker(train_data, output, cfg, dev=dev, hidden=widths, dropout=dropout, overwrite=overwrite)
    _report(result, output)
    if test_path:
        test = read_letor(test_path, num_features=data.num_features)
        click.echo(f"test nDCG@10 {letor_ndcg(test, FeatureRanker.load(output).predict(test))['nDCG@10']:.4f} "
                   f"({len(test.qrels())} queries with a relevant document)")


@main.command()
def datasets() -> None:
    """List the dataset aliases (any ir_datasets id or local path works too)."""
    from .data import list_datasets

    for name, where, desc in list_datasets():
        click.echo(f"{name:<12} {desc}\n{'':<12} {where}")
    click.echo("\nAlso: any ir_datasets id, a BEIR folder, a folder of TREC topics/qrels/candidate files, "
               "or a candidate file.\nLocal data mirror: $RERANK_SHARED_DATA (default ../shared/data).")


if __name__ == "__main__":
    main()
