"""ProRank (2025): teaching a small LM the pointwise reranking prompt in two stages.

*Stage 1, prompt warm-up*: GRPO (:mod:`rerank.train.grpo`) on the prompt ``llm-pointwise``
scores with (its template, ``yes-no`` by default: passage, query, "Answer Yes or No"), on
(query, passage) pairs of a dataset's train split: a relevant passage (qrels) or a first-stage
negative, half and half. The reward is the judgement's correctness (the answer's first word is
the template's ``yes`` for a relevant passage, ``no`` otherwise) plus a format reward (the
answer is exactly that word): 0, 1 or 2.

*Stage 2, fine-grained score learning*: the score ``llm-pointwise`` ranks by (logit(yes) -
logit(no) at the answer position; logit(yes) for ``logit-yes`` templates; ``p-yes`` is a
monotone function of the difference, so it ranks alike) is trained to rank each query's list (a
relevant passage and first-stage negatives) with a listwise loss of :mod:`rerank.train.losses`
(the trainer's ``config.loss``: listnet by default). No new layers.

Both stages train LoRA adapters (peft) and save the model with them merged: a plain model folder
that ``llm-pointwise:FOLDER`` loads on every backend it has. With both stages, stage 1 goes to
``OUTPUT/stage1`` (skipped when finished there, so a stopped run resumes where it was) and the
final model to ``OUTPUT``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import DataError
from ..evaluate import evaluate
from .crossencoder import CrossEncoderTask, mine_lists
from .grpo import GRPOConfig, GRPOTask, GRPOTrainer, Prompt, draw, lora_policy
from .trainer import HISTORY, TrainConfig, Trainer

if TYPE_CHECKING:
    from ..data import Dataset

log = logging.getLogger("rerank")
STAGES = ("1", "2", "both")
STAGE1 = "stage1"


def judgement_reward(text: str, expected: str) -> tuple[float, bool]:
    """(reward, well formed) of a yes/no answer: 1 for the right judgement (the first word, any
    case, without quotes or punctuation, is ``expected``) plus 1 when the answer is exactly
    ``expected``'s word and nothing else (spaces around it aside)."""
    words = re.findall(r"[\w']+", text)
    correct = bool(words) and words[0].lower() == expected.lower()
    exact = text.strip() == expected
    return float(correct) + float(exact), exact


def load_pointwise(model: str, device: str, template: str | None = None, new_tokens: int = 0) -> tuple[Any, Any]:
    """(the ``llm-pointwise`` reranker of ``model`` on the torch engine in float32, the
    :class:`~rerank.models.llm.LLM` sampler on the same weights, whose context holds the
    reranker's longest prompt and ``new_tokens`` more)."""
    from ..models.llm import LLM
    from ..rerankers.pointwise import LLMPointwise

    pointwise = LLMPointwise(model, template=template, backend="torch", dtype="float32", device=device, depth=10**6)
    llm = LLM.from_model(pointwise.model, pointwise.tokenizer, pointwise.window + new_tokens, name=model)
    return pointwise, llm


def training_lists(dataset: Dataset, negatives: str, *, max_queries: int | None, dev_queries: int,
                   seed: int) -> tuple[Any, list[Any], list[Any], Any, int]:
    """:func:`~rerank.train.crossencoder.mine_lists` on the first ``max_queries`` judged queries
    of ``dataset`` (all with None)."""
    if max_queries is not None:
        qrels = dataset.require_qrels()
        judged = [q for q in dataset.queries if q.qid in qrels][: max_queries + dev_queries]
        dataset = dataclasses.replace(dataset, queries=judged, _runs={})
    return mine_lists(dataset, negatives, dev_queries, seed)


