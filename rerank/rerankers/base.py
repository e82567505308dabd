"""What every reranker shares: the Stage contract, the RAG-app API and the score cache.

A subclass implements ``_score(pairs) -> list[float]`` for (query, document) text pairs. Then:

* as a stage: ``(bm25 % 100 >> reranker)(queries)`` rescores the top ``depth`` hits of every
  query in one batched call and keeps the rest below them;
* in an app: ``reranker.rank("query", docs, top_k=5)`` takes strings, dicts or objects and
  returns :class:`RankedDoc` objects (original index, id, score), never touching ``docs``;
  ``await reranker.arank(...)`` does the same off the event loop; ``reranker.score(pairs)``
  returns raw scores.

Concurrent calls on one reranker (threads, ``arank`` tasks, a server's requests) share its
batches: their pairs go through one :class:`~rerank.models.batching.Combiner`, which runs what
waits as one engine call and hands each caller its own scores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import DataError, RerankError
from ..models.batching import Combiner, Ticket
from ..models.engine import Cost, ScoreCache
from ..progress import move_to, progress_bar
from ..types import Hit, Query, Ranking, Stage

if TYPE_CHECKING:
    from ..specs import Context, Spec

_TEXT_ATTRS = ("text", "content", "contents", "passage", "page_content")
_ID_ATTRS = ("id", "docid", "doc_id", "_id")


@dataclass(frozen=True)
class RankedDoc:
    """One document of ``rank``'s result: where it was in the input, its id (if it had one), its score."""

    index: int
    score: float
    text: str
    id: str | None = None
    document: Any = None


def _text_and_id(doc: Any, i: int) -> tuple[str, str | None]:
    if isinstance(doc, str):
        return _valid_text(doc, f"document {i}"), None
    if isinstance(doc, Mapping):
        text = next((doc[k] for k in _TEXT_ATTRS if k in doc and doc[k] is not None), None)
        did = next((doc[k] for k in _ID_ATTRS if k in doc and doc[k] is not None), None)
    else:
        text = next((getattr(doc, k) for k in _TEXT_ATTRS if getattr(doc, k, None) is not None), None)
        did = next((getattr(doc, k) for k in _ID_ATTRS if getattr(doc, k, None) is not None), None)
    if not isinstance(text, str):
        raise DataError(f"document {i} has no text: give a string, or a dict/object with one of {', '.join(_TEXT_ATTRS)}")
    return _valid_text(text, f"document {i}"), None if did is None else str(did)


def _valid_text(text: str, what: str) -> str:
    """``text`` when it is valid Unicode (a lone surrogate cannot be tokenised)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{what} holds a lone surrogate (\\u{ord(text[e.start]):04x} at character {e.start + 1}), "
                        "which is not text") from None
    return text


def tail_scores(floor: float, n: int) -> list[float]:
    """Scores for ``n`` hits kept below a reranked head whose lowest score is ``floor``, in their order."""
    return [floor - 1.0 - i for i in range(n)]


def with_tail(reranked: list[Hit], rest: Sequence[Hit]) -> list[Hit]:
    """The reranked head, then the hits below the rerank depth in their first-stage order."""
    floor = reranked[-1].score if reranked else 0.0
    return reranked + [Hit(h.docid, s, h.text) for h, s in zip(rest, tail_scores(floor, len(rest)), strict=True)]


def _as_list(values: Iterable[Any], what: str) -> list[Any]:
    """An argument that holds many things (``rank``'s documents, ``score``'s pairs) as a list, read
    once (a generator works); a string, a mapping (its keys or its values?) or a non-iterable is
    refused before any scoring."""
    if isinstance(values, (str, bytes)):
        raise DataError(f"{what} must be a list, not a single {type(values).__name__}")
    if isinstance(values, Mapping):
        raise DataError(f"{what} must be a list, not a {type(values).__name__}: pass list(d.values()) or list(d.items())")
    if not isinstance(values, Iterable):
        raise DataError(f"{what} must be a list, got {type(values).__name__}")
    return list(values)


def _rank_items(query: str, docs: Iterable[Any], top_k: int | None) -> list[tuple[str, str | None, Any]]:
    """``rank``'s arguments checked, and each document's (text, id, the document as given)."""
    if not isinstance(query, str) or not query.strip():
        raise DataError("query must be a non-empty string")
    _valid_text(query, "the query")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    return [(*_text_and_id(d, i), d) for i, d in enumerate(_as_list(docs, "docs (the documents to rank)"))]


def _check_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``score``'s pairs as a list, each (query text, document text): anything else (a None, a
    number, a missing half) is an error naming the pair, never scored as its string form."""
    out = _as_list(pairs, "pairs (of query and document texts)")
    for i, p in enumerate(out):
        if not isinstance(p, (tuple, list)) or len(p) != 2 or not all(isinstance(x, str) for x in p):
            raise DataError(f"pair {i} must be (query text, document text), two strings; got {p!r:.80}")
        _valid_text(p[0], f"pair {i}'s query")
        _valid_text(p[1], f"pair {i}'s document")
    return [(q, d) for q, d in out]


