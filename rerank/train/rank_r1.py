"""Rank-R1 training (Zhuang et al., 2025): GRPO on setwise prompts, without reasoning supervision.

A training prompt is a query with a set of ``set_size`` candidates from the train split: one
relevant passage (qrels) and ``set_size - 1`` first-stage negatives, in an order drawn per
prompt. The model writes ``<think>...</think><answer>...</answer>``; the reward is 1 for a well
formed answer plus 1 when the label it chose is the relevant one. The prompt and the parser are
the Rank-R1 reranker's (``rank_r1_messages(query, passages)`` and ``parse_setwise_answer(text,
n) -> (index or None, well formed)`` of :mod:`rerank.rerankers.setwise`), passed in so that the
training and the reranker read the same format. LoRA adapters (peft), merged into the saved model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .crossencoder import CrossEncoderTask
from .grpo import GRPOConfig, GRPOTask, GRPOTrainer, Prompt, draw, lora_policy
from .prorank import training_lists

if TYPE_CHECKING:
    from ..data import Dataset
    from .trainer import TrainConfig

log = logging.getLogger("rerank")

#: ``messages(query, passages) -> chat messages`` ([{"role": ..., "content": ...}, ...])
PromptBuilder = Callable[[str, Sequence[str]], list[dict[str, str]]]
#: ``parse(text, n) -> (chosen index or None, well formed)``
Parser = Callable[[str, int], tuple[int | None, bool]]


def setwise_reward(parse: Parser, set_size: int) -> Callable[[str, Any], tuple[float, bool]]:
    """The Rank-R1 reward of a completion against the indices of the relevant candidates:
    1 if ``parse`` finds it well formed, plus 1 if the index it chose is a relevant one."""

    def reward(text: str, relevant: Any) -> tuple[float, bool]:
        chosen, ok = parse(text, set_size)
        return float(ok) + float(chosen is not None and chosen in relevant), bool(ok)

    return reward


def render_messages(llm: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of chat ``messages`` with the assistant turn opened (the model's chat template;
    plain text with "Answer:" for a model without one, as :meth:`ChatLM.render` does)."""
    if llm.chat:
        text = str(llm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return llm.tokens([text])[0]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "system")
    return list(llm.tokenizer(llm.render(user, system), add_special_tokens=True)["input_ids"])


def train_rank_r1(model: str, dataset: Dataset, output: str | Path, config: TrainConfig, *, steps: int = 100,
                  grpo: GRPOConfig | None = None, set_size: int = 4, negatives: str = "bm25:30",
                  max_queries: int | None = None, lora: int = 16, max_passage_tokens: int = 128,
                  messages: PromptBuilder | None = None, parse: Parser | None = None, device: str = "cpu",
                  overwrite: bool = False) -> dict[str, Any]:
    """GRPO with the Rank-R1 reward on ``dataset``'s train split: ``steps`` optimiser steps of
    ``config.batch_size`` x ``config.accumulate`` sets of ``set_size`` candidates, ``grpo.group``
    completions each (``grpo.max_new_tokens`` for the reasoning and the answer). ``messages`` and
    ``parse`` default to the Rank-R1 reranker's. The output loads as ``rank-r1:OUTPUT``."""
    from ..models.llm import LLM

    if messages is None or parse is None:
        from ..rerankers.setwise import parse_setwise_answer, rank_r1_messages

        messages, parse = messages or rank_r1_messages, parse or parse_setwise_answer
    if set_size < 2 or steps < 1:
        raise ValueError(f"need set_size >= 2 and steps >= 1, got {set_size} and {steps}")
    grpo = grpo or GRPOConfig(max_new_tokens=256)
    llm = LLM(model, dtype="float32", device=device)
    qrels, train_q, _, cands, _ = training_lists(dataset, negatives, max_queries=max_queries, dev_queries=0,
                                                 seed=config.seed)
    lists = [x for x in CrossEncoderTask(model, llm.tokenizer, train_q, qrels, cands, dataset.docs, group_size=2,
                                         rel=dataset.rel, seed=config.seed).lists if len(x[2]) >= set_size - 1]
    if not lists:
        raise DataError(f"no training sets: no query has a relevant passage and {set_size - 1} first-stage negatives "
                        f"with text (raise the depth of --negatives {negatives})")
    build, check = messages, parse

    def cut(text: str) -> str:
        ids = llm.tokens([text])[0]
        return text if len(ids) <= max_passage_tokens else str(llm.tokenizer.decode(ids[:max_passage_tokens]))

    def prompt(index: int) -> Prompt:
        rng = draw(config.seed, "rank-r1", index)
        qt, pos, neg = lists[index % len(lists)]
        shown = [rng.choice(pos)[0]] + [t for t, _ in rng.sample(neg, set_size - 1)]
        order = list(range(set_size))
        rng.shuffle(order)
        passages = [cut(shown[i]) for i in order]
        relevant = frozenset(k for k, i in enumerate(order) if i == 0)
        return Prompt(tuple(render_messages(llm, build(qt, passages))), relevant)

    wrapped = lora_policy(llm.model, lora)
    task = GRPOTask(llm, prompt, steps * config.batch_size * config.accumulate, setwise_reward(check, set_size), grpo,
                    lora=wrapped, identity={"objective": "rank-r1", "sets": len(lists), "set_size": set_size,
                                            "first": lists[0][0][:64], "lora": lora, "max_passage_tokens": max_passage_tokens})
    return GRPOTrainer(llm.model, task, dataclasses.replace(config, loss="task"), output, device=llm.device,
                       overwrite=overwrite).train()
