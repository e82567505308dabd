"""Dense first stage: a sentence-transformers bi-encoder and a FAISS index.

Document embeddings are computed once per (model, corpus) and stored as float16 (memory-mapped,
half the disk and page cache of float32) under ``indexes/``; every index type reads them, so
switching from a flat to an HNSW index does not re-encode the corpus. Encoding goes in chunks
with a checkpoint after each, so an interrupted encode of a large corpus resumes where it
stopped. FAISS runs on the GPU when ``faiss.get_num_gpus() > 0`` (flat and IVF; HNSW is CPU-only
in FAISS), else on the CPU.

Index types: ``flat`` (exact, inner product or L2), ``ivf`` (IVF-Flat: ``nlist`` k-means
cells, ``nprobe`` searched), ``hnsw`` (HNSW-Flat: ``hnsw_m`` links, ``ef_construction``,
``ef_search``), and for collections whose vectors do not fit in memory: ``mmap`` (exact search
over the memory-mapped float16 embeddings, a chunk of rows at a time: :class:`FlatShard`) and
``ivfpq`` (IVF-PQ: ``nlist`` cells, ``pq_m`` sub-quantizers of 8 bits, trained on a sample and
filled a chunk at a time; its recall@100 against exact search is measured when it is built).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..data import Dataset
from ..data.store import DocStore
from ..env import atomic_write
from ..errors import DataError, IndexStateError, MissingDependency, RerankError
from ..indexes import build_or_reuse, index_path, read_manifest
from ..models.encoder import Encoder
from ..progress import progress_bar
from ..types import Hit, Query, Ranking, Stage

if TYPE_CHECKING:
    from ..specs import Context, Spec

log = logging.getLogger("rerank")
INDEX_TYPES = ("flat", "ivf", "hnsw", "mmap", "ivfpq")
ROWS_AT_ONCE = 65536  # embeddings read (and converted to float32) at a time by the builds and the mmap search
EMBEDDINGS = "embeddings.npy"
SHARD_DOCS = 1024  # documents encoded together: the unit of batching, checkpoints and distribution (rerank.distributed)
_SEARCH_BATCH = 4096


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependency("dense retrieval", "faiss-cpu", "faiss-cpu (or faiss-gpu-cu12)") from None
    return faiss


def corpus_shards(docs: DocStore) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first row, document ids, texts) of consecutive shards of ``SHARD_DOCS`` documents, in the
    store's order. Every path encodes exactly these shards, one ``encode_docs`` call each, so the
    model sees the same batches wherever a shard runs: the embeddings are bit-for-bit the same."""
    items = iter(docs.items())
    start = 0
    while chunk := list(itertools.islice(items, SHARD_DOCS)):
        if start + len(chunk) > len(docs):
            raise DataError(f"{docs.name} yielded more than its {len(docs)} documents while being encoded")
        yield start, [d for d, _ in chunk], [t for _, t in chunk]
        start += len(chunk)


def default_nlist(n: int) -> int:
    """IVF cells: the usual 4 * sqrt(n), but never fewer than 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def release_pages(embeddings: np.ndarray) -> None:
    """Drop the pages of memory-mapped ``embeddings`` this process has read: a pass over a file
    larger than memory then holds one chunk of it, not every page it read (file-backed pages are
    the kernel's to drop anyway, but they count in the process's resident memory until then)."""
    mm = getattr(embeddings, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        import mmap

        mm.madvise(mmap.MADV_DONTNEED)


def take_rows(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``embeddings[rows]`` (sorted rows) as float32, gathered a window of the file at a time with
    the pages read dropped after each: a sample from all over a memory-mapped file does not map
    the whole file (the kernel maps the pages around every row it faults in)."""
    out = np.empty((len(rows), embeddings.shape[1]), dtype=np.float32)
    bounds = np.searchsorted(rows, np.arange(0, len(embeddings) + ROWS_AT_ONCE, ROWS_AT_ONCE))
    for a, b in itertools.pairwise(bounds.tolist()):
        if b > a:
            out[a:b] = embeddings[rows[a:b]]
            release_pages(embeddings)
    return out


