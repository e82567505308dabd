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
                   "candidates:NAME (a candidate run shipped with the dataset, e.g. candidates:splade-pp-ed), "
                   "cur:SCORER (search with a pointwise scorer alone by CUR factorisation, e.g. "
                   "cur:cross-encoder:MODEL, cur:splade:MODEL; --ce-budget calls per query, anchors --anchors-from)")
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
                      dense: dict[str, Any] | None = None, cur: dict[str, Any] | None = None) -> Any:
    """The first stage named by a ``--retriever`` spec; ``dense``: options for dense retrievers
    (index, device, dtype, batch_tokens); ``cur``: options of ``cur:SCORER`` (see :func:`_cur_stage`)."""
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
    if kind == "cur":
        return _cur_stage(arg, ds, top_k, threads, rebuild, with_text, dense or {}, cur or {})
    if kind == "run" and arg:
        return FromRun(arg, ds.docs if with_text else None) % top_k
    if kind == "candidates" and arg:
        return FromRun(ds.candidate_run(arg), ds.docs if with_text else None, name=f"candidates:{arg}") % top_k
    raise RerankError(f"unknown --retriever {spec!r}; use one of: {RETRIEVERS_HELP}")


def _anchor_queries(source: str, dataset: str, split: str, encoding_errors: str) -> list[Any]:
    """Anchor queries of a CUR index: another split of the dataset (``train``) or a queries file."""
    from .data import load_dataset
    from .data.formats import read_topics

    if Path(source).is_file():
        return read_topics(source, encoding_errors)
    if source == split:
        raise RerankError(f"--anchors-from {source}: the anchors would be the queries searched; "
                          f"take them from another split (e.g. train) or a queries file")
    try:
        return load_dataset(dataset, split=source, encoding_errors=encoding_errors).queries
    except RerankError as e:
        raise RerankError(f"--anchors-from {source}: no such split of {dataset} and no such queries file ({e})") from None


def _cur_stage(scorer: str, ds: Any, top_k: int, threads: int, rebuild: bool, with_text: bool, model: dict[str, Any],
               options: dict[str, Any]) -> Any:
    """``cur:SCORER``: ``options`` holds dataset, split, anchors_from, budget, rounds, anchor_items,
    init (a retriever spec or None) and encoding_errors; ``model``: device, dtype, batch_tokens."""
    from .rerankers import make_reranker
    from .retrieve.cur import CUR

    if not scorer:
        raise RerankError("--retriever cur needs a pointwise scorer: cur:cross-encoder:MODEL, cur:llm-pointwise:MODEL "
                          "or cur:splade:MODEL")
    kind = scorer.partition(":")[0]
    if kind not in ("cross-encoder", "llm-pointwise", "splade"):
        raise RerankError(f"--retriever cur:{scorer}: CUR search needs a pointwise scorer (cross-encoder, llm-pointwise, "
                          f"splade), not {kind!r}")
    _full_corpus(ds, f"cur:{scorer}")
    anchors = _anchor_queries(options.get("anchors_from") or "train", options["dataset"], options.get("split") or "test",
                              options.get("encoding_errors", "strict"))
    searched = {q.qid for q in ds.queries}
    overlap = sum(q.qid in searched for q in anchors)
    if overlap:
        raise RerankError(f"--anchors-from {options.get('anchors_from') or 'train'}: {overlap} of its {len(anchors)} queries "
                          f"are queries of {ds.name} searched here (the dataset may have no such split); "
                          f"anchors must be other queries: give a queries file")
    extra = {"activation": "none"} if kind == "cross-encoder" else {}  # the factorisation approximates raw logits
    stage = make_reranker(scorer, device=model.get("device", "auto"), dtype=model.get("dtype"),
                          batch_tokens=model.get("batch_tokens"), **extra)
    budget, rounds = options.get("budget") or 200, options.get("rounds") or 9
    init = options.get("init")
    first = build_first_stage(init, ds, budget, threads, rebuild, with_text=False) if init else None
    return CUR(stage, ds, anchors, budget=budget, rounds=rounds, anchor_items=options.get("anchor_items"), init=first,
               k=top_k, with_text=with_text, rebuild=rebuild)


def _cur_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--ce-budget", type=click.IntRange(min=1), help="cur:SCORER: scorer calls per query [default: 200]."),
        click.option("--cur-rounds", type=click.IntRange(min=1),
                     help="cur:SCORER: rounds after the anchor items; 1 is ANNCUR, more is ADACUR [default: 9]."),
        click.option("--cur-anchor-items", type=click.IntRange(min=1),
                     help="cur:SCORER: items every query is scored against first [default: budget / (rounds + 1)]."),
        click.option("--cur-init", help="cur:SCORER: take each query's first items from this retriever (e.g. bm25) "
                                        "instead of uniform ones."),
    ]):
        fn = opt(fn)
    return fn


