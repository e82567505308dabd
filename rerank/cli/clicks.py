"""rerank clicks simulate | stats | propensity | fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import RerankError
from ..specs import RETRIEVER, help_text, stage
from .common import check_writable, friendly, load, setup_logging

FITTED_MODELS = ("pbm", "cm", "ubm", "dcm", "sdbn", "dbn")  # rerank.ultr.click_models.FITTED (not imported: numpy at startup)


@click.group()
def clicks() -> None:
    """Click logs: simulate them, summarise them, fit click models, estimate position bias (train on them: rerank
    train --clicks)."""


@clicks.command("simulate")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False),
              help="Labelled LETOR file to simulate on (documents are named by their row in the query).")
@click.option("--dataset", "-d", help="Or a dataset with qrels: the logging ranker is --retriever, labels from the qrels.")
@click.option("--split", default="train", show_default=True)
@click.option(
    "--retriever", "-r", default="bm25", show_default=True, help="Logging ranker for --dataset: " + help_text(RETRIEVER)
)
@click.option("--model", "click_model", default="pbm", show_default=True,
              help="Click model: pbm, cascade, ubm (ULTRA's parameters), an ULTRA ClickModel JSON file, or the parameters "
                   "'clicks fit' wrote (fitted pairs keep their attractiveness, others click by label).")
@click.option("--eta", type=float, help="Severity of position bias for named models: θ^eta [default: 1].")
@click.option("--sessions", default=100_000, type=click.IntRange(min=1), show_default=True)
@click.option("--top", default=10, type=click.IntRange(min=1), show_default=True, help="Results shown per session.")
@click.option("--logging-ranker", type=click.Path(exists=True, file_okay=False),
              help="A trained feature ranker folder to log with (--features); default: one trained on --logging-fraction of the "
                   "labels.")
@click.option("--logging-fraction", default=0.01, type=click.FloatRange(0, 1, min_open=True), show_default=True)
@click.option("--logging", "logging_spec",
              help="Several logging rankers sharing the sessions (--dataset): RANKER:SHARE,... with retriever specs, e.g. "
                   "'bm25:0.4,dense:MODEL:0.3,hybrid:bm25+dense:MODEL:0.3' (shares are normalised; replaces --retriever).")
@click.option("--temperature", type=click.FloatRange(0, min_open=True),
              help="Stochastic logging: each session shows a Plackett-Luce sample from softmax(z / T) over the ranker's "
                   "top --pool, z its scores standardised within the query [default: its top --top as ranked].")
@click.option("--pool", type=click.IntRange(min=1), help="Candidates a stochastic ranker samples from [default: 2 x --top].")
@click.option("--randpair", default=0.0, type=click.FloatRange(0, 1), show_default=True,
              help="Fraction of sessions with one adjacent pair of the shown list swapped (RandPair).")
@click.option("--randomize", is_flag=True, help="Show each session's list in a uniformly random order (for propensity "
                                                "estimation).")
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Click log to write (.jsonl, or .jsonl.gz).")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@friendly
def clicks_simulate(
    features_path: str | None,
    dataset: str | None,
    split: str,
    retriever: str,
    click_model: str,
    eta: float | None,
    sessions: int,
    top: int,
    logging_ranker: str | None,
    logging_fraction: float,
    logging_spec: str | None,
    temperature: float | None,
    pool: int | None,
    randpair: float,
    randomize: bool,
    seed: int,
    output: str,
    encoding_errors: str,
) -> None:
    """Simulate a click log over labelled data with a click model, seeded. Each session records the
    logging policy that showed it when there are several (--logging, --randpair)."""
    import tempfile

    from ..ultr.log import write_click_log
    from ..ultr.simulate import LoggingPolicy, letor_lists, load_click_model, run_lists, simulate

    setup_logging(False)
    check_writable(output)
    model = load_click_model(click_model, eta=eta)
    depth = top if temperature is None else pool or 2 * top
    if logging_spec and not dataset:
        raise click.UsageError("--logging takes retrievers of a --dataset")
    if features_path:
        from ..train.features import FeatureRanker, read_letor
        from ..ultr.learn import train_logging_ranker

        data = read_letor(features_path)
        if logging_ranker:
            ranker = FeatureRanker.load(logging_ranker)
        else:
            click.echo(f"training the logging ranker (a feature MLP on {logging_fraction:.0%} of the queries' labels; "
                       f"--logging-ranker FOLDER uses a trained one):")
            with tempfile.TemporaryDirectory() as tmp:
                ranker = train_logging_ranker(data, tmp, fraction=logging_fraction, seed=seed)
        policies = [LoggingPolicy("feature-mlp", letor_lists(data, ranker.predict(data), depth), 1.0, temperature)]
    elif dataset:
        ds = load(dataset, split, None, encoding_errors)
        qrels = ds.require_qrels()
        policies = []
        for spec, share in parse_logging(logging_spec) if logging_spec else [(retriever, 1.0)]:
            logger = stage(spec, ds, role=RETRIEVER, k=depth, with_text=False)
            policies.append(LoggingPolicy(spec, run_lists(ds.queries, logger(ds.queries), qrels, depth), share, temperature))
    else:
        raise click.UsageError("give --features FILE or --dataset NAME to simulate on")
    several = len(policies) > 1 or temperature is not None or randpair > 0
    shown = simulate(policies if several else policies[0].lists, model, sessions, seed=seed, randomize=randomize,
                     randpair=randpair, top=top)
    n = write_click_log(shown, output)
    how = ", ".join(f"{p.name} {p.share / sum(q.share for q in policies):.0%}" for p in policies)
    extras = (f", Plackett-Luce T={temperature} over the top {depth}" if temperature is not None else "") + (
        f", {randpair:.0%} RandPair" if randpair else "") + (", randomized" if randomize else "")
    click.echo(f"wrote {n} sessions over {len({s.qid for p in policies for s in p.lists})} queries ({model.name}, top {top}; "
               f"logged by {how}{extras}) to {output}")


def parse_logging(text: str) -> list[tuple[str, float]]:
    """``bm25:0.4,dense:MODEL:0.3`` -> [(spec, share), ...]: a share is the number after an entry's
    last colon (an entry without one takes an equal share of what is left); specs are checked."""
    from ..specs import parse

    entries: list[tuple[str, float | None]] = []
    for part in text.split(","):
        part = part.strip()
        head, colon, tail = part.rpartition(":")
        try:
            share: float | None = float(tail) if colon else None
        except ValueError:
            share = None
        spec = head if share is not None else part
        if not spec:
            raise RerankError(f"--logging {text!r}: an entry has no ranker (give RANKER:SHARE,...)")
        if share is not None and not share > 0:
            raise RerankError(f"--logging {text!r}: the share of {spec!r} must be > 0, got {share}")
        parse(spec, RETRIEVER, "--logging ranker")
        entries.append((spec, share))
    given = sum(s for _, s in entries if s is not None)
    missing = [spec for spec, s in entries if s is None]
    if missing and given >= 1:
        raise RerankError(f"--logging {text!r}: the shares given sum to {given:g}, nothing is left for {missing}")
    rest = (1 - given) / len(missing) if missing else 0.0
    return [(spec, s if s is not None else rest) for spec, s in entries]


@clicks.command("stats")
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@click.option("--list-size", default=10, type=click.IntRange(min=1), show_default=True)
@friendly
def clicks_stats(log: str, list_size: int) -> None:
    """Sessions, shown lists, clicks and click-through rate by rank of a click log."""
    from ..ultr.log import aggregate, iter_sessions

    click.echo(json.dumps(aggregate(iter_sessions(log), list_size, source=log).summary(), indent=1))


@clicks.command("fit")
@click.argument("train_log", type=click.Path(exists=True, dir_okay=False))
@click.option("--test", "test_log", type=click.Path(exists=True, dir_okay=False),
              help="Sessions to evaluate on (those of queries seen in TRAIN_LOG); default: none, fit only.")
@click.option("--model", "model_name", required=True, type=click.Choice(FITTED_MODELS),
              help="pbm, ubm, dbn: EM; cm, dcm, sdbn: maximum likelihood (Chuklin et al., Click Models for Web Search).")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "yandex"]), default="auto", show_default=True)
@click.option("--list-size", default=10, type=click.IntRange(min=1), show_default=True)
@click.option("--iterations", default=200, type=click.IntRange(min=1), show_default=True, help="EM rounds at most.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the parameters as JSON (clicks simulate --model FILE reads it).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the test measures as JSON.")
@friendly
def clicks_fit(train_log: str, test_log: str | None, model_name: str, fmt: str, list_size: int, iterations: int,
               output: str | None, report: str | None) -> None:
    """Fit a classic click model on a log; with --test, print its test log-likelihood and perplexity
    beside the click-through-rate baselines (global, rank, document)."""
    from ..env import atomic_write
    from ..ultr.click_models import BASELINES, fit_click_model, fold_sessions
    from ..ultr.log import iter_sessions

    check_writable(output, report)
    train = fold_sessions(iter_sessions(train_log, fmt), list_size)
    model = fit_click_model(model_name, train, iterations=iterations)
    click.echo(f"{model_name}: fitted on {train.sessions:,} sessions ({len(train.queries):,} queries, "
               f"{len(train.keys):,} query-document pairs)" + (f", {model.iterations} EM rounds" if model.iterations else ""))
    if model_name == "pbm":
        click.echo("θ by rank: " + " ".join(f"{v:.3f}" for v in model.rank)
                   + "   θ/θ1: " + " ".join(f"{v / model.rank[0]:.3f}" for v in model.rank))
    if output:
        with atomic_write(output) as f:
            json.dump(model.to_json(source=train_log), f)
        click.echo(f"parameters: {output}")
    if test_log:
        test = fold_sessions(iter_sessions(test_log, fmt), list_size, keys=train.keys, queries=train.queries)
        results = {name: fit_click_model(name, train).evaluate(test) for name in BASELINES}
        results[model_name] = model.evaluate(test)
        click.echo(f"test: {test.sessions:,} sessions of queries seen in training; {test.unseen_shown:,} results show "
                   "a pair training never showed (attractiveness 0.5)")
        click.echo(f"{'model':<6} {'log-lik.':>9} {'perplexity':>10}  by rank")
        for name, r in results.items():
            click.echo(f"{name:<6} {r['log_likelihood']:>9.4f} {r['perplexity']:>10.4f}  "
                       + " ".join(f"{v:.3f}" for v in r["perplexity_by_rank"]))
        if report:
            with atomic_write(report) as f:
                json.dump(results, f, indent=1)


@clicks.command("propensity")
@click.option("--clicks", "log", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--method", type=click.Choice(["dla", "em", "harvest", "randomization"]), default="dla", show_default=True,
              help="dla: learnt jointly with a ranker (any log); em: a position-based click model fitted by EM; "
                   "harvest: intervention harvesting (documents shown at several ranks); randomization: click rates "
                   "of a log shown in random order. em and harvest need result variation and say when the log has none.")
@click.option("--bootstrap", "rounds", default=100, type=click.IntRange(min=1), show_default=True,
              help="em, harvest: resamplings of the queries for the 95% band.")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False),
              help="DLA's ranker: a feature MLP over these LETOR rows (default: one score per query-document pair).")
@click.option("--list-size", default=10, type=click.IntRange(min=1), show_default=True)
@click.option("--epochs", default=100, type=click.IntRange(min=1), show_default=True)
@click.option(
    "--lr",
    default=0.05,
    type=click.FloatRange(min=0, min_open=True),
    show_default=True,
    help="Ranker learning rate (table ranker; 1e-3 suits --features).",
)
@click.option("--propensity-lr", default=0.05, type=click.FloatRange(min=0, min_open=True), show_default=True)
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--truth", help="Compare with a position-based click model's θ: pbm or an ULTRA PBM JSON.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the estimate as JSON here.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Plot the estimate to this PNG (needs matplotlib).")
@friendly
def clicks_propensity(
    log: str,
    method: str,
    features_path: str | None,
    list_size: int,
    epochs: int,
    lr: float,
    propensity_lr: float,
    seed: int,
    rounds: int,
    truth: str | None,
    output: str | None,
    plot: str | None,
) -> None:
    """Estimate the examination propensity of each rank, relative to rank 1."""
    import tempfile

    import numpy as np

    from ..ultr.learn import pbm_em_propensities, propensity_error, randomization_propensities
    from ..ultr.log import aggregate, fold_ranks, iter_sessions

    setup_logging(False)
    check_writable(output, plot)
    se: list[float] | None = None
    band: tuple[Any, Any] | None = None
    stats: Any
    if method in ("randomization", "em", "harvest"):  # counts per rank and per (query, document, rank), as the log streams
        stats = fold_ranks(iter_sessions(log), list_size, source=log)
        if method == "randomization":
            est, err = randomization_propensities(stats)
            estimate, se = est.tolist(), err.tolist()
        else:
            from ..ultr.harvest import bootstrap, harvest_propensities
            from ..ultr.learn import log_propensities

            est, cells = log_propensities(stats, method, log)
            band = bootstrap(cells, harvest_propensities if method == "harvest" else pbm_em_propensities, rounds, seed)
            estimate = [None if not np.isfinite(v) else float(v) for v in est]
    else:
        stats = aggregate(iter_sessions(log), list_size, source=log)
        import torch

        from ..train.trainer import TrainConfig
        from ..ultr.learn import FeatureScorer, TableScorer, train_from_clicks

        torch.set_num_threads(1)
        scorer: Any = TableScorer(stats.groups)
        if features_path:
            from ..train.features import read_letor

            scorer = FeatureScorer(read_letor(features_path), stats.groups)
        cfg = TrainConfig(loss="softmax", epochs=epochs, batch_size=16, lr=lr, warmup=0.0, weight_decay=0.0, seed=seed,
                          precision="fp32", checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as tmp:
            estimate = train_from_clicks(stats, scorer, tmp, cfg, algorithm="dla", propensity_lr=propensity_lr)["propensity"]
    result: dict[str, Any] = {"log": log, "method": method, "sessions": stats.sessions, "propensity": estimate}
    if se is not None:
        result["stderr"] = se
    if band is not None:
        result["band_95"] = [[None if not np.isfinite(a) else round(float(a), 6), None if not np.isfinite(b) else
                              round(float(b), 6)] for a, b in zip(*band, strict=True)]
        result["bootstrap_rounds"] = rounds
    click.echo("rank  θ/θ1" + ("   ±se" if se else "") + ("   95% band (bootstrap over queries)" if band else "")
               + ("   truth" if truth else ""))
    true_rel = None
    if truth:
        from ..ultr.simulate import load_click_model, position_propensities

        t = position_propensities(load_click_model(truth), len(estimate))
        true_rel = [v / t[0] for v in t]
        result["truth"] = true_rel
        if None not in estimate:
            result["error"] = propensity_error(estimate, true_rel)
    for i, v in enumerate(estimate):
        interval = ""
        if band is not None:
            lo, hi = band[0][i], band[1][i]
            interval = f"  {lo:.3f}-{hi:.3f}" if np.isfinite(lo) and np.isfinite(hi) else "  (unstable)"
        click.echo(f"{i + 1:>4}  " + (f"{v:.3f}" if v is not None else "not identified") + (f"  {se[i]:.3f}" if se else "")
                   + interval + (f"  {true_rel[i]:.3f}" if true_rel else ""))
    if None in estimate:
        click.echo("ranks no chain of moved documents links to rank 1 are not identified by this log")
    if "error" in result:
        click.echo(f"max relative error {result['error']['max_relative_error']:.3f}, Pearson r {result['error']['pearson']:.4f}")
    if output:
        from ..env import atomic_write

        with atomic_write(output) as f:
            json.dump(result, f, indent=1)
    if plot:
        shown = [np.nan if v is None else v for v in estimate]
        _plot_propensity(plot, {f"{method} estimate": (shown, se)} | ({"truth": (true_rel, None)} if true_rel else {}),
                         f"{Path(log).name}: {stats.sessions:,} sessions")
        click.echo(f"plot: {plot}")


def _plot_propensity(path: str, curves: dict[str, tuple[Any, Any]], title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RerankError("--plot needs matplotlib: pip install 'rerank[plot]'") from None
    from ..env import atomic_write

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