def default_pq_m(dim: int) -> int:
    """IVF-PQ sub-quantizers: about one per 8 dimensions (48 for 384), a divisor of ``dim``."""
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def build_faiss_index(kind: str, embeddings: np.ndarray, metric: int, *, nlist: int | None = None, hnsw_m: int = 32,
                      ef_construction: int = 200, seed: int = 0, pq_m: int | None = None,
                      train_rows: int | None = None) -> Any:
    """A CPU FAISS index of ``kind`` (flat, ivf, hnsw, ivfpq) over ``embeddings`` (any float dtype,
    memory-mapped is fine: rows are converted to float32 64k at a time, the IVF ones trained on a
    sample of at most 256 rows a cell, and of at most ``train_rows``)."""
    faiss = _faiss()
    n, d = embeddings.shape
    if kind == "flat":
        index = faiss.IndexFlat(d, metric)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, metric)
        index.hnsw.efConstruction = ef_construction
    elif kind in ("ivf", "ivfpq"):
        cells = min(nlist or default_nlist(n), n)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, cells, metric)
        else:
            m = pq_m or default_pq_m(d)
            if d % m:
                raise ValueError(f"pq_m must divide the embeddings' {d} dimensions, got {m}")
            index = faiss.IndexIVFPQ(faiss.IndexFlat(d, metric), d, cells, m, 8, metric)
        sample = min(n, 256 * index.nlist, train_rows or n)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        # PQ's codebooks need 256 points each (39 x 256 is what FAISS asks for): at least 9,984 rows
        if kind == "ivfpq" and sample < min(n, 9_984):
            rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 9_984), replace=False))
        index.train(take_rows(embeddings, rows))
    else:
        raise ValueError(f"unknown dense index {kind!r}; choose one of {', '.join(INDEX_TYPES)}")
    for start in range(0, n, ROWS_AT_ONCE):
        index.add(np.ascontiguousarray(embeddings[start : start + ROWS_AT_ONCE], dtype=np.float32))
        release_pages(embeddings)
    return index


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's candidates (``scores``: queries x candidates, ``rows``:
    their row numbers, shared or one per query), by score then row: a total order, so top ks of
    parts merge into the top k of the whole."""
    nq, m = scores.shape
    rows = np.broadcast_to(rows, scores.shape)
    if m > k:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        out_s = np.empty((nq, k), dtype=scores.dtype)
        out_r = np.empty((nq, k), dtype=np.int64)
        for q in range(nq):
            keep = np.flatnonzero(scores[q] >= kth[q])
            order = np.lexsort((rows[q, keep], -scores[q, keep]))[:k]
            out_s[q], out_r[q] = scores[q, keep[order]], rows[q, keep[order]]
        return out_s, out_r
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(np.asarray(rows, dtype=np.int64), order, 1)


class FlatShard:
    """Exact search over rows [first, end) of memory-mapped embeddings: a chunk of rows at a time
    is converted to float32 and multiplied with the queries, keeping a running top k; only the
    chunk and the top ks are in memory. ``l2``: scores are minus squared L2 distances (FAISS's
    order), else inner products. Chunks start at multiples of ``rows_at_once``: shards cut there
    (:func:`shard_bounds`) multiply the very chunks the whole matrix does, so merging their top
    ks (:func:`top_k`) gives the whole matrix's top k, scores bit for bit."""

    def __init__(self, embeddings: np.ndarray, first: int = 0, end: int | None = None, l2: bool = False,
                 rows_at_once: int = ROWS_AT_ONCE) -> None:
        self.first, self.end = first, len(embeddings) if end is None else end
        if not 0 <= self.first <= self.end <= len(embeddings):
            raise ValueError(f"rows [{first}, {end}) are not in the {len(embeddings)} embeddings")
        self.embeddings, self.l2, self.rows_at_once = embeddings, l2, rows_at_once

    @classmethod
    def open(cls, folder: Path, first: int = 0, end: int | None = None, l2: bool = False,
             rows_at_once: int = ROWS_AT_ONCE) -> FlatShard:
        """Rows [first, end) of an embeddings folder's memory-mapped ``embeddings.npy``."""
        try:
            emb = np.load(folder / EMBEDDINGS, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise IndexStateError(f"index {folder} is unreadable ({e}); rebuild it") from e
        return cls(emb, first, end, l2, rows_at_once)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row numbers) of each query's top ``k`` (fewer when the shard has fewer rows)."""
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        best_s = np.zeros((len(q), 0), dtype=np.float32)
        best_r = np.zeros((len(q), 0), dtype=np.int64)
        step = self.rows_at_once
        for start in range(self.first, self.end, step):
            stop = min((start // step + 1) * step, self.end)
            chunk = np.asarray(self.embeddings[start:stop], dtype=np.float32)
            s = q @ chunk.T
            if self.l2:
                s = 2 * s - (chunk * chunk).sum(1)[None, :] - (q * q).sum(1)[:, None]
            scores = np.concatenate([best_s, s], axis=1)
            rows = np.concatenate([best_r, np.broadcast_to(np.arange(start, stop), s.shape)], axis=1)
            best_s, best_r = top_k(scores, rows, k)
            release_pages(self.embeddings)
        return best_s, best_r


def shard_bounds(n: int, shards: int, rows_at_once: int = ROWS_AT_ONCE) -> list[int]:
    """Where ``shards`` contiguous shards of ``n`` rows start (and the last ends): as even as
    chunks of ``rows_at_once`` allow (so a shard multiplies the same chunks as the whole)."""
    chunks = -(-n // rows_at_once)
    return sorted({min(n, (s * chunks // shards) * rows_at_once) for s in range(shards)} | {n})


def exact_recall(index: Any, embeddings: np.ndarray, metric: int, *, queries: int = 200, k: int = 100, nprobe: int = 32,
                 seed: int = 1) -> float:
    """Recall@``k`` of a FAISS ``index`` against exact search, with ``queries`` stored embeddings
    (a seeded sample) as the queries: the share of the exact top k that the index returns."""
    faiss = _faiss()
    n = len(embeddings)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))
    q = take_rows(embeddings, rows)
    k = min(k, n)
    _, exact = FlatShard(embeddings, l2=metric == faiss.METRIC_L2).search(q, k)
    set_search_params(index, "ivf", k, nprobe, 0)
    _, found = index.search(q, k)
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(exact, found, strict=True)]))


def set_search_params(index: Any, kind: str, k: int, nprobe: int, ef_search: int) -> None:
    """IVF's nprobe / HNSW's efSearch (at least k) before a search."""
    faiss = _faiss()
    if kind in ("ivf", "ivfpq"):
        # an index moved to GPUs (GpuIndexIVF*, or replicas of them) takes its nprobe through GpuParameterSpace
        cls = type(index).__name__
        gpu = hasattr(faiss, "GpuParameterSpace") and (cls.startswith("Gpu") or cls in ("IndexReplicas", "IndexShards"))
        (faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()).set_index_parameter(index, "nprobe", nprobe)
    elif kind == "hnsw":
        index.hnsw.efSearch = max(ef_search, k)


class Dense(Stage):
    """Dense retrieval over a document store (or a Dataset's documents).

    ``Dense("sentence-transformers/all-MiniLM-L6-v2", ds.docs, index="hnsw")(ds.queries)``
    encodes the corpus on first use (or reuses the stored embeddings), builds or loads the FAISS
    index and returns the top ``k`` hits per query. ``model`` is an HF id, a local path, or an
    :class:`Encoder`; encoder options (prefixes, normalisation, max_length, device, dtype,
    batch_tokens, backend, quantize) go to the Encoder.
    """

    kind, role = "dense", "retriever"
    model_kind = "sentence-transformer"
    spec_arg = "MODEL"
    spec_help = "any sentence-transformers model + FAISS (flat, ivf, hnsw: --dense-index)"
    spec_options: ClassVar[tuple[str, ...]] = ("dense_index", "device", "dtype", "batch_tokens", "query_prefix", "doc_prefix",
                                                "max_length", "backend", "quantize")

    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        if not spec.arg:
            raise RerankError("--retriever dense needs a model: dense:MODEL (e.g. dense:sentence-transformers/all-MiniLM-L6-v2)")
        options = ctx.take(cls)
        if "dense_index" in options:
            options["index"] = options.pop("dense_index")
        encode_with = ctx.index_builder.encode_dense if ctx.index_builder is not None else None
        stage = cls(spec.arg, ctx.full_corpus(spec), k=ctx.k, threads=ctx.threads, rebuild=ctx.rebuild,
                    with_text=ctx.with_text, encode_with=encode_with, **options)
        shard = getattr(ctx.index_builder, "shard_search", None)
        if stage.index_type == "mmap" and shard is not None:  # its rows searched by workers (rerank.distributed)
            shard(stage)
        return stage

    def __init__(self, model: str | Encoder, docs: DocStore | Dataset, *, index: str = "flat", k: int = 1000,
                 nlist: int | None = None, nprobe: int = 32, hnsw_m: int = 32, ef_construction: int = 200,
                 ef_search: int = 128, with_text: bool = True, index_root: str | os.PathLike[str] | None = None,
                 rebuild: bool = False, threads: int = 0, progress: bool | None = None,
                 encode_with: Callable[[Dense, Path], None] | None = None, pq_m: int | None = None,
                 **encoder_options: Any) -> None:
        store = docs.docs if isinstance(docs, Dataset) else docs
        if store is None:
            raise DataError(f"dataset {getattr(docs, 'name', '?')!r} has no documents to index")
        if index not in INDEX_TYPES:
            raise ValueError(f"unknown dense index {index!r}; choose one of {', '.join(INDEX_TYPES)}")
        for label, value in (("k", k), ("nprobe", nprobe), ("hnsw_m", hnsw_m), ("ef_construction", ef_construction),
                             ("ef_search", ef_search)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be a positive integer, got {nlist!r}")
        if pq_m is not None and pq_m < 1:
            raise ValueError(f"pq_m must be a positive integer, got {pq_m!r}")
        _faiss()  # fail before loading a model when FAISS is missing
        self.encoder = model if isinstance(model, Encoder) else Encoder(model, **encoder_options)
        if isinstance(model, Encoder) and encoder_options:
            raise ValueError(f"encoder options {sorted(encoder_options)} given with a ready Encoder; set them on it")
        self.docs = store
        self.index_type = index
        self.k = k
        self.nlist, self.nprobe, self.hnsw_m, self.pq_m = nlist, nprobe, hnsw_m, pq_m
        self.ef_construction, self.ef_search = ef_construction, ef_search
        self.with_text = with_text
        self.index_root = Path(index_root) if index_root is not None else None
        self.rebuild = rebuild
        self.threads = threads
        self.progress = progress
        self.name = f"dense:{self.encoder.name}" + ("" if index == "flat" else f"@{index}")
        self._index: Any = None
        self._docids: list[str] = []
        self._embeddings: np.ndarray | None = None
        self.paths: dict[str, Path] = {}
        # encodes the corpus into a build folder instead of this process (e.g. rerank.distributed's Ray builder)
        self.encode_with = encode_with
        # the mmap index's exact search done elsewhere: (embeddings folder, vectors, k, l2=) -> (row, score) lists
        self.search_with: Callable[..., list[list[tuple[int, float]]]] | None = None

    @property
    def cost(self) -> Any:
        return self.encoder.cost

    # ------------------------------------------------------------ building
    def _corpus(self) -> dict[str, Any]:
        return {"name": self.docs.name, "fingerprint": self.docs.fingerprint(), "documents": len(self.docs)}

    def _faiss_params(self) -> dict[str, Any]:
        if self.index_type == "ivf":
            return {"nlist": self.nlist or default_nlist(len(self.docs))}
        if self.index_type == "ivfpq":
            return {"nlist": self.nlist or default_nlist(len(self.docs)), "pq_m": self.pq_m or default_pq_m(self.encoder.dim)}
        if self.index_type == "hnsw":
            return {"M": self.hnsw_m, "ef_construction": self.ef_construction}
        return {}

    def _metric(self) -> int:
        faiss = _faiss()
        return faiss.METRIC_L2 if self.encoder.similarity == "euclidean" else faiss.METRIC_INNER_PRODUCT

    def _check(self, path: Path) -> None:
        """An index whose embeddings do not fit this model is an error, not something to search."""
        m = read_manifest(path) or {}
        if m.get("dim") != self.encoder.dim:
            raise IndexStateError(
                f"index {path} holds {m.get('dim')}-dimensional embeddings, but {self.encoder.name} "
                f"produces {self.encoder.dim}-dimensional ones: the model changed since the index was built. "
                f"Rebuild it (rerank index --rebuild, or rebuild=True)")

    def index(self) -> Path:
        """Encode the corpus and build the FAISS index when needed (or reuse current ones);
        return the embeddings folder."""
        if self._index is not None:
            return self.paths["embeddings"]
        faiss = _faiss()
        if self.threads > 0:
            faiss.omp_set_num_threads(self.threads)
        if len(self.docs) == 0:
            raise DataError(f"cannot build a dense index over an empty corpus ({self.docs.name})")
        if not self.docs.complete:
            log.warning("%s holds only part of a collection (%d documents); dense retrieval over it ranks only those",
                        self.docs.name, len(self.docs))
        params = self.encoder.params()
        corpus = self._corpus()
        expected = {"kind": "dense", "backend": "sentence-transformers", "params": params, "corpus": corpus,
                    "dim": self.encoder.dim}
        emb_path = index_path("dense", self.docs.name, params, self.index_root)
        build_or_reuse(emb_path, expected, self._encode_corpus, rebuild=self.rebuild, resumable=True)
        self._check(emb_path)
        self.paths["embeddings"] = emb_path
        self._load_embeddings(emb_path)
        if self.index_type == "flat":
            index = self._build(self._embeddings)
        elif self.index_type == "mmap":
            assert self._embeddings is not None
            index = FlatShard(self._embeddings, l2=self.encoder.similarity == "euclidean")
        else:
            fparams = dict(params, index=self.index_type, **self._faiss_params())
            path = index_path(f"faiss-{self.index_type}", self.docs.name, fparams, self.index_root)
            fexpected = {"kind": f"faiss-{self.index_type}", "backend": f"faiss {faiss.__version__}", "params": fparams,
                         "corpus": corpus, "dim": self.encoder.dim}
            build_or_reuse(path, fexpected, self._build_faiss, rebuild=self.rebuild)
            self._check(path)
            self.paths["faiss"] = path
            index = faiss.read_index(str(path / "faiss.index"))
            if index.ntotal != len(self._docids):
                raise IndexStateError(f"index {path} holds {index.ntotal} vectors for {len(self._docids)} documents; rebuild it")
        self.rebuild = False
        if faiss.get_num_gpus() > 0 and self.index_type in ("flat", "ivf"):
            index = faiss.index_cpu_to_all_gpus(index)
            log.info("FAISS index on %d GPU(s)", faiss.get_num_gpus())
        self._index = index
        return emb_path

    def _encode_corpus(self, folder: Path) -> None:
        """Encode the corpus shard by shard (see :func:`corpus_shards`) into a memory-mapped
        float16 array, with a checkpoint after each shard. ``encode_with``, when set (e.g.
        by :func:`rerank.distributed.encode_corpus`), does the same work elsewhere."""
        if self.encode_with is not None:
            self.encode_with(self, folder)
            return
        n, dim = len(self.docs), self.encoder.dim
        emb_file, done_file = folder / EMBEDDINGS, folder / "progress.json"
        done = json.loads(done_file.read_text())["done"] if done_file.is_file() and (folder / EMBEDDINGS).is_file() else 0
        out = np.lib.format.open_memmap(emb_file, mode="r+" if done else "w+", dtype=np.float16, shape=(n, dim))
        if done:
            log.info("resuming the encoding of %s at document %d of %d", self.docs.name, done, n)
        docids: list[str] = []
        bar = progress_bar(n, f"encoding {self.docs.name}", "doc", done, self.progress)
        with self.encoder.truncation.job():  # one total of truncated documents for the whole corpus
            try:
                for start, ids, texts in corpus_shards(self.docs):
                    docids.extend(ids)
                    if start + len(ids) <= done:
                        continue
                    out[start : start + len(ids)] = self.half(self.encoder.encode_docs(texts, progress=bar.update))
                    out.flush()
                    with atomic_write(done_file) as f:
                        json.dump({"done": start + len(ids)}, f)
            finally:
                bar.close()
        del out
        done_file.unlink(missing_ok=True)
        self.finish_corpus(folder, docids)

    def half(self, vecs: np.ndarray) -> np.ndarray:
        """Embeddings as stored: float16, refused when they overflow it."""
        half = vecs.astype(np.float16)
        if not np.isfinite(half).all():
            raise DataError(f"{self.encoder.name}: embeddings overflow float16 (|x| > 65504); normalise them (normalize=True)")
        return half

    def finish_corpus(self, folder: Path, docids: list[str]) -> None:
        """Check the document ids an encoding saw and store them beside the embeddings."""
        n = len(self.docs)
        if len(docids) != n:
            raise DataError(f"{self.docs.name} yielded {len(docids)} documents, but says it has {n}")
        if len(set(docids)) != n:
            raise DataError(f"{self.docs.name} repeats document ids; a dense index needs unique ones")
        (folder / "docids.json").write_text(json.dumps(docids))

    def _load_embeddings(self, folder: Path) -> None:
        try:
            emb = np.load(folder / EMBEDDINGS, mmap_mode="r")
            docids = json.loads((folder / "docids.json").read_text())
        except (OSError, ValueError) as e:
            raise IndexStateError(f"index {folder} is unreadable ({e}); rebuild it") from e
        if emb.ndim != 2 or emb.shape != (len(docids), self.encoder.dim):
            raise IndexStateError(f"index {folder}: embeddings of shape {emb.shape} for {len(docids)} documents of "
                                  f"dimension {self.encoder.dim}; rebuild it")
        self._embeddings, self._docids = emb, docids

    @property
    def embeddings(self) -> tuple[np.ndarray, list[str]]:
        """The stored document embeddings (float16, memory-mapped) and their document ids."""
        self.index()
        assert self._embeddings is not None
        return self._embeddings, self._docids

    def _build(self, embeddings: Any) -> Any:
        return build_faiss_index(self.index_type, embeddings, self._metric(), nlist=self.nlist, hnsw_m=self.hnsw_m,
                                 ef_construction=self.ef_construction, pq_m=self.pq_m)

    def _build_faiss(self, folder: Path) -> None:
        index = self._build(self._embeddings)
        _faiss().write_index(index, str(folder / "faiss.index"))
        if self.index_type == "ivfpq":  # what the compression costs, measured once
            assert self._embeddings is not None
            recall = exact_recall(index, self._embeddings, self._metric(), nprobe=self.nprobe)
            (folder / "recall.json").write_text(json.dumps({"recall@100": recall, "nprobe": self.nprobe, "queries": 200}))
            log.info("%s: recall@100 %.3f against exact search (nprobe %d, 200 stored vectors as queries)",
                     folder.name, recall, self.nprobe)

    # ------------------------------------------------------------ searching
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search for query vectors: (scores, row ids), higher scores better, -1 ids for holes."""
        self.index()
        k = min(k, len(self._docids))
        if isinstance(self._index, FlatShard):
            if self.search_with is None:
                found = self._index.search(vectors, k)
                return found[0], found[1]
            lists = self.search_with(self.paths["embeddings"], vectors, k, l2=self._index.l2)
            scores_ = np.zeros((len(lists), k), dtype=np.float32)
            ids_ = np.full((len(lists), k), -1, dtype=np.int64)
            for row, hits in enumerate(lists):
                ids_[row, : len(hits)] = [i for i, _ in hits]
                scores_[row, : len(hits)] = [s for _, s in hits]
            return scores_, ids_
        set_search_params(self._index, self.index_type, k, self.nprobe, self.ef_search)
        scores, ids = [], []
        for start in range(0, len(vectors), _SEARCH_BATCH):
            d, i = self._index.search(np.ascontiguousarray(vectors[start : start + _SEARCH_BATCH], dtype=np.float32), k)
            scores.append(-d if self.encoder.similarity == "euclidean" else d)
            ids.append(i)
        if not scores:
            return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
        return np.concatenate(scores), np.concatenate(ids)

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        if ranking is not None:
            raise ValueError("Dense is a first-stage retriever: put it first in the pipeline")
        if not queries:
            return {}
        self.index()
        vectors = self.encoder.encode_queries([q.text for q in queries])
        scores, ids = self.search(vectors, self.k)
        out: Ranking = {}
        for q, row_s, row_i in zip(queries, scores, ids, strict=True):
            found = [(self._docids[i], float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0]
            texts = self.docs.get_many([d for d, _ in found]) if self.with_text else [None] * len(found)
            out[q.qid] = [Hit(d, s, t) for (d, s), t in zip(found, texts, strict=True)]
        return out
