"""rerank run | eval | index | reproduce | kinds | datasets."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..errors import RerankError
from ..specs import RERANKER, RETRIEVER, Context, parse, registry, stage, usage
from ..specs import kinds as kinds_of
from .common import (
    CUR_PARAMS,
    CurArgs,
    DatasetArgs,
    Grouped,
    ModelArgs,
    RayArgs,
    check_writable,
    cur_options,
    dataset_options,
    friendly,
    load,
    metric_list,
    model_options,
    peak_rss_mb,
    progress_option,
    ray_options,
    read_options,
    setup_logging,
    take,
)

log = logging.getLogger("rerank")


class _Window(click.ParamType):
    """--window: a number of passages (2-26) or 'all' (full ranking)."""

    name = "N|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or str(value).strip().isdigit():
            n = int(value)
            if 2 <= n <= 26:
                return n
            self.fail(f"{n} is not in the range 2<=x<=26 (or 'all')", param, ctx)
        if str(value).strip().lower() in ("all", "full"):
            return "all"
        self.fail(f"{value!r} is neither a number of passages nor 'all'", param, ctx)


WINDOW = _Window()
BM25_MEMORY_HELP = "bm25:disk: memory its index build may use [default: 2]."

#: a config's keys and the type of each value
CONFIG_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "description": str,
    "dataset": str,
    "split": str,
    "retriever": str,
    "reranker": str,
    "top_k": int,
    "rerank_depth": int,
    "dtype": str,
    "backend": str,
    "quantize": str,
    "dense_index": str,
    "batch_tokens": int,
    "window": int,
    "stride": int,
    "template": str,
    "instruction": str,
    "metrics": (str, list),
    "rel": int,
    "expected": dict,
    "tolerance": (int, float),
    "reproduce": str,
}


def read_config(path: str) -> dict[str, Any]:
    """A YAML pipeline: dataset, retriever, reranker, top_k, metrics and the scores it must reproduce."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RerankError(f"{path}: cannot read the config ({e})") from None
    if not isinstance(cfg, dict):
        raise RerankError(f"{path}: a config is a YAML mapping of {', '.join(sorted(CONFIG_KEYS))}")
    unknown = set(cfg) - set(CONFIG_KEYS)
    if unknown:
        raise RerankError(f"{path}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(CONFIG_KEYS))}")
    for key, value in cfg.items():
        want = CONFIG_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, want):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            what = "one spec string" if key in ("retriever", "reranker") else f"a {names}"
            raise RerankError(f"{path}: '{key}' is {what}, got {type(value).__name__} {value!r:.60}")
    if "metrics" in cfg and isinstance(cfg["metrics"], list):
        cfg["metrics"] = ",".join(cfg["metrics"])
    expected = cfg.get("expected", {})
    if not isinstance(expected, dict) or not all(isinstance(v, (int, float)) for v in expected.values()):
        raise RerankError(f"{path}: 'expected' maps measure names to numbers")
    return cfg


def threshold_line(rel: int, source: str) -> str:
    return f"(binary measures count grade >= {rel} as relevant: {source})"


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


@dataclass(frozen=True)
class RerankArgs:
    """The second stage and its options."""

    reranker: str | None = None
    rerank_depth: int | None = None
    window: int | str | None = None  # "all": full ranking
    stride: int | None = None
    block_queries: int | None = None
    score_cache: str | None = None
    template: str | None = None
    instruction: str | None = None


@dataclass(frozen=True)
class OutputArgs:
    output: str | None = None
    metrics_json: str | None = None


