"""rerank train | train-ltr | train-labels: rankers from labels (LTR losses, PG-Rank, FIRST, full
ranking) and from clicks; complete listwise labels for full-ranking training."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import click

from ..errors import RerankError
from ..specs import RETRIEVER, stage
from .common import check_writable, friendly, load, options, progress_option, setup_logging, take, verbose_option

log = logging.getLogger("rerank")
NAIVE_BASELINE = "naive-baseline"  # where `train --clicks` keeps the naive learner its result is compared with

if TYPE_CHECKING:
    from ..train.features import LetorData
    from ..train.trainer import TrainConfig


@dataclass(frozen=True)
class TrainArgs:
    """Loss, schedule, seed and output, shared by `rerank train` and `rerank train-ltr`."""

    output: str
    loss: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    accumulate: int = 1
    lr: float | None = None
    seed: int = 0
    checkpoint_every: int = 100
    overwrite: bool = False
    verbose: bool = False

    def config(self, precision: str = "auto", *, defaults: tuple[str, int, int, float] = ("listnet", 1, 4, 5e-5),
               **extra: Any) -> TrainConfig:
        """A TrainConfig; ``defaults``: (loss, epochs, batch size, lr) of this kind of training."""
        from ..train.trainer import TrainConfig

        d_loss, d_epochs, d_batch, d_lr = defaults
        return TrainConfig(loss=self.loss or d_loss, epochs=self.epochs or d_epochs, batch_size=self.batch_size or d_batch,
                           accumulate=self.accumulate, lr=self.lr or d_lr, seed=self.seed,
                           checkpoint_every=self.checkpoint_every, precision=precision, **extra)


train_options = options(
    click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the model and its "
                                                                                         "checkpoint."),
    click.option("--loss", help="bce, mse, ranknet, ranknet-weighted, hinge, lambdarank, ndcg1, ndcg2, lambdaloss "
                                "(NDCG-Loss2++), "
                 "listnet, listmle, approxndcg, neuralndcg, softmax [default: listnet; softmax with --clicks]."),
    click.option("--epochs", type=click.IntRange(min=1), help="[default: 1; 100 with --clicks; 60 for train-ltr]"),
    click.option("--batch-size", type=click.IntRange(min=1), help="Lists per micro-batch [default: 4; 16 with --clicks and "
                                                                  "train-ltr]."),
    click.option("--accumulate", default=1, type=click.IntRange(min=1), show_default=True, help="Micro-batches per optimiser "
                                                                                                "step."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="[default: 5e-5 for cross-encoders; 1e-3 for feature "
                                                                           "MLPs]"),
    click.option("--seed", default=0, type=int, show_default=True),
    click.option("--checkpoint-every", default=100, type=click.IntRange(min=1), show_default=True, help="Steps between "
                                                                                                        "checkpoints."),
    click.option("--overwrite", is_flag=True, help="Train again into an output folder that holds a finished run."),
    verbose_option,
    progress_option,
)


@dataclass(frozen=True)
class FeatureArgs:
    """Feature-MLP training (`rerank train-ltr`, `rerank train --clicks --features`)."""

    valid: str | None = None
    dev_fraction: float = 0.2
    test_path: str | None = None
    hidden: str = "256,128"
    dropout: float = 0.1
    threads: int = 1

    def widths(self) -> list[int]:
        try:
            return [int(w) for w in self.hidden.split(",") if w.strip()]
        except ValueError:
            raise RerankError(f"--hidden takes comma-separated widths, e.g. 256,128; got {self.hidden!r}") from None

    def split(self, data: LetorData, seed: int) -> tuple[LetorData, LetorData | None]:
        """(training data, dev data): --valid, else --dev-fraction of the training queries."""
        from ..train.features import read_letor, split_queries

        if self.valid:
            return data, read_letor(self.valid, num_features=data.num_features)
        if self.dev_fraction > 0:
            return split_queries(data, self.dev_fraction, seed)
        return data, None

    def report_test(self, output: str, num_features: int) -> None:
        if self.test_path:
            from ..train.features import FeatureRanker, letor_ndcg, read_letor

            test = read_letor(self.test_path, num_features=num_features)
            click.echo(f"test nDCG@10 {letor_ndcg(test, FeatureRanker.load(output).predict(test))['nDCG@10']:.4f} "
                       f"({len(test.qrels())} queries with a relevant document)")


feature_options = options(
    click.option("--valid", type=click.Path(exists=True, dir_okay=False), help="Labelled dev data (default: --dev-fraction of "
                                                                               "the training queries)."),
    click.option("--dev-fraction", default=0.2, type=click.FloatRange(0, 1, max_open=True), show_default=True),
    click.option("--test", "test_path", type=click.Path(exists=True, dir_okay=False), help="Report nDCG@10 on this labelled file "
                                                                                           "after training."),
    click.option("--hidden", default="256,128", show_default=True, help="MLP hidden layer widths."),
    click.option("--dropout", default=0.1, type=click.FloatRange(0, 1, max_open=True), show_default=True),
    click.option("--threads", default=1, type=click.IntRange(min=1), show_default=True, help="torch threads (small MLPs: 1 is "
                                                                                             "fastest)."),
)


@dataclass(frozen=True)
class TextArgs:
    """Text rankers: the model, the dataset and how lists are built."""

    model: str | None = None
    dataset: str | None = None
    split: str = "train"
    negatives: str = "bm25:30"
    group_size: int = 8
    positives: int = 1
    max_length: int = 256
    dev_queries: int = 50
    device: str = "auto"
    precision: str = "auto"
    encoding_errors: str = "strict"
    allow_new_head: bool = False

    @property
    def new_head(self) -> bool | None:
        """load_model's allow_new_head: True when asked, else its default (bodies only)."""
        return True if self.allow_new_head else None


