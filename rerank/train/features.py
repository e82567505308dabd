"""Feature-based learning to rank: LETOR / SVMlight data and an MLP ranker trained with any loss.

``read_letor`` reads ``label qid:Q 1:v 2:v ... # comment`` lines (MSLR-WEB10K, Yahoo, Istella)
and LightGBM's layout without ``qid`` whose list sizes come from a ``<file>.query`` file beside
it. Rows of one query must be contiguous. Missing features are 0.

:class:`FeatureMLP` scores feature vectors; inputs go through ``sign(x) log(1 + |x|)`` (LETOR
features span many orders of magnitude) and a standardisation fitted on the training data,
both stored with the model. ``FeatureRanker.load(folder)`` loads a trained one.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import Qrels
from ..data.formats import iter_lines
from ..env import atomic_write
from ..errors import DataError
from ..evaluate import evaluate
from ..models.loading import load_weights
from ..types import Hit, Ranking

if TYPE_CHECKING:
    from .trainer import TrainConfig

log = logging.getLogger("rerank")

MAX_FEATURES = 1_000_000  # a larger feature index is a corrupt file, not a feature (rows are dense in memory)


@dataclass
class LetorData:
    """Rows of feature vectors grouped by query: rows ``offsets[i]:offsets[i+1]`` belong to ``qids[i]``."""

    features: np.ndarray  # [N, F] float32
    labels: np.ndarray  # [N] float32
    qids: list[str]
    offsets: np.ndarray  # [Q + 1]
    source: str = ""

    def __len__(self) -> int:
        return len(self.qids)

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def subset(self, indices: Sequence[int]) -> LetorData:
        parts = [self.rows(i) for i in indices]
        sizes = [s.stop - s.start for s in parts]
        return LetorData(np.concatenate([self.features[s] for s in parts]) if parts else self.features[:0],
                         np.concatenate([self.labels[s] for s in parts]) if parts else self.labels[:0],
                         [self.qids[i] for i in indices], np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                         self.source)

    def qrels(self) -> Qrels:
        """Labels as qrels (documents named by their row in the query); queries with no relevant
        document are left out, as they cannot tell rankers apart."""
        out: Qrels = {}
        for i, q in enumerate(self.qids):
            labels = self.labels[self.rows(i)]
            if (labels > 0).any():
                out[q] = {str(j): int(y) for j, y in enumerate(labels)}
        return out

    def ranking(self, scores: np.ndarray) -> Ranking:
        """A run from one score per row (ties keep row order)."""
        run: Ranking = {}
        for i, q in enumerate(self.qids):
            s = scores[self.rows(i)]
            order = sorted(range(len(s)), key=lambda j: (-float(s[j]), j))
            run[q] = [Hit(str(j), float(s[j])) for j in order]
        return run


def read_letor(path: str | Path, query_file: str | Path | None = None, num_features: int | None = None) -> LetorData:
    """Read an SVMlight/LETOR ranking file (see the module docstring). ``num_features``: the
    width to use (e.g. the training file's, for a test file); a larger index is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no feature file {path}")
    qfile = Path(query_file) if query_file else path.with_name(path.name + ".query")
    labels: list[float] = []
    qids: list[str | None] = []
    entries: list[tuple[np.ndarray, np.ndarray]] = []
    width = 0
    for n, line in iter_lines(path):
        body = line.split("#", 1)[0].split()
        if not body:
            continue
        try:
            label = float(body[0])
        except ValueError:
            raise DataError(f"{path}:{n}: the label {body[0]!r} is not a number") from None
        if not (label >= 0 and np.isfinite(label)):
            raise DataError(f"{path}:{n}: label {body[0]} must be >= 0")
        qid = None
        idx, val = [], []
        for tok in body[1:]:
            key, sep, value = tok.partition(":")
            if not sep:
                raise DataError(f"{path}:{n}: {tok!r} is not KEY:VALUE")
            if key == "qid":
                qid = value
                continue
            try:
                i, v = int(key), float(value)
            except ValueError:
                raise DataError(f"{path}:{n}: bad feature {tok!r}") from None
            if not 1 <= i <= MAX_FEATURES:
                raise DataError(f"{path}:{n}: feature index {i} is outside 1..{MAX_FEATURES}")
            if not np.isfinite(v):
                raise DataError(f"{path}:{n}: feature {i} is {value}")
            idx.append(i - 1)
            val.append(v)
        if num_features is not None and idx and max(idx) >= num_features:
            raise DataError(f"{path}:{n}: feature {max(idx) + 1} beyond the {num_features} features of the model/training "
                            f"data")
        width = max(width, max(idx) + 1 if idx else 0)
        labels.append(label)
        qids.append(qid)
        entries.append((np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=np.float32)))
    if not labels:
        raise DataError(f"{path} holds no rows")
    width = num_features or width
    x = np.zeros((len(labels), width), dtype=np.float32)
    for r, (cols, values) in enumerate(entries):
        x[r, cols] = values
    if all(q is None for q in qids):
        if not qfile.is_file():
            raise DataError(f"{path} has no qid: fields and no query file {qfile} (one list size per line)")
        try:
            sizes = [int(t) for _, line in iter_lines(qfile) for t in line.split()]
        except ValueError:
            raise DataError(f"{qfile}: a list size is not an integer") from None
        if not sizes or sum(sizes) != len(labels) or min(sizes) < 1:
            raise DataError(f"{qfile}: list sizes add up to {sum(sizes)}, but {path} has {len(labels)} rows")
        names = [str(i) for i in range(len(sizes))]
    elif any(q is None for q in qids):
        raise DataError(f"{path}:{qids.index(None) + 1}: row without qid: in a file whose other rows have one")
    else:
        names, sizes = [], []
        seen: set[str] = set()
        for r, q in enumerate(qids):
            assert q is not None
            if names and names[-1] == q:
                sizes[-1] += 1
                continue
            if q in seen:
                raise DataError(f"{path}:{r + 1}: rows of qid {q} are not contiguous")
            seen.add(q)
            names.append(q)
            sizes.append(1)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return LetorData(x, np.asarray(labels, dtype=np.float32), names, offsets, str(path))