#: `rerank run --help`'s headings (the details of each option: docs/cli.md)
RUN_GROUPS = {
    "Pipeline": ["config", "retriever", "reranker", "top_k", "rerank_depth"],
    "Data and evaluation": ["dataset", "split", "qrels", "rel", "metrics", "encoding_errors", "doc_format", "topic_format",
                            "topic_field", "id_field", "text_fields", "doc_store"],
    "Model": ["window", "stride", "template", "instruction", "dense_index", "device", "dtype", "backend", "quantize"],
    "CUR first stage (cur:SCORER)": ["ce_budget", "cur_rounds", "cur_anchor_items", "cur_init", "anchors_from"],
    "Performance": ["batch_tokens", "block_queries", "score_cache", "threads", "rebuild", "bm25_memory_gb", "use_ray", "workers",
                    "gpus_per_worker", "cpus_per_worker"],
    "Output": ["output", "metrics_json", "quiet", "progress", "help"],
}


@click.command(cls=Grouped, groups=RUN_GROUPS)
@click.option("--config", "-c", type=click.Path(exists=True, dir_okay=False),
              help="A YAML pipeline; fails unless its scores reproduce.")
@click.option("--retriever", "-r", help=f"First stage: {', '.join(kinds_of(RETRIEVER))} (`rerank kinds`).")
@click.option("--reranker", help=f"Second stage [default: none]: {', '.join(kinds_of(RERANKER))}.")
@dataset_options
@click.option("--top-k", "-k", type=click.IntRange(min=1), help="Hits kept per query [default: 100].")
@click.option("--rerank-depth", type=click.IntRange(min=1), help="Hits per query reranked [default: 100].")
@click.option("--window", type=WINDOW, help="Listwise window, or 'all': every candidate in one prompt (full ranking; "
                                           "first, listwise-gen) [default: 20].")
@click.option("--stride", type=click.IntRange(min=1), help="Listwise stride [default: 10].")
@click.option("--template", help="llm-pointwise: prompt template, name or JSON file.")
@click.option("--instruction", help="llm-pointwise: the template's task instruction.")
@click.option("--block-queries", type=click.IntRange(min=1),
              help="Queries reranked together [default: 8; 32 listwise].")
@click.option("--dense-index", type=click.Choice(["flat", "ivf", "hnsw", "mmap", "ivfpq"]), help="FAISS index [default: flat].")
@model_options
@click.option("--score-cache", type=click.Path(dir_okay=False), help="SQLite cache of scores: repeats are free.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the run here (TREC format).")
@click.option("--metrics-json", type=click.Path(dir_okay=False), help="Write metrics and cost here as JSON.")
@click.option("--threads", default=0, type=int, help="Retrieval threads (0: all cores).")
@click.option("--rebuild", is_flag=True, help="Rebuild the index even if current.")
@click.option("--bm25-memory-gb", type=click.FloatRange(min=0, min_open=True), help=BM25_MEMORY_HELP)
@cur_options
@ray_options
@progress_option
@friendly
def run(**kw: Any) -> None:
    """Run a pipeline on a dataset, print its metrics and write the run.

    Kinds and their options: `rerank kinds`; every option in full: docs/cli.md."""
    config, retriever, threads, rebuild = kw.pop("config"), kw.pop("retriever"), kw.pop("threads"), kw.pop("rebuild")
    top_k, dense_index, memory_gb = kw.pop("top_k"), kw.pop("dense_index"), kw.pop("bm25_memory_gb")
    data, model, cur = take(DatasetArgs, kw), take(ModelArgs, kw), take(CurArgs, kw, **CUR_PARAMS)
    second, out, ray_args = take(RerankArgs, kw), take(OutputArgs, kw), take(RayArgs, kw)
    assert not kw, kw
    setup_logging(data.quiet)
    cfg = read_config(config) if config else {}
    result = run_pipeline(cfg, config, retriever=retriever or cfg.get("retriever"), data=data, model=model, cur=cur,
                 second=second, out=out, ray_args=ray_args, top_k=top_k or int(cfg.get("top_k", 100)),
                 dense_index=dense_index or cfg.get("dense_index"), threads=threads, rebuild=rebuild, memory_gb=memory_gb)
    if result.get("reproduced") is False:
        sys.exit(1)


