"""BM25 on disk: an index built in bounded memory and searched memory-mapped (``bm25:disk``).

The build is Lucene's: the corpus streams through bm25s's own tokenizer (the ids, vocabulary
and so the scores of the in-memory ``bm25s`` backend) in chunks of documents sized by the
memory budget; each chunk's postings (term, document, term frequency) are sorted and written
to disk as a segment, with the documents' lengths and the terms' document frequencies
counted on the way. The merge then reads every segment's postings one block of terms at a
time (a block fits the budget), computes each posting's BM25 impact with the collection's
statistics (N, average length, document frequencies: exactly bm25s's float32 arithmetic) and
appends them to the index: per shard, CSR by term (``offsets``: int64, ``docs``: int32 global
document numbers, ``scores``: float32 impacts). Peak memory is the budget plus the per-document
arrays (4 bytes a document for lengths, 8 for the BM25 length norm during the merge, 8 for where
each document id ends), not the corpus: 10M documents need 200 MB of those.

The merge also writes each term's largest impact (``maxima.npy``) and each block of 128 postings'
(``blockmax.npy``): the bounds the pruned search skips by (index format 2).

Searching memory-maps the arrays (numba, queries spread over threads). The exhaustive search adds
the impacts of its terms' postings into a float32 accumulator in query-term order, as bm25s does,
so the sums are bit-identical; the top k is taken by score, ties by document number. The pruned
search (the default) is block-max MaxScore over windows of documents and gives that very top k,
bit for bit, reading a fraction of the postings (see ``pruned`` in :mod:`rerank.retrieve.bm25disk_kernels`).
``shards`` > 1 cuts the collection into contiguous ranges of documents, each its own CSR
scored with the global statistics: searching the shards (one process, or Ray workers:
:func:`rerank.distributed.search_shards`) and merging their top k gives exactly the single index's.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..env import atomic_write
from ..errors import DataError, IndexStateError

log = logging.getLogger("rerank")
STATS = "stats.json"
#: the index's layout: 2 adds each term's largest impact per shard (``maxima.npy``) and each block's
#: (``blockmax.npy``), which pruned search needs; an index of format 1 (none in its stats) is rebuilt
FORMAT = 2
MAXIMA = "maxima.npy"
#: the largest impact of each block of BLOCK postings of a shard (blocks cut the whole CSR, so a
#: block may end one term's list and start the next: a bound for both)
BLOCK_MAXIMA = "blockmax.npy"
BLOCK = 128
CHECKPOINT = "checkpoint.json"
#: bytes of build memory a document of a chunk takes at most (text, Python token lists, sort keys)
_BYTES_PER_CHUNK_DOC = 48 * 1024
#: bytes a posting takes while a block of terms is merged (ids, positions, tf, impacts)
_BYTES_PER_MERGED_POSTING = 64


def chunk_docs_for(memory_bytes: int) -> int:
    """Documents tokenized at a time under a budget: a quarter of it for the chunk."""
    return int(max(1_000, min(500_000, memory_bytes // 4 // _BYTES_PER_CHUNK_DOC)))


def _write_npy_header(f: Any, dtype: str, n: int) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n,)})


def _read(path: Path, dtype: Any, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of a raw binary file, read (not mapped: a merge's pages are not kept)."""
    dt = np.dtype(dtype)
    if stop <= start:
        return np.empty(0, dtype=dt)
    with path.open("rb") as f:
        f.seek(start * dt.itemsize)
        return np.fromfile(f, dtype=dt, count=stop - start)


def _chunk_postings(ids: list[list[int]], first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, terms, docs, tfs) of a chunk of tokenized documents numbered from ``first``:
    one posting per (term, document), sorted by term then document."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(first, first + len(ids), dtype=np.int64), lengths)
    key = np.sort((flat << 32) | rows)
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    tfs = np.diff(np.append(starts, len(key))).astype(np.int32)
    key = key[starts]
    return lengths.astype(np.int32), (key >> 32), (key & 0xFFFFFFFF).astype(np.int32), tfs