class PointwiseLogitTask(CrossEncoderTask):
    """Stage 2: the lists of :class:`CrossEncoderTask` (a relevant passage and first-stage
    negatives), scored by ``pointwise``'s answer logits on the model being trained; ``size``
    lists (the query lists in turn, fresh negatives each round)."""

    def __init__(self, pointwise: Any, lora: Any, size: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(pointwise.model_name, pointwise.tokenizer, *args, **kwargs)
        self.pointwise, self.lora, self.size = pointwise, lora, size

    def __len__(self) -> int:
        return self.size if self.lists else 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": self.size, "template": self.pointwise.template.to_json()}

    def _draw(self, index: int, epoch: int) -> tuple[str, list[tuple[str, int]]]:
        n = len(self.lists)
        return super()._draw(index % n, epoch * 1_000_003 + index // n)

    def encode_pairs(self, queries: list[str], docs: list[str]) -> Any:
        items = self.pointwise.encode(list(zip(queries, docs, strict=True)))
        return self.pointwise.engine.pad(items)

    def pair_scores(self, model: torch.nn.Module, enc: Any) -> torch.Tensor:
        return answer_score(model, enc, self.pointwise)

    def reranker(self, model: torch.nn.Module) -> Any:
        return self.pointwise  # its model is the one being trained

    def save(self, model: Any, folder: Path) -> None:
        self.lora.merge_and_unload().save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def answer_score(model: Any, batch: dict[str, Any], pointwise: Any) -> torch.Tensor:
    """[B] the score ``pointwise`` ranks by, with gradients: logit(yes) - logit(no) at the answer
    position of each right-padded prompt (logit(yes) for a ``logit-yes`` template)."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch["lengths"] - 1].float()
    head = model.get_output_embeddings()
    ids = [pointwise.yes, pointwise.no]
    logits = last @ head.weight[ids].float().T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[ids].float()
    return logits[:, 0] if pointwise.template.score == "logit-yes" else logits[:, 0] - logits[:, 1]


def _dev_metric(pointwise: Any, dev: tuple[list[Any], Any, Any] | None, rel: int) -> dict[str, float]:
    if dev is None:
        return {}
    queries, candidates, qrels = dev
    run = pointwise(queries, candidates)
    return {"dev nDCG@10": evaluate(run, qrels, ["nDCG@10"], rel=rel).metrics["nDCG@10"]}


def train_prorank(model: str, dataset: Dataset, output: str | Path, config: TrainConfig, *, stages: str = "both",
                  steps: int = 100, grpo: GRPOConfig | None = None, negatives: str = "bm25:30", group_size: int = 8,
                  max_queries: int | None = None, dev_queries: int = 0, dev_depth: int = 20, lora: int = 16,
                  template: str | None = None, device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """ProRank on ``dataset``'s train split (see the module docstring): ``steps`` optimiser steps
    per stage of ``config.batch_size`` x ``config.accumulate`` prompts (stage 1, ``grpo``'s group
    of completions each) or lists (stage 2, ``group_size`` passages each, ``config.loss``).
    Returns {"stage1": its training.json, "stage2": ...} for the stages run."""
    import json

    from ..types import Hit

    if stages not in STAGES:
        raise ValueError(f"stages must be one of {', '.join(STAGES)}, not {stages!r}")
    if steps < 1 or lora < 1:
        raise ValueError(f"steps and the LoRA rank must be >= 1, got {steps} and {lora}")
    grpo = grpo or GRPOConfig()
    grpo.check()
    out = Path(output)
    qrels, train_q, dev_q, cands, _ = training_lists(dataset, negatives, max_queries=max_queries, dev_queries=dev_queries,
                                                     seed=config.seed)
    dev = None
    if dev_q:
        dev_c = {q.qid: [h if h.text is not None else Hit(h.docid, h.score, dataset.docs.get(h.docid) if dataset.docs else None)
                         for h in cands.get(q.qid, [])[:dev_depth]] for q in dev_q}
        dev = (dev_q, dev_c, {q.qid: qrels[q.qid] for q in dev_q if q.qid in qrels})
    per_step = config.batch_size * config.accumulate
    results: dict[str, Any] = {}
    start = model
    if stages in ("1", "both"):
        where = out / STAGE1 if stages == "both" else out
        done = where / HISTORY
        if stages == "both" and done.is_file() and json.loads(done.read_text()).get("finished") and not overwrite:
            log.info("stage 1 finished earlier in %s: going on from it", where)
            results["stage1"] = json.loads(done.read_text())
        else:
            pointwise, llm = load_pointwise(model, device, template, grpo.max_new_tokens)
            lists = CrossEncoderTask(model, pointwise.tokenizer, train_q, qrels, cands, dataset.docs, group_size=2,
                                     rel=dataset.rel, seed=config.seed).lists
            if not lists:
                raise DataError("no training pairs: no query has a relevant passage and a first-stage negative with text")
            tpl = pointwise.template

            def prompt(index: int) -> Prompt:
                rng = draw(config.seed, "prorank-1", index)
                qt, pos, neg = lists[index % len(lists)]
                relevant = rng.random() < 0.5
                doc = rng.choice(pos if relevant else neg)[0]
                return Prompt(tuple(pointwise.encode([(qt, doc)])[0]["input_ids"]), tpl.yes if relevant else tpl.no)

            wrapped = lora_policy(llm.model, lora)
            task = GRPOTask(llm, prompt, steps * per_step, judgement_reward, grpo, lora=wrapped,
                            identity={"objective": "prorank-1", "lists": len(lists), "template": tpl.to_json(),
                                      "first": lists[0][0][:64] if lists else "", "lora": lora},
                            evaluate=lambda: _dev_metric(pointwise, dev, dataset.rel))
            results["stage1"] = GRPOTrainer(llm.model, task, dataclasses.replace(config, loss="task"), where,
                                            device=llm.device, overwrite=overwrite).train()
            del pointwise, llm, wrapped, task
        start = str(where)
    if stages in ("2", "both"):
        pointwise, _ = load_pointwise(start, device, template)
        wrapped = lora_policy(pointwise.model, lora)
        task2 = PointwiseLogitTask(pointwise, wrapped, steps * per_step, train_q, qrels, cands, dataset.docs,
                                   group_size=group_size, rel=dataset.rel, seed=config.seed, device=pointwise.device)
        if dev is not None:
            task2.dev_queries, task2.dev_candidates = dev[0], dev[1]
            task2.dev_qrels = dev[2]
        results["stage2"] = Trainer(pointwise.model, task2, config, out, device=pointwise.device, overwrite=overwrite).train()
    return results


def summary(result: dict[str, Any]) -> list[str]:
    """Lines summarising :func:`train_prorank`'s result for the command line."""
    from .grpo import curve_summary

    lines = []
    if "stage1" in result:
        lines.append(f"stage 1 (GRPO warm-up): {curve_summary(result['stage1'])}")
    if "stage2" in result:
        steps = result["stage2"].get("loss_per_step") or []
        t = max(1, len(steps) // 10)
        if steps:
            first, last = (sum(s["loss"] for s in part) / len(part) for part in (steps[:t], steps[-t:]))
            lines.append(f"stage 2 (score learning): loss first {t} steps {first:.4f}, last {t} steps {last:.4f}")
    return lines