def _reranker_stage(reranker: str, block: int | None, options: dict[str, Any]) -> Any:
    """The reranker's stage; a missing model's error ends with the spec that would run instead."""
    from ..models.offline import ModelNotHere

    try:
        return stage(reranker, role=RERANKER, block=block, **options)
    except ModelNotHere as e:
        if not e.best:
            raise
        kind = parse(reranker, RERANKER).kind
        then = f"{e}\n  then: --reranker {kind}:{e.best}"
        if kind in ("first", "listwise-gen", "prp", "rank-r1"):  # small LLMs zero-shot: listwise/pairwise below BM25 on DL19
            then += (f"\n  (an LLM of this size ranks better zero-shot as a judge: --reranker llm-pointwise:{e.best}; "
                     "docs/benchmarks.md)")
        raise ModelNotHere(then, e.best) from None


def run_pipeline(cfg: dict[str, Any], config: str | None, *, retriever: str | None, data: DatasetArgs, model: ModelArgs,
                 cur: CurArgs, second: RerankArgs, out: OutputArgs, ray_args: RayArgs, top_k: int, dense_index: str | None,
                 threads: int, rebuild: bool, memory_gb: float | None = None) -> dict[str, Any]:
    """``rerank run``: a config's values fill what the command line left out. The result's
    ``reproduced`` is False when a config's expected scores were not reproduced (the reasons printed)."""
    dataset = data.dataset or cfg.get("dataset")
    reranker = second.reranker or cfg.get("reranker", "none")
    split = data.split or cfg.get("split", "test")
    rel = data.rel if data.rel is not None else cfg.get("rel")
    model = ModelArgs(model.device, model.dtype or cfg.get("dtype"), model.batch_tokens or cfg.get("batch_tokens"),
                      model.backend or cfg.get("backend"), model.quantize or cfg.get("quantize"))
    if not retriever or not dataset:
        raise RerankError("rerank run needs --retriever and --dataset (or a --config that names them)")
    names = metric_list(data.metrics or cfg.get("metrics"))
    check_writable(out.output, out.metrics_json, second.score_cache)
    ray = ray_args.resolve()
    first_spec = parse(retriever, RETRIEVER, "--retriever")
    reranking: Any = None
    if reranker != "none":
        options: dict[str, Any] = {"depth": second.rerank_depth or cfg.get("rerank_depth"), **model.as_options(),
                                   "window": second.window or cfg.get("window"), "stride": second.stride or cfg.get("stride"),
                                   "cache": second.score_cache, "template": second.template or cfg.get("template"),
                                   "instruction": second.instruction or cfg.get("instruction")}
        if ray is not None:
            from ..distributed import RayReranker

            reranking = RayReranker(reranker, ray, block=second.block_queries,
                                    journal=f"{out.output}.journal" if out.output else None, **options)
        else:
            reranking = _reranker_stage(reranker, second.block_queries, options)
    t0 = time.perf_counter()
    ds = load(dataset, split, data.qrels, data.encoding_errors, data.read())
    load_s = time.perf_counter() - t0
    builder = None
    if ray is not None:
        from ..distributed import RayIndexBuilder

        builder = RayIndexBuilder(ray)
    ctx = Context(ds, k=top_k, with_text=reranking is not None, threads=threads, rebuild=rebuild, dataset_ref=dataset,
                  split=split, index_builder=builder,
                  options={"dense_index": dense_index, "memory_gb": memory_gb, **model.as_options(), **cur.as_options()})
    first = ctx.build(first_spec)
    pipe = first >> reranking if reranking is not None else first
    t1 = time.perf_counter()
    ranking = pipe(ds.queries)
    seconds = time.perf_counter() - t1
    if out.output:
        from ..data.formats import write_trec_run

        # the tag names the whole pipeline (its spaces dropped: TREC's columns are split on them)
        write_trec_run(ranking, out.output, tag="".join(f"{retriever}>>{reranker}".split()) if reranking else retriever)
        log.info("wrote %s (%d queries)", out.output, len(ranking))
    result: dict[str, Any] = {"dataset": ds.name, "pipeline": pipe.name,
                              "cost": {"seconds": round(seconds, 3), "load_seconds": round(load_s, 3),
                                       "queries": len(ds.queries), "peak_rss_mb": peak_rss_mb()}}
    from ..types import ScorerSearch, leaves

    searchers = [s for s in leaves(first) if isinstance(s, ScorerSearch)]
    if searchers:  # a first stage that searches with a scorer (cur:SCORER)
        calls = sum(s.calls for s in searchers)
        result["cost"]["first_stage_scorer_calls"] = calls
        click.echo(f"first stage: {calls} scorer calls ({calls / max(1, len(ds.queries)):.1f} a query)")
    if reranking is not None:
        c = reranking.cost
        result["cost"]["rerank"] = c.as_dict()
        click.echo(f"reranker: {c.calls} {c.unit} through the model ({c.tokens} tokens, {c.batches} batches, "
                   f"{c.cached} from cache) in {c.seconds:.2f}s")
        if callable(getattr(c, "summary", None)):  # full ranking: what sliding windows would have cost
            click.echo(c.summary())
    if ds.qrels is not None:
        from ..evaluate import evaluate

        source = "--rel" if data.rel is not None else "the config" if rel is not None else ds.rel_source
        ev = evaluate(ranking, ds.qrels, names, rel if rel is not None else ds.rel)
        result["metrics"] = ev.metrics
        result["relevance_threshold"] = ev.rel
        result["relevance_threshold_source"] = source
        click.echo(ev.table(f"{ds.name} {pipe.name}"))
        click.echo(threshold_line(ev.rel, source))
    else:
        log.warning("%s has no qrels: nothing to evaluate", ds.name)
    click.echo(f"{len(ds.queries)} queries in {seconds:.2f}s (dataset loaded in {load_s:.2f}s)")
    problems = check_expected(cfg, result.get("metrics", {})) if cfg.get("expected") else []
    if cfg.get("expected"):
        result["expected"] = cfg["expected"]
        result["reproduced"] = not problems
    if out.metrics_json:
        from ..env import atomic_write

        with atomic_write(out.metrics_json) as f:
            json.dump(result, f, indent=2)
    if problems:
        click.echo(f"{config}: not reproduced\n  " + "\n  ".join(problems), err=True)
    elif cfg.get("expected"):
        click.echo(f"{config}: expected scores reproduced")
    return result


