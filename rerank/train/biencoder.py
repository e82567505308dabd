"""Training bi-encoders (sentence-transformers models) over candidate lists.

The lists are the cross-encoder's (:class:`~rerank.train.crossencoder.CrossEncoderTask`: up to
``positives`` relevant documents and hard negatives from a first stage), scored by
``scale · cos(q, d)`` of the model's embeddings; any loss of :mod:`rerank.train.losses` applies:
``softmax`` with one positive is the contrastive (InfoNCE) objective over hard negatives,
``pgrank`` the policy gradient of :mod:`rerank.train.pgrank`. The model is saved with
sentence-transformers' ``save``, so ``--retriever dense:FOLDER`` and ``Encoder(folder)`` load it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..evaluate import evaluate
from ..models.loading import load_model
from .crossencoder import CrossEncoderTask, mine_lists

if TYPE_CHECKING:
    from ..data import Dataset
    from .trainer import TrainConfig

log = logging.getLogger("rerank")


def load_bi_encoder(name: str, device: str = "cpu", max_length: int = 256) -> Any:
    """A trainable sentence-transformers model (warm start from ``name``)."""
    return load_model(name, "sentence-transformer", device=device, max_length=max_length, train=True).model


class BiEncoderTask(CrossEncoderTask):
    """Lists for :class:`~rerank.train.trainer.Trainer`, scored by a bi-encoder: ``scale`` times
    the cosine of query and document embeddings (20, sentence-transformers' contrastive default)."""

    def __init__(self, model_name: str, model: Any, queries: Sequence[Any], qrels: Any, candidates: Any, docs: Any = None, *,
                 scale: float = 20.0, **options: Any) -> None:
        super().__init__(model_name, model.tokenizer, queries, qrels, candidates, docs, **options)
        self.scale = scale

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "bi-encoder", "scale": self.scale}

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        rows = [self._draw(i, epoch) for i in indices]
        width = max(len(items) for _, items in rows)
        labels = torch.zeros(len(rows), width)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        docs, where = [], []
        for b, (_, items) in enumerate(rows):
            for j, (text, grade) in enumerate(items):
                docs.append(text)
                where.append((b, j))
                labels[b, j] = float(grade)
                mask[b, j] = True
        return ([q for q, _ in rows], docs, where, (len(rows), width)), labels, mask

    def _embed(self, model: Any, texts: list[str]) -> torch.Tensor:
        features = (getattr(model, "preprocess", None) or model.tokenize)(texts)  # preprocess: sentence-transformers >= 6
        out = model({k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()})
        out = out["sentence_embedding"].float()
        return torch.nn.functional.normalize(out, dim=-1)

    def scores(self, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        queries, docs, where, shape = inputs
        q = self._embed(model, queries)
        d = self._embed(model, docs)
        idx_b = torch.tensor([b for b, _ in where], device=q.device)
        idx_j = torch.tensor([j for _, j in where], device=q.device)
        out = torch.zeros(shape, device=q.device, dtype=q.dtype)
        return out.index_put((idx_b, idx_j), self.scale * (q[idx_b] * d).sum(dim=1))

    def rerank(self, model: Any, queries: Sequence[Any], candidates: Any) -> Any:
        """A run: ``candidates`` reordered by the model's cosine (with texts in the hits)."""
        from ..types import Hit

        run = {}
        with torch.no_grad():
            for q in queries:
                hits = [h for h in candidates.get(q.qid, []) if h.text is not None]
                if not hits:
                    continue
                qe = self._embed(model, [q.text])
                de = torch.cat([self._embed(model, [h.text for h in hits[i : i + 64]]) for i in range(0, len(hits), 64)])
                s = (de * qe[0]).sum(dim=1).float().cpu().numpy().astype(np.float64)  # no bf16 matmul under autocast
                order = np.argsort(-s, kind="stable")
                run[q.qid] = [Hit(hits[i].docid, float(s[i])) for i in order]
        return run

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if not self.dev_qrels:
            return {}
        run = self.rerank(model, self.dev_queries, self.dev_candidates)
        return {"dev nDCG@10": evaluate(run, self.dev_qrels, ["nDCG@10"], rel=self.rel).metrics["nDCG@10"]}

    def save(self, model: Any, folder: Path) -> None:
        model.save(str(folder))


def train_bi_encoder(model: str, dataset: Dataset, output: str | Path, config: TrainConfig, *, negatives: str = "bm25:30",
                     group_size: int = 20, positives: int = 1, max_length: int = 256, dev_queries: int = 50,
                     device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Train the sentence-transformers ``model`` on ``dataset`` (its train split) over lists of
    ``group_size`` with negatives from ``negatives`` (``RETRIEVER:DEPTH``); ``config.loss`` picks
    the objective (``pgrank``, ``softmax`` for contrastive, or any other)."""
    from .trainer import Trainer

    qrels, train_q, dev_q, candidates, depth = mine_lists(dataset, negatives, dev_queries, config.seed)
    torch.manual_seed(config.seed)
    body = load_bi_encoder(model, device, max_length)
    task = BiEncoderTask(model, body, train_q, qrels, candidates, dataset.docs, group_size=group_size, max_length=max_length,
                         rel=dataset.rel, seed=config.seed, dev_queries=dev_q, dev_depth=depth, device=device,
                         positives=positives)
    return Trainer(body, task, config, output, device=device, overwrite=overwrite).train()