@dataclass(frozen=True)
class ObjectiveArgs:
    encoder: str = "cross"
    objective: str = "listwise"
    first_lambda: float = 10.0
    window: int = 20
    labels: str | None = None
    lora: int | None = None
    shuffle: bool = False
    pg_samples: int = 8
    pg_k: int = 10
    pg_temperature: float = 1.0


@dataclass(frozen=True)
class RLArgs:
    """GRPO objectives (prorank, rank-r1)."""

    stages: str = "both"
    steps: int = 100
    group: int = 8
    beta: float = 0.0
    clip_eps: float = 0.2
    max_new_tokens: int | None = None
    temperature: float = 1.0
    inner_updates: int = 1
    train_queries: int | None = None
    set_size: int = 4
    template: str | None = None

    def grpo(self, max_new_tokens: int) -> Any:
        from ..train.grpo import GRPOConfig

        return GRPOConfig(group=self.group, max_new_tokens=self.max_new_tokens or max_new_tokens,
                          temperature=self.temperature, clip_eps=self.clip_eps, beta=self.beta,
                          inner_updates=self.inner_updates)


@dataclass(frozen=True)
class ClickArgs:
    """Learning from a click log."""

    clicks: str | None = None
    algorithm: str = "dla"
    features_path: str | None = None
    propensities: str | None = None
    list_size: int = 10
    max_weight: float | None = None
    propensity_lr: float = 0.05
    ranker_first: float = 0.5
    dla_start: str = "flat"
    dla_anchor: float = 0.0
    browsing: str = "position"
    baseline: bool = True


def report(result: dict[str, Any], output: str) -> None:
    history = result["history"]
    if len(history) > 12:  # long runs: a dozen epochs evenly, the last and the saved one
        keep = {round(i * (len(history) - 1) / 10) for i in range(11)} | {result["saved_epoch"]}
        history = [h for h in history if h["epoch"] in keep]
    for h in history:
        metrics = " ".join(f"{k} {v:.4f}" for k, v in h.items() if k not in ("epoch", "step"))
        click.echo(f"epoch {h['epoch']} (step {h['step']}): {metrics}")
    click.echo(f"saved epoch {result['saved_epoch']} to {output}")


@click.command()
@click.option("--model", "-m", help="Encoder body or cross-encoder: HF id, path or offline model name.")
@click.option("--dataset", "-d", help="Dataset with training queries and qrels (alias, ir_datasets id or path).")
@click.option("--split", default="train", show_default=True)
@click.option("--negatives", default="bm25:30", show_default=True, help="RETRIEVER:DEPTH mining hard negatives (any "
                                                                        "--retriever).")