@click.command("eval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@dataset_options
@click.option("--per-query", is_flag=True, help="Also print every query's scores.")
@click.option("--metrics-json", type=click.Path(dir_okay=False), help="Write the metrics (and comparisons) here as JSON.")
@friendly
def eval_(runs: tuple[str, ...], per_query: bool, metrics_json: str | None, **kw: Any) -> None:
    """Evaluate runs (TREC run files or candidate JSON/JSONL). With several runs, the first is the
    baseline of a paired t-test and randomization test."""
    from ..data.formats import read_run
    from ..evaluate import compare, evaluate, format_comparison, format_per_query, format_table

    data = take(DatasetArgs, kw)
    setup_logging(data.quiet)
    if not data.dataset:
        raise RerankError("rerank eval needs --dataset (whose qrels judge the runs)")
    names = metric_list(data.metrics)
    check_writable(metrics_json)
    ds = load(data.dataset, data.split or "test", data.qrels, data.encoding_errors, data.read())
    judgments = ds.require_qrels()
    threshold = data.rel if data.rel is not None else ds.rel
    source = "--rel" if data.rel is not None else ds.rel_source
    evals = {}
    for path in runs:
        evals[path] = evaluate(read_run(path, data.encoding_errors), judgments, names, threshold)
        if evals[path].missing:
            log.warning("%s: %d judged queries have no results (scored 0)", path, len(evals[path].missing))
    click.echo(format_table([(Path(p).name, e.metrics) for p, e in evals.items()], names))
    click.echo(threshold_line(threshold, source))
    out: dict[str, Any] = {"dataset": ds.name, "relevance_threshold": threshold, "relevance_threshold_source": source,
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
        from ..env import atomic_write

        with atomic_write(metrics_json) as f:
            json.dump(out, f, indent=2)


@click.command()
@click.option("--retriever", "-r", default="bm25", show_default=True,
              help="bm25, bm25:lucene, bm25:disk, dense:MODEL, hybrid:A+B, or cur:SCORER (the anchor score matrix)")
@click.option("--dataset", "-d", required=True, help="Alias, ir_datasets id, or path.")
@click.option("--split", default="test", show_default=True)
@click.option("--dense-index", type=click.Choice(["flat", "ivf", "hnsw", "mmap", "ivfpq"]),
              help="FAISS index of a dense retriever [default: flat].")
@model_options
@click.option("--threads", default=0, type=int, help="Indexing threads (0: all cores).")
@click.option("--rebuild", is_flag=True, help="Rebuild even if a current index exists.")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@click.option("--bm25-memory-gb", type=click.FloatRange(min=0, min_open=True), help=BM25_MEMORY_HELP)
@click.option("--anchors-from", help="cur:SCORER: anchor queries: a split of the dataset or a queries file (TSV/JSONL) [default: "
                                     "train].")
@ray_options
@friendly
def index(retriever: str, dataset: str, split: str, dense_index: str | None, threads: int, rebuild: bool, encoding_errors: str,
          anchors_from: str | None, bm25_memory_gb: float | None, **kw: Any) -> None:
    """Build (or check) the indexes a retriever needs, under indexes/."""
    from ..types import Indexed, leaves

    setup_logging(False)
    model, ray = take(ModelArgs, kw), take(RayArgs, kw).resolve()
    spec = parse(retriever, RETRIEVER, "--retriever")
    indexable = [
        k for k, cls in registry().items() if cls.role == RETRIEVER and (hasattr(cls, "index") or cls.spec_parts == "stages")
    ]
    if spec.kind not in indexable:
        raise RerankError(f"nothing to index for --retriever {retriever!r}; indexable: {', '.join(usage(k) for k in indexable)}")
    ds = load(dataset, split, None, encoding_errors)
    if ds.docs is None or not ds.docs.complete:
        raise RerankError(f"{ds.name} has no full corpus here to index")
    builder = None
    if ray is not None:
        from ..distributed import RayIndexBuilder

        builder = RayIndexBuilder(ray)
    ctx = Context(ds, k=1000, threads=threads, rebuild=rebuild, dataset_ref=dataset, split=split, index_builder=builder,
                  options={"dense_index": dense_index, **model.as_options(), "anchors_from": anchors_from,
                           "memory_gb": bm25_memory_gb})
    for part in leaves(ctx.build(spec)):
        if isinstance(part, Indexed):
            t0 = time.perf_counter()
            path = part.index()
            click.echo(f"{part.name}: {path} ({len(ds.docs)} documents, {time.perf_counter() - t0:.1f}s)")


@click.command()
@click.argument("configs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--metrics-json", type=click.Path(dir_okay=False), help="Write every config's result here as JSON.")
@friendly
def reproduce(configs: tuple[str, ...], metrics_json: str | None) -> None:
    """Run configs (default: every configs/*.yaml) and report which reproduce their expected scores.
    Exits 1 when any does not."""
    setup_logging(True)
    paths = list(configs) or sorted(str(p) for p in Path("configs").glob("*.yaml"))
    if not paths:
        raise RerankError("no configs given and none in ./configs")
    check_writable(metrics_json)
    results: dict[str, Any] = {}
    failed = []
    for path in paths:
        cfg = read_config(path)
        click.echo(f"== {path}")
        missing = _missing_model(cfg) if cfg.get("reproduce") == "hub" else None
        if missing:
            click.echo(f"skipped: needs {missing} from the Hugging Face hub (not here, and the hub is not reachable)")
            results[path] = {"reproduced": None, "skipped": f"needs {missing}"}
            continue
        t0 = time.perf_counter()
        res = run_pipeline(cfg, path, retriever=cfg.get("retriever"), data=DatasetArgs(quiet=True), model=ModelArgs(),
                           cur=CurArgs(), second=RerankArgs(), out=OutputArgs(), ray_args=RayArgs(),
                           top_k=int(cfg.get("top_k", 100)), dense_index=cfg.get("dense_index"), threads=0, rebuild=False)
        ok = res.get("reproduced", True)
        if not ok:
            failed.append(path)
        results[path] = {"reproduced": ok, "metrics": res.get("metrics"), "seconds": round(time.perf_counter() - t0, 1)}
    skipped = sum(1 for r in results.values() if r.get("skipped"))
    ran = len(paths) - skipped
    click.echo(f"{ran - len(failed)} of {ran} configs reproduced" + (f"; not: {', '.join(failed)}" if failed else "")
               + (f"; {skipped} skipped (they need the hub)" if skipped else ""))
    if metrics_json:
        from ..env import atomic_write

        with atomic_write(metrics_json) as f:
            json.dump(results, f, indent=2)
    if failed:
        sys.exit(1)


def _missing_model(cfg: dict[str, Any]) -> str | None:
    """The model a hub config's reranker names, when it cannot be had here (else None)."""
    from ..errors import ModelNotFound
    from ..models.loading import resolve_model

    spec = parse(cfg.get("reranker", ""), RERANKER, "reranker")
    model = spec.cls.spec_model(spec.arg, {}) if hasattr(spec.cls, "spec_model") else spec.arg
    try:
        resolve_model(model)
    except ModelNotFound:
        return model
    return None


#: a spec option -> the `rerank run` parameter that sets it, where the names differ
SPEC_FLAGS = {**CUR_PARAMS, "depth": "rerank_depth", "block": "block_queries", "cache": "score_cache"}


def spec_flag(option: str) -> str | None:
    """The `rerank run` flag that sets a spec option (``depth`` -> ``--rerank-depth``), None when none does."""
    name = SPEC_FLAGS.get(option, option)
    found = next((p for p in run.params if p.name == name), None)
    return max(found.opts, key=len) if found is not None else None


@click.command()
def kinds() -> None:
    """List the retriever and reranker kinds a spec can name, with the flags they take."""
    for role in (RETRIEVER, RERANKER):
        click.echo(f"{role}s:")
        for k in kinds_of(role):
            cls = registry()[k]
            click.echo(f"  {usage(k)}\n      {cls.spec_help}")
            flags = [f for o in cls.spec_options if (f := spec_flag(o))]
            python = [o for o in cls.spec_options if not spec_flag(o)]
            if flags:
                click.echo(f"      flags: {' '.join(flags)}")
            if python:
                click.echo(f"      in Python only: {', '.join(f'{o}=' for o in python)}")


@click.group(invoke_without_command=True)
@click.pass_context
def datasets(ctx: click.Context) -> None:
    """List the dataset aliases (any ir_datasets id or local path works too); `inspect PATH` shows
    what a collection folder holds."""
    if ctx.invoked_subcommand is not None:
        return
    from ..data import list_datasets

    for name, where, desc in list_datasets():
        click.echo(f"{name:<12} {desc}\n{'':<12} {where}")
    click.echo("\nAlso: any ir_datasets id, a BEIR folder, a folder of TREC topics/qrels/candidate files, "
               "or a candidate file.\nLocal data mirror: $RERANK_SHARED_DATA (default ../shared/data).")


@datasets.command("inspect")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@read_options()
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@friendly
def datasets_inspect(path: str, encoding_errors: str, **kw: Any) -> None:
    """What a collection folder holds: its files, their formats, counts, fields and a sample."""
    from ..data.collections import describe_layout, layout

    read = DatasetArgs(**kw).read()
    splits = sorted(p.stem for p in (Path(path) / "qrels").glob("*.tsv"))
    if (Path(path) / "corpus.jsonl").is_file() and splits:
        click.echo(f"a BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv for the splits {', '.join(splits)}")
    click.echo(describe_layout(layout(path, read.doc_format, read.topic_format), read.fields, read.topic_field,
                               encoding_errors))
