"""Learning to rank from clicks: naive, IPW, propensities by result randomization, and DLA.

Every learner trains on the click counts of :func:`rerank.ultr.log.aggregate` (per query and
shown list: sessions, clicks at each rank), with the softmax loss of
:func:`rerank.train.losses.softmax`: ``-Σ_i c_i w_i log softmax(s)_i``, normalised by ``Σ c_i w_i``.
Summing one session's loss over the sessions that showed the same list gives exactly this, so
the aggregate is a sufficient statistic and a log of millions of sessions costs what its
distinct lists cost.

- ``naive``: ``w_i = 1`` (clicks as relevance labels; biased towards what was shown high).
- ``ipw``: ``w_i = θ_1 / θ_i`` for given examination propensities θ (per rank, or per list).
- ``dla`` (Ai et al., SIGIR 2018, the Dual Learning Algorithm): a propensity model (one logit
  per rank, ``θ̂ = softmax(g)``) is trained jointly with the ranker, after the ranker's first
  half epoch alone (``ranker_first``, see :func:`train_from_clicks`). The ranker takes weights
  ``θ̂_1 / θ̂_i``; the propensity model the same loss on its own logits with the inverse-relevance
  weights ``ρ_1 / ρ_i``, ``ρ = softmax(s)`` over the shown list. Both weights are detached, and
  optionally clipped at ``max_weight``. ``θ̂_i / θ̂_1`` estimates the examination probability
  of rank ``i`` relative to rank 1.
- :func:`randomization_propensities`: with results shown in a uniformly random order, the click
  rate of a rank is proportional to its examination probability (Joachims et al., WSDM 2017).

Rankers: a :class:`~rerank.train.features.FeatureMLP` over LETOR features, a table of one score
per (query, document) (for logs without features, e.g. the Yandex sample: it yields the
propensities), or a cross-encoder over query and document texts of a dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..env import atomic_write
from ..errors import DataError
from ..train.features import FeatureMLP, FeatureRanker, LetorData, dev_ndcg
from ..train.losses import softmax
from .harvest import Cells
from .log import ClickGroup, ClickStats, RankStats

log = logging.getLogger("rerank")

ALGORITHMS = ("naive", "ipw", "dla")
#: how the log's users are taken to browse: ``position`` (examination independent of the clicks, as
#: PBM: the softmax loss over the shown list) or ``cascade`` (top-down, stopping at a click: the
#: likelihood of the clicks on the ranks each session reached, see ClickTask._cascade_loss)
BROWSING = ("position", "cascade")
RANKER_FIRST = 0.5  # DLA: epochs in which the ranker learns alone before θ̂ does (see train_from_clicks)
Propensities = Sequence[float] | np.ndarray | Callable[[ClickGroup], np.ndarray]


class Scorer(Protocol):
    """How one kind of ranker reads click groups (see :class:`FeatureScorer`)."""

    def make_ranker(self) -> torch.nn.Module: ...

    def inputs(self, groups: Sequence[ClickGroup], width: int) -> Any: ...

    def scores(self, ranker: torch.nn.Module, inputs: Any) -> torch.Tensor: ...  # [B, width]

    def evaluate(self, ranker: torch.nn.Module) -> dict[str, float]: ...

    def save(self, ranker: torch.nn.Module, folder: Path) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    # Optional: ``by_query = True`` asks ClickTask to keep a query's lists in one batch (TextScorer).


class FeatureScorer:
    """Shown documents are rows of a LETOR set (document id = row inside its query); the
    ranker is a :class:`FeatureMLP` whose input normalisation is fitted on all of ``data``."""

    def __init__(self, data: LetorData, groups: Sequence[ClickGroup], dev: LetorData | None = None, *,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.1) -> None:
        self.data, self.dev, self.hidden, self.dropout = data, dev, list(hidden), dropout
        if dev is not None and dev.num_features != data.num_features:
            raise DataError(f"the dev data has {dev.num_features} features, the training data {data.num_features}")
        self.qindex = {q: i for i, q in enumerate(data.qids)}
        for g in groups:
            i = self.qindex.get(g.qid)
            if i is None:
                raise DataError(f"query {g.qid!r} of the click log is not in {data.source}")
            size = data.rows(i).stop - data.rows(i).start
            bad = [d for d in g.docs if not d.isdigit() or int(d) >= size]
            if bad:
                raise DataError(f"query {g.qid!r}: shown documents {bad[:3]} are not rows 0..{size - 1} of the query "
                                f"in {data.source}")

    def make_ranker(self) -> torch.nn.Module:
        model = FeatureMLP(self.data.num_features, self.hidden, self.dropout)
        model.fit_normalizer(self.data.features)
        return model

    def inputs(self, groups: Sequence[ClickGroup], width: int) -> Any:
        rows = np.zeros((len(groups), width), dtype=np.int64)
        for b, g in enumerate(groups):
            start = self.data.rows(self.qindex[g.qid]).start
            rows[b, : len(g.docs)] = [start + int(d) for d in g.docs]
        return torch.from_numpy(self.data.features[rows])

    def scores(self, ranker: torch.nn.Module, inputs: Any) -> torch.Tensor:
        return ranker(inputs)

    def evaluate(self, ranker: torch.nn.Module) -> dict[str, float]:
        return dev_ndcg(ranker, self.dev)

    def save(self, ranker: torch.nn.Module, folder: Path) -> None:
        assert isinstance(ranker, FeatureMLP)
        ranker.save(folder)

    def describe(self) -> dict[str, Any]:
        return {"ranker": "feature-mlp", "features": self.data.source, "hidden": self.hidden, "dropout": self.dropout}


class _Table(torch.nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.score = torch.nn.Parameter(torch.zeros(size))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.score[index]


class TableScorer:
    """One free score per (query, document): a ranker for logs without features. It only ranks
    what was shown, but it is all DLA needs to estimate the propensities of a real log."""

    def __init__(self, groups: Sequence[ClickGroup]) -> None:
        self.keys: dict[tuple[str, str], int] = {}
        for g in groups:
            for d in g.docs:
                self.keys.setdefault((g.qid, d), len(self.keys))

    def make_ranker(self) -> torch.nn.Module:
        return _Table(len(self.keys))

    def inputs(self, groups: Sequence[ClickGroup], width: int) -> Any:
        index = torch.zeros(len(groups), width, dtype=torch.long)
        for b, g in enumerate(groups):
            index[b, : len(g.docs)] = torch.tensor([self.keys[(g.qid, d)] for d in g.docs])
        return index

    def scores(self, ranker: torch.nn.Module, inputs: Any) -> torch.Tensor:
        return ranker(inputs)

    def evaluate(self, ranker: torch.nn.Module) -> dict[str, float]:
        return {}

    def save(self, ranker: torch.nn.Module, folder: Path) -> None:
        assert isinstance(ranker, _Table)
        scores = ranker.score.detach().tolist()
        with atomic_write(folder / "scores.json") as f:
            json.dump([{"qid": q, "docid": d, "score": round(scores[i], 6)} for (q, d), i in self.keys.items()], f)

    def describe(self) -> dict[str, Any]:
        return {"ranker": "table", "pairs": len(self.keys)}


class TextScorer:
    """A cross-encoder over (query text, document text): texts come from the sessions when the
    log carries them, else from ``queries`` / ``docs`` (a dataset's). ``dev``: (qrels, dev
    queries, their candidates, relevance threshold) for the per-epoch evaluation. Scoring, dev
    evaluation and saving (loadable by ``CrossEncoder(folder)``) are those of cross-encoder
    training (:class:`~rerank.train.crossencoder.CrossEncoderTask`); a fresh head is drawn from
    ``seed``.

    A (query, document) pair in several lists of a batch is encoded once, and ``by_query`` asks
    :class:`ClickTask` to batch a query's lists together: on a log of several logging rankers
    a query's lists share most of their documents (SciFact's three rankers: 62% of the shown
    pairs are distinct), so an epoch encodes that much less."""

    by_query = True

    def __init__(self, model_name: str, groups: Sequence[ClickGroup], queries: dict[str, str], docs: Any, *,
                 max_length: int = 256, device: str = "cpu", dev: Any = None, allow_new_head: bool | None = None,
                 seed: int = 0) -> None:
        from ..train.crossencoder import CrossEncoderTask, load_cross_encoder_body

        self.model_name, self.max_length, self.device = model_name, max_length, device
        self.body, self.tokenizer = load_cross_encoder_body(model_name, device, allow_new_head=allow_new_head, seed=seed)
        qrels, dev_queries, candidates, rel = dev if dev is not None else ({}, [], {}, 1)
        self.ce = CrossEncoderTask(model_name, self.tokenizer, [], qrels, candidates, docs, max_length=max_length, rel=rel,
                                   dev_queries=dev_queries, dev_depth=30, device=device)
        self.query_text: dict[str, str] = {}
        self.doc_text: dict[tuple[str, str], str] = {}
        for g in groups:
            q = g.query if g.query is not None else queries.get(g.qid)
            if q is None:
                raise DataError(f"query {g.qid!r} of the click log has no text: the log has no 'query' and the "
                                "dataset does not hold it")
            self.query_text[g.qid] = q
            for j, d in enumerate(g.docs):
                t = g.texts[j] if g.texts is not None else docs.get(d) if docs is not None else None
                if t is None:
                    raise DataError(f"document {d!r} (query {g.qid!r}) has no text: the log has no 'texts' and the "
                                    "dataset does not hold it")
                self.doc_text[(g.qid, d)] = t

    def make_ranker(self) -> torch.nn.Module:
        return self.body

    def inputs(self, groups: Sequence[ClickGroup], width: int) -> Any:
        from ..rerankers.pointwise import tokenize_pairs

        rows: dict[tuple[str, str], int] = {}  # a pair shown in several lists of the batch is encoded once
        where, row = [], []
        for b, g in enumerate(groups):
            for j, d in enumerate(g.docs):
                row.append(rows.setdefault((g.qid, d), len(rows)))
                where.append((b, j))
        enc = tokenize_pairs(self.tokenizer, [self.query_text[q] for q, _ in rows], [self.doc_text[k] for k in rows],
                             self.max_length, f"training {self.model_name}", padding=True, return_tensors="pt")
        return enc, where, (len(groups), width), row

    def scores(self, ranker: torch.nn.Module, inputs: Any) -> torch.Tensor:
        return self.ce.scores(ranker, inputs)

    def evaluate(self, ranker: torch.nn.Module) -> dict[str, float]:
        return self.ce.evaluate(ranker)

    def save(self, ranker: torch.nn.Module, folder: Path) -> None:
        self.ce.save(ranker, folder)

    def describe(self) -> dict[str, Any]:
        return {"ranker": "cross-encoder", "model": self.model_name, "max_length": self.max_length,
                "dev_queries": len(self.ce.dev_queries)}


class PropensityModel(torch.nn.Module):
    """One logit per rank; ``θ̂ = softmax`` over the ranks a session showed."""

    start: torch.Tensor

    def __init__(self, list_size: int, start: Sequence[float] | None = None) -> None:
        """``start``: θ̂ to begin from (per rank, relative or absolute; default flat)."""
        super().__init__()
        logits = torch.zeros(list_size)
        if start is not None:
            theta = np.asarray(start, dtype=np.float64)
            if len(theta) < list_size or not np.all(np.isfinite(theta[:list_size])) or not (theta[:list_size] > 0).all():
                raise DataError(f"DLA's starting propensities must be {list_size} positive numbers (one per rank), got "
                                f"{list(start)}")
            logits = torch.from_numpy(np.log(theta[:list_size] / theta[0])).float()
        self.logits = torch.nn.Parameter(logits)
        self.register_buffer("start", logits.clone())  # log(θ̂_r/θ̂_1) it began from: the anchor's centre

    def anchor_penalty(self) -> torch.Tensor:
        """``Σ_r (log θ̂_r/θ̂_1 − log θ⁰_r/θ⁰_1)²``: how far θ̂ moved from where it started."""
        rel = self.logits - self.logits[0]
        return ((rel - self.start) ** 2).sum()

    def forward(self, width: int) -> torch.Tensor:
        return self.logits[:width]

    def relative(self) -> list[float]:
        """``θ̂_i / θ̂_1`` for every rank."""
        g = self.logits.detach().double()
        return torch.exp(g - g[0]).tolist()


class ClickModelPair(torch.nn.Module):
    """The ranker and (for DLA) the propensity model, trained together. ``seen`` counts the
    training batches the loss has taken (a buffer, so a resumed run knows where its warm-up is)."""

    seen: torch.Tensor

    def __init__(self, ranker: torch.nn.Module, propensity: PropensityModel | None, propensity_lr: float | None) -> None:
        super().__init__()
        self.ranker = ranker
        self.propensity = propensity
        self.propensity_lr = propensity_lr
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        decay = [p for p in self.ranker.parameters() if p.requires_grad and p.dim() > 1]
        rest = [p for p in self.ranker.parameters() if p.requires_grad and p.dim() <= 1]
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": weight_decay, "lr": lr},
                                        {"params": rest, "weight_decay": 0.0, "lr": lr}]
        if self.propensity is not None:
            groups.append({"params": list(self.propensity.parameters()), "weight_decay": 0.0,
                           "lr": self.propensity_lr or lr})
        return [g for g in groups if g["params"]]


def _ratio_to_first(p: torch.Tensor, mask: torch.Tensor, max_weight: float | None) -> torch.Tensor:
    """``p_1 / p_i`` per list (detached), 0 on padding, clipped at ``max_weight``."""
    p = p.detach()
    w = p[:, :1] / p.clamp_min(1e-30)
    if max_weight is not None:
        w = w.clamp(max=max_weight)
    return torch.where(mask, w, torch.zeros_like(w))


def _masked_softmax(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.where(mask, s, torch.full_like(s, -torch.inf)), dim=1)


class ClickTask:
    """Click groups as lists for :class:`~rerank.train.trainer.Trainer`, with the loss of one of
    :data:`ALGORITHMS` (the trainer calls :meth:`loss` instead of a loss from the registry)."""

    def __init__(self, stats: ClickStats, scorer: Scorer, algorithm: str = "dla", *,
                 propensities: Propensities | None = None, max_weight: float | None = None,
                 warmup_batches: int = 0, anchor: float = 0.0, browsing: str = "position") -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        if algorithm == "ipw" and propensities is None:
            raise ValueError("ipw needs propensities (one per rank, or a function of the shown list)")
        if max_weight is not None and not max_weight >= 1:
            raise ValueError(f"max_weight must be >= 1, got {max_weight}")
        if not anchor >= 0:
            raise ValueError(f"the propensity anchor is a strength >= 0, got {anchor}")
        if browsing not in BROWSING:
            raise ValueError(f"unknown browsing {browsing!r}: choose one of {', '.join(BROWSING)}")
        if browsing == "cascade" and algorithm == "ipw":
            raise ValueError("cascade browsing learns from the ranks each session reached (naive, or dla with θ̂ the "
                             "examination of a reached rank); ipw's weights are for position-based examination")
        self.browsing = browsing
        self.stats, self.scorer, self.algorithm, self.max_weight, self.anchor = stats, scorer, algorithm, max_weight, anchor
        self.warmup_batches = warmup_batches if algorithm == "dla" else 0
        self.groups = self.trained_groups(stats, browsing)
        self.blocks: list[list[int]] | None = None  # a query's lists shuffled as one unit (see Trainer's epoch_order)
        if getattr(scorer, "by_query", False):
            by_qid: dict[str, list[int]] = {}
            for i, g in enumerate(self.groups):
                by_qid.setdefault(g.qid, []).append(i)
            self.blocks = list(by_qid.values())
        self.width = stats.list_size
        self._ipw: list[np.ndarray] = []
        if algorithm == "ipw":
            assert propensities is not None
            for g in self.groups:
                theta = np.asarray(propensities(g) if callable(propensities) else propensities, dtype=np.float64)
                if len(theta) < len(g.docs):
                    raise DataError(f"{len(theta)} propensities given, but the log shows {len(g.docs)} results "
                                    f"(query {g.qid!r}); pass one per rank up to the list size {self.width}")
                theta = theta[: len(g.docs)]
                if not theta[0] > 0 or (theta < 0).any() or ((theta == 0) & (g.clicks > 0)).any():
                    raise DataError(f"propensities must be > 0 at rank 1 and wherever a click happened (query {g.qid!r}), "
                                    f"got {theta.tolist()}")
                self._ipw.append(np.divide(theta[0], theta, out=np.zeros_like(theta), where=theta > 0))
        self.propensities = propensities if not callable(propensities) and propensities is not None else None
        self.final_propensity: list[float] | None = None

    @staticmethod
    def trained_groups(stats: ClickStats, browsing: str = "position") -> list[ClickGroup]:
        """The lists that are trained on: zero-click lists carry no gradient under the softmax loss
        (under cascade browsing they do: every result was reached and skipped)."""
        return [g for g in stats.groups if g.clicks.sum() > 0 or (browsing == "cascade" and g.sessions > 0)]

    def __len__(self) -> int:
        return len(self.groups)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "log": self.stats.source, "sessions": self.stats.sessions,
                "lists": len(self.groups), "list_size": self.width, "max_weight": self.max_weight,
                "warmup_batches": self.warmup_batches, "anchor": self.anchor, "browsing": self.browsing,
                "propensities": None if self.propensities is None else [float(x) for x in self.propensities],
                "by_query": self.blocks is not None, **self.scorer.describe()}

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        groups = [self.groups[i] for i in indices]
        width = max(len(g.docs) for g in groups)
        counts = torch.zeros(len(groups), width, dtype=torch.float64)
        mask = torch.zeros(len(groups), width, dtype=torch.bool)
        ipw = torch.ones(len(groups), width, dtype=torch.float64)
        sessions = torch.tensor([float(g.sessions) for g in groups], dtype=torch.float64)
        for b, (i, g) in enumerate(zip(indices, groups, strict=True)):
            counts[b, : len(g.docs)] = torch.from_numpy(g.clicks)
            mask[b, : len(g.docs)] = True
            if self._ipw:
                ipw[b, : len(g.docs)] = torch.from_numpy(self._ipw[i])
        return (self.scorer.inputs(groups, width), ipw, sessions), counts, mask

    def scores(self, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        assert isinstance(model, ClickModelPair)
        return self.scorer.scores(model.ranker, inputs[0])

    def loss(self, model: torch.nn.Module, inputs: Any, counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, ClickModelPair)
        s = self.scorer.scores(model.ranker, inputs[0]).float()
        counts = counts.to(s.device).float()
        mask = mask.to(s.device)
        if self.browsing == "cascade":
            return self._cascade_loss(model, s, counts, inputs[2].to(s.device).float(), mask)
        if self.algorithm == "naive":
            return softmax(s, counts, mask)
        if self.algorithm == "ipw":
            w = inputs[1].to(s.device).float()
            if self.max_weight is not None:
                w = w.clamp(max=self.max_weight)
            return softmax(s, counts * w, mask)
        assert model.propensity is not None
        g = model.propensity(s.shape[1])[None, :].expand_as(s).float()
        pw = _ratio_to_first(_masked_softmax(g, mask), mask, self.max_weight)
        ranker_loss = softmax(s, counts * pw, mask)
        if model.training:
            model.seen.add_(1)
            if int(model.seen) <= self.warmup_batches:  # the ranker first: θ̂ stays flat (naive), g learns nothing
                return ranker_loss
        rw = _ratio_to_first(_masked_softmax(s, mask), mask, self.max_weight)
        propensity_loss = softmax(g, counts * rw, mask)
        if self.anchor:
            propensity_loss = propensity_loss + self.anchor * model.propensity.anchor_penalty()
        return ranker_loss + propensity_loss

    def _cascade_loss(self, model: ClickModelPair, s: torch.Tensor, counts: torch.Tensor, sessions: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """The likelihood of the clicks under cascade browsing: a session reaches rank ``r`` when it
        has no click above (so ``reached_r`` = sessions minus the clicks above ``r``: exact for logs of
        at most one click a session, as the cascade model makes them) and clicks a reached result with
        ``p = θ̂_r σ(s)``: the ranker's score is the result's attractiveness (log-odds), θ̂ the
        examination of a reached rank (1 for naive; DLA's propensity model, ``exp(g_r - max g)``). Binary
        cross-entropy over the reached results, ``-Σ c log p + (reached - c) log(1 - p)`` per
        reached result, normalised by the results reached."""
        above = torch.cumsum(counts, dim=1) - counts
        reached = torch.where(mask, torch.maximum(sessions[:, None] - above, counts), torch.zeros_like(counts))
        log_attr = torch.nn.functional.logsigmoid(s)
        if self.algorithm == "naive":
            logp = log_attr
        else:
            assert model.propensity is not None
            g = model.propensity(s.shape[1])[None, :].float()
            if model.training:
                model.seen.add_(1)
            if model.training and int(model.seen) <= self.warmup_batches:  # the ranker first: θ̂ stays where it is
                g = g.detach()
            logp = g - g.max() + log_attr  # θ̂ <= 1, the most examined rank at 1; θ̂_r/θ̂_1 = exp(g_r - g_1)
        logp = logp.clamp(max=-1e-6)
        log_not = torch.log(-torch.expm1(logp))
        ll = counts * logp + (reached - counts) * log_not
        loss = -torch.where(mask, ll, torch.zeros_like(ll)).sum() / reached.sum().clamp_min(1.0)
        if self.algorithm == "dla" and self.anchor:
            assert model.propensity is not None
            loss = loss + self.anchor * model.propensity.anchor_penalty()
        return loss

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        assert isinstance(model, ClickModelPair)
        if model.propensity is not None:  # the trainer evaluates after every epoch: this ends as the final state
            self.final_propensity = model.propensity.relative()
        return self.scorer.evaluate(model.ranker)

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        assert isinstance(model, ClickModelPair)
        folder.mkdir(parents=True, exist_ok=True)
        self.scorer.save(model.ranker, folder)
        info: dict[str, Any] = {"algorithm": self.algorithm, "clicks": self.stats.summary()}
        if model.propensity is not None:
            info["propensity"] = [round(v, 6) for v in self.final_propensity or model.propensity.relative()]
            info["propensity_at_saved_epoch"] = [round(v, 6) for v in model.propensity.relative()]
        with atomic_write(folder / "clicks.json") as f:
            json.dump(info, f, indent=1)


def train_from_clicks(stats: ClickStats, scorer: Scorer, output: str | Path, config: Any, *, algorithm: str = "dla",
                      propensities: Propensities | None = None, max_weight: float | None = None,
                      propensity_lr: float | None = 0.05, ranker_first: float = RANKER_FIRST, device: str = "cpu",
                      overwrite: bool = False, propensity_start: Sequence[float] | None = None,
                      propensity_anchor: float = 0.0, browsing: str = "position") -> dict[str, Any]:
    """Train a ranker (and for DLA a propensity model) on a click log's ``stats``. ``config.loss``
    must be ``softmax``. For DLA the result gains ``propensity`` (``θ̂_i / θ̂_1`` at the end of
    training: the ranker saved is the best dev epoch's, but on small sets it peaks long before the
    propensity model converges) and ``propensity_at_saved_epoch``.

    DLA: for its first ``ranker_first`` epochs (half a pass over the log by default) the ranker
    learns from the clicks alone (the naive learner) while θ̂ stays flat; then both learn jointly. Started
    together, the propensity model meets a ranker that cannot yet tell documents apart (uniform
    ``ρ``), so its first fit is θ̂ ∝ click rate per rank, relevance gap included; a slow ranker
    (a cross-encoder) then learns from those over-corrected weights and the pair settles there.
    Started after the ranker, it begins from the flat side and moves only as far as the ranker's
    scores explain the clicks (see docs/clicks.md).

    ``propensity_start``: θ̂ for DLA to begin from instead of flat, e.g. the click-model-free
    estimate of a log that identifies θ (:func:`rerank.ultr.harvest.harvest_propensities`); the
    ranker's first epochs then learn with those weights, and joint training refines them.

    ``propensity_anchor`` (λ, with ``propensity_start``): the propensity model's loss gains
    ``λ Σ_r (log θ̂_r/θ̂_1 − log θ⁰_r/θ⁰_1)²``, a Gaussian prior on log θ around the start. Joint
    training alone lets a ranker that cannot yet explain the relevance gap pull θ̂ away from an
    identified estimate (toward the click rate per rank; see docs/clicks.md for a 2M-session log
    where it moved from 0.007 to 0.54 off the truth); the anchor keeps what the log identified.

    ``browsing`` (:data:`BROWSING`): ``cascade`` for logs of users who scan top-down and stop at a
    click (the ranks below a click were never examined; the softmax loss would read them as
    skipped): the ranker is fitted by the likelihood of the clicks on the ranks each session reached
    (:meth:`ClickTask._cascade_loss`), zero-click lists included. ``dla``'s θ̂ is then the
    examination of a reached rank (1 everywhere in the classic cascade), fitted jointly by the same
    likelihood instead of DLA's dual losses; ``ipw`` is refused."""
    from ..train.trainer import Trainer

    if config.loss != "softmax":
        raise ValueError(f"click learners use the softmax loss; got loss={config.loss!r}")
    if algorithm == "dla" and not 0 <= ranker_first < config.epochs:
        raise ValueError(f"DLA's ranker_first ({ranker_first} epochs of the ranker alone) must be >= 0 and below the "
                         f"{config.epochs} epochs of training, or the propensity model never learns")
    if propensity_anchor and propensity_start is None:
        raise ValueError("propensity_anchor pulls θ̂ toward propensity_start: give the start (an estimate from the log)")
    lists = ClickTask.trained_groups(stats, browsing)
    task = ClickTask(stats, scorer, algorithm, propensities=propensities, max_weight=max_weight,
                     warmup_batches=round(ranker_first * _batches_per_epoch(len(lists), config)), anchor=propensity_anchor,
                     browsing=browsing)
    if len(task) == 0:
        raise DataError(f"{stats.source or 'the click log'} has no click: nothing to learn from")
    torch.manual_seed(config.seed)
    if propensity_start is not None and algorithm != "dla":
        raise ValueError(f"propensity_start is DLA's starting θ̂; {algorithm} has no propensity model")
    model = ClickModelPair(scorer.make_ranker(),
                           PropensityModel(stats.list_size, propensity_start) if algorithm == "dla" else None,
                           propensity_lr)
    result = Trainer(model.to(device), task, config, output, device=device, overwrite=overwrite).train()
    if model.propensity is not None:
        result["propensity"] = task.final_propensity or model.propensity.relative()
        result["propensity_at_saved_epoch"] = model.propensity.relative()
    return result


def _batches_per_epoch(lists: int, config: Any) -> int:
    """Batches the trainer feeds the loss in one epoch of ``lists`` (its step chunks cut into micro-batches)."""
    per_step = config.batch_size * config.accumulate
    full, last = divmod(lists, per_step)
    return full * config.accumulate + -(-last // config.batch_size)


def load_propensity(folder: str | Path) -> list[float]:
    """``θ̂_i / θ̂_1`` saved by a DLA run."""
    path = Path(folder) / "clicks.json"
    if not path.is_file():
        raise DataError(f"{folder} holds no click-trained model (no clicks.json)")
    info = json.loads(path.read_text())
    if "propensity" not in info:
        raise DataError(f"{path}: the {info.get('algorithm')} run estimated no propensities (only dla does)")
    return [float(v) for v in info["propensity"]]


def randomization_propensities(stats: ClickStats | RankStats) -> tuple[np.ndarray, np.ndarray]:
    """(``θ̂_i / θ̂_1``, standard errors) from a log whose lists were shown in uniformly random
    order: the click rate of rank ``i`` is ``θ_i`` times the mean attractiveness of the list,
    the same at every rank (delta-method errors from binomial rates)."""
    clicks, shown = stats.by_rank()
    if shown[0] == 0 or clicks[0] == 0:
        raise DataError("no click at rank 1: cannot estimate propensities relative to it")
    ctr = np.divide(clicks, shown, out=np.zeros_like(clicks), where=shown > 0)
    rel = ctr / ctr[0]
    var = np.divide(ctr * (1 - ctr), shown, out=np.zeros_like(ctr), where=shown > 0)
    se = rel * np.sqrt(np.divide(var, np.maximum(ctr, 1e-300) ** 2, out=np.zeros_like(ctr), where=ctr > 0)
                       + var[0] / ctr[0] ** 2)
    se[0] = 0.0  # rank 1 is the reference
    return rel, se


def pbm_em_propensities(stats: ClickStats | RankStats | Cells, iterations: int = 500, tol: float = 1e-7) -> np.ndarray:
    """``θ̂_i / θ̂_1`` of a position-based click model fitted by expectation-maximisation (the
    classic click-model estimator, as in PyClick): ``P(click) = α_qd θ_r`` with one α per
    query-document pair; like DLA's table ranker it identifies θ only through documents shown
    at several ranks. Stops when no θ moves by more than ``tol``."""
    k, r_, c, n = stats.cells()  # the same (query, document, rank) shown in several lists: summed, as EM would
    if c.sum() == 0:
        raise DataError("the click log has no click: nothing to estimate from")
    pairs = int(k.max()) + 1
    alpha = np.full(pairs, 0.5)
    theta = np.full(stats.list_size, 0.5)
    denom_a = np.bincount(k, weights=n, minlength=pairs)
    denom_t = np.bincount(r_, weights=n, minlength=stats.list_size)
    for _ in range(iterations):
        a, t = alpha[k], theta[r_]
        miss = 1 - a * t
        p_attr = np.divide(a * (1 - t), miss, out=np.zeros_like(a), where=miss > 0)  # P(attractive | no click)
        p_exam = np.divide(t * (1 - a), miss, out=np.zeros_like(a), where=miss > 0)  # P(examined | no click)
        alpha = np.bincount(k, weights=c + (n - c) * p_attr, minlength=pairs) / denom_a
        new = np.divide(np.bincount(r_, weights=c + (n - c) * p_exam, minlength=stats.list_size), denom_t,
                        out=np.zeros(stats.list_size), where=denom_t > 0)
        moved = float(np.max(np.abs(new - theta)))
        theta = new
        if moved < tol:
            break
    if not theta[0] > 0:
        raise DataError("no click at rank 1: cannot estimate propensities relative to it")
    return theta / theta[0]


def moved_pairs(stats: ClickStats | RankStats) -> int:
    """(query, document) pairs the log shows at two ranks or more: what a click-model-free estimate
    of the propensities (EM, intervention harvesting) rests on; with none, only a ranker's
    generalisation separates position from relevance."""
    k, r, _, _ = stats.cells()
    if len(k) == 0:
        return 0
    distinct = np.unique(k * stats.list_size + r) // stats.list_size
    return int((np.bincount(distinct) > 1).sum())


def log_propensities(stats: RankStats, method: str, where: str = "") -> tuple[np.ndarray, Cells]:
    """``θ̂_r / θ̂_1`` from the log itself, by ``method`` (``harvest``: intervention harvesting;
    ``em``: a PBM fitted by EM), with the cells it rests on (for a bootstrap band); ``nan`` at ranks
    the log does not link to rank 1. Refuses a log that shows no document at two ranks."""
    from .harvest import NOT_IDENTIFIED, harvest_propensities

    if method not in ("harvest", "em"):
        raise ValueError(f"method must be harvest or em, not {method!r}")
    if moved_pairs(stats) == 0:
        raise DataError(f"{where}: {NOT_IDENTIFIED}" if where else NOT_IDENTIFIED)
    cells = Cells.of(stats)
    return (harvest_propensities if method == "harvest" else pbm_em_propensities)(cells), cells


def propensity_error(estimate: Sequence[float] | np.ndarray, truth: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Max relative error and Pearson correlation of ``θ̂_i / θ̂_1`` against ``θ_i / θ_1``."""
    est = np.asarray(estimate, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    n = min(len(est), len(tru))
    est, tru = est[:n] / est[0], tru[:n] / tru[0]
    return {"max_relative_error": float(np.max(np.abs(est - tru) / tru)),
            "pearson": float(np.corrcoef(est, tru)[0, 1]) if n > 2 else float("nan")}


def train_logging_ranker(data: LetorData, output: str | Path, *, fraction: float = 0.01, seed: int = 0,
                         epochs: int = 30) -> FeatureRanker:
    """A weak production ranker: the feature MLP trained (ListNet) on the labels of a random
    ``fraction`` of the queries with a relevant document (at least one query)."""
    from ..train.features import train_feature_ranker
    from ..train.trainer import TrainConfig

    if not 0 < fraction <= 1:
        raise ValueError(f"the logging ranker's fraction of labelled queries must be in (0, 1], got {fraction}")
    judged = [i for i in range(len(data)) if (data.labels[data.rows(i)] > 0).any()]
    if not judged:
        raise DataError(f"{data.source}: no query has a relevant document")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(judged, size=max(1, round(fraction * len(data))), replace=False).tolist())
    config = TrainConfig(loss="listnet", epochs=epochs, batch_size=1, lr=1e-3, warmup=0.0, seed=seed,
                         precision="fp32", checkpoint_every=10_000)
    train_feature_ranker(data.subset(pick), output, config, overwrite=True)
    return FeatureRanker.load(output)