def _ray_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--ray", "use_ray", is_flag=True, help="Run index builds and the reranker on Ray (extra `distributed`): "
                     "the cluster at $RAY_ADDRESS, else a local one."),
        click.option("--workers", type=click.IntRange(min=1), help="--ray: model replicas (Ray actors) [default: 2]."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="--ray: GPUs each worker holds [default: 0]."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), help="--ray: CPUs each worker holds [default: 1]."),
    ]):
        fn = opt(fn)
    return fn


def _ray(use: bool, workers: int | None, gpus: float | None, cpus: float | None) -> Any:
    """RayOptions for --ray (None without it); the Ray options without --ray are an error."""
    if not use:
        given = [n for n, v in (("--workers", workers), ("--gpus-per-worker", gpus), ("--cpus-per-worker", cpus)) if v is not None]
        if given:
            raise RerankError(f"{', '.join(given)} apply with --ray")
        return None
    from .distributed import RayOptions, require_ray

    require_ray()  # without the extra, say how to get it before any work
    return RayOptions(workers=workers or 2, gpus_per_worker=gpus or 0.0, cpus_per_worker=cpus or 1.0)


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
@click.option("--block-queries", type=click.IntRange(min=1),
              help="Queries the reranker scores together (its batches; with --ray, a worker's unit) [default: 8 pointwise, 32 PRP/listwise].")
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
@_cur_options
@click.option("--anchors-from", default="train", show_default=True,
              help="cur:SCORER: anchor queries of the index: a split of the dataset or a queries file (TSV/JSONL).")
@_ray_options
@_friendly
def run(config: str | None, retriever: str | None, reranker: str | None, dataset: str | None, split: str | None,
        qrels: str | None, rel: int | None, metrics: str | None, encoding_errors: str, quiet: bool,
        top_k: int | None, rerank_depth: int | None, window: int | None, stride: int | None, block_queries: int | None,
        dense_index: str | None, batch_tokens: int | None, device: str, dtype: str | None,
        score_cache: str | None, output: str | None, metrics_json: str | None, threads: int, rebuild: bool,
        ce_budget: int | None, cur_rounds: int | None, cur_anchor_items: int | None, cur_init: str | None,
        anchors_from: str, use_ray: bool, workers: int | None, gpus_per_worker: float | None,
        cpus_per_worker: float | None) -> None:
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
    ray = _ray(use_ray, workers, gpus_per_worker, cpus_per_worker)
    second: Any = None
    if reranker != "none":
        from .rerankers import make_reranker

        options: dict[str, Any] = {"depth": rerank_depth, "batch_tokens": batch_tokens, "device": device, "dtype": dtype,
                   "window": window or cfg.get("window"), "stride": stride or cfg.get("stride"), "cache": score_cache}
        if ray is not None:
            from .distributed import RayReranker

            second = RayReranker(reranker, ray, block=block_queries, journal=f"{output}.journal" if output else None, **options)
        else:
            second = make_reranker(reranker, **options)
            second.block = block_queries or second.block
    t0 = time.perf_counter()
    ds = _load(dataset, split, qrels, encoding_errors)
    load_s = time.perf_counter() - t0
    stage = build_first_stage(retriever, ds, top_k, threads, rebuild, with_text=second is not None,
                              dense=_dense_options(dense_index, device, dtype, batch_tokens),
                              cur={"dataset": dataset, "split": split, "anchors_from": anchors_from, "budget": ce_budget,
                                   "rounds": cur_rounds, "anchor_items": cur_anchor_items, "init": cur_init,
                                   "encoding_errors": encoding_errors})
    if ray is not None:
        from .distributed import use_ray as on_ray

        on_ray(stage, ray)
    first = stage
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
    if hasattr(first, "calls"):  # a first stage that searches with a scorer (cur:SCORER)
        result["cost"]["first_stage_scorer_calls"] = first.calls
        click.echo(f"first stage: {first.calls} scorer calls ({first.calls / max(1, len(ds.queries)):.1f} a query)")
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
@click.option("--retriever", "-r", default="bm25", show_default=True,
              help="bm25, bm25:lucene, dense:MODEL, hybrid:A+B, or cur:SCORER (the anchor score matrix)")
