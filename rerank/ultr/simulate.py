"""Click simulation over labelled lists: position-based, cascade, user-browsing, dependent-click
and dynamic-Bayesian-network models.

Each model clicks a result of relevance label ``y`` with the attractiveness
``click_prob[y] = ε + (1 - ε) (2^y - 1) / (2^ymax - 1)`` once it is examined; they differ in
what is examined:

- **PBM** (position-based): rank ``r`` is examined with ``θ_r^η``, independently.
- **cascade**: the user scans top-down (examining rank ``r`` with ``exam_prob[r]``, 1 in the
  classic model) and stops after the first click.
- **UBM** (user browsing): rank ``r`` is examined with ``γ[r][d - 1]``, ``d`` the distance to
  the last click above it (``d = r + 1`` with no click above).
- **DCM** (dependent click): top-down; after a click at ``r`` the user goes on with
  ``continuation[r]``, after a skip always.
- **DBN** (dynamic Bayesian network; SDBN with ``gamma`` 1): top-down; after a click the user is
  satisfied with ``σ`` and stops, else goes on with ``gamma``; after a skip with ``gamma``.

Parameters come by name (``pbm``, ``cascade``, ``ubm``: ULTRA's defaults, ε = 0.1,
ymax = 4, η = 1, with ``eta`` to sharpen or flatten the bias) or from a JSON file of ULTRA's
``ClickModel`` layout (``model_name``, ``click_prob``, ``exam_prob``, ``eta``; there
``exam_prob`` already holds ``θ^η``). Ranks beyond a table use its last entry.

A model fitted on a real log (``rerank clicks fit``, :mod:`rerank.ultr.click_models`) is such
a JSON file plus ``attractiveness`` (and for DBN ``satisfaction``): ``[query, document, p]`` per
pair the log showed. A simulated session showing one of those pairs uses its fitted value; any
other pair (all of them on a dataset the log never saw) clicks with ``click_prob`` of its
relevance label, and a DBN's unseen pairs are satisfied with ``sat_unseen`` (the fitted σ, mean
weighted by clicks). The rank part (θ, γ, continuation) is what carries over from real users.

:func:`simulate` draws sessions, seeded: a query uniformly at random, a logging policy (one
deterministic ranker by default; several rankers sharing the sessions, Plackett-Luce sampling
from a ranker's scores, a fraction of sessions with an adjacent pair swapped), the list it shows
(optionally shuffled, for propensity estimation by result randomization), and clicks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .log import ClickSession

if TYPE_CHECKING:
    from ..train.features import LetorData

ULTRA_CLICK_PROB = [0.1, 0.16, 0.28, 0.52, 1.0]  # ε = 0.1, ymax = 4
ULTRA_THETA = [0.68, 0.61, 0.48, 0.34, 0.28, 0.2, 0.11, 0.1, 0.08, 0.06]
ULTRA_UBM = [[1.0], [0.98, 1.0], [1.0, 0.62, 0.95], [1.0, 0.77, 0.42, 0.82], [1.0, 0.92, 0.55, 0.31, 0.69],
             [1.0, 0.96, 0.63, 0.4, 0.22, 0.54], [1.0, 0.99, 0.73, 0.46, 0.29, 0.17, 0.47],
             [1.0, 1.0, 0.89, 0.52, 0.35, 0.24, 0.14, 0.43], [1.0, 1.0, 0.95, 0.68, 0.4, 0.29, 0.19, 0.12, 0.41],
             [1.0, 1.0, 1.0, 0.96, 0.52, 0.36, 0.27, 0.18, 0.12, 0.43]]
NAMES = {"pbm": "position_biased_model", "cascade": "cascade_model", "ubm": "user_browsing_model"}


def attractiveness(epsilon: float = 0.1, max_grade: int = 4) -> list[float]:
    """``click_prob[y] = ε + (1 - ε)(2^y - 1)/(2^ymax - 1)`` for ``y = 0..ymax``."""
    if not 0 <= epsilon <= 1 or max_grade < 1:
        raise ValueError(f"need 0 <= epsilon <= 1 and max_grade >= 1, got {epsilon}, {max_grade}")
    return [epsilon + (1 - epsilon) * (2**y - 1) / (2**max_grade - 1) for y in range(max_grade + 1)]


class ClickModel:
    """Base: attractiveness per label; subclasses define examination."""

    kind = ""

    def __init__(self, click_prob: Sequence[float], exam_prob: Any, eta: float = 1.0) -> None:
        if not click_prob or any(not 0 <= p <= 1 for p in click_prob):
            raise DataError(f"click_prob must be probabilities, one per label, got {click_prob}")
        self.click_prob = np.asarray(click_prob, dtype=np.float64)
        self.exam_prob = exam_prob
        self.eta = eta
        self.pairs: dict[tuple[str, str], float] = {}  # fitted attractiveness per (query, document), see inputs()

    @property
    def name(self) -> str:
        return next(k for k, v in NAMES.items() if v == self.kind)

    def to_json(self) -> dict[str, Any]:
        exam = self.exam_prob.tolist() if isinstance(self.exam_prob, np.ndarray) else self.exam_prob
        return {"model_name": self.kind, "eta": self.eta, "click_prob": self.click_prob.tolist(), "exam_prob": exam}

    def relevance(self, labels: np.ndarray) -> np.ndarray:
        """Attractiveness of each label (labels above the table's top take its last entry)."""
        y = np.asarray(labels, dtype=np.float64)
        if (y < 0).any() or not np.array_equal(y, np.round(y)):
            raise DataError(f"click models need integer labels >= 0, got {np.unique(y)[:10]}")
        return self.click_prob[np.minimum(y.astype(np.int64), len(self.click_prob) - 1)]

    def inputs(self, lists: Sequence[ShownList], labels: np.ndarray) -> np.ndarray:
        """What :meth:`sample` reads per (list, rank), [lists, L, channels]: channel 0 is the
        attractiveness, the fitted one of a (query, document) in :attr:`pairs` (a model fitted on
        a log), else ``click_prob`` of the label."""
        attr = self.relevance(labels)
        if self.pairs:
            for i, s in enumerate(lists):
                for j, d in enumerate(s.docs):
                    attr[i, j] = self.pairs.get((s.qid, d), attr[i, j])
        return attr[:, :, None]

    def sample(self, x: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clicks [n, L] (0/1) for n lists of :meth:`inputs` [n, L, channels] whose first
        ``lengths[i]`` ranks are real."""
        raise NotImplementedError

    def examination(self, labels: Sequence[float]) -> np.ndarray:
        """Marginal probability that each rank of one list is examined."""
        raise NotImplementedError

    def click_rates(self, labels: Sequence[float]) -> np.ndarray:
        """Analytic click probability of each rank of one list: ``P(E_r) · click_prob[y_r]``
        (examination and attractiveness are independent given the clicks above)."""
        return self.examination(labels) * self.relevance(np.asarray(labels))


def _per_rank(table: np.ndarray, length: int) -> np.ndarray:
    return table[np.minimum(np.arange(length), len(table) - 1)]


class PositionBased(ClickModel):
    kind = "position_biased_model"

    def __init__(self, click_prob: Sequence[float], exam_prob: Sequence[float], eta: float = 1.0) -> None:
        if not exam_prob or any(not 0 < p <= 1 for p in exam_prob):
            raise DataError(f"PBM exam_prob must be probabilities in (0, 1], one per rank, got {exam_prob}")
        super().__init__(click_prob, np.asarray(exam_prob, dtype=np.float64), eta)

    def theta(self, length: int) -> np.ndarray:
        return _per_rank(self.exam_prob, length)

    def sample(self, x: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, width = x.shape[:2]
        real = np.arange(width)[None, :] < lengths[:, None]
        p = self.theta(width)[None, :] * x[:, :, 0]
        return ((rng.random((n, width)) < p) & real).astype(np.int8)

    def examination(self, labels: Sequence[float]) -> np.ndarray:
        return self.theta(len(labels)).copy()


class Cascade(ClickModel):
    kind = "cascade_model"

    def __init__(self, click_prob: Sequence[float], exam_prob: Sequence[float] | None = None, eta: float = 1.0) -> None:
        exam = np.asarray(exam_prob if exam_prob else [1.0], dtype=np.float64)
        if any(not 0 < p <= 1 for p in exam):
            raise DataError(f"cascade exam_prob must be probabilities in (0, 1], got {exam_prob}")
        super().__init__(click_prob, exam, eta)

    def sample(self, x: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, width = x.shape[:2]
        real = np.arange(width)[None, :] < lengths[:, None]
        p = _per_rank(self.exam_prob, width)[None, :] * x[:, :, 0]
        raw = (rng.random((n, width)) < p) & real
        first = np.cumsum(raw, axis=1) == 1  # the first click and everything before the second
        return (raw & first).astype(np.int8)

    def examination(self, labels: Sequence[float]) -> np.ndarray:
        e = _per_rank(self.exam_prob, len(labels))
        c = e * self.relevance(np.asarray(labels))
        reach = np.concatenate([[1.0], np.cumprod(1 - c)[:-1]])
        return reach * e


class UserBrowsing(ClickModel):
    kind = "user_browsing_model"

    def __init__(self, click_prob: Sequence[float], exam_prob: Sequence[Sequence[float]], eta: float = 1.0) -> None:
        rows = [np.asarray(r, dtype=np.float64) for r in exam_prob]
        if not rows or any(len(r) == 0 or ((r <= 0) | (r > 1)).any() for r in rows):
            raise DataError("UBM exam_prob must be a table of probabilities in (0, 1]: row r holds γ[r][d - 1]")
        super().__init__(click_prob, rows, eta)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "exam_prob": [r.tolist() for r in self.exam_prob]}

    def gamma(self, rank: int, last_click: int) -> float:
        """Examination of ``rank`` with the last click at ``last_click`` (-1: none)."""
        row = self.exam_prob[min(rank, len(self.exam_prob) - 1)]
        if last_click < 0:
            return float(row[-1])
        return float(row[min(rank - last_click - 1, len(row) - 2 if len(row) > 1 else 0)])

    def sample(self, x: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, width = x.shape[:2]
        real = np.arange(width)[None, :] < lengths[:, None]
        rel = x[:, :, 0]
        clicks = np.zeros((n, width), dtype=np.int8)
        last = np.full(n, -1)
        u = rng.random((n, width))
        for r in range(width):
            table = np.asarray([self.gamma(r, j) for j in range(-1, r)])  # index: last click + 1
            click = (u[:, r] < table[last + 1] * rel[:, r]) & real[:, r]
            clicks[:, r] = click
            last = np.where(click, r, last)
        return clicks

    def examination(self, labels: Sequence[float]) -> np.ndarray:
        rel = self.relevance(np.asarray(labels))
        state = {-1: 1.0}  # P(last click = j) before the current rank
        out = np.zeros(len(rel))
        for r in range(len(rel)):
            nxt: dict[int, float] = {}
            for j, p in state.items():
                g = self.gamma(r, j)
                out[r] += p * g
                c = g * rel[r]
                nxt[r] = nxt.get(r, 0.0) + p * c
                nxt[j] = nxt.get(j, 0.0) + p * (1 - c)
            state = nxt
        return out


class DependentClick(ClickModel):
    """DCM: top-down; after a click at rank ``r`` the user goes on with ``continuation[r]``,
    after a skip always (``exam_prob`` is not used)."""

    kind = "dependent_click_model"

    def __init__(self, click_prob: Sequence[float], continuation: Sequence[float], eta: float = 1.0) -> None:
        if not continuation or any(not 0 <= p <= 1 for p in continuation):
            raise DataError(f"DCM continuation must be probabilities, one per rank, got {continuation}")
        super().__init__(click_prob, [1.0], eta)
        self.continuation = np.asarray(continuation, dtype=np.float64)

    def _after(self, x: np.ndarray) -> np.ndarray:
        """Probability of going on after a click, per (list, rank)."""
        return np.broadcast_to(_per_rank(self.continuation, x.shape[1]), x.shape[:2])

    def _after_skip(self) -> float:
        return 1.0

    def sample(self, x: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, width = x.shape[:2]
        after, skip = self._after(x), self._after_skip()
        clicks = np.zeros((n, width), dtype=np.int8)
        exam = np.ones(n, dtype=bool)
        u = rng.random((n, width, 2))
        for r in range(width):
            click = exam & (u[:, r, 0] < x[:, r, 0]) & (r < lengths)
            clicks[:, r] = click
            exam = exam & (u[:, r, 1] < np.where(click, after[:, r], skip))
        return clicks

    def examination(self, labels: Sequence[float]) -> np.ndarray:
        x = self.inputs([], np.asarray(labels, dtype=np.float64)[None, :])
        a, after = x[0, :, 0], self._after(x)[0]
        go_on = after * a + self._after_skip() * (1 - a)
        return np.concatenate([[1.0], np.cumprod(go_on)[:-1]])


class DynamicBayesian(DependentClick):
    """DBN (SDBN: ``gamma`` 1): top-down; after a click the user is satisfied with ``σ`` and
    stops, else goes on with ``gamma``; after a skip goes on with ``gamma``. ``σ`` of a fitted
    (query, document) is in :attr:`satisfied`, others take ``sat_unseen`` (a fitted model's
    click-weighted mean σ)."""

    kind = "dynamic_bayesian_network_model"

    def __init__(self, click_prob: Sequence[float], gamma: float, sat_unseen: float, eta: float = 1.0) -> None:
        if not 0 <= gamma <= 1 or not 0 <= sat_unseen <= 1:
            raise DataError(f"DBN gamma and satisfaction must be probabilities, got {gamma}, {sat_unseen}")
        super().__init__(click_prob, [gamma], eta)
        self.gamma, self.sat_unseen = gamma, sat_unseen
        self.satisfied: dict[tuple[str, str], float] = {}

    def inputs(self, lists: Sequence[ShownList], labels: np.ndarray) -> np.ndarray:
        sat = np.full(labels.shape, self.sat_unseen)
        for i, s in enumerate(lists):
            for j, d in enumerate(s.docs):
                sat[i, j] = self.satisfied.get((s.qid, d), self.sat_unseen)
        return np.concatenate([super().inputs(lists, labels), sat[:, :, None]], axis=2)

    def _after(self, x: np.ndarray) -> np.ndarray:
        return self.gamma * (1 - x[:, :, 1])

    def _after_skip(self) -> float:
        return self.gamma


def position_propensities(model: ClickModel, length: int | None = None) -> list[float]:
    """θ per rank of a position-based model (``length`` ranks, default its table's). Other
    models have no per-rank propensity: their examination depends on the list."""
    if not isinstance(model, PositionBased):
        raise DataError(f"a {model.name} click model has no propensity per rank (examination depends on the clicks "
                        "above); give θ per rank, or a position-based model")
    return model.theta(length or len(model.exam_prob)).tolist()


def load_click_model(spec: str | Path | dict[str, Any], *, eta: float | None = None) -> ClickModel:
    """A click model by name (``pbm``, ``cascade``, ``ubm``; ``eta`` raises their examination
    to that power), from an ULTRA ``ClickModel`` JSON file, or from its parsed dict."""
    if isinstance(spec, str) and spec in NAMES:
        e = 1.0 if eta is None else float(eta)
        if spec == "pbm":
            return PositionBased(ULTRA_CLICK_PROB, [t**e for t in ULTRA_THETA], e)
        if spec == "cascade":
            return Cascade(ULTRA_CLICK_PROB, [1.0] * 10, e)
        return UserBrowsing(ULTRA_CLICK_PROB, [[g**e for g in row] for row in ULTRA_UBM], e)
    if isinstance(spec, dict):
        desc, where = spec, "the click model"
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"no click model {spec!r}: give pbm, cascade, ubm or an ULTRA ClickModel JSON file")
        try:
            desc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        where = str(path)
    if eta is not None:
        raise ValueError("eta applies to the named models; a JSON file's exam_prob already holds θ^η")
    kind = desc.get("model_name")
    classes: dict[str, type[ClickModel]] = {"position_biased_model": PositionBased, "cascade_model": Cascade,
                                            "user_browsing_model": UserBrowsing, "dependent_click_model": DependentClick,
                                            "dynamic_bayesian_network_model": DynamicBayesian}
    if kind not in classes:
        raise DataError(f"{where}: model_name {kind!r} is not supported; supported: {', '.join(classes)}")
    needs = {"dependent_click_model": ("click_prob", "continuation"),
             "dynamic_bayesian_network_model": ("click_prob", "gamma", "satisfaction")}.get(kind, ("click_prob", "exam_prob"))
    for key in needs:
        if key not in desc:
            raise DataError(f"{where}: no {key!r}")
    eta_ = float(desc.get("eta", 1.0))
    model: ClickModel
    if kind == "dependent_click_model":
        model = DependentClick(desc["click_prob"], desc["continuation"], eta_)
    elif kind == "dynamic_bayesian_network_model":
        sat = _pair_table(desc["satisfaction"], where, "satisfaction")
        mean = float(np.mean(list(sat.values()))) if sat else 0.5
        model = DynamicBayesian(desc["click_prob"], float(desc["gamma"]), float(desc.get("sat_unseen", mean)), eta_)
        model.satisfied = sat
    else:
        model = classes[kind](desc["click_prob"], desc["exam_prob"], eta_)
    model.pairs = _pair_table(desc.get("attractiveness", []), where, "attractiveness")
    return model


def _pair_table(rows: Any, where: str, key: str) -> dict[tuple[str, str], float]:
    """``[[query, document, probability], ...]`` of a fitted model's JSON as a dict."""
    if not isinstance(rows, list):
        raise DataError(f"{where}: {key!r} must be a list of [query, document, probability]")
    out = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[1], str)
                and isinstance(row[2], int | float) and 0 <= row[2] <= 1):
            raise DataError(f"{where}: {key!r} holds {str(row)[:60]}, not [query, document, probability in [0, 1]]")
        out[(row[0], row[1])] = float(row[2])
    return out


@dataclass(frozen=True)
class ShownList:
    """What a logging ranker has for a query: document ids best first, with their labels (and its
    scores, which Plackett-Luce sampling needs)."""

    qid: str
    docs: tuple[str, ...]
    labels: tuple[float, ...]
    query: str | None = None
    scores: tuple[float, ...] | None = None


@dataclass(frozen=True)
class LoggingPolicy:
    """One logging ranker and its share of the sessions. ``lists``: its candidates per query, best
    first. ``temperature`` None shows its top ``top`` as ranked; ``T > 0`` shows a Plackett-Luce
    sample of ``top`` from ``softmax(z / T)``, ``z`` its scores standardised within the query
    (so one temperature means the same for BM25 and a dense retriever)."""

    name: str
    lists: Sequence[ShownList]
    share: float = 1.0
    temperature: float | None = None


def simulate(lists: Sequence[ShownList] | Sequence[LoggingPolicy], model: ClickModel, sessions: int, *, seed: int = 0,
             randomize: bool = False, randpair: float = 0.0, top: int | None = None,
             chunk: int = 20_000) -> Iterator[ClickSession]:
    """``sessions`` simulated sessions, each on a query drawn uniformly from those with a list.
    ``lists``: one deterministic logging ranker's lists, or :class:`LoggingPolicy` s sharing the
    sessions (each session draws one by its share among those with a list for its query, and
    records its name in ``policy``). ``top``: results shown (default: every candidate).
    ``randpair``: the fraction of sessions in which one adjacent pair, uniformly chosen, is swapped
    (RandPair; their policy gains ``+randpair``). ``randomize``: each session shows its list in a
    uniformly random order (RandTop-k). Seeded; one deterministic ranker without RandPair draws
    exactly what it always did."""
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    if not 0 <= randpair <= 1:
        raise ValueError(f"randpair must be a fraction in [0, 1], got {randpair}")
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    policies = [p if isinstance(p, LoggingPolicy) else None for p in lists]
    if not all(policies):
        if any(policies):
            raise ValueError("give either lists or logging policies, not both")
        policies = [LoggingPolicy("", [s for s in lists if isinstance(s, ShownList)])]
    pols = [p for p in policies if p is not None]
    for p in pols:
        if not p.share > 0:
            raise ValueError(f"logging policy {p.name!r}: its share must be > 0, got {p.share}")
        if p.temperature is not None and not p.temperature > 0:
            raise ValueError(f"logging policy {p.name!r}: the temperature must be > 0, got {p.temperature}")
    qids: dict[str, int] = {}
    text: dict[str, str | None] = {}
    for p in pols:
        for s in p.lists:
            if s.docs:
                qids.setdefault(s.qid, len(qids))
                text.setdefault(s.qid, s.query)
    if not qids:
        raise DataError("no query has a list to show")
    tables = [_PolicyTable(p, qids, model, top) for p in pols]
    width = max(t.shown for t in tables)
    share = np.stack([t.length > 0 for t in tables], axis=1) * np.asarray([p.share for p in pols])[None, :]
    cum = np.cumsum(share / share.sum(axis=1, keepdims=True), axis=1)
    queries = list(qids)
    rng = np.random.default_rng(seed)
    draws = np.random.default_rng([seed, 1])  # policies, Plackett-Luce, RandPair: apart from the clicks' stream
    channels = tables[0].inputs.shape[2]
    done = 0
    while done < sessions:
        n = min(chunk, sessions - done)
        q = rng.integers(len(queries), size=n)
        pol = (draws.random(n)[:, None] > cum[q, :-1]).sum(axis=1) if len(pols) > 1 else np.zeros(n, dtype=np.int64)
        order = np.zeros((n, width), dtype=np.int64)
        x = np.zeros((n, width, channels))
        ln = np.zeros(n, dtype=np.int64)
        for i, t in enumerate(tables):
            rows = np.flatnonzero(pol == i)
            if len(rows):
                order[rows, : t.shown], x[rows, : t.shown], ln[rows] = t.draw(q[rows], draws)
        swapped = np.zeros(n, dtype=bool)
        if randpair > 0:
            swapped = (draws.random(n) < randpair) & (ln >= 2)
            at = (draws.random(n) * np.maximum(ln - 1, 1)).astype(np.int64)
            r = np.flatnonzero(swapped)
            for a in (order, x):
                a[r, at[r]], a[r, at[r] + 1] = a[r, at[r] + 1].copy(), a[r, at[r]].copy()
        if randomize:
            keys = rng.random((n, width)) + (np.arange(width)[None, :] >= ln[:, None])  # padding sorts last
            perm = np.argsort(keys, axis=1)
            order = np.take_along_axis(order, perm, axis=1)
            x = np.take_along_axis(x, perm[:, :, None], axis=1)
        clicks = model.sample(x, ln, rng)
        for k in range(n):
            t, m = tables[pol[k]], ln[k]
            pool = t.docs[q[k]]
            name = t.name + ("+randpair" if swapped[k] else "")
            yield ClickSession(queries[q[k]], tuple(pool[j] for j in order[k, :m]), tuple(int(c) for c in clicks[k, :m]),
                               f"s{done + k}", text[queries[q[k]]], policy=name.lstrip("+") or None)
        done += n


class _PolicyTable:
    """A logging policy's candidates as arrays over the queries of a simulation."""

    def __init__(self, policy: LoggingPolicy, qids: dict[str, int], model: ClickModel, top: int | None) -> None:
        self.name, self.temperature = policy.name, policy.temperature
        by_q = {s.qid: s for s in policy.lists if s.docs}
        lists = [by_q.get(q, ShownList(q, (), ())) for q in qids]
        pool = max(len(s.docs) for s in lists)
        self.length = np.asarray([len(s.docs) for s in lists])
        self.shown = min(pool, top) if top else pool
        labels = np.zeros((len(lists), pool))
        self.z = np.full((len(lists), pool), -np.inf)
        for i, s in enumerate(lists):
            labels[i, : len(s.labels)] = s.labels
            if self.temperature is not None and s.docs:
                if s.scores is None or len(s.scores) != len(s.docs):
                    raise DataError(f"logging policy {self.name!r}: query {s.qid!r} has no score per candidate, which "
                                    "Plackett-Luce sampling needs")
                v = np.asarray(s.scores, dtype=np.float64)
                sd = v.std()
                self.z[i, : len(v)] = (v - v.mean()) / (sd if sd > 0 else 1.0)
        self.docs = [s.docs for s in lists]
        self.inputs = model.inputs(lists, labels)  # checks the labels before drawing anything

    def draw(self, q: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate indices shown [n, shown] (top first), their click-model inputs, and the lengths."""
        n = len(q)
        if self.temperature is None:
            order = np.broadcast_to(np.arange(self.shown), (n, self.shown))
        else:  # Plackett-Luce by the Gumbel-top-k trick: the order of z/T + Gumbel noise
            keys = self.z[q] / self.temperature + rng.gumbel(size=self.z[q].shape)
            order = np.argsort(-keys, axis=1, kind="stable")[:, : self.shown]
        x = np.take_along_axis(self.inputs[q], order[:, :, None], axis=1)
        return order, x, np.minimum(self.length[q], self.shown)


def letor_lists(data: LetorData, scores: np.ndarray, top: int = 10) -> list[ShownList]:
    """Each query's ``top`` rows under the logging ranker's ``scores`` (ties keep row order),
    with their labels; documents are named by row inside the query."""
    if len(scores) != len(data.labels):
        raise DataError(f"{len(scores)} logging scores for {len(data.labels)} rows")
    out = []
    for i, q in enumerate(data.qids):
        rows = data.rows(i)
        order = np.argsort(-np.asarray(scores[rows], dtype=np.float64), kind="stable")[:top]
        out.append(ShownList(q, tuple(str(int(j)) for j in order), tuple(float(data.labels[rows.start + j]) for j in order),
                             scores=tuple(float(scores[rows.start + j]) for j in order)))
    return out


def run_lists(queries: Sequence[Any], run: Mapping[str, Sequence[Any]], qrels: dict[str, dict[str, int]],
              top: int = 10) -> list[ShownList]:
    """Each query's ``top`` results of a first-stage ``run`` (the logging ranker), labelled from
    ``qrels`` (unjudged and negative grades: 0), with the query text."""
    out = []
    for q in queries:
        hits = list(run.get(q.qid, []))[:top]
        if hits:
            judged = qrels.get(q.qid, {})
            out.append(ShownList(q.qid, tuple(h.docid for h in hits),
                                 tuple(float(max(0, judged.get(h.docid, 0))) for h in hits), q.text,
                                 tuple(float(h.score) for h in hits)))
    return out
