"""Full-ranking fine-tuning of a generative listwise LLM (Liu et al., "Sliding Windows Are Not the
End: Exploring Full Ranking with Long-Context Large Language Models", 2024).

*Complete listwise labels.* Sliding windows only fix the top of a ranking, so they cannot label a
full permutation. A label here orders every candidate of a query: by the judged grade (qrels)
when there are qrels, and within a grade (or without qrels, wholly) by a teacher's ranking (any
rerank reranker or a run file), the first-stage order breaking what the teacher leaves tied or
unranked. :func:`complete_labels` builds them; :func:`write_labels` / :func:`read_labels` keep
them as a JSON-lines file, one object per query::

    {"qid": "q1", "query": "what do cats eat",
     "candidates": ["d3", "d7", "d1"],   # the first-stage order: the order the prompt shows
     "ranking": ["d7", "d3", "d1"],      # the complete label: every candidate, best first
     "grades": {"d7": 2},                # the judged grades among the candidates ({} without qrels)
     "source": "qrels+teacher"}          # qrels+teacher | qrels+first-stage | teacher

*Objective.* The model reads the :class:`~rerank.rerankers.listwise.ListwiseGenerate` prompt of
the whole list (``window="all"``) and is trained to write the label ``[2] > [5] > ...``. ``lm``
is the mean token cross-entropy of the answer; ``importance`` weighs each answer token by
:func:`~rerank.train.losses.importance_weights` (the paper's importance-aware loss: identifiers
near the top weigh up to twice a separator). LoRA through peft, resumable through the trainer's
checkpoints; the output loads as ``listwise-gen:OUTPUT`` (``--window all``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import DataError
from ..evaluate import evaluate
from ..types import Query, Ranking
from .first import FirstTask, Window, add_lora
from .losses import importance_weights, weighted_token_loss

if TYPE_CHECKING:
    from ..data import Dataset, Qrels
    from .trainer import TrainConfig

log = logging.getLogger("rerank")
OBJECTIVE_LOSSES = ("lm", "importance")
SOURCES = ("qrels+teacher", "qrels+first-stage", "teacher")


def complete_labels(queries: Sequence[Query], candidates: Ranking, *, qrels: Qrels | None = None,
                    teacher: Ranking | None = None, depth: int = 100, rel: int = 1) -> list[dict[str, Any]]:
    """One complete label per query (the schema in the module docstring) over its top ``depth``
    ``candidates``: sorted by grade (with ``qrels``), then by the ``teacher``'s order, then by the
    first-stage order. With qrels, queries with no candidate judged ``>= rel`` are left out
    (nothing to learn about the top); without qrels a teacher is required. Inputs are not changed."""
    if qrels is None and teacher is None:
        raise DataError("complete labels need qrels, a teacher ranking, or both")
    source = "teacher" if qrels is None else "qrels+teacher" if teacher is not None else "qrels+first-stage"
    out = []
    for q in queries:
        shown = list(dict.fromkeys(h.docid for h in candidates.get(q.qid, [])[:depth]))
        if len(shown) < 2:
            continue
        judged = (qrels or {}).get(q.qid, {})
        if qrels is not None and not any(judged.get(d, 0) >= rel for d in shown):
            continue
        taught = {d: i for i, d in enumerate(dict.fromkeys(h.docid for h in (teacher or {}).get(q.qid, [])))}
        first = {d: i for i, d in enumerate(shown)}
        ranking = sorted(shown, key=lambda d: (-judged.get(d, 0), taught.get(d, len(taught)), first[d]))
        out.append({"qid": q.qid, "query": q.text, "candidates": shown, "ranking": ranking,
                    "grades": {d: int(judged[d]) for d in shown if d in judged}, "source": source})
    return out


def write_labels(path: str | Path, labels: Sequence[Mapping[str, Any]]) -> None:
    """Write labels as JSON lines, atomically (an existing file is replaced only on success)."""
    from ..env import atomic_write

    with atomic_write(path) as f:
        for row in labels:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Labels written by :func:`write_labels` (or by hand in that schema); a malformed line is a
    DataError naming the file and line."""
    from ..data.formats import iter_lines, json_line

    out = []
    for n, line in iter_lines(path):
        where = f"{path}:{n}"
        row = json_line(Path(path), n, line)
        if not isinstance(row, dict):
            raise DataError(f"{where}: a label is a JSON object, got {type(row).__name__}")
        for key, kind in (("qid", str), ("query", str), ("candidates", list), ("ranking", list)):
            if not isinstance(row.get(key), kind):
                raise DataError(f"{where}: {key!r} must be a {'string' if kind is str else 'list'}")
        if sorted(map(str, row["ranking"])) != sorted(map(str, row["candidates"])) or len(set(row["ranking"])) != len(
                row["ranking"]):
            raise DataError(f"{where}: 'ranking' must order every candidate exactly once")
        out.append(row)
    return out


def label_lists(labels: Sequence[Mapping[str, Any]], texts: Mapping[str, str] | Any) -> list[Window]:
    """Training lists from labels: the candidates' texts in first-stage order and the gold
    permutation (indices, best first). ``texts``: docid -> text (a mapping or a document store
    with ``get``); a label naming a document without text is an error."""
    out = []
    for row in labels:
        passages = []
        for d in row["candidates"]:
            text = texts.get(d)
            if text is None:
                raise DataError(f"label of query {row['qid']!r}: document {d!r} has no text here")
            passages.append(text)
        index = {d: i for i, d in enumerate(row["candidates"])}
        out.append(Window(row["query"], tuple(passages), tuple(index[d] for d in row["ranking"])))
    return out