class FeatureMLP(torch.nn.Module):
    """``score(x) = MLP(standardise(sign(x) log(1 + |x|)))``."""

    def __init__(self, num_features: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.1) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"num_features": num_features, "hidden": list(hidden), "dropout": dropout}
        layers: list[torch.nn.Module] = []
        width = num_features
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    @staticmethod
    def transform(x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * torch.log1p(x.abs())

    def fit_normalizer(self, features: np.ndarray) -> None:
        t = self.transform(torch.from_numpy(features).float())
        self.mean.copy_(t.mean(dim=0))
        self.std.copy_(t.std(dim=0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.transform(x) - self.mean) / self.std
        return self.net(z)[..., 0]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / "model.pt", "wb", encoding=None) as f:
            torch.save(self.state_dict(), f)
        with atomic_write(folder / "ranker.json") as f:
            json.dump({"kind": "feature-mlp", **self.config}, f, indent=1)


class FeatureRanker:
    """A trained :class:`FeatureMLP` loaded from its folder, for scoring LETOR data."""

    def __init__(self, model: FeatureMLP) -> None:
        self.model = model.eval()

    @classmethod
    def load(cls, folder: str | Path) -> FeatureRanker:
        folder = Path(folder)
        meta = folder / "ranker.json"
        if not meta.is_file():
            raise DataError(f"{folder} holds no trained feature ranker (no ranker.json)")
        cfg = json.loads(meta.read_text())
        if cfg.get("kind") != "feature-mlp":
            raise DataError(f"{meta}: unknown ranker kind {cfg.get('kind')!r}")
        model = FeatureMLP(cfg["num_features"], cfg["hidden"], cfg["dropout"])
        try:
            model.load_state_dict(load_weights(folder / "model.pt", "a feature ranker's weights file"))
        except RuntimeError as e:  # tensors, but not this ranker's (another shape, other names)
            raise DataError(f"{folder / 'model.pt'} does not fit {meta}: {str(e).splitlines()[0]}") from None
        return cls(model)

    @property
    def num_features(self) -> int:
        return int(self.model.config["num_features"])

    def predict(self, data: LetorData | np.ndarray) -> np.ndarray:
        x = data.features if isinstance(data, LetorData) else data
        if x.shape[1] != self.num_features:
            raise DataError(f"the ranker takes {self.num_features} features, the data has {x.shape[1]}")
        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(x)).float()).float().numpy()