class Reranker(Stage):
    """Base class of model-backed rerankers (see the module docstring)."""

    depth: int = 100
    # queries scored together: the unit of batching, and of distribution by rerank.distributed. Both
    # paths cut a run into the same blocks, so the model sees the same batches and gives the same scores.
    block: int = 8
    model_key: str = ""
    cache_chunk: int = 2048  # pairs scored between cache writes: a killed run resumes from the last one
    # cross-request batching: the items one combined round takes at most (pairs; (query, candidates)
    # lists for ListReranker), and how long a round after one shared by several requests waits for more
    combine_items: int = 512
    combine_wait_ms: float = 2.0

    role = "reranker"
    spec_arg = "MODEL"
    spec_options: ClassVar[tuple[str, ...]] = ("depth", "block", "cache")
    DEFAULT_MODEL: ClassVar[str | None] = None  # the model a bare ``kind`` spec means (None: a model is required)

    @classmethod
    def spec_model(cls, arg: str, options: dict[str, Any]) -> str:
        """The model named by a spec's argument (a subclass may read a suffix of it into ``options``)."""
        model = arg or cls.DEFAULT_MODEL
        if not model:
            raise RerankError(f"reranker {cls.kind} needs a model: {cls.kind}:{cls.spec_arg}")
        return model

    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        options = ctx.take(cls)
        block = options.pop("block", None)
        model = cls.spec_model(spec.arg, options)
        reranker = cls(model, **options)  # type: ignore[call-arg, arg-type]  # subclasses take the model first
        if block:
            reranker.block = block
        return reranker

    def __init__(self, *, depth: int = 100, cache: str | Path | ScoreCache | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        self.depth = depth
        self.cache = ScoreCache(cache) if isinstance(cache, (str, Path)) else cache
        self.combiner: Combiner[Any, Any] = Combiner(self._run_combined, max_items=self.combine_items,
                                                     max_wait_ms=self.combine_wait_ms)

    def _run_combined(self, items: list[Any]) -> list[Any]:
        """One combined round: every waiting caller's pairs scored in one call."""
        return self._score(items)

    # ------------------------------------------------------------ to implement
    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        raise NotImplementedError

    @property
    def cost(self) -> Cost:
        raise NotImplementedError

    # ------------------------------------------------------------ scoring
    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw scores of (query, document) pairs, in order (served from the cache when present)."""
        return self._scored(_check_pairs(pairs))

    def _scored(self, pairs: list[tuple[str, str]]) -> list[float]:
        """``score`` of pairs already checked."""
        if not pairs:
            return []
        if self.cache is None:
            return self.combiner.submit(pairs)
        keys = [ScoreCache.key(self.model_key, q, d) for q, d in pairs]
        known = self.cache.get_many(keys)
        todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
        self.cost.cached += len(pairs) - len(todo)
        for start in range(0, len(todo), self.cache_chunk):
            chunk = todo[start : start + self.cache_chunk]
            fresh = self.combiner.submit([pairs[i] for i in chunk])
            self.cache.put_many((keys[i], s) for i, s in zip(chunk, fresh, strict=True))
            known.update((keys[i], s) for i, s in zip(chunk, fresh, strict=True))
        return [known[k] for k in keys]

    def score_matrix(self, queries: Sequence[str], docs: Sequence[str]) -> Any:
        """Scores of every query against every document: a float32 array, queries x documents."""
        import numpy as np

        scores = self.score([(q, d) for q in queries for d in docs])
        return np.asarray(scores, dtype=np.float32).reshape(len(queries), len(docs))

    # ------------------------------------------------------------ the stage
    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        if ranking is None:
            raise ValueError(f"{self.name} is a reranker: give it a first stage (retriever >> reranker)")
        text = {q.qid: q.text for q in queries}
        for qid, hits in ranking.items():
            if qid in text:
                for h in hits[: self.depth]:
                    if h.text is None:
                        raise DataError(f"query {qid!r}: hit {h.docid!r} has no text to rerank; give the first stage the "
                                        f"documents (a dataset with texts, or candidates with passages)")
        out: Ranking = {}
        blocks = query_blocks(queries, ranking, self.block)
        truncation = getattr(self, "truncation", None)  # the models that cut long passages report one total per run
        with truncation.job() if truncation is not None else contextlib.nullcontext(), \
                progress_bar(sum(map(len, blocks)), f"reranking with {self.name}", "query") as bar:
            done = 0
            for block in blocks:
                out.update(self._rerank_block([text[qid] for qid in block], [ranking[qid] for qid in block], block))
                done += len(block)
                move_to(bar, done)  # exact, after the ticks of a listwise block's windows
        return {qid: out[qid] if qid in out else list(hits) for qid, hits in ranking.items()}

    def _rerank_block(self, texts: list[str], lists: list[list[Hit]], qids: list[str]) -> Ranking:
        """One block of queries: every (query, hit) pair within the depth scored in one call."""
        pairs = [(t, h.text or "") for t, hits in zip(texts, lists, strict=True) for h in hits[: self.depth]]
        scores = self.score(pairs)
        out: Ranking = {}
        a = 0
        for qid, hits in zip(qids, lists, strict=True):
            head = hits[: self.depth]
            top = sorted(((scores[a + i], i, h) for i, h in enumerate(head)), key=lambda r: (-r[0], r[1]))
            out[qid] = with_tail([Hit(h.docid, s, h.text) for s, _, h in top], hits[self.depth :])
            a += len(head)
        return out

    # ------------------------------------------------------------ the app API
    def rank(self, query: str, docs: Iterable[Any], top_k: int | None = None) -> list[RankedDoc]:
        """``docs`` (a list, or any iterable but a mapping) ranked for ``query``, best first
        (``top_k`` of them when given). Arguments are checked before anything is scored."""
        return self._rank(query, _rank_items(query, docs, top_k), top_k)

    def _rank(self, query: str, items: list[tuple[str, str | None, Any]], top_k: int | None) -> list[RankedDoc]:
        """``rank`` of checked items (the texts are not checked again)."""
        scores = self._scored([(query, t) for t, _, _ in items])
        order = sorted(range(len(items)), key=lambda i: (-scores[i], i))
        ranked = [RankedDoc(i, scores[i], *items[i]) for i in order]
        return ranked[:top_k] if top_k is not None else ranked

    async def arank(self, query: str, docs: Iterable[Any], top_k: int | None = None) -> list[RankedDoc]:
        """``rank`` in a worker thread, so an async app keeps serving while the model runs. A
        cancelled task's pairs leave the model's queue, as a server's disconnected client's do."""
        items = _rank_items(query, docs, top_k)  # checked (a generator read) here, before any scoring
        ticket = Ticket()

        def work() -> list[RankedDoc]:
            with ticket:
                return self._rank(query, items, top_k)

        try:
            return await asyncio.to_thread(work)
        except asyncio.CancelledError:
            ticket.cancel()
            raise


class ListReranker(Reranker):
    """Rerankers that order a query's candidates jointly (pairwise and listwise LLMs) rather than
    score each pair alone. Subclasses implement ``_order(queries, lists)``: for every query its
    candidates' new order (indices, best first) and a score per candidate in that order; all
    queries come in one call, so independent prompts of different queries share batches."""

    spec_options: ClassVar[tuple[str, ...]] = ("depth", "block", "device", "dtype", "batch_tokens", "max_length",
                                                "max_passage_tokens", "backend")

    def __init__(self, name: str, *, depth: int = 100, max_passage_tokens: int | None = None, device: str = "auto",
                 dtype: str = "auto", batch_tokens: int | None = None, max_length: int | None = None, cache: Any = None,
                 backend: str | None = None) -> None:
        super().__init__(depth=depth)
        if cache is not None:
            raise ValueError(f"{type(self).__name__} orders lists jointly: a per-pair score cache does not apply")
        if max_passage_tokens is not None and max_passage_tokens < 1:
            raise ValueError(f"max_passage_tokens must be positive, got {max_passage_tokens}")
        self.max_passage_tokens = max_passage_tokens
        options: dict[str, Any] = {"device": device, "dtype": dtype, "batch_tokens": batch_tokens, "max_length": max_length}
        if self.model_kind == "causal-lm":
            options["backend"] = backend  # the causal LLM's engine (rerank.models.llm_engines.load_llm)
        elif backend not in (None, "auto", "torch"):
            raise ValueError(f"{self.kind} runs on the torch engine only, not backend {backend!r}")
        self.llm = self._load(name, **options)
        self.model_name = name
        self.name = f"{self.kind}:{name}"

    def _load(self, name: str, **options: Any) -> Any:
        """The model the lists are ordered with (a causal LLM; a subclass may load another kind)."""
        from ..models.llm_engines import load_llm

        return load_llm(name, **options)

    kind = "list"
    model_kind = "causal-lm"  # what ``_load`` loads (a subclass may load another kind)
    block = 32  # prompts of a block's queries share batches at every step
    combine_items = 32  # lists per combined round of concurrent callers

    @property
    def cost(self) -> Any:
        return self.llm.cost

    def _order(self, queries: Sequence[str], lists: Sequence[Sequence[str]]) -> list[tuple[list[int], list[float]]]:
        raise NotImplementedError

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        raise TypeError(f"{self.name} ranks lists, it does not score single pairs: use rank(query, docs) or it as a stage")

    def _run_combined(self, items: list[Any]) -> list[Any]:
        """One combined round: the waiting callers' (query, candidates) lists ordered in one ``_order``
        call, so their same-step prompts share batches."""
        return self._order([q for q, _ in items], [docs for _, docs in items])

    def _rerank_block(self, texts: list[str], lists: list[list[Hit]], qids: list[str]) -> Ranking:
        """One block of queries ordered in one ``_order`` call (their prompts share batches)."""
        requests = [(t, [h.text or "" for h in hits[: self.depth]]) for t, hits in zip(texts, lists, strict=True)]
        orders = self.combiner.submit(requests)
        out: Ranking = {}
        for qid, hits, (perm, scores) in zip(qids, lists, orders, strict=True):
            top = hits[: self.depth]
            out[qid] = with_tail(
                [Hit(top[i].docid, s, top[i].text) for i, s in zip(perm, scores, strict=True)], hits[self.depth :]
            )
        return out

    def _rank(self, query: str, items: list[tuple[str, str | None, Any]], top_k: int | None) -> list[RankedDoc]:
        head = items[: self.depth]
        perm, scores = self.combiner.submit([(query, [t for t, _, _ in head])])[0] if head else ([], [])
        order = list(perm) + list(range(len(head), len(items)))
        scores = list(scores) + tail_scores(scores[-1] if scores else 0.0, len(items) - len(head))
        ranked = [RankedDoc(i, s, *items[i]) for i, s in zip(order, scores, strict=True)]
        return ranked[:top_k] if top_k is not None else ranked


def query_blocks(queries: Sequence[Query], ranking: Ranking, size: int) -> list[list[str]]:
    """The ids of the ranking's queries that are asked for, in the ranking's order, cut into blocks of ``size``."""
    asked = {q.qid for q in queries}
    qids = [qid for qid in ranking if qid in asked]
    return [qids[i : i + size] for i in range(0, len(qids), size)]


def positional_scores(n: int) -> list[float]:
    """Scores for an order without scores of its own: n, n-1, ..., 1."""
    return [float(n - i) for i in range(n)]