class FullRankTask(FirstTask):
    """Whole lists for :class:`~rerank.train.trainer.Trainer`: the reranker's full-ranking prompt
    and the complete label as the answer; ``loss`` "lm" or "importance". ``reranker`` is a
    :class:`~rerank.rerankers.listwise.ListwiseGenerate` with ``window="all"`` loaded in float32."""

    def __init__(self, reranker: Any, lists: Sequence[Window], *, loss: str = "importance", **options: Any) -> None:
        if loss not in OBJECTIVE_LOSSES:
            raise ValueError(f"full-rank loss must be one of {', '.join(OBJECTIVE_LOSSES)}, not {loss!r}")
        if not getattr(reranker, "full", False):
            raise ValueError("full-rank training needs a reranker with window='all'")
        super().__init__(reranker, lists, lam=0.0, **options)
        self.loss_name = loss

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "objective": "full-rank", "loss": self.loss_name,
                "passages": max(len(w.passages) for w in self.windows)}

    def target(self, gold_slots: Sequence[int], n: int) -> tuple[list[int], list[float]]:
        """The answer's token ids (the permutation, then end of turn) and their importance weights."""
        llm, labels = self.reranker.llm, self.reranker.labels_for(n)
        ids = llm.tokens([" > ".join(f"[{labels[s]}]" for s in gold_slots)])[0] + self.eos
        separator = [llm.tokenizer.decode([t]).strip() == ">" for t in ids]  # the " >" token (not "<|im_end|>")
        return ids, importance_weights(separator)

    def _example(self, index: int, epoch: int) -> tuple[list[int], list[int], list[int]]:
        query, shown, gold_slots = self.shown(index, epoch)
        prompt = self.reranker.window_prompt(query, shown)
        ids, _ = self.target(gold_slots, len(shown))
        ranks = [0] * len(shown)
        for r, s in enumerate(gold_slots, 1):
            ranks[s] = r
        return prompt, ids, ranks

    def loss(self, model: Any, inputs: Any, ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows, targets, _, head = self._forward(model, inputs)
        weights = None
        if self.loss_name == "importance":
            gold = [[int(i) for i in torch.argsort(r[m])] for r, m in zip(ranks, mask, strict=True)]
            weights = torch.tensor([x for g in gold for x in self.target(g, len(g))[1]], device=rows.device)
        logits = head(rows)
        loss = weighted_token_loss(logits, targets, weights)
        lm = weighted_token_loss(logits.detach(), targets) if weights is not None else loss.detach()
        self.last_stats = {"lm_loss": float(lm)}
        return loss

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if self.dev is None:
            return {}
        queries, candidates, qrels = self.dev
        run = self.reranker(queries, {q.qid: candidates.get(q.qid, []) for q in queries})
        return {"dev nDCG@10": evaluate(run, qrels, ["nDCG@10"], rel=self.rel).metrics["nDCG@10"]}


def train_full_ranking(model: str, dataset: Dataset, output: str | Path, config: TrainConfig, *, labels: str | Path | None = None,
                       candidates: str = "bm25:20", loss: str = "importance", dev_queries: int = 50,
                       max_passage_tokens: int = 100, lora: int | None = None, shuffle: bool = False,
                       device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune the causal LM ``model`` for full ranking on ``dataset``'s train split: the top
    ``candidates`` (``RETRIEVER:DEPTH``) of each query in one prompt, the complete label from
    ``labels`` (a file of :func:`write_labels`) or, without one, from the qrels with the
    first-stage order within a grade. Dev queries are held out (labels of theirs are dropped) and
    reranked with full ranking each epoch. ``config.loss`` is ``task``; ``loss``: lm | importance;
    ``shuffle``: show each list's passages in a new order each epoch (the label moves with them)."""
    from ..rerankers.listwise import ListwiseGenerate
    from .crossencoder import mine_lists
    from .trainer import Trainer

    qrels, train_q, dev_q, cands, depth = mine_lists(dataset, candidates, dev_queries, config.seed)
    if labels is not None:
        rows = read_labels(labels)
        held = {q.qid for q in dev_q}
        kept = [r for r in rows if r["qid"] not in held]
        if len(kept) < len(rows):
            log.info("%d labels of dev queries left out of training", len(rows) - len(kept))
        rows = kept
    else:
        rows = complete_labels(train_q, cands, qrels=qrels, depth=depth, rel=dataset.rel)
    texts: dict[str, str] = {h.docid: h.text for hits in cands.values() for h in hits if h.text is not None}
    docs = dataset.docs

    class _Texts:
        def get(self, docid: str) -> str | None:
            return texts.get(docid) or (docs.get(docid) if docs is not None else None)

    lists = label_lists(rows, _Texts())
    reranker = ListwiseGenerate(model, window="all", depth=depth, dtype="float32", device=device,
                                max_passage_tokens=max_passage_tokens)
    fits = [w for w in lists if reranker.full_prompt_tokens(reranker.llm.tokens([w.query])[0],
                                                            reranker.llm.tokens(list(w.passages))) <= reranker.llm.window]
    if len(fits) < len(lists):
        log.warning("%d of %d lists do not fit the %d-token context in one prompt and are left out", len(lists) - len(fits),
                    len(lists), reranker.llm.window)
    log.info("%d complete labels of up to %d passages (%s)", len(fits), depth, rows[0]["source"] if rows else "none")
    dev = (dev_q, cands, {q.qid: qrels[q.qid] for q in dev_q if q.qid in qrels}) if dev_q else None
    wrapped = add_lora(reranker.llm.model, lora) if lora else None
    task = FullRankTask(reranker, fits, loss=loss, seed=config.seed, dev=dev, rel=dataset.rel, shuffle=shuffle,
                        lora=wrapped)
    return Trainer(reranker.llm.model, task, config, output, device=reranker.llm.device, overwrite=overwrite).train()
