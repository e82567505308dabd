"""Pairwise Ranking Prompting (Qin et al., "Large Language Models are Effective Text Rankers with
Pairwise Ranking Prompting", NAACL Findings 2024).

Every comparison asks the LLM about the pair in both orders. In scoring mode the answer is read
from the logits of " A" and " B" after the assistant turn is primed with "Passage" (a
probability per order); in generation mode the model writes its answer, which is parsed (an
answer naming neither passage counts as no preference, and is counted as repaired). A
preference that holds in both orders is a win; anything else is a tie (half a win each).

Methods:

* ``allpair``: all N(N-1) ordered prompts at once; score = wins (+ ties / 2), ties between
  scores broken by the summed preference probabilities, then by the first-stage order;
* ``sorting``: heap sort that stops once the top ``k`` are out (the rest keep their order);
* ``sliding``: ``k`` backward bubble passes over the list (about 2k(N-1) prompts).

Comparisons that do not depend on each other (all of allpair; one step of every query's sort
or pass) go to the model together in token-budgeted batches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from .base import ListReranker, positional_scores

PROMPT = ('Given a query "{query}", which of the following two passages is more relevant to the query?\n\n'
          'Passage A: "{a}"\n\nPassage B: "{b}"\n\nOutput Passage A or Passage B:')
METHODS = ("allpair", "sorting", "sliding")
MODES = ("score", "generate")
Comparison = Generator[tuple[int, int], float, list[int]]


class PRP(ListReranker):
    """PRP with a causal LLM: ``PRP("Qwen/Qwen2.5-Coder-1.5B-Instruct", method="sliding", k=10)``."""

    kind = "prp"
    family = "pairwise"
    model_kind = "causal-lm"
    spec_arg = "MODEL[:allpair|sorting|sliding]"
    spec_help = "Pairwise Ranking Prompting with a causal LLM (all pairs, heap sort to the top k, or sliding passes)"
    spec_options: ClassVar[tuple[str, ...]] = (*ListReranker.spec_options, "method", "k", "mode")

    @classmethod
    def spec_model(cls, arg: str, options: dict[str, Any]) -> str:
        return super().spec_model(method_suffix(arg, METHODS, options), options)

    def __init__(self, name: str, *, method: str = "allpair", k: int = 10, mode: str = "score",
                 max_passage_tokens: int | None = 128, depth: int = 100, **options: Any) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown PRP method {method!r}; choose one of {', '.join(METHODS)}")
        if mode not in MODES:
            raise ValueError(f"unknown PRP mode {mode!r}; choose one of {', '.join(MODES)}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        super().__init__(name, depth=depth, max_passage_tokens=max_passage_tokens, **options)
        self.method, self.k, self.mode = method, k, mode
        self.name = f"{self.kind}-{method}:{name}"
        self._setup_prompt()

    def _setup_prompt(self) -> None:
        """The token pieces ``_prompt`` joins, and (scoring mode) the two answer tokens read."""
        mode = self.mode
        user = PROMPT.replace("{query}", "\x00").replace("{a}", "\x00").replace("{b}", "\x00").split("\x00")
        self._pieces = self.llm.tokens(user)  # literal text around query, passage A, passage B
        prime = "Passage" if mode == "score" else ""
        self._before, self._after = self.llm.wrap(assistant=prime)
        if mode == "score":
            self._choices = [self.llm.single_token(" A"), self.llm.single_token(" B")]

    # ------------------------------------------------------------ prompts
    def _prompt(self, q: list[int], a: list[int], b: list[int]) -> list[int]:
        p = self._pieces
        return self._before + p[0] + q + p[1] + a + p[2] + b + p[3] + self._after

    def _fit(self, q: list[int], a: list[int], b: list[int]) -> list[list[int]]:
        from ..models.llm import fit_passages

        fixed = len(self._prompt(q, [], [])) + (4 if self.mode == "generate" else 0)
        return fit_passages([a, b], self.llm.window - fixed, self.max_passage_tokens)

    def _preferences(self, jobs: Sequence[tuple[list[int], list[int], list[int]]]) -> list[tuple[float, float]]:
        """For (query, a, b) token lists: (win value of a over b in {0, 0.5, 1}, probability a beats b)."""
        prompts = []
        for q, a, b in jobs:
            fa, fb = self._fit(q, a, b)
            prompts += [self._prompt(q, fa, fb), self._prompt(q, fb, fa)]
        first = self._first_wins(prompts)
        out = []
        for i in range(len(jobs)):
            p_ab, p_ba = first[2 * i], first[2 * i + 1]  # a first / b first: P(the first passage wins)
            if p_ab > 0.5 and p_ba < 0.5:
                win = 1.0
            elif p_ab < 0.5 and p_ba > 0.5:
                win = 0.0
            else:
                win = 0.5
            out.append((win, 0.5 * (p_ab + 1.0 - p_ba)))
        return out

    def _first_wins(self, prompts: list[list[int]]) -> list[float]:
        """For each prompt, the probability (or the parsed answer, 0/0.5/1) that its first passage wins."""
        if self.mode == "score":
            return [_softmax_first(x) for x in self.llm.next_token_logits(prompts, self._choices)]  # P(answer "A")
        return [self._parse(t) for t in self.llm.generate(prompts, max_new_tokens=4)]

    def _parse(self, text: str) -> float:
        m = re.search(r"\b(?:Passage\s*)?([AB])\b", text.strip())
        if m is None:
            self.cost.repaired += 1
            return 0.5
        return 1.0 if m.group(1) == "A" else 0.0

    # ------------------------------------------------------------ methods
    #: how allpair orders a list: by wins (PRP's paper; the summed preference probabilities break ties),
    #: or by the summed probabilities alone ("sym-sum", duoT5's paper)
    allpair_by: ClassVar[str] = "wins"

    def _order(self, queries: Sequence[str], lists: Sequence[Sequence[str]]) -> list[tuple[list[int], list[float]]]:
        qtok = self.llm.tokens(list(queries))
        dtok = [self.llm.tokens(list(docs)) for docs in lists]
        if self.method == "allpair":
            return self._allpair(qtok, dtok)
        gens: dict[int, Comparison] = {}
        for qi, docs in enumerate(dtok):
            n = len(docs)
            gens[qi] = _heap_top_k(n, self.k) if self.method == "sorting" else _sliding(n, self.k)
        return [(order, positional_scores(len(order))) for order in _drive(gens, dtok, qtok, self._preferences)]

    def _allpair(self, qtok: list[list[int]], dtok: list[list[list[int]]]) -> list[tuple[list[int], list[float]]]:
        jobs, where = [], []
        for qi, docs in enumerate(dtok):
            for i in range(len(docs)):
                for j in range(i + 1, len(docs)):
                    jobs.append((qtok[qi], docs[i], docs[j]))
                    where.append((qi, i, j))
        prefs = self._preferences(jobs)
        wins = [[0.0] * len(d) for d in dtok]
        soft = [[0.0] * len(d) for d in dtok]
        for (qi, i, j), (w, p) in zip(where, prefs, strict=True):
            wins[qi][i] += w
            wins[qi][j] += 1.0 - w
            soft[qi][i] += p
            soft[qi][j] += 1.0 - p
        out = []
        for qi, docs in enumerate(dtok):
            if self.allpair_by == "sym-sum":  # s_i = sum over j of p(i beats j) + 1 - p(j beats i)
                order = sorted(range(len(docs)), key=lambda i: (-soft[qi][i], i))
                out.append((order, [2.0 * soft[qi][i] for i in order]))
                continue
            n = max(1, len(docs))
            order = sorted(range(len(docs)), key=lambda i: (-wins[qi][i], -soft[qi][i], i))
            # wins move in steps of 0.5; the soft part (< 0.1) only breaks their ties
            out.append((order, [wins[qi][i] + soft[qi][i] / (10 * n) for i in order]))
        return out


def _softmax_first(x: list[float]) -> float:
    a, b = x
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb)


def method_suffix(arg: str, methods: Sequence[str], options: dict[str, Any]) -> str:
    """A spec argument ``MODEL:METHOD`` with METHOD one of ``methods``: the model, the method put
    in ``options``; any other argument as it is."""
    model, _, method = arg.rpartition(":")
    if model and method in methods:
        options["method"] = method
        return model
    return arg


def drive(gens: Mapping[int, Generator[Any, Any, Any]], ask: Callable[[list[tuple[int, Any]]], list[Any]],
          recall: Callable[[dict[Any, Any], Any], Any] = dict.get) -> list[Any]:
    """Run every query's generator of model questions (query index -> a sort that yields a question,
    a hashable key, receives its answer, and returns the query's order) one step of each per
    round: each round's new questions go to ``ask`` together, as ``(query index, key)`` (one
    batch for the engine), and every answer is kept in a memo per query, so a question asked
    again is answered from it. ``recall(memo, key)``: the memo's answer to ``key``, None where
    there is none (PRP also reads a pair's answer from the pair the other way round).
    Returns the generators' results in the order of their query indices."""
    results: dict[int, Any] = {}
    memo: dict[int, dict[Hashable, Any]] = {qi: {} for qi in gens}
    pending: dict[int, Any] = {}
    for qi, g in gens.items():
        try:
            pending[qi] = next(g)
        except StopIteration as stop:
            results[qi] = stop.value
    while pending:
        new = [(qi, key) for qi, key in pending.items() if recall(memo[qi], key) is None]
        for (qi, key), answer in zip(new, ask(new) if new else [], strict=True):
            memo[qi][key] = answer
        for qi, key in list(pending.items()):
            try:
                pending[qi] = gens[qi].send(recall(memo[qi], key))
            except StopIteration as stop:
                results[qi] = stop.value
                del pending[qi]
    return [results[qi] for qi in sorted(gens)]


def _either_order(memo: dict[tuple[int, int], float], pair: tuple[int, int]) -> float | None:
    """A pair's win value from the memo, asked in this order or the other (1 - its win)."""
    a, b = pair
    if (a, b) in memo:
        return memo[(a, b)]
    return 1.0 - memo[(b, a)] if (b, a) in memo else None


def _drive(gens: dict[int, Comparison], dtok: list[list[list[int]]], qtok: list[list[int]],
           preferences: Any) -> list[list[int]]:
    """PRP's comparisons through :func:`drive`: ``preferences`` answers (query, a, b) token lists."""
    def ask(jobs: list[tuple[int, tuple[int, int]]]) -> list[float]:
        return [win for win, _ in preferences([(qtok[qi], dtok[qi][a], dtok[qi][b]) for qi, (a, b) in jobs])]

    return drive(gens, ask, _either_order)


def _sliding(n: int, passes: int) -> Comparison:
    """``passes`` backward bubble passes: each carries the best remaining document to the top."""
    order = list(range(n))
    for p in range(min(passes, n - 1)):
        for i in range(n - 2, p - 1, -1):
            if (yield (order[i + 1], order[i])) == 1.0:  # the lower one wins: it moves up
                order[i], order[i + 1] = order[i + 1], order[i]
    return order


def _heap_top_k(n: int, k: int) -> Comparison:
    """Heap sort on PRP comparisons, stopped once the top ``k`` are out; the rest keep their order."""
    heap = list(range(n))

    def sift(start: int, size: int) -> Generator[tuple[int, int], float, None]:
        root = start
        while 2 * root + 1 < size:
            child = 2 * root + 1
            if child + 1 < size and (yield (heap[child + 1], heap[child])) == 1.0:
                child += 1
            if (yield (heap[child], heap[root])) == 1.0:
                heap[root], heap[child] = heap[child], heap[root]
                root = child
            else:
                return

    return (yield from heap_top_k(heap, k, range(n // 2 - 1, -1, -1), sift))


def heap_top_k(heap: list[int], k: int, parents: Iterable[int],
               sift: Callable[[int, int], Generator[Any, Any, None]]) -> Generator[Any, Any, list[int]]:
    """Heap sort stopped once the top ``k`` are out, over ``heap`` (the indices 0..n-1 in order,
    rearranged in place) with ``sift(root, size)``, which asks the questions that move ``root``
    down: the heap is built by sifting ``parents`` (the nodes with children, the last first), then
    the top is taken out ``k`` times, the last leaf moved up and sifted after each but the k-th.
    Returns the top ``k`` and then the rest in their first order."""
    n = len(heap)
    for start in parents:
        yield from sift(start, n)
    top: list[int] = []
    size = n
    while size and len(top) < k:
        top.append(heap[0])
        size -= 1
        if len(top) < k:
            heap[0] = heap[size]
            yield from sift(0, size)
    chosen = set(top)
    return top + [i for i in range(n) if i not in chosen]
