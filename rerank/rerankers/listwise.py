"""Listwise LLM rerankers over sliding windows, sharing one RankGPT-style prompt:

* :class:`First` (Reddy et al., "FIRST: Faster Improved Listwise Reranking with Single Token
  Decoding", EMNLP 2024): passages carry single-token identifiers [A]..[T]; the assistant turn
  is primed with "[" and one forward pass gives the logits of every identifier as the first
  token of the answer; their order is the window's new order.
* :class:`ListwiseGenerate` (RankGPT / RankZephyr style): the model writes the permutation
  ``[B] > [A] > ...``, which is parsed; missing identifiers are appended in their incoming
  order, repeated and unknown ones dropped, and every such output is counted as repaired.

Windows of ``window`` passages move from the back of the top ``depth`` to the front by
``stride`` (20 / 10 over 100 candidates: 9 windows a query). Windows at the same step of
different queries are independent and go to the model together.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import DataError
from ..models.llm import fit_passages
from ..progress import tick
from .base import ListReranker, positional_scores

SYSTEM = "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."
HEAD = ("I will provide you with {n} passages, each indicated by a alphabetical identifier []. "
        "Rank the passages based on their relevance to the search query: {query}.\n\n")
TAIL = ("Search Query: {query}.\nRank the {n} passages above based on their relevance to the search query. "
        "All the passages should be included and listed using identifiers, in descending order of relevance. "
        "The output format should be [] > [], e.g., [B] > [A]. Only respond with the ranking results, "
        "do not say any word or explain.")
LABELS = string.ascii_uppercase
log = logging.getLogger("rerank")


def windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of each window, back to front; the last one starts at 0."""
    if n <= window:
        return [(0, n)] if n else []
    out, end = [], n
    while True:
        start = max(0, end - window)
        out.append((start, end))
        if start == 0:
            return out
        end -= stride


STRATEGIES = ("bracket", "merged", "space-bracket", "letters")


def identifier_tokens(tokenizer: Any, window: int, strategy: str = "auto") -> tuple[str, str, list[int]]:
    """How FIRST reads the answer's first identifier: (assistant prime, the labels, one token id
    per label). ``strategy`` "auto" takes the first of these that the tokenizer supports:

    * "bracket": prime "[" and read the letters, where "[A]" is "[" + "A" + "]" (Llama, Mistral, SmolLM);
    * "merged": prime nothing and read "[X" tokens, using the first ``window`` letters whose
      "[X" is one token (Qwen2 merges "[A" for every letter but O and Q: labels A..N, P, R..V);
    * "space-bracket": prime " [" and read the letters, where " [A]" is " [" + "A" + "]";
    * "letters": prime "[" and read the single-letter tokens even though the tokenizer would
      not split "[A]" that way.

    A letter that is not one token at all is a DataError pointing to the generative reranker."""
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ValueError(f"unknown identifier strategy {strategy!r}; choose auto or one of {', '.join(STRATEGIES)}")

    def split(fmt: str, x: str) -> list[str]:
        return [tokenizer.decode([t]) for t in tokenizer.encode(fmt.format(x), add_special_tokens=False)]

    def ids_of(fmt: str, labels: str, pos: int) -> list[int]:
        return [int(tokenizer.encode(fmt.format(x), add_special_tokens=False)[pos]) for x in labels]

    first = LABELS[:window]
    for name in STRATEGIES if strategy == "auto" else (strategy,):
        if name == "bracket" and all(split("[{}]", x)[:2] == ["[", x] for x in first):
            return "[", first, ids_of("[{}]", first, 1)
        if name == "merged":
            merged = "".join(x for x in LABELS if split("[{}]", x)[0] == f"[{x}")[:window]
            if len(merged) == window:
                return "", merged, ids_of("[{}]", merged, 0)
        if name == "space-bracket" and all(split(" [{}]", x)[:2] == [" [", x] for x in first):
            return " [", first, ids_of(" [{}]", first, 1)
        if name == "letters" and all(len(split("{}", x)) == 1 for x in first):
            log.info("FIRST primes '[' and reads single-letter tokens, which this tokenizer would not split off '['")
            return "[", first, ids_of("{}", first, 0)
    bad = next((x for x in first if len(split("{}", x)) != 1), None)
    if bad is not None:
        raise DataError(f"this tokenizer splits the identifier letter {bad!r} into several tokens: FIRST needs single-token "
                        f"identifiers; use the generative listwise reranker (listwise-gen) instead")
    raise DataError(f"this tokenizer does not support the {strategy!r} identifier strategy; use strategy='auto'")


