"""Training cross-encoders over candidate lists: a query, a positive and hard negatives.

Each training list holds up to ``positives`` relevant documents of a query (drawn afresh each
epoch when the query has more) and fills the rest of its ``group_size`` slots with negatives drawn from the query's first-stage
candidates that are not judged relevant (judged grades below ``rel`` keep their grade as label,
so graded collections give graded lists). Draws depend on ``(seed, epoch, list)`` only.

The model is any Hugging Face encoder (a sentence-transformers body such as all-MiniLM-L6-v2,
or an existing cross-encoder) with a one-logit classification head; it is saved with
``save_pretrained`` and its tokenizer (window set to the training ``max_length``), so
``CrossEncoder(output_folder)`` and ``--reranker cross-encoder:FOLDER`` load it like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Qrels
from ..data.store import DocStore
from ..errors import DataError
from ..evaluate import evaluate
from ..models.loading import load_model
from ..rerankers.pointwise import tokenize_pairs
from ..types import Query, Ranking

if TYPE_CHECKING:
    from ..data import Dataset
    from .trainer import TrainConfig

log = logging.getLogger("rerank")


def load_cross_encoder_body(name: str, device: str = "cpu", attention_dropout: float = 0.0, *,
                            allow_new_head: bool | None = None, seed: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer): a sequence-classification model with one output from ``name``; a bare
    encoder gets a fresh head (a model with another kind's head only with ``allow_new_head``),
    drawn from ``seed`` (the global random state is left as it was) or, without one, from it.
    ``attention_dropout`` replaces the model's dropout on attention probabilities: with it, torch
    cannot use its fused attention kernel and a MiniLM training step on CPU takes 3.7x longer
    (6.5 s vs 1.75 s for 32 pairs of 256 tokens, bf16)."""
    heads: list[str] = []

    def one_logit(config: Any) -> None:
        for key in list(config.to_dict()):
            if "dropout" in key and ("attention" in key or "attn" in key):
                setattr(config, key, attention_dropout)
        heads.extend(a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForSequenceClassification"))
        if heads and getattr(config, "num_labels", 1) != 1:
            raise DataError(f"{name} is a classifier with {config.num_labels} outputs; start from an encoder body or a "
                            "one-logit cross-encoder")
        config.num_labels = 1

    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        loaded = load_model(name, "sequence-classification", device=device, train=True, configure=one_logit,
                            allow_new_head=allow_new_head)
    if not heads:
        log.info("%s has no ranking head: a fresh one-logit head was added", name)
    return loaded.model, loaded.tokenizer


class CrossEncoderTask:
    """Lists for :class:`~rerank.train.trainer.Trainer` from queries, qrels and a first-stage run."""

    def __init__(self, model_name: str, tokenizer: Any, queries: Sequence[Query], qrels: Qrels, candidates: Ranking,
                 docs: DocStore | None = None, *, group_size: int = 8, max_length: int = 256, rel: int = 1,
                 seed: int = 0, dev_queries: Sequence[Query] = (), dev_depth: int = 30, device: str = "cpu",
                 positives: int = 1) -> None:
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a positive and a negative), got {group_size}")
        if not 1 <= positives < group_size:
            raise ValueError(f"positives must be between 1 and group_size - 1 ({group_size - 1}), got {positives}")
        if max_length < 16:
            raise ValueError(f"max_length {max_length} is too short for a query and a passage")
        self.model_name, self.tokenizer, self.positives = model_name, tokenizer, positives
        self.group_size, self.max_length, self.rel, self.seed = group_size, max_length, rel, seed
        self.device = device
        self.dev_depth = dev_depth
        texts: dict[str, str] = {}
        for hits in candidates.values():
            for h in hits:
                if h.text is not None:
                    texts.setdefault(h.docid, h.text)

        def text(docid: str) -> str | None:
            if docid in texts:
                return texts[docid]
            return docs.get(docid) if docs is not None else None

        self.lists: list[tuple[str, list[tuple[str, int]], list[tuple[str, int]]]] = []
        skipped = 0
        for q in queries:
            judged = qrels.get(q.qid, {})
            pos = [(t, g) for d, g in sorted(judged.items()) if g >= rel and (t := text(d)) is not None]
            neg = [(t, judged.get(h.docid, 0)) for h in candidates.get(q.qid, [])
                   if judged.get(h.docid, 0) < rel and (t := h.text or text(h.docid)) is not None]
            if pos and neg:
                self.lists.append((q.text, pos, neg))
            else:
                skipped += 1
        if skipped:
            log.info("%d of %d training queries have no relevant document with text or no negative candidate; skipped",
                     skipped, len(queries))
        self.dev_queries = list(dev_queries)
        self.dev_qrels = {q.qid: qrels[q.qid] for q in self.dev_queries if q.qid in qrels}
        self.dev_candidates = {q.qid: [h if h.text is not None else type(h)(h.docid, h.score, text(h.docid))
                                       for h in candidates.get(q.qid, [])[:dev_depth]] for q in self.dev_queries}
        digest = hashlib.sha256()
        for qt, pos, neg in self.lists:
            digest.update(f"{qt}\x00{len(pos)}\x00{len(neg)}\x00{pos[0][0][:64]}\x00{neg[0][0][:64]}\n".encode())
        self._fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.lists)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "lists": len(self.lists), "fingerprint": self._fingerprint,
                "group_size": self.group_size, "positives": self.positives, "max_length": self.max_length,
                "dev_queries": len(self.dev_queries)}

    def _draw(self, index: int, epoch: int) -> tuple[str, list[tuple[str, int]]]:
        qtext, pos, neg = self.lists[index]
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        chosen = rng.sample(pos, min(self.positives, len(pos)))
        chosen += rng.sample(neg, min(self.group_size - len(chosen), len(neg)))
        return qtext, chosen

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        rows = [self._draw(i, epoch) for i in indices]
        width = max(len(items) for _, items in rows)
        labels = torch.zeros(len(rows), width)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        qs, ds, where = [], [], []
        for b, (qt, items) in enumerate(rows):
            for j, (dt, grade) in enumerate(items):
                qs.append(qt)
                ds.append(dt)
                where.append((b, j))
                labels[b, j] = float(grade)
                mask[b, j] = True
        return (self.encode_pairs(qs, ds), where, (len(rows), width)), labels, mask

    def encode_pairs(self, queries: list[str], docs: list[str]) -> Any:
        """The model inputs of (query, document) pairs, padded."""
        return tokenize_pairs(self.tokenizer, queries, docs, self.max_length, f"training {self.model_name}", padding=True,
                              return_tensors="pt")

    def pair_scores(self, model: torch.nn.Module, enc: Any) -> torch.Tensor:
        """[pairs] scores of encoded pairs."""
        return model(**{k: v.to(self.device) for k, v in enc.items()}).logits[:, 0].float()

    def scores(self, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        """[B, L] scores of (encoded pairs, (b, j) of each slot, shape[, encoded row of each slot]):
        with the rows, a pair that fills several slots is encoded once."""
        enc, where, shape, *rows = inputs
        logits = self.pair_scores(model, enc)
        if rows:
            logits = logits[torch.tensor(rows[0], device=logits.device)]
        out = torch.zeros(shape, device=logits.device, dtype=logits.dtype)
        idx_b = torch.tensor([b for b, _ in where], device=logits.device)
        idx_j = torch.tensor([j for _, j in where], device=logits.device)
        return out.index_put((idx_b, idx_j), logits)

    def reranker(self, model: torch.nn.Module) -> Any:
        from ..rerankers.pointwise import CrossEncoder

        return CrossEncoder.from_loaded(model, self.tokenizer, self.model_name, max_length=self.max_length,
                                        activation="none", depth=self.dev_depth)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if not self.dev_qrels:
            return {}
        run = self.reranker(model)(self.dev_queries, self.dev_candidates)
        return {"dev nDCG@10": evaluate(run, self.dev_qrels, ["nDCG@10"], rel=self.rel).metrics["nDCG@10"]}

    def save(self, model: Any, folder: Path) -> None:
        model.save_pretrained(folder)
        self.tokenizer.model_max_length = self.max_length
        self.tokenizer.save_pretrained(folder)


def split_dev(queries: Sequence[Query], qrels: Mapping[str, Any], n: int, seed: int) -> tuple[list[Query], list[Query]]:
    """(train, dev): ``n`` judged queries held out for dev evaluation, drawn with ``seed``."""
    judged = [q for q in queries if q.qid in qrels]
    if n <= 0:
        return list(queries), []
    if n >= len(judged):
        raise DataError(f"asked to hold out {n} dev queries, but only {len(judged)} queries are judged")
    dev_ids = {q.qid for q in random.Random(f"dev/{seed}").sample(judged, n)}
    return [q for q in queries if q.qid not in dev_ids], [q for q in queries if q.qid in dev_ids]


def train_cross_encoder(model: str, dataset: Dataset, output: str | Path, config: TrainConfig, *, negatives: str = "bm25:30",
                        group_size: int = 8, positives: int = 1, max_length: int = 256, dev_queries: int = 50,
                        device: str = "cpu", overwrite: bool = False, allow_new_head: bool | None = None) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` (a loaded :class:`~rerank.data.Dataset`, its train split) with hard
    negatives from the first stage ``negatives`` (``RETRIEVER:DEPTH``, e.g. ``bm25:30``)."""
    from .trainer import Trainer

    qrels, train_q, dev_q, candidates, depth = mine_lists(dataset, negatives, dev_queries, config.seed)
    body, tokenizer = load_cross_encoder_body(model, device, allow_new_head=allow_new_head, seed=config.seed)
    task = CrossEncoderTask(model, tokenizer, train_q, qrels, candidates, dataset.docs, group_size=group_size,
                            max_length=max_length, rel=dataset.rel, seed=config.seed, dev_queries=dev_q,
                            dev_depth=depth, device=device, positives=positives)
    return Trainer(body, task, config, output, device=device, overwrite=overwrite).train()


def mine_lists(
    dataset: Dataset, negatives: str, dev_queries: int, seed: int
) -> tuple[Qrels, list[Query], list[Query], Ranking, int]:
    """(qrels, train queries, dev queries, first-stage candidates with texts, depth) for
    ``negatives`` = ``RETRIEVER:DEPTH`` (any ``--retriever`` spec, e.g. ``bm25:30``)."""
    from ..specs import RETRIEVER, stage

    spec, _, depth_s = negatives.rpartition(":")
    if not spec or not depth_s.isdigit() or int(depth_s) < 1:
        raise ValueError(f"--negatives takes RETRIEVER:DEPTH (e.g. bm25:30), not {negatives!r}")
    qrels = dataset.require_qrels()
    train_q, dev_q = split_dev(dataset.queries, qrels, dev_queries, seed)
    log.info("mining negatives: %s top %s for %d queries", spec, depth_s, len(dataset.queries))
    candidates = stage(spec, dataset, role=RETRIEVER, k=int(depth_s), with_text=True)(train_q + dev_q)
    return qrels, train_q, dev_q, candidates, int(depth_s)
