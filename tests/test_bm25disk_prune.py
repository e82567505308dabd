"""bm25:disk's pruned search (MaxScore over each term's largest impact): the very documents and
float32 scores of the exhaustive search, having read fewer postings; the index format it needs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from rerank import BM25, MemoryDocStore, Query
from rerank.errors import IndexStateError
from rerank.retrieve import bm25disk
from rerank.retrieve.bm25 import bm25s_tokenizer, query_ids, tokenizer_of


def assert_same_search(shard, queries, k):
    """Pruned and exhaustive search of ``queries`` on ``shard``: equal documents, counts and
    float32 score bits; returns the postings each read."""
    shard.postings_read = 0
    full = shard.search(queries, k, 2, prune=False)
    read_full, shard.postings_read = shard.postings_read, 0
    pruned = shard.search(queries, k, 2)
    assert np.array_equal(full[2], pruned[2])
    for q in range(len(queries)):
        n = full[2][q]
        assert np.array_equal(full[0][q, :n], pruned[0][q, :n]), q
        assert np.array_equal(full[1][q, :n].view(np.int32), pruned[1][q, :n].view(np.int32)), q
    return read_full, shard.postings_read


@pytest.fixture(scope="module")
def scifact_disk(scifact_dir, tmp_path_factory):
    from rerank.data.formats import iter_beir_corpus

    folder = tmp_path_factory.mktemp("scifact-disk")
    n = sum(1 for _ in iter_beir_corpus(scifact_dir / "corpus.jsonl"))
    bm25disk.build(folder, iter_beir_corpus(scifact_dir / "corpus.jsonl"), bm25s_tokenizer(), k1=0.9, b=0.4,
                   memory_bytes=2**28, n_docs=n)
    texts = [json.loads(line)["text"] for line in (scifact_dir / "queries.jsonl").read_text().splitlines() if line]
    ids, keep = query_ids(tokenizer_of(folder), texts)
    return bm25disk.Shard(folder, 0), [np.asarray(ids[i], dtype=np.int64) for i in keep]


@pytest.mark.parametrize(("k", "at_most"), [(10, 0.5), (100, 0.8), (1000, 1.0)])
def test_pruned_search_is_the_exhaustive_one_on_all_scifact_queries(scifact_disk, k, at_most):
    shard, queries = scifact_disk
    assert len(queries) == 1109
    for window in (64, 4096):  # SciFact's 5,183 documents: 82 windows, or 2
        shard.window = window
        read_full, read_pruned = assert_same_search(shard, queries, k)
        assert read_pruned < (at_most if window == 64 else 1) * read_full, (window, read_pruned, read_full)


def _tied_corpus(n=3000, seed=0):
    """Documents of a dozen words drawn unevenly: many documents alike (equal scores), and the
    common words in most documents, so pruning has long lists to skip."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    p = 1 / np.arange(1, 41)
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 8), p=p / p.sum())) for _ in range(700)]
    return {f"d{i}": texts[i % len(texts)] if i % 4 else texts[(i * 7) % 50] for i in range(n)}


@pytest.mark.parametrize("shards", [1, 3])
def test_pruned_search_keeps_ties_repeated_and_absent_terms(tmp_path, shards):
    docs = _tied_corpus()
    folder = tmp_path / "idx"
    bm25disk.build(folder, docs.items(), bm25s_tokenizer(), k1=0.9, b=0.4, memory_bytes=2**26, n_docs=len(docs),
                   shards=shards)
    vocab = len(np.load(folder / "df.npy"))
    rng = np.random.default_rng(1)
    queries = [rng.integers(0, vocab, size=rng.integers(1, 9)) for _ in range(300)]
    queries += [np.array([t, t, t]) for t in range(vocab)]  # one term, repeated
    queries += [np.array([0, 1, 0, 2, 1, 0]), np.array([vocab - 1, 0, vocab - 1])]
    absent = [t for t in range(vocab) if np.load(folder / "df.npy")[t] == 0]
    queries += [np.array(absent + [0, 3]), np.array(absent or [0])]  # terms without postings (the empty token)
    queries = [q.astype(np.int64) for q in queries]
    one = folder if shards == 1 else tmp_path / "one"
    if shards > 1:
        bm25disk.build(one, docs.items(), bm25s_tokenizer(), k1=0.9, b=0.4, memory_bytes=2**26, n_docs=len(docs))
    parts = [bm25disk.Shard(folder, s) for s in range(shards)]
    for s in parts:
        s.window = 128  # shards of 1,000 or 3,000 documents: several windows each
    for k in (1, 7, 50, 5000):
        read = [assert_same_search(s, queries, k) for s in parts]
        if k <= 50:
            assert sum(r[1] for r in read) < (0.8 if k < 50 else 1) * sum(r[0] for r in read), (k, read)
        merged = bm25disk.merge_top_k((s.search(queries, k) for s in parts), k)
        whole = bm25disk.Shard(one, 0).search(queries, k, prune=False)
        assert merged == [list(zip(d[:c].tolist(), s[:c].tolist(), strict=True)) for d, s, c in zip(*whole, strict=True)]
    parts[0].window = 100  # the documents hit are kept a 64-bit word at a time
    with pytest.raises(ValueError, match="multiple of 64"):
        parts[0].search(queries, 5)


