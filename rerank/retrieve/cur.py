"""Cross-encoder search without a dual encoder: CUR factorisation (ANNCUR) and its adaptive,
multi-round form (ADACUR).

Yadav et al., "Efficient Nearest Neighbor Search for Cross-Encoder Models using Matrix
Factorization" (EMNLP 2022) and "Adaptive Retrieval and Scalable Indexing for k-NN Search
with Cross-Encoders" (ICLR 2024).

Indexing scores ``k_q`` anchor queries (a dataset's train queries, never test ones) against all
``N`` items with the scorer: the matrix ``R`` (``k_q x N``), stored as float16 under ``indexes/``
with a manifest naming the scorer, the anchor queries and the corpus fingerprint.

Search, for a query ``q`` and a budget of ``B`` scorer calls:

1. score ``q`` exactly against ``k_i`` items ``I``: uniform (seeded, the same for every query) or
   each query's top items from a cheap first stage (``init``, e.g. BM25);
2. approximate every item's score as ``c_I · pinv(R[:, I]) · R``, where ``c_I`` are the exact
   scores of ``I``; ``pinv`` keeps the singular values above ``rcond`` times the largest, so an
   ill-conditioned ``R[:, I]`` (near-duplicate anchors) gives a stable least-squares fit;
3. score the best not-yet-scored items by the approximation exactly and add them to ``I``;
   ANNCUR does this once with the remaining budget (``rounds=1``); ADACUR splits it over
   ``rounds`` rounds and refits the approximation on all exact scores before each;
4. return the exactly scored items by their exact scores; when ``k`` exceeds the budget, the
   best unscored items by the final approximation follow below them.

Budget ``B = k_i + (B - k_i)``: every call is one (query, item) pair through the scorer. The
default is ADACUR with 9 rounds and the budget split evenly: ``k_i = B // (rounds + 1)``
(on SciFact with SPLADE-tiny at B = 100, top-10 recall 0.73 against 0.55 with 2 rounds and 0.39
with ANNCUR's one; benchmarks/cur.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..data import Dataset
from ..data.store import DocStore
from ..env import atomic_write
from ..errors import DataError, IndexStateError, RerankError, ScoringError
from ..indexes import build_or_reuse, index_path, read_manifest
from ..rerankers.base import Reranker, tail_scores
from ..types import Hit, Query, Ranking, Stage

if TYPE_CHECKING:
    from ..specs import Context, Spec

log = logging.getLogger("rerank")
MATRIX = "R.npy"
_CHUNK_PAIRS = 65536  # (anchor query, item) pairs scored between checkpoints
_APPROX_FLOATS = 1 << 25  # query block x items of approximate scores held at once


def pinv(m: np.ndarray, rcond: float = 1e-3) -> np.ndarray:
    """Moore-Penrose pseudo-inverse that drops singular values below ``rcond`` x the largest
    (numpy's default cut-off, 1e-15, inverts noise and blows the approximation up)."""
    if not 0 <= rcond < 1:
        raise ValueError(f"rcond must be in [0, 1), got {rcond}")
    a = np.asarray(m, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ScoringError("the anchor score matrix holds NaN or infinite values")
    if a.size == 0:
        return np.zeros(a.shape[::-1])
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    if s[0] <= 0:
        return np.zeros(a.shape[::-1])
    keep = s > rcond * s[0]
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def _anchor_fingerprint(anchors: Sequence[Query]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for q in anchors:
        h.update(q.qid.encode("utf-8", "surrogatepass") + b"\x00" + q.text.encode("utf-8", "surrogatepass") + b"\x01")
    return f"{len(anchors)}:{h.hexdigest()}"


def check_budget(budget: int, anchor_items: int, rounds: int) -> None:
    """Raise on a budget that cannot pay for the first round of anchor items (or nonsense values)."""
    for label, value in (("budget", budget), ("anchor_items", anchor_items), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RerankError(f"CUR search: {label} must be a positive integer, got {value!r}")
    if budget < anchor_items:
        raise RerankError(f"CUR search: a budget of {budget} scorer calls per query is smaller than the "
                          f"{anchor_items} anchor items every query is scored against first (k_i); "
                          f"raise the budget or lower anchor_items")


def round_sizes(budget: int, anchor_items: int, rounds: int) -> list[int]:
    """Items scored per round after the anchors: ``budget - anchor_items`` split as evenly as possible."""
    rest = budget - anchor_items
    return [rest // rounds + (1 if r < rest % rounds else 0) for r in range(rounds)]


def anchor_queries(source: str, dataset: str, split: str, encoding_errors: str = "strict") -> list[Query]:
    """Anchor queries of a CUR index: another split of ``dataset`` (e.g. ``train``) or a queries file."""
    from ..data import load_dataset
    from ..data.formats import read_topics

    if Path(source).is_file():
        return read_topics(source, encoding_errors)
    if source == split:
        raise RerankError(f"--anchors-from {source}: the anchors would be the queries searched; "
                          f"take them from another split (e.g. train) or a queries file")
    try:
        return load_dataset(dataset, split=source, encoding_errors=encoding_errors).queries
    except RerankError as e:
        raise RerankError(f"--anchors-from {source}: no such split of {dataset} and no such queries file ({e})") from None


class CUR(Stage):
    """A first stage that searches ``docs`` with ``scorer`` alone (see the module docstring).

    ``CUR(CrossEncoder(...), ds, anchors=train.queries, budget=200, rounds=4)(test.queries)``
    builds (or reuses) the anchor matrix on first use. ``scorer`` is any pointwise reranker
    (cross-encoder, LLM yes/no, SPLADE); a cross-encoder is best used with raw logits
    (``activation="none"``): a sigmoid squashes the scores the factorisation approximates.
    """

    kind, role = "cur", "retriever"
    spec_arg = "SCORER"
    spec_help = ("search with a pointwise scorer alone by CUR factorisation (ANNCUR, ADACUR), e.g. cur:cross-encoder:MODEL; "
                 "budget: scorer calls per query, anchors_from: a split or queries file")
    spec_parts = "stage"
    spec_options: ClassVar[tuple[str, ...]] = ("budget", "rounds", "anchor_items", "init", "anchors_from", "device", "dtype",
                                                "batch_tokens", "backend", "quantize")
    BUDGET, ROUNDS, ANCHORS_FROM = 200, 9, "train"  # the defaults: scorer calls a query, rounds, anchor queries

    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        if not spec.parts:
            raise RerankError("--retriever cur needs a pointwise scorer: cur:cross-encoder:MODEL, cur:llm-pointwise:MODEL "
                              "or cur:splade:MODEL")
        scorer = spec.parts[0]
        if scorer.cls.family != "pointwise":
            from ..specs import registry

            pointwise = [k for k, c in registry().items() if c.family == "pointwise"]
            raise RerankError(f"--retriever {spec}: CUR search needs a pointwise scorer ({', '.join(pointwise)}), "
                              f"not {scorer.kind!r}")
        ds = ctx.full_corpus(spec)
        opts = ctx.options
        source = opts.get("anchors_from") or cls.ANCHORS_FROM
        anchors = anchor_queries(source, ctx.dataset_ref or ds.source, ctx.split, ds.encoding_errors)
        searched = {q.qid for q in ds.queries}
        overlap = sum(q.qid in searched for q in anchors)
        if overlap:
            raise RerankError(f"--anchors-from {source}: {overlap} of its {len(anchors)} queries "
                              f"are queries of {ds.name} searched here (the dataset may have no such split); "
                              f"anchors must be other queries: give a queries file")
        extra = {"activation": "none"} if scorer.kind == "cross-encoder" else {}  # the factorisation approximates raw logits
        model = {k: opts.get(k) for k in ("device", "dtype", "batch_tokens", "backend", "quantize") if opts.get(k) is not None}
        refused = [k for k in model if k not in scorer.cls.spec_options]
        if refused:
            raise RerankError(f"--retriever {spec}: {scorer.kind} does not take {', '.join(refused)}")
        stage = scorer.cls.from_spec(scorer, ctx.with_(options={**model, **extra}))
        assert isinstance(stage, Reranker)
        numbers = {k: opts[k] for k in ("budget", "rounds", "anchor_items") if opts.get(k) is not None}
        budget = numbers.get("budget", cls.BUDGET)
        first = ctx.build(opts["init"], "retriever", k=budget, with_text=False) if opts.get("init") else None
        return cls(stage, ds, anchors, init=first, k=ctx.k, with_text=ctx.with_text, rebuild=ctx.rebuild, **numbers)

    def __init__(self, scorer: Reranker, docs: DocStore | Dataset, anchors: Sequence[Query], *, budget: int = BUDGET,
                 anchor_items: int | None = None, rounds: int = ROUNDS, init: Stage | None = None, k: int = 100,
                 rcond: float = 1e-3, seed: int = 0, with_text: bool = True,
                 index_root: str | os.PathLike[str] | None = None, rebuild: bool = False, progress: bool | None = None) -> None:
        store = docs.docs if isinstance(docs, Dataset) else docs
        if store is None:
            raise DataError(f"dataset {getattr(docs, 'name', '?')!r} has no documents to search")
        if not isinstance(scorer, Reranker):
            raise TypeError(f"CUR needs a pointwise scorer (a Reranker), got {type(scorer).__name__}")
        anchor_items = anchor_items if anchor_items is not None else max(1, budget // (rounds + 1))
        check_budget(budget, anchor_items, rounds)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RerankError(f"k must be a positive integer, got {k!r}")
        if not 0 <= rcond < 1:
            raise RerankError(f"rcond must be in [0, 1), got {rcond}")
        anchors = list(anchors)
        if not anchors:
            raise DataError("CUR search needs anchor queries (e.g. the dataset's train queries)")
        if len({q.qid for q in anchors}) != len(anchors):
            raise DataError("the anchor queries repeat a query id")
        self.scorer, self.docs, self.anchors = scorer, store, anchors
        self.budget, self.anchor_items, self.rounds = budget, anchor_items, rounds
        self.init, self.k, self.rcond, self.seed = init, k, rcond, seed
        self.with_text, self.rebuild, self.progress = with_text, rebuild, progress
        self.index_root = Path(index_root) if index_root is not None else None
        self.name = f"{'adacur' if rounds > 1 else 'anncur'}:{scorer.name}@{budget}"
        self.path: Path | None = None
        self.calls = 0  # scorer calls made by searches (not counting the index build)
        self._matrix: np.ndarray | None = None
        self._docids: list[str] = []

    @property
    def cost(self) -> Any:
        return self.scorer.cost

    # ------------------------------------------------------------ the anchor matrix
    def _expected(self) -> dict[str, Any]:
        params = {"scorer": self.scorer.model_key or self.scorer.name, "anchors": _anchor_fingerprint(self.anchors)}
        corpus = {"name": self.docs.name, "fingerprint": self.docs.fingerprint(), "documents": len(self.docs)}
        return {"kind": "cur", "backend": "rerank", "params": params, "corpus": corpus}

    def index(self) -> Path:
        """Score the anchor queries against every item when no current matrix exists; return its folder."""
        if self._matrix is not None and self.path is not None:
            return self.path
        if len(self.docs) == 0:
            raise DataError(f"cannot build a CUR index over an empty corpus ({self.docs.name})")
        expected = self._expected()
        path = index_path("cur", self.docs.name, expected["params"], self.index_root)
        build_or_reuse(path, expected, self._build, rebuild=self.rebuild, resumable=True)
        self.rebuild = False
        self.load(path)
        return path

    def load(self, path: str | os.PathLike[str]) -> None:
        """Use the anchor matrix in ``path``; an index built for other items, anchors or scorer is refused."""
        path = Path(path)
        m = read_manifest(path)
        if m is None:
            raise IndexStateError(f"{path} holds no CUR index (no readable manifest)")
        expected = self._expected()
        if m.get("kind") != "cur":
            raise IndexStateError(f"{path} is a {m.get('kind')!r} index, not a CUR index")
        if m.get("corpus", {}).get("fingerprint") != expected["corpus"]["fingerprint"]:
            raise IndexStateError(f"CUR index {path} was built for other items ({m['corpus'].get('documents')} documents of "
                                  f"{m['corpus'].get('name')!r}): the item set changed since indexing; rebuild it "
                                  f"(rerank index --rebuild, or rebuild=True)")
        for key, what in (("scorer", "scorer"), ("anchors", "anchor queries")):
            if m.get("params", {}).get(key) != expected["params"][key]:
                raise IndexStateError(f"CUR index {path} was built with other {what} "
                                      f"({m['params'].get(key)!r}, asked for {expected['params'][key]!r}); rebuild it")
        try:
            matrix = np.load(path / MATRIX, mmap_mode="r")
            docids = json.loads((path / "docids.json").read_text())
        except (OSError, ValueError) as e:
            raise IndexStateError(f"CUR index {path} is unreadable ({e}); rebuild it") from e
        if matrix.shape != (len(self.anchors), len(self.docs)) or len(docids) != len(self.docs):
            raise IndexStateError(f"CUR index {path}: a {matrix.shape} matrix for {len(self.anchors)} anchor queries and "
                                  f"{len(self.docs)} items; rebuild it")
        self._matrix, self._docids, self.path = matrix, docids, path

    def _build(self, folder: Path) -> None:
        """R, anchor queries x items, a block of items at a time (every anchor against each block):
        the corpus streams from its store, and an interrupted build resumes at the last block."""
        from ..progress import progress_bar

        n, kq = len(self.docs), len(self.anchors)
        queries = [q.text for q in self.anchors]
        out_file, done_file = folder / MATRIX, folder / "progress.json"
        done = json.loads(done_file.read_text()).get("items", 0) if done_file.is_file() and out_file.is_file() else 0
        out = np.lib.format.open_memmap(out_file, mode="r+" if done else "w+", dtype=np.float16, shape=(kq, n))
        if done:
            log.info("resuming the CUR index of %s at item %d of %d", self.docs.name, done, n)
        cols = max(1, _CHUNK_PAIRS // max(1, kq))
        bar = progress_bar(kq * n, f"CUR anchors x {self.docs.name}", "pair", done * kq, self.progress)
        docids: list[str] = []
        block: list[str] = []

        def flush() -> None:
            start = len(docids) - len(block)
            half = self.scorer.score_matrix(queries, block).astype(np.float16)
            if not np.isfinite(half).all():
                raise ScoringError(f"{self.scorer.name}: anchor scores overflow float16 (|s| > 65504)")
            out[:, start : start + len(block)] = half
            out.flush()
            with atomic_write(done_file) as f:
                json.dump({"items": start + len(block)}, f)
            bar.update(len(block) * kq)
            block.clear()

        try:
            for docid, text in self.docs.items():
                docids.append(docid)
                if len(docids) <= done:
                    continue  # scored before the interruption
                block.append(text)
                if len(block) == cols:
                    flush()
            if block:
                flush()
        finally:
            bar.close()
        if len(docids) != n or len(set(docids)) != n:
            raise DataError(f"{self.docs.name} repeats document ids; a CUR index needs unique ones")
        out.flush()
        done_file.unlink()
        (folder / "docids.json").write_text(json.dumps(docids))
        (folder / "anchors.json").write_text(json.dumps([{"qid": q.qid, "text": q.text} for q in self.anchors]))

    @property
    def matrix(self) -> tuple[np.ndarray, list[str]]:
        """The anchor matrix R (float16, memory-mapped; anchor queries x items) and the items' ids."""
        self.index()
        assert self._matrix is not None
        return self._matrix, self._docids

    # ------------------------------------------------------------ searching
    def approximate(self, item_rows: Sequence[np.ndarray], exact: Sequence[np.ndarray]) -> np.ndarray:
        """Approximate scores of every item for a block of queries (queries x items, float32):
        ``c_I · pinv(R[:, I]) · R`` with each query's scored items ``I`` and their exact scores ``c_I``."""
        matrix, _ = self.matrix
        weights = np.zeros((len(item_rows), matrix.shape[0]), dtype=np.float64)
        cache: dict[bytes, np.ndarray] = {}  # uniform anchors: one pinv for every query
        for i, (rows, c) in enumerate(zip(item_rows, exact, strict=True)):
            key = rows.tobytes()
            if key not in cache:
                cache[key] = pinv(np.asarray(matrix[:, rows], dtype=np.float64), self.rcond)
            weights[i] = np.asarray(c, dtype=np.float64) @ cache[key]
        w = weights.astype(np.float32)
        out = np.empty((len(item_rows), matrix.shape[1]), dtype=np.float32)
        step = 65536
        for start in range(0, matrix.shape[1], step):
            out[:, start : start + step] = w @ np.asarray(matrix[:, start : start + step], dtype=np.float32)
        return out

    def _initial_rows(self, queries: Sequence[Query], ranking: Ranking | None, ki: int) -> list[np.ndarray]:
        n = len(self._docids)
        rng = np.random.default_rng(self.seed)
        uniform = np.sort(rng.choice(n, size=ki, replace=False))
        if ranking is None:
            return [uniform] * len(queries)
        position = {d: i for i, d in enumerate(self._docids)}
        out = []
        for j, q in enumerate(queries):
            picked: list[int] = []
            seen: set[int] = set()
            for h in ranking.get(q.qid, []):
                row = position.get(h.docid)
                if row is not None and row not in seen:
                    picked.append(row)
                    seen.add(row)
                    if len(picked) == ki:
                        break
            if len(picked) < ki:  # a short first-stage list: fill with seeded uniform items
                fill = np.random.default_rng([self.seed, j]).permutation(n)
                picked.extend(int(r) for r in fill if r not in seen and len(picked) < ki)
            out.append(np.asarray(picked[:ki], dtype=np.int64))
        return out

    def _score_rows(self, queries: Sequence[Query], rows: Sequence[np.ndarray], texts: dict[int, str]) -> list[np.ndarray]:
        pairs = [(q.text, texts[int(r)]) for q, rs in zip(queries, rows, strict=True) for r in rs]
        flat = np.asarray(self.scorer.score(pairs), dtype=np.float64)
        self.calls += len(pairs)
        out, start = [], 0
        for rs in rows:
            out.append(flat[start : start + len(rs)])
            start += len(rs)
        return out

    def _text(self, rows: set[int]) -> dict[int, str]:
        texts = {}
        for r in rows:
            t = self.docs.get(self._docids[r])
            if t is None:
                raise IndexStateError(f"document {self._docids[r]!r} of the CUR index is not in {self.docs.name}; rebuild it")
            texts[r] = t
        return texts

    def search(self, queries: Sequence[Query], init: Ranking | None = None) -> Ranking:
        """Top ``k`` per query: exactly scored items first (exact scores), then, when ``k`` exceeds
        the budget, unscored items by their approximate scores (below the exact ones)."""
        docids = self.matrix[1]
        n = len(docids)
        budget = min(self.budget, n)
        if budget < self.budget:
            log.info("%s: the budget (%d) exceeds the %d items; scoring all of them", self.name, self.budget, n)
        ki = min(self.anchor_items, budget)
        sizes = [s for s in round_sizes(budget, ki, self.rounds) if s > 0]
        k = min(self.k, n)
        block = max(1, min(256, _APPROX_FLOATS // n))
        out: Ranking = {}
        for b in range(0, len(queries), block):
            qs = list(queries[b : b + block])
            rows = self._initial_rows(qs, init, ki)
            exact = self._score_rows(qs, rows, self._text(set(np.concatenate(rows).tolist())))
            for size in sizes:
                approx = self.approximate(rows, exact)
                new = []
                for i in range(len(qs)):
                    approx[i, rows[i]] = -np.inf
                    top = np.argpartition(-approx[i], size - 1)[:size] if size < n else np.arange(n)
                    new.append(top[np.argsort(-approx[i, top], kind="stable")])
                fresh = self._score_rows(qs, new, self._text(set(np.concatenate(new).tolist())))
                rows = [np.concatenate([r, x]) for r, x in zip(rows, new, strict=True)]
                exact = [np.concatenate([c, f]) for c, f in zip(exact, fresh, strict=True)]
            tail_approx = self.approximate(rows, exact) if k > budget else None
            for i, q in enumerate(qs):
                order = np.argsort(-exact[i], kind="stable")[:k]
                top_rows = [int(rows[i][j]) for j in order]
                scores = [float(exact[i][j]) for j in order]
                if tail_approx is not None:
                    a = tail_approx[i]
                    a[rows[i]] = -np.inf
                    more = np.argsort(-a, kind="stable")[: k - len(top_rows)]
                    top_rows += [int(r) for r in more]
                    scores += tail_scores(min(scores), len(more))
                texts = self._text(set(top_rows)) if self.with_text else {}
                out[q.qid] = [Hit(docids[r], s, texts.get(r)) for r, s in zip(top_rows, scores, strict=True)]
        return out

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        if ranking is not None:
            raise ValueError(f"{self.name} is a first stage: put it first in the pipeline")
        queries = list(queries)
        anchor_ids = {q.qid for q in self.anchors}
        leaked = [q.qid for q in queries if q.qid in anchor_ids]
        if leaked:
            raise DataError(f"{len(leaked)} of the queries searched are anchor queries of the CUR index "
                            f"(e.g. {leaked[0]!r}): anchors must come from other queries (e.g. the train split)")
        anchor_texts = {q.text.strip().lower() for q in self.anchors}
        same = [q.qid for q in queries if q.text.strip().lower() in anchor_texts]
        if same:  # e.g. SciFact: 2 test queries repeat a train query's text
            log.warning("%s: %d queries (e.g. %r) have the text of an anchor query: their exact scores are in the index",
                        self.name, len(same), same[0])
        self.index()
        init = self.init(queries) if self.init is not None else None
        return self.search(queries, init)