class _Listwise(ListReranker):
    family = "listwise"
    model_kind = "causal-lm"
    spec_options: ClassVar[tuple[str, ...]] = (*ListReranker.spec_options, "window", "stride")
    def __init__(self, name: str, *, window: int = 20, stride: int | None = None, depth: int = 100,
                 max_passage_tokens: int | None = 100, **options: Any) -> None:
        if not 2 <= window <= len(LABELS):
            raise ValueError(f"window must be between 2 and {len(LABELS)}, got {window}")
        if stride is None:
            stride = min(10, max(1, window // 2))  # 10 for the usual window of 20
        if not 1 <= stride <= window:
            raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
        super().__init__(name, depth=depth, max_passage_tokens=max_passage_tokens, **options)
        self.window, self.stride = window, stride
        self.labels = LABELS[:window]
        self._prime = ""
        self._wrapped: tuple[list[int], list[int]] | None = None

    def _prompt(self, query: list[int], passages: Sequence[list[int]]) -> list[int]:
        """The listwise prompt for a window, passages cut evenly to fit the model's context."""
        n = len(passages)
        pre_h, post_h = self._split(HEAD, n)
        pre_t, post_t = self._split(TAIL, n)
        labels = self.llm.tokens([f"[{self.labels[i]}] " for i in range(n)])
        newline = self.llm.tokens(["\n"])[0]
        before, after = self._wrap
        fixed = (len(before) + len(after) + len(pre_h) + len(post_h) + len(pre_t) + len(post_t) + 2 * len(query)
                 + sum(len(x) + len(newline) for x in labels) + self._reserve(n))
        fitted = fit_passages(passages, self.llm.window - fixed, self.max_passage_tokens)
        body = [t for lab, p in zip(labels, fitted, strict=True) for t in lab + p + newline]
        return before + pre_h + query + post_h + body + pre_t + query + post_t + after

    def window_prompt(self, query: str, passages: Sequence[str]) -> list[int]:
        """Token ids of the prompt this reranker builds for one window (training uses it too)."""
        return self._prompt(self.llm.tokens([query])[0], self.llm.tokens(list(passages)))

    def _split(self, template: str, n: int) -> tuple[list[int], list[int]]:
        a, b = template.replace("{n}", str(n)).split("{query}")
        pa, pb = self.llm.tokens([a, b])
        return pa, pb

    def _reserve(self, n: int) -> int:
        return 0

    @property
    def _wrap(self) -> tuple[list[int], list[int]]:
        if self._wrapped is None:
            self._wrapped = self.llm.wrap(SYSTEM, assistant=self._prime)
        return self._wrapped

    def _window_input(self, query: list[int], passages: Sequence[list[int]]) -> Any:
        """What the model reads for one window (a prompt; LiT5: one input per passage)."""
        return self._prompt(query, passages)

    def _rank_windows(self, prompts: list[Any], sizes: list[int]) -> list[list[int]]:
        raise NotImplementedError

    def _order(self, queries: Sequence[str], lists: Sequence[Sequence[str]]) -> list[tuple[list[int], list[float]]]:
        qtok = self.llm.tokens(list(queries))
        dtok = [self.llm.tokens(list(d)) for d in lists]
        orders = [list(range(len(d))) for d in dtok]
        plans = [windows(len(d), self.window, self.stride) for d in dtok]
        for step in range(max((len(p) for p in plans), default=0)):
            jobs = [(qi, plan[step]) for qi, plan in enumerate(plans) if step < len(plan) and plan[step][1] - plan[step][0] > 1]
            prompts = [self._window_input(qtok[qi], [dtok[qi][i] for i in orders[qi][s:e]]) for qi, (s, e) in jobs]
            perms = self._rank_windows(prompts, [e - s for _, (s, e) in jobs])
            tick(sum(1 / len(plans[qi]) for qi, _ in jobs))  # the progress bar's queries, by windows done
            for (qi, (s, e)), perm in zip(jobs, perms, strict=True):
                current = orders[qi][s:e]
                orders[qi][s:e] = [current[i] for i in perm]
        return [(o, positional_scores(len(o))) for o in orders]


class First(_Listwise):
    """FIRST: one forward pass per window, identifiers ordered by their first-token logits.
    The default model is castorini/first_mistral (where the hub is reachable)."""

    kind = "first"
    spec_arg = "[MODEL]"
    spec_help = "FIRST single-token listwise reranking over sliding windows (default model castorini/first_mistral)"
    spec_options: ClassVar[tuple[str, ...]] = (*_Listwise.spec_options, "identifiers")
    DEFAULT_MODEL = "castorini/first_mistral"

    def __init__(self, name: str = DEFAULT_MODEL, *, identifiers: str = "auto", **options: Any) -> None:
        super().__init__(name, **options)
        self._prime, self.labels, self._ids = identifier_tokens(self.llm.tokenizer, self.window, identifiers)

    @property
    def prime(self) -> str:
        """What the assistant turn starts with before the first identifier token."""
        return self._prime

    @property
    def identifier_ids(self) -> list[int]:
        """The token read for each label as the first answer token."""
        return list(self._ids)

    def _rank_windows(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        logits = self.llm.next_token_logits(prompts, self._ids)
        return [sorted(range(n), key=lambda i: (-row[i], i)) for row, n in zip(logits, sizes, strict=True)]


class ListwiseGenerate(_Listwise):
    """Generative listwise reranking: the model writes the window's permutation."""

    kind = "listwise-gen"
    spec_help = "RankGPT-style listwise reranking: the LLM writes the window's permutation"

    def _reserve(self, n: int) -> int:
        return self._max_new(n)

    @staticmethod
    def _max_new(n: int) -> int:
        return 5 * n + 8  # " [B] >" is 3-5 tokens an identifier, and a little slack

    def _rank_windows(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in prompts]
        by_size: dict[int, list[int]] = {}
        for i, n in enumerate(sizes):
            by_size.setdefault(n, []).append(i)
        for n, idx in by_size.items():
            texts = self.llm.generate([prompts[i] for i in idx], max_new_tokens=self._max_new(n))
            for i, text in zip(idx, texts, strict=True):
                perm, repaired = parse_permutation(text, n, self.labels)
                self.cost.repaired += repaired
                out[i] = perm
        return out


def parse_permutation(text: str, n: int, labels: str = LABELS) -> tuple[list[int], bool]:
    """``"[B] > [A] > [C]"`` -> ([1, 0, 2], False); with ``labels="1"``, numbers from 1:
    ``"[2] > [1] > [3]"`` -> ([1, 0, 2], False). Unknown and repeated identifiers are dropped,
    missing ones appended in their incoming order; the flag says whether anything was repaired."""
    seen: list[int] = []
    bad = False
    numbered = labels == "1"
    for label in re.findall(r"\[\s*(\d+)\s*\]" if numbered else r"\[\s*([A-Za-z])\s*\]", text):
        i = int(label) - 1 if numbered else labels.find(label.upper())
        if i < 0 or i >= n or i in seen:
            bad = True
            continue
        seen.append(i)
    missing = [i for i in range(n) if i not in seen]
    return seen + missing, bad or bool(missing)