def _save_checkpoint(folder: Path, tokenizer: Any, n: int, segments: list[tuple[int, int]], df: list[np.ndarray],
                     files: list[Any]) -> None:
    """What the segments written so far need to be resumed from: the tokenizer's vocabulary as it
    grew, the documents done, the document frequencies and how long each growing file was."""
    for f in files:
        f.flush()
    with atomic_write(folder / "checkpoint.df.npz", "wb") as f:
        np.savez(f, *df)
    state = {"documents": n, "segments": segments, "bytes": [f.tell() for f in files],
             "vocab": [tokenizer.word_to_stem, tokenizer.stem_to_sid, tokenizer.word_to_id]}
    with atomic_write(folder / CHECKPOINT) as f:
        json.dump(state, f)


def _resume(folder: Path, tokenizer: Any, shards: int) -> tuple[int, list[tuple[int, int]], list[np.ndarray], list[int]]:
    """The state a checkpoint in ``folder`` saved (nothing done when there is none), the
    tokenizer's vocabulary restored."""
    try:
        state = json.loads((folder / CHECKPOINT).read_text())
        with np.load(folder / "checkpoint.df.npz") as z:
            df = [z[f"arr_{i}"] for i in range(shards)]
    except (OSError, ValueError, KeyError):
        return 0, [], [np.zeros(0, dtype=np.int64) for _ in range(shards)], [0, 0, 0]
    tokenizer.word_to_stem, tokenizer.stem_to_sid, tokenizer.word_to_id = state["vocab"]
    log.info("resuming the BM25 build in %s at document %d", folder, state["documents"])
    return state["documents"], [tuple(x) for x in state["segments"]], df, state["bytes"]


def build(folder: Path, docs: Iterable[tuple[str, str]], tokenizer: Any, *, k1: float, b: float, memory_bytes: int,
          n_docs: int, shards: int = 1, chunk_docs: int | None = None, checkpoint_s: float = 60.0) -> dict[str, Any]:
    """Write the index of ``docs`` (``n_docs`` of them, in order) into ``folder``; ``tokenizer``: a
    fresh bm25s tokenizer, grown as the corpus streams (the vocabulary is saved beside the index).

    Resumable: every ``checkpoint_s`` seconds the segments written so far are checkpointed; a
    build that finds a checkpoint in ``folder`` (the same corpus and options: see
    :func:`rerank.indexes.partial_folder`) skips the documents it covers and goes on from there."""
    if shards < 1:
        raise ValueError(f"shards must be positive, got {shards}")
    if n_docs < 1:
        raise DataError("cannot build a BM25 index over an empty corpus")
    shards = min(shards, n_docs)
    bounds = [s * n_docs // shards for s in range(shards + 1)]
    per_chunk = chunk_docs or chunk_docs_for(memory_bytes)
    seg = folder / "segments"
    seg.mkdir(parents=True, exist_ok=True)
    # per shard: documents holding each term; per segment: its shard, its vocabulary size
    n, segments, df, sizes = _resume(folder, tokenizer, shards)
    names = ("lengths.i32", "docids.bin", "docids.len.i64")
    for name, size in zip(names, sizes, strict=True):
        with (folder / name).open("ab") as kept:
            kept.truncate(size)  # what was written after the checkpoint goes
    last = time.monotonic()
    with (folder / names[0]).open("r+b") as lf, (folder / names[1]).open("r+b") as idf, \
         (folder / names[2]).open("r+b") as ilf:
        for handle, size in zip((lf, idf, ilf), sizes, strict=True):
            handle.seek(size)
        items = iter(docs)
        if n:
            next(itertools.islice(items, n - 1, n), None)  # the documents the checkpoint covers
        while n < n_docs:
            shard = next(s for s in range(shards) if bounds[s] <= n < bounds[s + 1])
            chunk = list(itertools.islice(items, min(per_chunk, bounds[shard + 1] - n)))
            if not chunk:
                break
            encoded = [d.encode() for d, _ in chunk]
            idf.write(b"".join(encoded))
            ilf.write(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)).tobytes())
            ids = tokenizer.tokenize([t for _, t in chunk], update_vocab=True, return_as="ids", show_progress=False)
            del chunk, encoded
            lengths, terms, doc_rows, tfs = _chunk_postings(ids, n)
            del ids
            vocab = len(tokenizer.stem_to_sid)
            # the terms the segment holds and where each one's postings start: a vocabulary of
            # millions is not written again for every segment
            present, counts = np.unique(terms, return_counts=True)
            offsets = np.zeros(len(present) + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            i = len(segments)
            present.astype(np.int32).tofile(seg / f"{i:05d}.terms.i32")
            offsets.tofile(seg / f"{i:05d}.offsets.i64")
            doc_rows.tofile(seg / f"{i:05d}.docs.i32")
            tfs.tofile(seg / f"{i:05d}.tfs.i32")
            lengths.tofile(lf)
            grown = np.zeros(vocab, dtype=np.int64)
            grown[: len(df[shard])] = df[shard]
            grown[present] += counts
            df[shard] = grown
            segments.append((shard, vocab))
            n += len(lengths)
            if time.monotonic() - last >= checkpoint_s and n < n_docs:
                _save_checkpoint(folder, tokenizer, n, segments, df, [lf, idf, ilf])
                last = time.monotonic()
        if next(items, None) is not None or n != n_docs:
            raise DataError(f"the corpus yielded {'more' if n == n_docs else n} documents, but says it has {n_docs}")
    vocab = len(tokenizer.stem_to_sid)
    df = [np.pad(d, (0, vocab - len(d))) for d in df]
    stats = _merge(folder, segments, df, bounds, k1=k1, b=b, memory_bytes=memory_bytes)
    for part in seg.iterdir():
        part.unlink()
    seg.rmdir()
    for name in (CHECKPOINT, "checkpoint.df.npz"):
        (folder / name).unlink(missing_ok=True)
    ends = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.fromfile(folder / "docids.len.i64", dtype=np.int64), out=ends[1:])
    np.save(folder / "docids.ends.npy", ends)
    (folder / "docids.len.i64").unlink()
    tokenizer.save_vocab(folder)
    tokenizer.save_stopwords(folder)
    (folder / STATS).write_text(json.dumps(stats, indent=1))
    return stats


