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

``window="all"`` is *full ranking* (Liu et al., "Sliding Windows Are Not the End: Exploring Full
Ranking with Long-Context Large Language Models", 2024): every candidate of a query in one
prompt, one model call per query. ListwiseGenerate numbers the passages [1]..[n] when there are
more than 26; FIRST reads the first-identifier logits of as many single-token identifiers as the
tokenizer has (A-Z then a-z under the window's identifier strategy: 52 at most). A list whose
prompt (passages cut to ``max_passage_tokens`` as in a window) does not fit the model's context,
or that has more candidates than FIRST has identifiers, is ranked with sliding windows of
``stride`` over windows of 20 instead, with a one-line warning naming the counts. The cost then
also counts what sliding windows would have taken for the fully ranked lists
(:class:`FullRankingCost`).
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..errors import DataError
from ..models.llm import LLMCost, fit_passages
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
BOTH_CASES = string.ascii_uppercase + string.ascii_lowercase  # FIRST's identifiers for full ranking
FULL = ("all", "full")  # the window values that mean full ranking
log = logging.getLogger("rerank")


def numbered(n: int) -> list[str]:
    """Identifiers 1..n, for generated permutations of more passages than letters."""
    return [str(i + 1) for i in range(n)]


@dataclass
class FullRankingCost(LLMCost):
    """:class:`LLMCost` of a full-ranking reranker, plus the lists it ranked in one prompt and the
    prompts and prompt tokens that sliding windows would have taken for those lists (windows of
    the reranker's ``window`` and ``stride`` over the first-stage order, passages cut the same way)."""

    full_lists: int = 0
    fallback_lists: int = 0
    full_prompts: int = 0
    full_tokens: int = 0
    sliding_prompts: int = 0
    sliding_tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        return {**super().as_dict(), "full_ranked_lists": self.full_lists, "window_fallback_lists": self.fallback_lists,
                "sliding_window_prompts": self.sliding_prompts, "sliding_window_tokens": self.sliding_tokens,
                "prompts_saved": self.sliding_prompts - self.full_prompts,
                "prompt_tokens_saved": self.sliding_tokens - self.full_tokens}

    def summary(self) -> str:
        """One line for a run's cost summary."""
        if not self.full_lists:
            return f"full ranking: no list fitted in one prompt ({self.fallback_lists} ranked with sliding windows)"
        return (f"full ranking: {self.full_lists} lists in {self.full_prompts} prompts ({self.full_tokens} tokens) where "
                f"sliding windows would take {self.sliding_prompts} prompts ({self.sliding_tokens} tokens, estimated): "
                f"{self.sliding_prompts - self.full_prompts} prompts and {self.sliding_tokens - self.full_tokens} prompt "
                f"tokens saved; {self.fallback_lists} lists fell back to windows")


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
    name, prime, labels, ids = _identifiers(tokenizer, window, strategy)
    if name == "letters":
        log.info("FIRST primes '[' and reads single-letter tokens, which this tokenizer would not split off '['")
    return prime, labels, ids


def full_identifiers(tokenizer: Any, window: int, strategy: str, limit: int) -> tuple[str, list[int]]:
    """The most single-token identifiers (at most ``limit``; A-Z then a-z) that FIRST can read
    under the strategy that ``window`` identifiers get: (labels, token ids). Their first
    ``window`` are the window's own, so one set serves windows and full prompts alike."""
    name = _identifiers(tokenizer, window, strategy)[0]
    best = _identifiers(tokenizer, window, name)
    for n in range(window + 1, min(limit, len(BOTH_CASES)) + 1):
        try:
            best = _identifiers(tokenizer, n, name, BOTH_CASES)
        except DataError:
            break
    return best[2], best[3]


def _identifiers(tokenizer: Any, window: int, strategy: str, pool: str = LABELS) -> tuple[str, str, str, list[int]]:
    """identifier_tokens' work, with the strategy it took first: (strategy, prime, labels, ids);
    labels are drawn from ``pool``."""
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ValueError(f"unknown identifier strategy {strategy!r}; choose auto or one of {', '.join(STRATEGIES)}")

    def split(fmt: str, x: str) -> list[str]:
        return [tokenizer.decode([t]) for t in tokenizer.encode(fmt.format(x), add_special_tokens=False)]

    def ids_of(fmt: str, labels: str, pos: int) -> list[int]:
        return [int(tokenizer.encode(fmt.format(x), add_special_tokens=False)[pos]) for x in labels]

    first = pool[:window]
    for name in STRATEGIES if strategy == "auto" else (strategy,):
        if name == "bracket" and len(first) == window and all(split("[{}]", x)[:2] == ["[", x] for x in first):
            return name, "[", first, ids_of("[{}]", first, 1)
        if name == "merged":
            merged = "".join(x for x in pool if split("[{}]", x)[0] == f"[{x}")[:window]
            if len(merged) == window:
                return name, "", merged, ids_of("[{}]", merged, 0)
        if name == "space-bracket" and len(first) == window and all(split(" [{}]", x)[:2] == [" [", x] for x in first):
            return name, " [", first, ids_of(" [{}]", first, 1)
        if name == "letters" and len(first) == window and all(len(split("{}", x)) == 1 for x in first):
            return name, "[", first, ids_of("{}", first, 0)
    bad = next((x for x in first if len(split("{}", x)) != 1), None)
    if bad is not None:
        raise DataError(f"this tokenizer splits the identifier letter {bad!r} into several tokens: FIRST needs single-token "
                        f"identifiers; use the generative listwise reranker (listwise-gen) instead")
    raise DataError(f"this tokenizer does not support the {strategy!r} identifier strategy for {window} identifiers; "
                    f"use strategy='auto'")


class _Listwise(ListReranker):
    family = "listwise"
    model_kind = "causal-lm"
    spec_options: ClassVar[tuple[str, ...]] = (*ListReranker.spec_options, "window", "stride")
    full_ranking: ClassVar[bool] = False  # whether window="all" (every candidate in one prompt) is supported

    def __init__(self, name: str, *, window: int | str = 20, stride: int | None = None, depth: int = 100,
                 max_passage_tokens: int | None = 100, **options: Any) -> None:
        self.full = isinstance(window, str) and window.strip().lower() in FULL
        if self.full and not self.full_ranking:
            raise ValueError(f"window={window!r} (full ranking) applies to first and listwise-gen, not {self.kind}")
        if self.full:
            window = 20  # the windows a list that does not fit in one prompt falls back to
        if isinstance(window, str) or isinstance(window, bool) or not 2 <= window <= len(LABELS):
            raise ValueError(f"window must be between 2 and {len(LABELS)}, or 'all' for full ranking; got {window!r}")
        if stride is None:
            stride = min(10, max(1, window // 2))  # 10 for the usual window of 20
        if not 1 <= stride <= window:
            raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
        super().__init__(name, depth=depth, max_passage_tokens=max_passage_tokens, **options)
        self.window, self.stride = window, stride
        self.labels: str = LABELS[:window]
        self._prime = ""
        self._wrapped: tuple[list[int], list[int]] | None = None
        if self.full:  # the model's cost, counted as before, plus what sliding windows would have cost
            self.llm.cost = FullRankingCost(**{f.name: getattr(self.llm.cost, f.name) for f in fields(LLMCost)})
        self.max_full: int | None = None  # the most passages one full prompt can identify (None: no limit)

    def labels_for(self, n: int) -> Sequence[str]:
        """The identifiers of a prompt of ``n`` passages (the window's letters while they suffice)."""
        if n <= len(self.labels):
            return self.labels
        raise DataError(f"{self.kind} has identifiers for {len(self.labels)} passages, not {n}")

    def _prompt(self, query: list[int], passages: Sequence[list[int]]) -> list[int]:
        """The listwise prompt for a window, passages cut evenly to fit the model's context."""
        head, tail, fixed = self._frame(query, len(passages))
        fitted = fit_passages(passages, self.llm.window - fixed, self.max_passage_tokens)
        labels = self._label_ids(len(passages))
        newline = self.llm.tokens(["\n"])[0]
        body = [t for lab, p in zip(labels, fitted, strict=True) for t in lab + p + newline]
        return head + body + tail

    def _label_ids(self, n: int) -> list[list[int]]:
        labels = self.labels_for(n)
        return self.llm.tokens([f"[{labels[i]}] " for i in range(n)])

    def _frame(self, query: list[int], n: int) -> tuple[list[int], list[int], int]:
        """(tokens before the passages, tokens after them, the prompt's tokens that are not
        passage text, the answer's reserve included)."""
        head_t = HEAD if n <= len(LABELS) or not self.labels_for(n)[0].isdigit() else HEAD.replace("alphabetical", "numerical")
        pre_h, post_h = self._split(head_t, n)
        pre_t, post_t = self._split(TAIL, n)
        newline = self.llm.tokens(["\n"])[0]
        before, after = self._wrap
        head = before + pre_h + query + post_h
        tail = pre_t + query + post_t + after
        fixed = (len(head) + len(tail) + sum(len(x) + len(newline) for x in self._label_ids(n)) + self._reserve(n))
        return head, tail, fixed

    def full_prompt_tokens(self, query: list[int], passages: Sequence[list[int]]) -> int:
        """Tokens (the answer's reserve included) that one prompt of all ``passages`` needs with
        each passage cut to ``max_passage_tokens`` only, as a window would show it."""
        cap = self.max_passage_tokens
        return self._frame(query, len(passages))[2] + sum(min(len(p), cap) if cap else len(p) for p in passages)

    def window_prompt(self, query: str, passages: Sequence[str]) -> list[int]:
        """Token ids of the prompt this reranker builds for one window, or with full ranking for
        a whole list (training uses it too)."""
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
        rest = self._rank_full(qtok, dtok, orders) if self.full else list(range(len(dtok)))
        plans = {qi: windows(len(dtok[qi]), self.window, self.stride) for qi in rest}
        for step in range(max((len(p) for p in plans.values()), default=0)):
            jobs = [(qi, plan[step]) for qi, plan in plans.items() if step < len(plan) and plan[step][1] - plan[step][0] > 1]
            prompts = [self._window_input(qtok[qi], [dtok[qi][i] for i in orders[qi][s:e]]) for qi, (s, e) in jobs]
            perms = self._rank_windows(prompts, [e - s for _, (s, e) in jobs])
            tick(sum(1 / len(plans[qi]) for qi, _ in jobs))  # the progress bar's queries, by windows done
            for (qi, (s, e)), perm in zip(jobs, perms, strict=True):
                current = orders[qi][s:e]
                orders[qi][s:e] = [current[i] for i in perm]
        return [(o, positional_scores(len(o))) for o in orders]

    def _rank_full(self, qtok: list[list[int]], dtok: list[list[list[int]]], orders: list[list[int]]) -> list[int]:
        """Full ranking: every list that fits goes to the model as one prompt (all such prompts of
        the call together); returns the lists left for sliding windows (one warning names them)."""
        jobs, rest, too_long, too_many = [], [], [], []
        for qi, d in enumerate(dtok):
            if len(d) < 2:
                continue
            if self.max_full is not None and len(d) > self.max_full:
                too_many.append(len(d))
                rest.append(qi)
                continue
            need = self.full_prompt_tokens(qtok[qi], d)
            if need > self.llm.window:
                too_long.append(need)
                rest.append(qi)
                continue
            jobs.append(qi)
        prompts = [self._window_input(qtok[qi], dtok[qi]) for qi in jobs]
        perms = self._rank_windows(prompts, [len(dtok[qi]) for qi in jobs])
        tick(len(jobs))
        c = self.llm.cost
        assert isinstance(c, FullRankingCost)
        for qi, prompt, perm in zip(jobs, prompts, perms, strict=True):
            orders[qi] = list(perm)
            c.full_lists += 1
            c.full_prompts += 1
            c.full_tokens += len(prompt)
            for s, e in windows(len(dtok[qi]), self.window, self.stride):  # what sliding windows would have read
                if e - s > 1:
                    c.sliding_prompts += 1
                    c.sliding_tokens += len(self._window_input(qtok[qi], dtok[qi][s:e]))
        c.fallback_lists += len(rest)
        if rest:
            why = []
            if too_long:
                why.append(f"{len(too_long)} need up to {max(too_long)} prompt tokens, over the model's {self.llm.window}-token "
                           f"context")
            if too_many:
                why.append(f"{len(too_many)} have up to {max(too_many)} candidates, over the "
                           f"{self.max_full} single-token identifiers of this tokenizer")
            log.warning("full ranking: %d of %d lists ranked with sliding windows of %d (stride %d) instead: %s",
                        len(rest), len(dtok), self.window, self.stride, "; ".join(why))
        return rest


class First(_Listwise):
    """FIRST: one forward pass per window, identifiers ordered by their first-token logits.
    The default model is castorini/first_mistral (where the hub is reachable)."""

    kind = "first"
    spec_arg = "[MODEL]"
    spec_help = "FIRST single-token listwise reranking over sliding windows (default model castorini/first_mistral)"
    spec_options: ClassVar[tuple[str, ...]] = (*_Listwise.spec_options, "identifiers")
    DEFAULT_MODEL = "castorini/first_mistral"

    full_ranking = True

    def __init__(self, name: str = DEFAULT_MODEL, *, identifiers: str = "auto", **options: Any) -> None:
        super().__init__(name, **options)
        self._prime, self.labels, self._ids = identifier_tokens(self.llm.tokenizer, self.window, identifiers)
        if self.full:  # more single-token identifiers (A-Z, a-z); their first `window` are the window's
            self._all_labels, self._all_ids = full_identifiers(self.llm.tokenizer, self.window, identifiers, self.depth)
            self.max_full = len(self._all_labels)
        else:
            self._all_labels, self._all_ids = self.labels, self._ids

    def labels_for(self, n: int) -> Sequence[str]:
        if n <= len(self._all_labels):
            return self._all_labels
        raise DataError(f"FIRST has {len(self._all_labels)} single-token identifiers with this tokenizer, not {n}")

    @property
    def prime(self) -> str:
        """What the assistant turn starts with before the first identifier token."""
        return self._prime

    @property
    def identifier_ids(self) -> list[int]:
        """The token read for each label as the first answer token (with full ranking, of
        every label a full prompt may use)."""
        return list(self._all_ids)

    def _rank_windows(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        if not prompts:
            return []
        logits = self.llm.next_token_logits(prompts, self._all_ids[: max(sizes)])
        return [sorted(range(n), key=lambda i: (-row[i], i)) for row, n in zip(logits, sizes, strict=True)]


class ListwiseGenerate(_Listwise):
    """Generative listwise reranking: the model writes the window's permutation."""

    kind = "listwise-gen"
    spec_help = "RankGPT-style listwise reranking: the LLM writes the window's permutation (window=all: the whole list)"
    full_ranking = True

    def labels_for(self, n: int) -> Sequence[str]:
        return self.labels if n <= len(self.labels) else numbered(n)

    def _reserve(self, n: int) -> int:
        return self._max_new(n)

    def _max_new(self, n: int) -> int:
        """Tokens the answer may take: 5 an identifier (" [B] >" is 3-5 tokens), or what the whole
        permutation takes in this tokenizer where that is more (numbers split into digits), and slack."""
        if n <= len(LABELS):
            return 5 * n + 8
        labels = self.labels_for(n)
        return max(5 * n, len(self.llm.tokens([" > ".join(f"[{labels[i]}]" for i in range(n))])[0])) + 8

    def _rank_windows(self, prompts: list[list[int]], sizes: list[int]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in prompts]
        by_size: dict[int, list[int]] = {}
        for i, n in enumerate(sizes):
            by_size.setdefault(n, []).append(i)
        for n, idx in by_size.items():
            texts = self.llm.generate([prompts[i] for i in idx], max_new_tokens=self._max_new(n))
            for i, text in zip(idx, texts, strict=True):
                perm, repaired = parse_permutation(text, n, self.labels_for(n))
                self.llm.cost.repaired += repaired
                out[i] = perm
        return out


def parse_permutation(text: str, n: int, labels: str | Sequence[str] = LABELS) -> tuple[list[int], bool]:
    """``"[B] > [A] > [C]"`` -> ([1, 0, 2], False); with ``labels="1"``, numbers from 1:
    ``"[2] > [1] > [3]"`` -> ([1, 0, 2], False); with a list of labels (``numbered(100)``), each
    label as written. Unknown and repeated identifiers are dropped, missing ones appended in
    their incoming order; the flag says whether anything was repaired."""
    seen: list[int] = []
    bad = False
    if isinstance(labels, str):
        numbers = labels == "1"
        found = re.findall(r"\[\s*(\d+)\s*\]" if numbers else r"\[\s*([A-Za-z])\s*\]", text)
        index = [int(x) - 1 if numbers else labels.find(x.upper()) for x in found]
    else:
        position = {lab: i for i, lab in enumerate(labels[:n])}
        index = [position.get(x, -1) for x in re.findall(r"\[\s*([A-Za-z]+|\d+)\s*\]", text)]
    for i in index:
        if i < 0 or i >= n or i in seen:
            bad = True
            continue
        seen.append(i)
    missing = [i for i in range(n) if i not in seen]
    return seen + missing, bad or bool(missing)