@click.option("--group-size", default=8, type=click.IntRange(min=2), show_default=True, help="Items per list: positives + "
                                                                                             "negatives.")
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
@click.option(
    "--objective",
    type=click.Choice(["listwise", "pgrank", "contrastive", "first", "full-rank", "prorank", "rank-r1"]),
    default="listwise",
    show_default=True,
    help="listwise: the --loss; pgrank: policy gradient on sampled rankings (PG-Rank, utility nDCG@--pg-k); "
    "contrastive: softmax cross-entropy of the positives against the list (InfoNCE); first: fine-tune a "
    "causal LM (-m) as a FIRST listwise reranker on windows of --negatives (LM loss + --first-lambda x RankNet); "
    "full-rank: fine-tune a causal LM to write the whole permutation of --negatives in one answer (--loss lm or "
    "importance; complete labels from --labels or the qrels); prorank: a causal LM (-m) as an llm-pointwise judge in "
    "two --stages (GRPO on the yes/no prompt with a correctness + format reward, then the yes-no logit trained "
    "listwise, --loss); rank-r1: GRPO on setwise prompts (a relevant passage among --set-size, reward for the "
    "<think>/<answer> format and the right choice).",
)
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="full-rank: complete listwise labels (JSON lines of `rerank train-labels`) [default: qrels grades, "
                   "first-stage order within a grade].")
@click.option("--first-lambda", default=10.0, type=click.FloatRange(min=0), show_default=True,
              help="FIRST: weight of the weighted RankNet on the first-identifier logits (0: LM loss only).")
@click.option("--window", default=20, type=click.IntRange(2, 26), show_default=True, help="FIRST: passages per training window.")
@click.option("--shuffle", is_flag=True,
              help="FIRST, full-rank: show each list's passages in a new order every epoch (the label moves with them), "
                   "so the model cannot learn to copy the first-stage order [default: first-stage order].")
@click.option("--lora", type=click.IntRange(min=1), help="FIRST, full-rank: train LoRA adapters of this rank (peft, extra "
                                                         "`lora`) instead of all weights; prorank, rank-r1: the adapters' "
                                                         "rank [default: 16].")
@click.option("--pg-samples", default=8, type=click.IntRange(min=2), show_default=True, help="PG-Rank: rankings sampled per "
                                                                                             "list.")
@click.option("--pg-k", default=10, type=click.IntRange(min=1), show_default=True, help="PG-Rank: sampled prefix length and nDCG "
                                                                                        "cutoff.")
@click.option("--pg-temperature", default=1.0, type=click.FloatRange(min=0, min_open=True), show_default=True,
              help="PG-Rank: policy temperature over the scores.")
@click.option("--stages", type=click.Choice(["1", "2", "both"]), default="both", show_default=True,
              help="prorank: 1 (GRPO prompt warm-up), 2 (score learning on the yes/no logit), or both (stage 1 into "
                   "OUTPUT/stage1).")
@click.option("--steps", default=100, type=click.IntRange(min=1), show_default=True,
              help="prorank, rank-r1: optimiser steps (per stage) of --batch-size x --accumulate prompts or lists.")
@click.option("--group", default=8, type=click.IntRange(min=2), show_default=True,
              help="GRPO (prorank, rank-r1): completions sampled per prompt (G).")
@click.option("--beta", default=0.0, type=click.FloatRange(min=0), show_default=True,
              help="GRPO: weight of the KL to the starting model (k3 estimator; 0: none).")
@click.option("--clip-eps", default=0.2, type=click.FloatRange(0, 1, max_open=True), show_default=True,
              help="GRPO: clipping of the policy ratio to [1 - eps, 1 + eps].")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="GRPO: tokens sampled per completion [default: 8 for "
                                                                   "prorank, 256 for rank-r1].")
@click.option("--temperature", default=1.0, type=click.FloatRange(min=0, min_open=True), show_default=True,
              help="GRPO: sampling temperature.")
@click.option("--inner-updates", default=1, type=click.IntRange(min=1), show_default=True,
              help="GRPO: optimiser steps on each sampled batch (1: on-policy, the ratio is 1).")
@click.option("--train-queries", type=click.IntRange(min=1), help="prorank, rank-r1: use the first N judged queries "
                                                                  "[default: all].")