@click.option("--dataset", "-d", required=True, help="Alias, ir_datasets id, or path.")
@click.option("--split", default="test", show_default=True)
@click.option("--dense-index", type=click.Choice(["flat", "ivf", "hnsw"]), default="flat", show_default=True)
@click.option("--device", default="auto", show_default=True, help="Encoding device: auto, cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True)
@click.option("--batch-tokens", type=click.IntRange(min=1), help="Token budget per encoding batch.")
@click.option("--threads", default=0, type=int, help="Indexing threads (0: all cores).")
@click.option("--rebuild", is_flag=True, help="Rebuild even if a current index exists.")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@click.option("--anchors-from", default="train", show_default=True,
              help="cur:SCORER: anchor queries: a split of the dataset or a queries file (TSV/JSONL).")
@_ray_options
@_friendly
def index(retriever: str, dataset: str, split: str, dense_index: str, device: str, dtype: str, batch_tokens: int | None,
          threads: int, rebuild: bool, encoding_errors: str, anchors_from: str, use_ray: bool, workers: int | None,
          gpus_per_worker: float | None, cpus_per_worker: float | None) -> None:
    """Build (or check) the indexes a retriever needs, under indexes/."""
    from .retrieve.fusion import RRF

    _setup_logging(False)
    ray = _ray(use_ray, workers, gpus_per_worker, cpus_per_worker)
    if retriever.split(":")[0] not in ("bm25", "dense", "hybrid", "cur"):
        raise RerankError(f"nothing to index for --retriever {retriever!r}; indexable: bm25, bm25:lucene, dense:MODEL, "
                          f"hybrid:A+B, cur:SCORER")
    ds = _load(dataset, split, None, encoding_errors)
    if ds.docs is None or not ds.docs.complete:
        raise RerankError(f"{ds.name} has no full corpus here to index")
    stage = build_first_stage(retriever, ds, 1000, threads, rebuild, dense=_dense_options(dense_index, device, dtype, batch_tokens),
                              cur={"dataset": dataset, "split": split, "anchors_from": anchors_from,
                                   "encoding_errors": encoding_errors})
    if ray is not None:
        from .distributed import use_ray as on_ray

        on_ray(stage, ray)
    stages = stage.stages if hasattr(stage, "stages") else [stage]
    parts = [p for s in stages for p in (s.stages if isinstance(s, RRF) else [s])]
    for part in parts:
        if hasattr(part, "index"):
            t0 = time.perf_counter()
            path = part.index()
            click.echo(f"{part.name}: {path} ({len(ds.docs)} documents, {time.perf_counter() - t0:.1f}s)")


def _train_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `rerank train` and `rerank train-ltr` (loss, schedule, seed, output);
    schedule defaults depend on what is trained (see each command's help)."""
    opts = [
        click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the model and its checkpoint."),
        click.option("--loss", help="bce, mse, ranknet, ranknet-weighted, hinge, lambdarank, ndcg1, ndcg2, lambdaloss (NDCG-Loss2++), "
                     "listnet, listmle, approxndcg, neuralndcg, softmax [default: listnet; softmax with --clicks]."),
        click.option("--epochs", type=click.IntRange(min=1), help="[default: 1; 100 with --clicks; 60 for train-ltr]"),
        click.option("--batch-size", type=click.IntRange(min=1), help="Lists per micro-batch [default: 4; 16 with --clicks and train-ltr]."),
        click.option("--accumulate", default=1, type=click.IntRange(min=1), show_default=True, help="Micro-batches per optimiser step."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="[default: 5e-5 for cross-encoders; 1e-3 for feature MLPs]"),
        click.option("--seed", default=0, type=int, show_default=True),
        click.option("--checkpoint-every", default=100, type=click.IntRange(min=1), show_default=True, help="Steps between checkpoints."),
        click.option("--overwrite", is_flag=True, help="Train again into an output folder that holds a finished run."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _feature_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of feature-MLP training (`rerank train-ltr`, `rerank train --clicks --features`)."""
    opts = [
        click.option("--valid", type=click.Path(exists=True, dir_okay=False), help="Labelled dev data (default: --dev-fraction of the training queries)."),
        click.option("--dev-fraction", default=0.2, type=click.FloatRange(0, 1, max_open=True), show_default=True),
        click.option("--test", "test_path", type=click.Path(exists=True, dir_okay=False), help="Report nDCG@10 on this labelled file after training."),
        click.option("--hidden", default="256,128", show_default=True, help="MLP hidden layer widths."),
        click.option("--dropout", default=0.1, type=click.FloatRange(0, 1, max_open=True), show_default=True),
        click.option("--threads", default=1, type=click.IntRange(min=1), show_default=True, help="torch threads (small MLPs: 1 is fastest)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _widths(hidden: str) -> list[int]:
    try:
        return [int(w) for w in hidden.split(",") if w.strip()]
    except ValueError:
        raise RerankError(f"--hidden takes comma-separated widths, e.g. 256,128; got {hidden!r}") from None


def _feature_split(data: Any, valid: str | None, dev_fraction: float, seed: int) -> tuple[Any, Any]:
    from .train.features import read_letor, split_queries

    if valid:
        return data, read_letor(valid, num_features=data.num_features)
    if dev_fraction > 0:
        return split_queries(data, dev_fraction, seed)
    return data, None


def _report_test(test_path: str | None, output: str, num_features: int) -> None:
    if test_path:
        from .train.features import FeatureRanker, letor_ndcg, read_letor

        test = read_letor(test_path, num_features=num_features)
        click.echo(f"test nDCG@10 {letor_ndcg(test, FeatureRanker.load(output).predict(test))['nDCG@10']:.4f} "
                   f"({len(test.qrels())} queries with a relevant document)")


def _config(loss: str | None, epochs: int | None, batch_size: int | None, accumulate: int, lr: float | None, seed: int,
            checkpoint_every: int, precision: str = "auto", *, defaults: tuple[str, int, int, float] = ("listnet", 1, 4, 5e-5),
            **extra: Any) -> Any:
    """A TrainConfig from the shared options; ``defaults``: (loss, epochs, batch size, lr) of this kind of training."""
    from .train.trainer import TrainConfig

    d_loss, d_epochs, d_batch, d_lr = defaults
    return TrainConfig(loss=loss or d_loss, epochs=epochs or d_epochs, batch_size=batch_size or d_batch, accumulate=accumulate,
                       lr=lr or d_lr, seed=seed, checkpoint_every=checkpoint_every, precision=precision, **extra)


def _report(result: dict[str, Any], output: str) -> None:
    history = result["history"]
    if len(history) > 12:  # long runs: a dozen epochs evenly, the last and the saved one
        keep = {round(i * (len(history) - 1) / 10) for i in range(11)} | {result["saved_epoch"]}
        history = [h for h in history if h["epoch"] in keep]
    for h in history:
        metrics = " ".join(f"{k} {v:.4f}" for k, v in h.items() if k not in ("epoch", "step"))
        click.echo(f"epoch {h['epoch']} (step {h['step']}): {metrics}")
    click.echo(f"saved epoch {result['saved_epoch']} to {output}")


@main.command()
@click.option("--model", "-m", help="Encoder body or cross-encoder: HF id, path or offline model name.")
@click.option("--dataset", "-d", help="Dataset with training queries and qrels (alias, ir_datasets id or path).")
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
@click.option("--encoder", type=click.Choice(["cross", "bi"]), default="cross", show_default=True,
              help="cross: a cross-encoder (query and document in one input); bi: a sentence-transformers bi-encoder "
                   "(scale 20 x cosine), saved for --retriever dense:OUTPUT.")
@click.option("--objective", type=click.Choice(["listwise", "pgrank", "contrastive", "first"]), default="listwise", show_default=True,
              help="listwise: the --loss; pgrank: policy gradient on sampled rankings (PG-Rank, utility nDCG@--pg-k); "
                   "contrastive: softmax cross-entropy of the positives against the list (InfoNCE); first: fine-tune a "
                   "causal LM (-m) as a FIRST listwise reranker on windows of --negatives (LM loss + --first-lambda x RankNet).")
@click.option("--first-lambda", default=10.0, type=click.FloatRange(min=0), show_default=True,
              help="FIRST: weight of the weighted RankNet on the first-identifier logits (0: LM loss only).")
@click.option("--window", default=20, type=click.IntRange(2, 26), show_default=True, help="FIRST: passages per training window.")
@click.option("--lora", type=click.IntRange(min=1), help="FIRST: train LoRA adapters of this rank (peft, extra `lora`) instead of all weights.")
@click.option("--pg-samples", default=8, type=click.IntRange(min=2), show_default=True, help="PG-Rank: rankings sampled per list.")
@click.option("--pg-k", default=10, type=click.IntRange(min=1), show_default=True, help="PG-Rank: sampled prefix length and nDCG cutoff.")
@click.option("--pg-temperature", default=1.0, type=click.FloatRange(min=0, min_open=True), show_default=True,
              help="PG-Rank: policy temperature over the scores.")
@click.option("--clicks", type=click.Path(exists=True, dir_okay=False),
              help="Learn from this click log (JSON lines, .gz, or Yandex format) instead of labels: with --features "
                   "(LETOR rows) a feature MLP, with --model and --dataset a cross-encoder.")
@click.option("--algorithm", type=click.Choice(["dla", "ipw", "naive"]), default="dla", show_default=True,
              help="Click learner: DLA (propensities learnt jointly), IPW (given --propensities) or naive (clicks as labels).")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False),
              help="LETOR file whose rows the click log's documents name (with --clicks).")
@click.option("--propensities", help="For ipw: θ per rank, comma-separated, or a position-based model (pbm, an ULTRA PBM JSON).")
@click.option("--list-size", default=10, type=click.IntRange(min=1), show_default=True,
              help="Ranks modelled (sessions showing more are cut, the clicks below counted).")
@click.option("--max-weight", type=click.FloatRange(min=1), help="Clip propensity (and DLA relevance) weights at this value.")
@click.option("--propensity-lr", default=0.05, type=click.FloatRange(min=0, min_open=True), show_default=True,
              help="DLA: learning rate of the propensity model.")
@_feature_options
@_train_options
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@_friendly
def train(model: str | None, dataset: str | None, split: str, negatives: str, group_size: int, positives: int, max_length: int,
          dev_queries: int, device: str, precision: str, encoder: str, objective: str, first_lambda: float, window: int,
          lora: int | None,
          pg_samples: int, pg_k: int, pg_temperature: float, clicks: str | None, algorithm: str, features_path: str | None,
          propensities: str | None, list_size: int, max_weight: float | None, propensity_lr: float, valid: str | None,
          dev_fraction: float, test_path: str | None, hidden: str, dropout: float, threads: int, output: str, loss: str | None,
          epochs: int | None, batch_size: int | None, accumulate: int, lr: float | None, seed: int, checkpoint_every: int,
          overwrite: bool, encoding_errors: str) -> None:
    """Train a cross-encoder or bi-encoder over candidate lists (listwise losses, PG-Rank, contrastive),
    or (--clicks) a ranker from a click log; resumes from OUTPUT's checkpoint."""
    from .models.loading import pick_device

    _setup_logging(False)
    if clicks:
        _train_clicks(clicks, algorithm, features_path, model, dataset, split, propensities, list_size, max_weight,
                      propensity_lr, valid, dev_fraction, test_path, hidden, dropout, threads, max_length, dev_queries,
                      pick_device(device), precision, output, loss, epochs, batch_size, accumulate, lr, seed, checkpoint_every,
                      overwrite, encoding_errors)
        return
    if not model or not dataset:
        raise click.UsageError("training from labels needs --model and --dataset (or give --clicks LOG)")
    from .train.biencoder import train_bi_encoder
    from .train.crossencoder import train_cross_encoder

    if objective != "listwise" and loss:
        raise click.UsageError(f"--objective {objective} sets the loss; leave out --loss {loss}")
    options: dict[str, Any] = {}
    if objective == "pgrank":
        loss, options = "pgrank", {"samples": pg_samples, "k": pg_k, "temperature": pg_temperature}
    elif objective == "contrastive":
        loss = "softmax"
    ds = _load(dataset, split, None, encoding_errors)
    if objective == "first":
        from .train.first import train_first

        cfg = _config("task", epochs, batch_size, accumulate, lr, seed, checkpoint_every, precision, defaults=("task", 1, 1, 1e-5))
        result = train_first(model, ds, output, cfg, candidates=negatives, window=window, lam=first_lambda, lora=lora,
                             dev_queries=dev_queries, device=pick_device(device), overwrite=overwrite)
        _report(result, output)
        click.echo(f"use it: rerank run --reranker first:{output} ...")
        return
    cfg = _config(loss, epochs, batch_size, accumulate, lr, seed, checkpoint_every, precision, loss_options=options)
    fn = train_bi_encoder if encoder == "bi" else train_cross_encoder
    result = fn(model, ds, output, cfg, negatives=negatives, group_size=group_size, positives=positives, max_length=max_length,
                dev_queries=dev_queries, device=pick_device(device), overwrite=overwrite)
    _report(result, output)
    if objective == "pgrank" and result.get("loss_per_step"):
        utility = [s["mean_utility"] for s in result["loss_per_step"] if "mean_utility" in s]
        if utility:
            tenth = max(1, len(utility) // 10)
            click.echo(f"mean sampled nDCG@{pg_k}: first {tenth} steps {sum(utility[:tenth]) / tenth:.4f}, "
                       f"last {tenth} steps {sum(utility[-tenth:]) / tenth:.4f}")
    kind = "--retriever dense" if encoder == "bi" else "--reranker cross-encoder"
    click.echo(f"use it: rerank run {kind}:{output} ...")


def _propensity_spec(spec: str) -> list[float]:
    """θ per rank from a position-based click model or a comma-separated list."""
    from .ultr.simulate import load_click_model, position_propensities

    if "," in spec:
        try:
            return [float(v) for v in spec.split(",")]
        except ValueError:
            raise RerankError(f"--propensities: {spec!r} is not a comma-separated list of numbers") from None
    return position_propensities(load_click_model(spec))


def _hold_out(stats: Any, dev_ids: set[str]) -> None:
    """Leave the clicks of dev queries out of training (their labels judge the epochs)."""
    before = len(stats.groups)
    stats.groups = [g for g in stats.groups if g.qid not in dev_ids]
    if len(stats.groups) < before:
        click.echo(f"{before - len(stats.groups)} shown lists of dev queries left out of training")


def _train_clicks(clicks: str, algorithm: str, features_path: str | None, model: str | None, dataset: str | None, split: str,
                  propensities: str | None, list_size: int, max_weight: float | None, propensity_lr: float, valid: str | None,
                  dev_fraction: float, test_path: str | None, hidden: str, dropout: float, threads: int, max_length: int,
                  dev_queries: int, device: str, precision: str, output: str, loss: str | None, epochs: int | None,
                  batch_size: int | None, accumulate: int, lr: float | None, seed: int, checkpoint_every: int, overwrite: bool,
                  encoding_errors: str) -> None:
    import torch

    from .ultr.learn import FeatureScorer, TextScorer, train_from_clicks
    from .ultr.log import aggregate, iter_sessions

    if algorithm == "ipw" and not propensities:
        raise click.UsageError("--algorithm ipw needs --propensities")
    theta = _propensity_spec(propensities) if propensities else None
    stats = aggregate(iter_sessions(clicks), list_size, source=clicks)
    click.echo(json.dumps(stats.summary()))
    scorer: Any
    if features_path:
        from .train.features import read_letor

        torch.set_num_threads(threads)
        data = read_letor(features_path)
        _, dev = _feature_split(data, valid, dev_fraction, seed)
        if dev is not None and not valid:
            _hold_out(stats, set(dev.qids))
        scorer = FeatureScorer(data, stats.groups, dev, hidden=_widths(hidden), dropout=dropout)
        cfg = _config(loss, epochs, batch_size, accumulate, lr, seed, checkpoint_every, "fp32",
                      defaults=("softmax", 100, 16, 1e-3))
    elif model and dataset:
        from .train.crossencoder import CrossEncoderTask, split_dev

        ds = _load(dataset, split, None, encoding_errors)
        qrels = ds.qrels or {}
        _, dev_q = split_dev(ds.queries, qrels, dev_queries, seed) if qrels and dev_queries else (ds.queries, [])
        _hold_out(stats, {q.qid for q in dev_q})
        scorer = TextScorer(model, stats.groups, {q.qid: q.text for q in ds.queries}, ds.docs, max_length=max_length,
                            device=device)
        if dev_q:  # dev evaluation: rerank the dev queries' BM25 top 30
            scorer.ce = CrossEncoderTask(model, scorer.tokenizer, [], qrels, build_first_stage("bm25", ds, 30)(dev_q), ds.docs,
                                         max_length=max_length, rel=ds.rel, dev_queries=dev_q, dev_depth=30, device=device)
        cfg = _config(loss, epochs, batch_size, accumulate, lr, seed, checkpoint_every, precision,
                      defaults=("softmax", 1, 4, 5e-5))
    else:
        raise click.UsageError("--clicks needs --features FILE (LETOR rows) or --model and --dataset (texts)")
    result = train_from_clicks(stats, scorer, output, cfg, algorithm=algorithm, propensities=theta, max_weight=max_weight,
                               propensity_lr=propensity_lr, device=device if not features_path else "cpu", overwrite=overwrite)
    _report(result, output)
    if "propensity" in result:
        click.echo("estimated propensity (rank: θ/θ1): " + " ".join(f"{i + 1}:{v:.3f}" for i, v in enumerate(result["propensity"])))
    if features_path:
        _report_test(test_path, output, scorer.data.num_features)
    else:
        click.echo(f"use it: rerank run --reranker cross-encoder:{output} ...")


@main.command("train-ltr")
@click.option("--features", "features_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training data, SVMlight/LETOR (label qid:Q i:v ...; or LightGBM's with a .query file beside).")
@_feature_options
@_train_options
@_friendly
def train_ltr(features_path: str, valid: str | None, dev_fraction: float, test_path: str | None, hidden: str, dropout: float,
              threads: int, output: str, loss: str | None, epochs: int | None, batch_size: int | None, accumulate: int,
              lr: float | None, seed: int, checkpoint_every: int, overwrite: bool) -> None:
    """Train an MLP ranker over LETOR features with any loss (the feature ranker loads with FeatureRanker.load)."""
    import torch

    from .train.features import read_letor, train_feature_ranker

    _setup_logging(False)
    torch.set_num_threads(threads)
    data = read_letor(features_path)
    train_data, dev = _feature_split(data, valid, dev_fraction, seed)
    cfg = _config(loss, epochs, batch_size, accumulate, lr, seed, checkpoint_every, "fp32", defaults=("listnet", 60, 16, 1e-3))
    result = train_feature_ranker(train_data, output, cfg, dev=dev, hidden=_widths(hidden), dropout=dropout, overwrite=overwrite)
    _report(result, output)
    _report_test(test_path, output, data.num_features)


@main.group()
def clicks() -> None:
    """Click logs: simulate them, summarise them, estimate position bias (train on them: rerank train --clicks)."""


@clicks.command("simulate")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False),
              help="Labelled LETOR file to simulate on (documents are named by their row in the query).")
@click.option("--dataset", "-d", help="Or a dataset with qrels: the logging ranker is --retriever, labels from the qrels.")
@click.option("--split", default="train", show_default=True)
@click.option("--retriever", "-r", default="bm25", show_default=True, help="Logging ranker for --dataset: " + RETRIEVERS_HELP)
@click.option("--model", "click_model", default="pbm", show_default=True,
              help="Click model: pbm, cascade, ubm (ULTRA's parameters) or an ULTRA ClickModel JSON file.")
@click.option("--eta", type=float, help="Severity of position bias for named models: θ^eta [default: 1].")
@click.option("--sessions", default=100_000, type=click.IntRange(min=1), show_default=True)
@click.option("--top", default=10, type=click.IntRange(min=1), show_default=True, help="Results shown per session.")
@click.option("--logging-ranker", type=click.Path(exists=True, file_okay=False),
              help="A trained feature ranker folder to log with (--features); default: one trained on --logging-fraction of the labels.")
@click.option("--logging-fraction", default=0.01, type=click.FloatRange(0, 1, min_open=True), show_default=True)
@click.option("--randomize", is_flag=True, help="Show each session's list in a uniformly random order (for propensity estimation).")
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Click log to write (.jsonl, or .jsonl.gz).")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@_friendly
def clicks_simulate(features_path: str | None, dataset: str | None, split: str, retriever: str, click_model: str, eta: float | None,
                    sessions: int, top: int, logging_ranker: str | None, logging_fraction: float, randomize: bool, seed: int,
                    output: str, encoding_errors: str) -> None:
    """Simulate a click log over labelled data with a click model, seeded."""
    import tempfile

    from .ultr.log import write_click_log
    from .ultr.simulate import letor_lists, load_click_model, run_lists, simulate

    _setup_logging(False)
    model = load_click_model(click_model, eta=eta)
    if features_path:
        from .train.features import FeatureRanker, read_letor
        from .ultr.learn import train_logging_ranker

        data = read_letor(features_path)
        if logging_ranker:
            ranker = FeatureRanker.load(logging_ranker)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ranker = train_logging_ranker(data, tmp, fraction=logging_fraction, seed=seed)
        lists = letor_lists(data, ranker.predict(data), top)
    elif dataset:
        ds = _load(dataset, split, None, encoding_errors)
        lists = run_lists(ds.queries, build_first_stage(retriever, ds, top, with_text=False)(ds.queries), ds.require_qrels(), top)
    else:
        raise click.UsageError("give --features FILE or --dataset NAME to simulate on")
    n = write_click_log(simulate(lists, model, sessions, seed=seed, randomize=randomize), output)
    click.echo(f"wrote {n} sessions over {len(lists)} queries ({model.name}, top {top}{', randomized' if randomize else ''}) to {output}")


@clicks.command("stats")
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@click.option("--list-size", default=10, type=click.IntRange(min=1), show_default=True)
@_friendly
def clicks_stats(log: str, list_size: int) -> None:
    """Sessions, shown lists, clicks and click-through rate by rank of a click log."""
    from .ultr.log import aggregate, iter_sessions

    click.echo(json.dumps(aggregate(iter_sessions(log), list_size, source=log).summary(), indent=1))


@clicks.command("propensity")
@click.option("--clicks", "log", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--method", type=click.Choice(["dla", "em", "randomization"]), default="dla", show_default=True,
              help="dla: learnt jointly with a ranker (any log); em: a position-based click model fitted by EM; "
                   "randomization: click rates of a log shown in random order.")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False),
              help="DLA's ranker: a feature MLP over these LETOR rows (default: one score per query-document pair).")
@click.option("--list-size", default=10, type=click.IntRange(min=1), show_default=True)
@click.option("--epochs", default=100, type=click.IntRange(min=1), show_default=True)
@click.option("--lr", default=0.05, type=click.FloatRange(min=0, min_open=True), show_default=True, help="Ranker learning rate (table ranker; 1e-3 suits --features).")
@click.option("--propensity-lr", default=0.05, type=click.FloatRange(min=0, min_open=True), show_default=True)
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--truth", help="Compare with a position-based click model's θ: pbm or an ULTRA PBM JSON.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the estimate as JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Plot the estimate to this PNG (needs matplotlib).")
@_friendly
def clicks_propensity(log: str, method: str, features_path: str | None, list_size: int, epochs: int, lr: float, propensity_lr: float,
                      seed: int, truth: str | None, output: str | None, plot: str | None) -> None:
    """Estimate the examination propensity of each rank, relative to rank 1."""
    import tempfile

    from .ultr.learn import pbm_em_propensities, propensity_error, randomization_propensities
    from .ultr.log import aggregate, iter_sessions

    _setup_logging(False)
    stats = aggregate(iter_sessions(log), list_size, source=log)
    se: list[float] | None = None
    if method == "randomization":
        est, err = randomization_propensities(stats)
        estimate, se = est.tolist(), err.tolist()
    elif method == "em":
        estimate = pbm_em_propensities(stats).tolist()
    else:
        import torch

        from .train.trainer import TrainConfig
        from .ultr.learn import FeatureScorer, TableScorer, train_from_clicks

        torch.set_num_threads(1)
        scorer: Any = TableScorer(stats.groups)
        if features_path:
            from .train.features import read_letor

            scorer = FeatureScorer(read_letor(features_path), stats.groups)
        cfg = TrainConfig(loss="softmax", epochs=epochs, batch_size=16, lr=lr, warmup=0.0, weight_decay=0.0, seed=seed,
                          precision="fp32", checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as tmp:
            estimate = train_from_clicks(stats, scorer, tmp, cfg, algorithm="dla", propensity_lr=propensity_lr)["propensity"]
    result: dict[str, Any] = {"log": log, "method": method, "sessions": stats.sessions, "propensity": estimate}
    if se is not None:
        result["stderr"] = se
    click.echo("rank  θ/θ1" + ("   ±se" if se else "") + ("   truth" if truth else ""))
    true_rel = None
    if truth:
        from .ultr.simulate import load_click_model, position_propensities

        t = position_propensities(load_click_model(truth), len(estimate))
        true_rel = [v / t[0] for v in t]
        result["truth"] = true_rel
        result["error"] = propensity_error(estimate, true_rel)
    for i, v in enumerate(estimate):
        click.echo(f"{i + 1:>4}  {v:.3f}" + (f"  {se[i]:.3f}" if se else "") + (f"  {true_rel[i]:.3f}" if true_rel else ""))
    if "error" in result:
        click.echo(f"max relative error {result['error']['max_relative_error']:.3f}, Pearson r {result['error']['pearson']:.4f}")
    if output:
        from .env import atomic_write

        with atomic_write(output) as f:
            json.dump(result, f, indent=1)
    if plot:
        _plot_propensity(plot, {f"{method} estimate": (estimate, se)} | ({"truth": (true_rel, None)} if true_rel else {}),
                         f"{Path(log).name}: {stats.sessions:,} sessions")
        click.echo(f"plot: {plot}")


def _plot_propensity(path: str, curves: dict[str, tuple[Any, Any]], title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RerankError("--plot needs matplotlib: pip install 'rerank[plot]'") from None
    from .env import atomic_write

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, (values, err) in curves.items():
        ranks = range(1, len(values) + 1)
        ax.errorbar(ranks, values, yerr=err, marker="o", capsize=2, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("examination θ / θ1")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


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