def idf_of(df: np.ndarray, n: int) -> np.ndarray:
    """float32 idf of each term, as bm25s computes it (Python's math.log in float64, per distinct df)."""
    values, inverse = np.unique(df, return_inverse=True)
    idf = np.array([math.log(1 + (n - v + 0.5) / (v + 0.5)) if v else 0.0 for v in values.tolist()], dtype=np.float32)
    return idf[inverse]


def impacts(tfs: np.ndarray, norms: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """float32 BM25 impacts: bm25s's ``idf * tf / (k1 * (1 - b + b * len / avglen) + tf)``, with
    its dtypes (float32 tf and idf, float64 norm and arithmetic, rounded to float32 at the end)."""
    tf = tfs.astype(np.float32)
    return (idf * (tf / (norms + tf))).astype(np.float32)


def term_maxima(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The largest impact of each of a run of terms (``counts``: its postings, in ``scores`` one
    term after another; 0 for a term without any): the bounds pruned search skips by."""
    out = np.zeros(len(counts), dtype=np.float32)
    held = counts > 0
    if held.any():
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out[held] = np.maximum.reduceat(scores, starts[held])
    return out


def _merge(folder: Path, segments: list[tuple[int, int]], df_by_shard: list[np.ndarray], bounds: list[int], *,
           k1: float, b: float, memory_bytes: int) -> dict[str, Any]:
    lengths = np.fromfile(folder / "lengths.i32", dtype=np.int32)
    n = len(lengths)
    avgdl = float(lengths.mean())  # bm25s: np.array(lengths).mean(), float64 (a pairwise sum of integers: exact)
    norms = k1 * ((1 - b) + b * lengths.astype(np.float64) / avgdl)
    df = np.sum(df_by_shard, axis=0) if len(df_by_shard) > 1 else df_by_shard[0]
    vocab = len(df)
    idf = idf_of(df, n)
    np.save(folder / "df.npy", df)
    seg = folder / "segments"
    budget = max(1, memory_bytes // 2 // _BYTES_PER_MERGED_POSTING)
    total = np.concatenate(([0], np.cumsum(df)))
    shard_meta = []
    for s, shard_df in enumerate(df_by_shard):
        out = folder / f"shard-{s:03d}"
        out.mkdir(exist_ok=True)
        offsets = np.zeros(vocab + 1, dtype=np.int64)
        np.cumsum(shard_df, out=offsets[1:])
        np.save(out / "offsets.npy", offsets)
        mine = [i for i, (sh, _) in enumerate(segments) if sh == s]
        nnz = int(offsets[-1])
        with (out / "docs.npy").open("wb") as fd, (out / "scores.npy").open("wb") as fs, \
             (out / MAXIMA).open("wb") as fm, (out / BLOCK_MAXIMA).open("wb") as fb:
            _write_npy_header(fd, "<i4", nnz)
            _write_npy_header(fs, "<f4", nnz)
            _write_npy_header(fm, "<f4", vocab)
            _write_npy_header(fb, "<f4", -(-nnz // BLOCK))
            held = np.zeros(0, dtype=np.float32)  # the impacts of a block not full yet
            t0 = 0
            while t0 < vocab:
                # the next block of terms: as many as fit the budget (at least one)
                t1 = max(t0 + 1, int(np.searchsorted(total, total[t0] + budget, side="right")) - 1)
                t1 = min(t1, vocab)
                docs, scores = _merge_block(seg, mine, segments, shard_df, t0, t1, norms, idf)
                fd.write(docs.tobytes())
                fs.write(scores.tobytes())
                fm.write(term_maxima(scores, np.diff(offsets[t0 : t1 + 1])).tobytes())
                held = np.concatenate((held, scores))
                full = len(held) // BLOCK * BLOCK
                fb.write(held[:full].reshape(-1, BLOCK).max(axis=1).tobytes())
                held = held[full:]
                t0 = t1
            if len(held):
                fb.write(held.max(keepdims=True).tobytes())
        shard_meta.append({"first": bounds[s], "end": bounds[s + 1], "postings": nnz})
    return {"format": FORMAT, "documents": n, "avgdl": avgdl, "terms": vocab, "k1": k1, "b": b, "postings": int(total[-1]),
            "shards": shard_meta}


def _merge_block(seg: Path, mine: list[int], segments: list[tuple[int, int]], shard_df: np.ndarray, t0: int, t1: int,
                 norms: np.ndarray, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The postings of terms [t0, t1) of one shard's segments, term-major and, within a term, in
    segment (so document) order, with their impacts."""
    width = t1 - t0
    start = np.zeros(width + 1, dtype=np.int64)
    np.cumsum(shard_df[t0:t1], out=start[1:])
    docs = np.empty(int(start[-1]), dtype=np.int32)
    tfs = np.empty(int(start[-1]), dtype=np.int32)
    written = np.zeros(width, dtype=np.int64)
    for i in mine:
        if t0 >= segments[i][1]:
            continue
        held = np.memmap(seg / f"{i:05d}.terms.i32", dtype=np.int32, mode="r")  # sorted: two binary searches
        a, b = (int(x) for x in np.searchsorted(held, [t0, t1]))
        if a == b:
            continue
        present = np.array(held[a:b], dtype=np.int64) - t0
        del held
        off = _read(seg / f"{i:05d}.offsets.i64", np.int64, a, b + 1)
        counts = np.diff(off)
        d = _read(seg / f"{i:05d}.docs.i32", np.int32, int(off[0]), int(off[-1]))
        tf = _read(seg / f"{i:05d}.tfs.i32", np.int32, int(off[0]), int(off[-1]))
        term = np.repeat(present, counts)
        rank = np.arange(len(d)) - np.repeat(off[:-1] - off[0], counts)
        pos = start[term] + written[term] + rank
        docs[pos] = d
        tfs[pos] = tf
        written[present] += counts
    terms = np.repeat(np.arange(t0, t1), np.diff(start))
    return docs, impacts(tfs, norms[docs], idf[terms])


# ---------------------------------------------------------------- searching
#: documents a window of the pruned search adds its essential terms' impacts over
_WINDOW = 4096


class Shard:
    """One shard of a disk index, memory-mapped: its CSR arrays and its range of documents."""

    def __init__(self, folder: Path, shard: int) -> None:
        stats = read_stats(folder)
        if not 0 <= shard < len(stats["shards"]):
            raise IndexStateError(f"index {folder} has {len(stats['shards'])} shards, not a shard {shard}")
        why = outdated(folder)
        if why:
            raise IndexStateError(f"index {folder} {why}; rebuild it")
        meta = stats["shards"][shard]
        sub = folder / f"shard-{shard:03d}"
        try:
            self.offsets = np.load(sub / "offsets.npy", mmap_mode="r")
            self.docs = np.load(sub / "docs.npy", mmap_mode="r")
            self.scores = np.load(sub / "scores.npy", mmap_mode="r")
            self.maxima = np.load(sub / MAXIMA, mmap_mode="r")
            self.block_maxima = np.load(sub / BLOCK_MAXIMA, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise IndexStateError(f"index {folder} is unreadable ({e}); rebuild it") from e
        if len(self.docs) != meta["postings"] or len(self.scores) != meta["postings"]:
            raise IndexStateError(f"index {sub} holds {len(self.docs)} postings, its stats say {meta['postings']}; rebuild it")
        if len(self.maxima) != len(self.offsets) - 1 or len(self.block_maxima) != -(-len(self.scores) // BLOCK):
            raise IndexStateError(f"index {sub} holds {len(self.maxima)} term bounds and {len(self.block_maxima)} block "
                                  f"bounds for {len(self.offsets) - 1} terms and {len(self.scores)} postings; rebuild it")
        self.first, self.end = int(meta["first"]), int(meta["end"])
        #: postings read by the searches so far: those added whole-list, and each lookup of a candidate
        self.postings_read = 0
        #: documents the pruned search takes at a time, a multiple of 64 (the results do not depend on it)
        self.window = _WINDOW

    def search(self, queries: list[np.ndarray], k: int, threads: int = 0,
               prune: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top ``k`` of each query (an array of term ids): (documents, scores, how many) arrays
        of shape (queries, k), documents numbered in the whole collection. ``prune``: skip the
        postings that cannot change the top k (MaxScore); False reads every posting of the
        query's terms. Both give the same documents and the same float32 scores."""
        if self.window < 64 or self.window % 64:
            raise ValueError(f"the pruned search's window must be a positive multiple of 64, got {self.window}")
        nq = len(queries)
        qstarts = np.zeros(nq + 1, dtype=np.int64)
        np.cumsum([len(q) for q in queries], out=qstarts[1:])
        qterms = np.concatenate(queries).astype(np.int64) if nq else np.zeros(0, dtype=np.int64)
        k = max(1, min(k, self.end - self.first))
        out_docs = np.full((nq, k), -1, dtype=np.int32)
        out_scores = np.zeros((nq, k), dtype=np.float32)
        out_n = np.zeros(nq, dtype=np.int64)
        read = np.zeros(nq, dtype=np.int64)
        if nq:
            threads = max(1, min(threads or (os.cpu_count() or 1), nq))
            from .bm25disk_kernels import search

            search(self.offsets, self.docs, self.scores, self.maxima, self.block_maxima, BLOCK, self.first,
                   self.end - self.first, qterms, qstarts, k, threads, self.window if prune else 0, out_docs, out_scores,
                   out_n, read)
        self.postings_read += int(read.sum())
        return out_docs, out_scores, out_n


def merge_top_k(parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int) -> list[list[tuple[int, float]]]:
    """The global top ``k`` of shards' results (each from :meth:`Shard.search`): by score, ties by
    document number, as one index would rank them."""
    rows: list[list[tuple[int, float]]] = []
    for docs, scores, counts in parts:
        if not rows:
            rows = [[] for _ in range(len(counts))]
        for q in range(len(counts)):
            c = int(counts[q])
            rows[q].extend(zip(docs[q, :c].tolist(), scores[q, :c].tolist(), strict=True))
    return [sorted(r, key=lambda x: (-x[1], x[0]))[:k] for r in rows]


def outdated(folder: Path) -> str | None:
    """Why the index in ``folder`` cannot be searched by this version (None: it can, or there is
    no index there yet)."""
    try:
        stats = json.loads((folder / STATS).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    got = stats.get("format", 1)
    if got != FORMAT:
        return (f"is a bm25:disk index of format {got}, this version searches format {FORMAT} (each term's largest "
                "impact, by which it skips postings)")
    return None


def read_stats(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / STATS).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IndexStateError(f"index {folder} has no readable {STATS} ({e}); rebuild it") from e


class DocIds:
    """The index's document ids, read from disk on demand (10M ids would take ~700 MB as a list)."""

    def __init__(self, folder: Path) -> None:
        import mmap

        self.ends = np.load(folder / "docids.ends.npy", mmap_mode="r")
        self.blob: Any = b""
        if self.ends[-1]:
            with (folder / "docids.bin").open("rb") as f:
                self.blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self.ends) - 1

    def __getitem__(self, i: int) -> str:
        return self.many([i])[0]

    def many(self, nums: list[int]) -> list[str]:
        """The ids of documents ``nums`` (their numbers), read at once (a query's hits)."""
        at = np.asarray(nums, dtype=np.int64)
        return [self.blob[a:b].decode() for a, b in zip(self.ends[at].tolist(), self.ends[at + 1].tolist(), strict=True)]

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))
