"""Setwise reranking with reasoning: Rank-R1 (Zhuang et al., "Rank-R1: Enhancing Reasoning in
LLM-based Document Rerankers via Reinforcement Learning", 2025), over the setwise sorts of
Zhuang et al., "A Setwise Approach for Effective and Highly Efficient Zero-shot Ranking with Large
Language Models" (SIGIR 2024).

One *selection* shows the LLM a query and a set of passages labelled [1]..[n]; the model reasons
inside ``<think> </think>`` and writes the label of the most relevant passage inside
``<answer> </answer>`` (the paper's prompt, :func:`rank_r1_messages`; greedy generation). An
answer that is not exactly one label in range is repaired (:func:`parse_setwise_answer`; the
first candidate where nothing can be read) and counted in the cost.

Rankings from repeated selection, top ``k`` (the rest keep their first-stage order):

* ``heapsort`` (the default): a heap with ``num_child`` children a node, where each node's
  comparison is one selection among the parent and its children; built, then the top is taken
  out ``k`` times;
* ``bubblesort``: ``k`` passes of windows of ``num_child + 1`` passages from the bottom of the
  list up, each overlapping the one above by one passage; the selected passage moves to its
  window's top, so a pass carries the best remaining passage up.

Selections that do not depend on each other (the same step of every query's sort) go to the
engine in one ``generate`` call, and a set asked again (a bubble pass over windows that did not
change) is answered from a memo per query, as PRP does with its pairs.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..errors import DataError
from ..models.llm import LLMCost, fit_passages
from .base import ListReranker, positional_scores
from .pairwise import drive, heap_top_k, method_suffix

#: the paper's prompt (its repository's prompt_setwise-R1.toml), with passages written "[i] text"
SYSTEM = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
          "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
          "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
          "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.")
USER_HEAD = 'Given the query: "{query}", which of the following documents is most relevant?\n'
USER_TAIL = ("\nAfter completing the reasoning process, please provide only the label of the most relevant document to "
             "the query, enclosed in square brackets, within the answer tags. For example, if the third document is "
             "the most relevant, the answer should be: <think> reasoning process here </think> <answer>[3]</answer>.")
METHODS = ("heapsort", "bubblesort")
#: a sort by selections: yields a set (document indices, in label order), receives the position in
#: that set of the passage selected, returns the order (document indices, best first)
Selection = Generator[tuple[int, ...], int, list[int]]

_WELL_FORMED = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_LABEL = re.compile(r"\[\s*(\d+)\s*\]")


def rank_r1_messages(query: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """Rank-R1's chat messages (system, then user) for one selection among ``passages``, labelled
    [1]..[n] in this order. The reranker's prompt is the model's chat template over them, with the
    assistant turn opened."""
    docs = "\n".join(f"[{i + 1}] {p}" for i, p in enumerate(passages))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER_HEAD.replace("{query}", query) + docs + USER_TAIL}]


def parse_setwise_answer(text: str, n: int) -> tuple[int | None, bool]:
    """The passage a Rank-R1 answer selects among ``n``: (0-based index or None, well formed).

    Well formed: ``<think>...</think>`` then ``<answer>[k]</answer>`` holding exactly one label,
    1 <= k <= n (the paper's format; case and spaces inside the brackets aside). Otherwise the
    first label in range is taken from the answer tags' text (a bare number there counts), else
    after the last ``</think>``, else anywhere; None where there is none (the reranker then keeps
    the first candidate)."""
    def first(piece: str, bare: bool = False) -> int | None:
        for m in _LABEL.finditer(piece):
            if 1 <= int(m.group(1)) <= n:
                return int(m.group(1)) - 1
        number = re.fullmatch(r"\s*(\d+)\s*", piece) if bare else None
        if number and 1 <= int(number.group(1)) <= n:
            return int(number.group(1)) - 1
        return None

    m = _WELL_FORMED.search(text)
    if m:
        label = re.fullmatch(r"\s*\[\s*(\d+)\s*\]\s*", m.group(1))
        if label and 1 <= int(label.group(1)) <= n:
            return int(label.group(1)) - 1, True
    answer = _ANSWER.search(text)
    think_end = text.lower().rfind("</think>")
    for piece, bare in ((answer.group(1) if answer else "", True),
                        (text[think_end + len("</think>"):] if think_end >= 0 else "", False), (text, False)):
        found = first(piece, bare)
        if found is not None:
            return found, False
    return None, False


def setwise_heap_top_k(n: int, k: int, num_child: int) -> Selection:
    """Heap sort by selections on a heap with ``num_child`` children a node, stopped once the top
    ``k`` are out; the rest keep their order."""
    heap = list(range(n))

    def sift(root: int, size: int) -> Generator[tuple[int, ...], int, None]:
        while num_child * root + 1 < size:
            group = (root, *range(num_child * root + 1, min(num_child * (root + 1) + 1, size)))
            best = group[(yield tuple(heap[i] for i in group))]
            if best == root:
                return
            heap[root], heap[best] = heap[best], heap[root]
            root = best

    return (yield from heap_top_k(heap, k, range((n - 2) // num_child, -1, -1), sift))  # every node with a child


def setwise_bubble_top_k(n: int, k: int, num_child: int) -> Selection:
    """``k`` bubble passes by selections over windows of ``num_child + 1`` from the bottom up,
    each overlapping the one above by one: the selected passage swaps with its window's top."""
    order = list(range(n))
    for p in range(min(k, n - 1)):
        end = n
        while True:
            start = max(p, end - num_child - 1)
            best = yield tuple(order[start:end])
            order[start], order[start + best] = order[start + best], order[start]
            if start == p:
                break
            end -= num_child
    return order


@dataclass
class SetwiseCost(LLMCost):
    """:class:`LLMCost` (prompts are selections; ``repaired``: malformed answers), plus the lists
    ranked, for the figures per query."""

    lists: int = 0

    def as_dict(self) -> dict[str, float]:
        per = max(1, self.lists)
        return {**super().as_dict(), "lists": self.lists, "prompts_per_list": round(self.calls / per, 2),
                "generated_tokens_per_list": round(self.generated / per, 1)}

    def summary(self) -> str:
        """One line for a run's cost summary."""
        per = max(1, self.lists)
        return (f"setwise: {self.lists} lists, {self.calls / per:.1f} selections and {self.generated / per:.0f} generated "
                f"tokens a list; {self.repaired} of {self.calls} answers malformed (repaired)")


class RankR1(ListReranker):
    """Rank-R1 with a causal LLM: ``RankR1("Qwen2.5-Coder-1.5B-Instruct", num_child=19, k=10)``."""

    kind = "rank-r1"
    family = "setwise"
    model_kind = "causal-lm"
    spec_arg = "MODEL[:heapsort|bubblesort]"
    spec_help = "Rank-R1 setwise selection with reasoning (<think>, <answer>), by heap sort or bubble sort to the top k"
    spec_options: ClassVar[tuple[str, ...]] = (*ListReranker.spec_options, "method", "k", "num_child", "max_new_tokens")

    @classmethod
    def spec_model(cls, arg: str, options: dict[str, Any]) -> str:
        return super().spec_model(method_suffix(arg, METHODS, options), options)

    def __init__(self, name: str, *, method: str = "heapsort", k: int = 10, num_child: int = 19,
                 max_new_tokens: int = 2048, max_passage_tokens: int | None = 512, depth: int = 100,
                 **options: Any) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown setwise method {method!r}; choose one of {', '.join(METHODS)}")
        for what, value in (("k", k), ("num_child", num_child), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive whole number, got {value!r}")
        super().__init__(name, depth=depth, max_passage_tokens=max_passage_tokens, **options)
        self.method, self.k, self.num_child, self.max_new_tokens = method, k, num_child, max_new_tokens
        self.name = f"{self.kind}-{method}:{name}"
        self.llm.cost = SetwiseCost(**{f.name: getattr(self.llm.cost, f.name) for f in fields(LLMCost)})

    # ------------------------------------------------------------ prompts
    def _encode(self, text: str) -> list[int]:
        """A whole prompt's token ids (BOS where a plain LM wants one, as :meth:`ChatLM.wrap` adds)."""
        return list(self.llm.tokenizer(text, add_special_tokens=not self.llm.chat)["input_ids"])

    def selection_prompt(self, query: str, passages: Sequence[str]) -> list[int]:
        """Token ids of one selection's prompt: the chat template over :func:`rank_r1_messages`,
        tokenized whole, so a prompt whose passages are not cut is exactly what a caller
        rendering those messages gets. Passages are cut to ``max_passage_tokens`` tokens and then,
        while the prompt and ``max_new_tokens`` overflow the model's context, evenly
        (:func:`fit_passages`); a cut passage is the text of its first tokens."""
        return self._fitted(query, self._passages(passages))

    def _passages(self, texts: Sequence[str]) -> list[tuple[str, list[int]]]:
        """Each passage's text and token ids, both cut to ``max_passage_tokens``."""
        cap = self.max_passage_tokens
        out = []
        for text, ids in zip(texts, self.llm.tokens(list(texts)), strict=True):
            out.append((self._text(ids[:cap]), ids[:cap]) if cap and len(ids) > cap else (text, ids))
        return out

    def _text(self, ids: list[int]) -> str:
        return str(self.llm.tokenizer.decode(ids, skip_special_tokens=True))

    def _fitted(self, query: str, passages: Sequence[tuple[str, list[int]]]) -> list[int]:
        room = self.llm.window - self.max_new_tokens
        texts = [t for t, _ in passages]
        dtok = [d for _, d in passages]
        budget = sum(map(len, dtok))
        while True:
            system, user = (m["content"] for m in rank_r1_messages(query, texts))
            ids = self._encode(self.llm.render(user, system))
            if len(ids) <= room:
                return ids
            budget -= len(ids) - room  # cut the passages evenly by the overflow (again, if re-tokenising drifts)
            if budget < len(dtok):
                raise DataError(f"{self.model_name}: a selection among {len(dtok)} passages does not fit the "
                                f"{self.llm.window}-token context with {self.max_new_tokens} new tokens; "
                                f"lower max_new_tokens or num_child, or raise max_length")
            fitted = fit_passages(dtok, budget)
            texts = [t if len(f) == len(d) else self._text(f) for (t, d), f in zip(passages, fitted, strict=True)]

    # ------------------------------------------------------------ ranking
    def _select(self, jobs: list[tuple[str, list[tuple[str, list[int]]]]]) -> list[int]:
        """For (query, its set's passages as (text, token ids)), the position in the set of the
        passage selected: every prompt in one ``generate`` call; a malformed answer is repaired
        (None: the first passage) and counted."""
        prompts = [self._fitted(q, d) for q, d in jobs]
        out = []
        for (_, docs), text in zip(jobs, self.llm.generate(prompts, max_new_tokens=self.max_new_tokens), strict=True):
            index, well_formed = parse_setwise_answer(text, len(docs))
            self.llm.cost.repaired += not well_formed
            out.append(0 if index is None else index)
        return out

    def _order(self, queries: Sequence[str], lists: Sequence[Sequence[str]]) -> list[tuple[list[int], list[float]]]:
        dtok = [self._passages(docs) for docs in lists]
        sort = setwise_heap_top_k if self.method == "heapsort" else setwise_bubble_top_k
        gens = {qi: sort(len(docs), self.k, self.num_child) for qi, docs in enumerate(dtok)}

        def ask(jobs: list[tuple[int, tuple[int, ...]]]) -> list[int]:
            return self._select([(queries[qi], [dtok[qi][i] for i in key]) for qi, key in jobs])

        orders = drive(gens, ask)
        self.llm.cost.lists += len(orders)
        return [(order, positional_scores(len(order))) for order in orders]