def test_an_index_without_term_bounds_is_refused_and_rebuilt(tmp_path, caplog):
    docs = {f"d{i}": f"document {i} about {'cats' if i % 2 else 'dogs'}" for i in range(30)}
    stage = BM25(MemoryDocStore(dict(docs), name="pets"), backend="disk", index_root=tmp_path, k=5, with_text=False)
    folder = stage.index()
    stats = json.loads((folder / bm25disk.STATS).read_text())
    assert stats["format"] == bm25disk.FORMAT == 2
    maxima = np.load(folder / "shard-000" / bm25disk.MAXIMA)
    offsets, scores = np.load(folder / "shard-000" / "offsets.npy"), np.load(folder / "shard-000" / "scores.npy")
    assert maxima.tolist() == [float(scores[a:b].max()) if b > a else 0.0 for a, b in itertools.pairwise(offsets)]
    del stats["format"]  # as an index built before the bounds
    (folder / bm25disk.STATS).write_text(json.dumps(stats))
    (folder / "shard-000" / bm25disk.MAXIMA).unlink()
    with pytest.raises(IndexStateError, match=r"format 1, this version searches format 2 .*; rebuild it"):
        bm25disk.Shard(folder, 0)
    again = BM25(MemoryDocStore(dict(docs), name="pets"), backend="disk", index_root=tmp_path, k=5, with_text=False)
    with caplog.at_level("WARNING", logger="rerank"):
        assert again.index() == folder
    assert "format 1" in caplog.text and "rebuilding" in caplog.text
    assert bm25disk.read_stats(folder)["format"] == 2 and (folder / "shard-000" / bm25disk.MAXIMA).is_file()
    assert [h.docid for h in again([Query("1", "cats")])["1"]] == ["d1", "d3", "d5", "d7", "d9"]  # ties by number


def test_impacts_are_positive_so_partial_scores_bound_from_below():
    """MaxScore's lower bound (a document's partial score) needs impacts >= 0: this BM25's idf,
    log(1 + (N - df + 0.5) / (df + 0.5)), is positive even for a term in every document."""
    n = 1000
    idf = bm25disk.idf_of(np.array([1, 500, n - 1, n]), n)
    assert (idf > 0).all()
    imp = bm25disk.impacts(np.array([1, 1, 50, 1]), np.array([0.0, 3.0, 0.5, 9.0]), idf)
    assert (imp > 0).all()
    assert bm25disk.term_maxima(np.array([1.0, 3.0, 2.0, 5.0], np.float32), np.array([0, 3, 0, 1])).tolist() == [0, 3, 0, 5]


def test_a_new_process_takes_the_search_kernels_from_numbas_disk_cache(scifact_disk):
    """The kernels compile once per installation, not once per process (nested in a function they
    missed numba's cache in every process: 55 s each on a 2-core AVX2 CPU, every Ray worker too)."""
    import subprocess
    import sys
    from pathlib import Path

    shard, queries = scifact_disk
    shard.search(queries[:2], 10, 1)  # compiled (or loaded) here, so cached on disk
    folder = str(Path(shard.docs.filename).parent.parent)  # the index: its shard 0 holds docs.npy
    code = ("import numpy as np; from pathlib import Path; from rerank.retrieve import bm25disk, bm25disk_kernels as k; "
            f"bm25disk.Shard(Path({folder!r}), 0).search([np.array([1, 2, 3])], 10, 1); "
            "print(sum(k.search.stats.cache_hits.values()), sum(k.search.stats.cache_misses.values()))")
    hits, misses = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout.split())
    assert (hits, misses) == (1, 0)