@click.option("--set-size", default=4, type=click.IntRange(2, 20), show_default=True,
              help="rank-r1: candidates per setwise prompt (one relevant, the rest first-stage negatives).")
@click.option("--template", help="prorank: the llm-pointwise prompt template to train on [default: the model's, else yes-no].")
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
@click.option("--ranker-first", default=0.5, type=click.FloatRange(min=0), show_default=True,
              help="DLA: epochs in which the ranker learns from the clicks alone before the propensity model starts "
                   "(0: both from the start, as in the DLA paper).")
@click.option("--dla-start", type=click.Choice(["flat", "harvest", "em"]), default="flat", show_default=True,
              help="DLA: the propensities it starts from: flat, or estimated from the log itself by intervention "
                   "harvesting or PBM EM (needs documents shown at several ranks: several logging rankers, --randpair).")
@click.option("--dla-anchor", default=0.0, type=click.FloatRange(min=0), show_default=True,
              help="DLA with --dla-start harvest|em: strength of a pull of θ̂ back toward the log's estimate "
                   "(λ Σ (log θ̂_r/θ̂_1 - log θ⁰_r/θ⁰_1)²; 0: the start only).")
@click.option("--browsing", type=click.Choice(["position", "cascade"]), default="position", show_default=True,
              help="How the log's users browse: position (examination independent of clicks, as PBM) or cascade "
                   "(top-down, stopping at a click: each click is compared with the ranks above it only).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="dla/ipw: also train the naive learner on the same clicks into OUTPUT/naive-baseline and warn when "
                   "the result's dev metric is below it (twice the training time).")
@feature_options
@train_options
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@click.option("--allow-new-head", is_flag=True, help="Cross-encoders: train a new ranking head on a model that holds another "
                                                     "kind's head (a causal or masked LM); an encoder body gets one anyway.")