def letor_ndcg(data: LetorData, scores: np.ndarray, metrics: Sequence[str] = ("nDCG@10",)) -> dict[str, float]:
    qrels = data.qrels()
    if not qrels:
        raise DataError(f"{data.source}: no query has a relevant document")
    return evaluate(data.ranking(scores), qrels, list(metrics)).metrics


def dev_ndcg(model: torch.nn.Module, dev: LetorData | None) -> dict[str, float]:
    """``{"dev nDCG@10": ...}`` of a :class:`FeatureMLP` on labelled dev data (empty without it)."""
    if dev is None:
        return {}
    assert isinstance(model, FeatureMLP)
    return {"dev nDCG@10": letor_ndcg(dev, FeatureRanker(model).predict(dev))["nDCG@10"]}


class FeatureTask:
    """Lists of one query's rows each, for :class:`~rerank.train.trainer.Trainer`. Lists longer
    than ``max_list`` are sampled down (seeded per list and epoch): up to half of the slots go
    to relevant rows, the rest are drawn from all remaining rows."""

    def __init__(self, train: LetorData, dev: LetorData | None = None, *, max_list: int = 256, seed: int = 0,
                 device: str = "cpu") -> None:
        self.train, self.dev = train, dev
        self.max_list, self.seed, self.device = max_list, seed, device

    def __len__(self) -> int:
        return len(self.train)

    def describe(self) -> dict[str, Any]:
        return {"train": self.train.source, "queries": len(self.train), "rows": int(self.train.features.shape[0]),
                "features": self.train.num_features, "max_list": self.max_list}

    def _rows(self, i: int, epoch: int) -> np.ndarray:
        s = self.train.rows(i)
        idx = np.arange(s.start, s.stop)
        if len(idx) <= self.max_list:
            return idx
        rng = random.Random(f"{self.seed}/{epoch}/{i}")
        relevant = [int(j) for j in idx if self.train.labels[j] > 0]
        keep = rng.sample(relevant, min(len(relevant), self.max_list // 2))
        chosen = set(keep)
        rest = [int(j) for j in idx if int(j) not in chosen]
        return np.asarray(sorted(keep + rng.sample(rest, self.max_list - len(keep))))

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        rows = [self._rows(i, epoch) for i in indices]
        width = max(len(r) for r in rows)
        x = torch.zeros(len(rows), width, self.train.num_features)
        labels = torch.zeros(len(rows), width)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, r in enumerate(rows):
            x[b, : len(r)] = torch.from_numpy(self.train.features[r])
            labels[b, : len(r)] = torch.from_numpy(self.train.labels[r])
            mask[b, : len(r)] = True
        return x, labels, mask

    def scores(self, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        return model(inputs.to(self.device))

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return dev_ndcg(model, self.dev)

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        assert isinstance(model, FeatureMLP)
        model.save(folder)


def train_feature_ranker(train: LetorData, output: str | Path, config: TrainConfig, *, dev: LetorData | None = None,
                         hidden: Sequence[int] = (256, 128), dropout: float = 0.1, max_list: int = 256,
                         overwrite: bool = False) -> dict[str, Any]:
    """Fit the input normalisation on ``train``, then train a :class:`FeatureMLP` with ``config``."""
    from .trainer import Trainer

    if dev is not None and dev.num_features != train.num_features:
        raise DataError(f"the dev data has {dev.num_features} features, the training data {train.num_features}")
    torch.manual_seed(config.seed)
    model = FeatureMLP(train.num_features, hidden, dropout)
    model.fit_normalizer(train.features)
    task = FeatureTask(train, dev, max_list=max_list, seed=config.seed)
    return Trainer(model, task, config, output, device="cpu", overwrite=overwrite).train()


def split_queries(data: LetorData, fraction: float, seed: int) -> tuple[LetorData, LetorData]:
    """(rest, held out): ``fraction`` of the queries held out, drawn with ``seed``."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = max(1, round(len(data) * fraction))
    held = set(random.Random(f"split/{seed}").sample(range(len(data)), n))
    return data.subset([i for i in range(len(data)) if i not in held]), data.subset(sorted(held))