@friendly
def train(**kw: Any) -> None:
    """Train a cross-encoder or bi-encoder over candidate lists (listwise losses, PG-Rank, contrastive),
    or (--clicks) a ranker from a click log; resumes from OUTPUT's checkpoint."""
    from ..models.loading import pick_device

    text, goal, clicks = take(TextArgs, kw), take(ObjectiveArgs, kw), take(ClickArgs, kw)
    features, schedule, rl = take(FeatureArgs, kw), take(TrainArgs, kw), take(RLArgs, kw)
    assert not kw, kw
    setup_logging(False, schedule.verbose)
    check_writable(schedule.output, folder=True)
    device = pick_device(text.device)
    if clicks.clicks:
        _train_clicks(clicks.clicks, clicks, text, features, schedule, device)
        return
    if not text.model or not text.dataset:
        raise click.UsageError("training from labels needs --model and --dataset (or give --clicks LOG)")
    from ..train.biencoder import train_bi_encoder
    from ..train.crossencoder import train_cross_encoder

    loss = schedule.loss
    if goal.labels and goal.objective != "full-rank":
        raise click.UsageError("--labels is for --objective full-rank")
    if goal.shuffle and goal.objective not in ("first", "full-rank"):
        raise click.UsageError("--shuffle is for --objective first or full-rank")
    if goal.objective == "full-rank":
        _train_full_rank(text, goal, schedule, device)
        return
    if goal.objective in ("prorank", "rank-r1"):
        _train_rl(text, goal, rl, schedule, device)
        return
    if goal.objective != "listwise" and loss:
        raise click.UsageError(f"--objective {goal.objective} sets the loss; leave out --loss {loss}")
    loss_options: dict[str, Any] = {}
    if goal.objective == "pgrank":
        loss, loss_options = "pgrank", {"samples": goal.pg_samples, "k": goal.pg_k, "temperature": goal.pg_temperature}
    elif goal.objective == "contrastive":
        loss = "softmax"
    ds = load(text.dataset, text.split, None, text.encoding_errors)
    if goal.objective == "first":
        from ..train.first import train_first

        cfg = schedule.config(text.precision, defaults=("task", 1, 1, 1e-5))
        result = train_first(text.model, ds, schedule.output, cfg, candidates=text.negatives, window=goal.window,
                             lam=goal.first_lambda, lora=goal.lora, shuffle=goal.shuffle, dev_queries=text.dev_queries,
                             device=device, overwrite=schedule.overwrite)
        report(result, schedule.output)
        click.echo(f"use it: rerank run --reranker first:{schedule.output} ...")
        return
    cfg = schedule.config(text.precision, defaults=(loss or "listnet", 1, 4, 5e-5), loss_options=loss_options)
    if goal.encoder == "bi":
        result = train_bi_encoder(text.model, ds, schedule.output, cfg, negatives=text.negatives, group_size=text.group_size,
                                  positives=text.positives, max_length=text.max_length, dev_queries=text.dev_queries,
                                  device=device, overwrite=schedule.overwrite)
    else:
        result = train_cross_encoder(text.model, ds, schedule.output, cfg, negatives=text.negatives,
                                     group_size=text.group_size, positives=text.positives, max_length=text.max_length,
                                     dev_queries=text.dev_queries, device=device, overwrite=schedule.overwrite,
                                     allow_new_head=text.new_head)
    report(result, schedule.output)
    if goal.objective == "pgrank" and result.get("loss_per_step"):
        utility = [s["mean_utility"] for s in result["loss_per_step"] if "mean_utility" in s]
        if utility:
            tenth = max(1, len(utility) // 10)
            click.echo(f"mean sampled nDCG@{goal.pg_k}: first {tenth} steps {sum(utility[:tenth]) / tenth:.4f}, "
                       f"last {tenth} steps {sum(utility[-tenth:]) / tenth:.4f}")
    kind = "--retriever dense" if goal.encoder == "bi" else "--reranker cross-encoder"
    click.echo(f"use it: rerank run {kind}:{schedule.output} ...")


def _train_full_rank(text: TextArgs, goal: ObjectiveArgs, schedule: TrainArgs, device: str) -> None:
    from ..train.full_ranking import OBJECTIVE_LOSSES, train_full_ranking

    loss = schedule.loss or "importance"
    if loss not in OBJECTIVE_LOSSES:
        raise click.UsageError(f"--objective full-rank takes --loss {' or '.join(OBJECTIVE_LOSSES)}, not {loss!r}")
    ds = load(text.dataset or "", text.split, None, text.encoding_errors)
    cfg = replace(schedule, loss=None).config(text.precision, defaults=("task", 1, 1, 1e-5))  # --loss is the task's
    result = train_full_ranking(text.model or "", ds, schedule.output, cfg, labels=goal.labels, candidates=text.negatives,
                                loss=loss, lora=goal.lora, shuffle=goal.shuffle, dev_queries=text.dev_queries, device=device,
                                overwrite=schedule.overwrite)
    report(result, schedule.output)
    click.echo(f"use it: rerank run --reranker listwise-gen:{schedule.output} --window all ...")


def _train_rl(text: TextArgs, goal: ObjectiveArgs, rl: RLArgs, schedule: TrainArgs, device: str) -> None:
    """--objective prorank | rank-r1: GRPO (rerank.train.grpo) with LoRA adapters (--lora, default 16)."""
    ds = load(text.dataset or "", text.split, None, text.encoding_errors)
    if goal.objective == "prorank":
        from ..train.prorank import summary, train_prorank

        if schedule.loss and rl.stages == "1":
            raise click.UsageError("--loss is stage 2's (the listwise loss of the yes/no score); --stages 1 has none")
        cfg = schedule.config(text.precision, defaults=(schedule.loss or "listnet", 1, 4, 5e-5))
        result = train_prorank(text.model or "", ds, schedule.output, cfg, stages=rl.stages, steps=rl.steps,
                               grpo=rl.grpo(8), negatives=text.negatives, group_size=text.group_size,
                               max_queries=rl.train_queries, dev_queries=text.dev_queries, lora=goal.lora or 16,
                               template=rl.template, device=device, overwrite=schedule.overwrite)
        for line in summary(result):
            click.echo(line)
        click.echo(f"use it: rerank run --reranker llm-pointwise:{schedule.output} ...")
        return
    from ..train.grpo import curve_summary
    from ..train.rank_r1 import train_rank_r1

    if schedule.loss:
        raise click.UsageError(f"--objective rank-r1 is trained by its reward; leave out --loss {schedule.loss}")
    cfg = schedule.config(text.precision, defaults=("task", 1, 4, 5e-5))
    result = train_rank_r1(text.model or "", ds, schedule.output, cfg, steps=rl.steps, grpo=rl.grpo(256),
                           set_size=rl.set_size, negatives=text.negatives, max_queries=rl.train_queries,
                           lora=goal.lora or 16, device=device, overwrite=schedule.overwrite)
    click.echo(f"rank-r1 (GRPO): {curve_summary(result)}")
    click.echo(f"use it: rerank run --reranker rank-r1:{schedule.output} ...")


@click.command("train-labels")
@click.option("--dataset", "-d", required=True, help="Dataset with the queries (alias, ir_datasets id or path).")
@click.option("--split", default="train", show_default=True)
@click.option("--candidates", default="bm25:100", show_default=True, help="RETRIEVER:DEPTH: the lists to label.")
@click.option("--teacher", help="A reranker spec whose ranking of the candidates orders them within a grade (or wholly, "
                                "with --no-qrels), e.g. cross-encoder:MODEL or listwise-gen:MODEL.")
@click.option("--teacher-run", type=click.Path(exists=True, dir_okay=False), help="A run file (TREC) as the teacher.")
@click.option("--qrels/--no-qrels", "use_qrels", default=True, show_default=True,
              help="Order by the judged grade first (queries without a relevant candidate are left out).")
@click.option("--window", help="Teacher listwise rerankers: window (a number, or 'all').")
@click.option("--device", default="auto", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The labels file (JSON lines).")
@click.option("--encoding-errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True)
@verbose_option
@progress_option
@friendly
def train_labels(dataset: str, split: str, candidates: str, teacher: str | None, teacher_run: str | None, use_qrels: bool,
                 window: str | None, device: str, output: str, encoding_errors: str, verbose: bool) -> None:
    """Complete listwise labels for full-ranking training: every candidate of each query ordered by
    its grade, then by a teacher's ranking (a reranker, a run file, or the first stage's order)."""
    from ..data.formats import read_run
    from ..specs import RERANKER
    from ..train.full_ranking import complete_labels, write_labels

    setup_logging(False, verbose)
    if teacher and teacher_run:
        raise click.UsageError("give --teacher or --teacher-run, not both")
    if not use_qrels and not (teacher or teacher_run):
        raise click.UsageError("--no-qrels needs a --teacher or --teacher-run to order the candidates")
    check_writable(output)
    spec, _, depth_s = candidates.rpartition(":")
    if not spec or not depth_s.isdigit() or int(depth_s) < 1:
        raise click.UsageError(f"--candidates takes RETRIEVER:DEPTH (e.g. bm25:100), not {candidates!r}")
    ds = load(dataset, split, None, encoding_errors)
    qrels = ds.require_qrels() if use_qrels else None
    queries = [q for q in ds.queries if qrels is None or q.qid in qrels]
    cands = stage(spec, ds, role=RETRIEVER, k=int(depth_s), with_text=teacher is not None)(queries)
    taught = None
    if teacher_run:
        taught = read_run(teacher_run, encoding_errors)
    elif teacher:
        opts: dict[str, Any] = {"device": device, "depth": int(depth_s)}
        if window:
            opts["window"] = window if not window.isdigit() else int(window)
        taught = stage(teacher, role=RERANKER, **opts)(queries, cands)
    rows = complete_labels(queries, cands, qrels=qrels, teacher=taught, depth=int(depth_s), rel=ds.rel)
    write_labels(output, rows)
    click.echo(f"wrote {len(rows)} complete labels ({rows[0]['source'] if rows else 'none'}) of up to {depth_s} candidates "
               f"to {output} ({len(queries) - len(rows)} queries left out)")
    click.echo(f"train on them: rerank train --objective full-rank --labels {output} --negatives {candidates} ...")


def propensity_spec(spec: str) -> list[float]:
    """θ per rank from a position-based click model or a comma-separated list."""
    from ..ultr.simulate import load_click_model, position_propensities

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


def _dla_start(log: str, clicks: ClickArgs) -> list[float]:
    """DLA's starting θ̂ from the log (``--dla-start harvest|em``); a rank the log does not link to
    rank 1 starts at the nearest linked rank above it."""
    import numpy as np

    from ..ultr.learn import log_propensities
    from ..ultr.log import fold_ranks, iter_sessions

    if clicks.algorithm != "dla":
        raise click.UsageError(f"--dla-start is DLA's; --algorithm {clicks.algorithm} has no propensity model")
    est, _ = log_propensities(fold_ranks(iter_sessions(log), clicks.list_size, source=log), clicks.dla_start, log)
    theta = [float(v) for v in est]
    for r in range(1, len(theta)):
        if not np.isfinite(theta[r]) or theta[r] <= 0:
            theta[r] = theta[r - 1]
    click.echo(f"DLA starts from θ̂ ({clicks.dla_start}): " + ", ".join(f"{v:.3f}" for v in theta))
    return theta


def _train_clicks(log: str, clicks: ClickArgs, text: TextArgs, features: FeatureArgs, schedule: TrainArgs, device: str) -> None:
    import torch

    from ..ultr.learn import FeatureScorer, TextScorer, train_from_clicks
    from ..ultr.log import aggregate, iter_sessions

    if clicks.algorithm == "ipw" and clicks.browsing == "cascade":
        raise click.UsageError("--browsing cascade learns from the ranks each session reached: use --algorithm naive, or "
                               "dla (θ̂: the examination of a reached rank); ipw's weights are for position-based browsing")
    if clicks.algorithm == "ipw" and not clicks.propensities:
        raise click.UsageError("--algorithm ipw needs --propensities")
    theta = propensity_spec(clicks.propensities) if clicks.propensities else None
    start = _dla_start(log, clicks) if clicks.dla_start != "flat" else None
    if clicks.dla_anchor and start is None:
        raise click.UsageError("--dla-anchor pulls θ̂ toward the log's estimate: add --dla-start harvest or em")
    stats = aggregate(iter_sessions(log), clicks.list_size, source=log)
    click.echo(json.dumps(stats.summary()))
    make_scorer: Callable[[], Any]
    if clicks.features_path:
        from ..train.features import read_letor

        torch.set_num_threads(features.threads)
        data = read_letor(clicks.features_path)
        _, dev = features.split(data, schedule.seed)
        if dev is not None and not features.valid:
            _hold_out(stats, set(dev.qids))

        def make_scorer() -> Any:
            return FeatureScorer(data, stats.groups, dev, hidden=features.widths(), dropout=features.dropout)

        cfg = schedule.config("fp32", defaults=("softmax", 100, 16, 1e-3))
    elif text.model and text.dataset:
        from ..train.crossencoder import split_dev

        ds = load(text.dataset, text.split, None, text.encoding_errors)
        qrels = ds.qrels or {}
        _, dev_q = (
            split_dev(ds.queries, qrels, text.dev_queries, schedule.seed) if qrels and text.dev_queries else (ds.queries, [])
        )
        _hold_out(stats, {q.qid for q in dev_q})
        dev_run = stage("bm25", ds, role=RETRIEVER, k=30)(dev_q) if dev_q else None  # dev evaluation: their BM25 top 30

        def make_scorer() -> Any:
            return TextScorer(text.model or "", stats.groups, {q.qid: q.text for q in ds.queries}, ds.docs,
                              max_length=text.max_length, device=device, allow_new_head=text.new_head, seed=schedule.seed,
                              dev=(qrels, dev_q, dev_run, ds.rel) if dev_run is not None else None)

        cfg = schedule.config(text.precision, defaults=("softmax", 1, 4, 5e-5))
    else:
        raise click.UsageError("--clicks needs --features FILE (LETOR rows) or --model and --dataset (texts)")
    scorer = make_scorer()
    where = device if not clicks.features_path else "cpu"
    result = train_from_clicks(stats, scorer, schedule.output, cfg, algorithm=clicks.algorithm, propensities=theta,
                               max_weight=clicks.max_weight, propensity_lr=clicks.propensity_lr,
                               ranker_first=clicks.ranker_first, device=where, propensity_start=start,
                               propensity_anchor=clicks.dla_anchor, browsing=clicks.browsing, overwrite=schedule.overwrite)
    report(result, schedule.output)
    if "propensity" in result:
        _report_propensity(stats, result["propensity"])
    if clicks.baseline and clicks.algorithm != "naive":
        _guard(stats, make_scorer, cfg, clicks.algorithm, result, schedule.output, where, clicks.browsing)
    if clicks.features_path:
        features.report_test(schedule.output, scorer.data.num_features)
    else:
        click.echo(f"use it: rerank run --reranker cross-encoder:{schedule.output} ...")


def _report_propensity(stats: Any, estimate: list[float]) -> None:
    """DLA's propensities beside the click-model-free estimate the log allows (EM on documents it
    shows at several ranks), or a line saying it allows none."""
    from ..ultr.learn import moved_pairs, pbm_em_propensities

    moved = moved_pairs(stats)
    line = "estimated propensity (rank: θ/θ1): " + " ".join(f"{i + 1}:{v:.3f}" for i, v in enumerate(estimate))
    click.echo(line)
    if moved >= 10:
        em = pbm_em_propensities(stats).tolist()
        click.echo(f"click-model-free (EM over {moved} documents shown at several ranks): "
                   + " ".join(f"{i + 1}:{v:.3f}" for i, v in enumerate(em)))
    else:
        click.echo(f"the log shows {moved or 'no'} document{'' if moved == 1 else 's'} at more than one rank: no click-model-"
                   f"free estimate to check these against (only the ranker separates position from relevance here)")


def _guard(stats: Any, make_scorer: Callable[[], Any], cfg: Any, algorithm: str, result: dict[str, Any], output: str,
           device: str, browsing: str) -> None:
    """Train the naive learner on the same clicks into ``output``/naive-baseline (kept: the user
    paid for it, and it is the model to use when ``result`` is below it on dev, which is warned)."""
    from pathlib import Path

    from ..ultr.learn import train_from_clicks

    mine = _saved_dev(result)
    if mine is None:
        click.echo("no dev queries: the naive baseline is not trained (nothing to compare on)")
        return
    where = Path(output) / NAIVE_BASELINE
    click.echo(f"training the naive baseline on the same clicks into {where} (--no-baseline skips it) ...")
    naive = train_from_clicks(stats, make_scorer(), where, cfg, algorithm="naive", device=device, overwrite=True,
                              browsing=browsing)
    theirs = _saved_dev(naive)
    assert theirs is not None
    name = _dev_name(result)
    click.echo(f"{name}: {algorithm} {mine:.4f}, naive baseline {theirs:.4f}")
    if mine < theirs:
        why = ("its propensity estimate has probably absorbed relevance" if algorithm == "dla"
               else "the propensities given are probably wrong for this log")
        log.warning("the %s ranker's %s (%.4f) is below the naive baseline's (%.4f): %s; use the naive baseline (%s), or "
                    "ipw with propensities from a randomized log (rerank clicks propensity)", algorithm, name, mine, theirs,
                    why, where)


def _dev_name(result: dict[str, Any]) -> str:
    return next(k for k in result["history"][0] if k not in ("epoch", "step"))


def _saved_dev(result: dict[str, Any]) -> float | None:
    """The first dev metric of the epoch a run saved (None without dev metrics)."""
    for h in result.get("history", []):
        if h["epoch"] == result.get("saved_epoch"):
            values = [v for k, v in h.items() if k not in ("epoch", "step")]
            return float(values[0]) if values else None
    return None


@click.command("train-ltr")
@click.option("--features", "features_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training data, SVMlight/LETOR (label qid:Q i:v ...; or LightGBM's with a .query file beside).")
@feature_options
@train_options
@friendly
def train_ltr(features_path: str, **kw: Any) -> None:
    """Train an MLP ranker over LETOR features with any loss (the feature ranker loads with FeatureRanker.load)."""
    import torch

    from ..train.features import read_letor, train_feature_ranker

    features, schedule = take(FeatureArgs, kw), take(TrainArgs, kw)
    setup_logging(False, schedule.verbose)
    check_writable(schedule.output, folder=True)
    torch.set_num_threads(features.threads)
    data = read_letor(features_path)
    train_data, dev = features.split(data, schedule.seed)
    cfg = schedule.config("fp32", defaults=("listnet", 60, 16, 1e-3))
    result = train_feature_ranker(train_data, schedule.output, cfg, dev=dev, hidden=features.widths(), dropout=features.dropout,
                                  overwrite=schedule.overwrite)
    report(result, schedule.output)
    features.report_test(schedule.output, data.num_features)
