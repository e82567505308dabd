"""Collections beyond memory: BM25 built in bounded memory (bm25:disk) against bm25s's in-memory
index, bit for bit; its shards; the memory-mapped exact dense search and IVF-PQ."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

from rerank import BM25, DataError, MemoryDocStore, Query
from rerank.cli import main
from rerank.indexes import MANIFEST
from rerank.retrieve import bm25disk
from rerank.retrieve.bm25 import bm25s_tokenizer


def _tie_free(hits, k):
    """(score, docid) pairs of a query's hits above its k-th score, by score then id: the part of
    a top k that does not depend on how ties are broken."""
    pairs = sorted(((h.score, h.docid) for h in hits), key=lambda x: (-x[0], x[1]))
    floor = pairs[-1][0] if len(pairs) >= k else -1.0
    return [p for p in pairs if p[0] > floor]


def assert_same_run(a, b, k):
    assert list(a) == list(b)
    for q in a:
        assert len(a[q]) == len(b[q]), q
        assert _tie_free(a[q], k) == _tie_free(b[q], k), q


def assert_same_arrays(bm25s_folder, disk_folder, shard=0):
    sub = disk_folder / f"shard-{shard:03d}"
    assert np.array_equal(np.load(bm25s_folder / "indptr.csc.index.npy"), np.load(sub / "offsets.npy"))
    assert np.array_equal(np.load(bm25s_folder / "indices.csc.index.npy"), np.load(sub / "docs.npy"))
    # the impacts themselves, bit for bit (float32)
    assert np.array_equal(np.load(bm25s_folder / "data.csc.index.npy").view(np.int32), np.load(sub / "scores.npy").view(np.int32))


@pytest.fixture(scope="module")
def scifact_pair(scifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    mem = BM25(scifact, k=100, index_root=root)
    # 10 MB: segments of 1,000 documents and merge blocks of 80k postings, so both the
    # segments and the merge's blocks are many
    disk = BM25(scifact, backend="disk", k=100, index_root=root, memory_gb=0.01)
    return mem, disk


def test_disk_bm25_is_bm25s_bit_for_bit_on_scifact(scifact, scifact_pair):
    mem, disk = scifact_pair
    folder = disk.index()
    stats = bm25disk.read_stats(folder)
    assert stats["documents"] == len(scifact.docs) and len(list(folder.glob("segments"))) == 0
    assert_same_arrays(mem.index(), folder)
    a, b = mem(scifact.queries), disk(scifact.queries)
    assert_same_run(a, b, 100)
    # ties are broken by document number: the order is the same in every run
    assert all(
        [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) for hits in b.values())
    assert b["1"][0].text == scifact.docs[b["1"][0].docid]


SYNTHETIC = {
    "a": "Cats chase mice; the mice run.",
    "é-1": "the of and",  # stopwords only: bm25s indexes it under its empty token
    "b": "",
    "c": "dogs dogs dogs dogs chase cats through gardens",
    "d": "Gardens of roses and tulips, and cats",
    **{f"x{i}": " ".join(["mice", "roses", "cats", "tulips", "dogs", "birds"][j % 6] for j in range(i % 7 + 1)) + f" w{i % 11}"
       for i in range(200)},
}
QUERIES = [Query("1", "cats and mice"), Query("2", "dogs dogs gardens"), Query("3", "the of"), Query("4", "zzz"),
           Query("5", "tulips roses birds w3 w7"), Query("6", "w1")]


@pytest.mark.parametrize("shards", [1, 3])
def test_disk_bm25_matches_bm25s_on_a_synthetic_corpus(tmp_path, shards):
    store = MemoryDocStore(dict(SYNTHETIC), name="synthetic")
    mem = BM25(store, k=20, index_root=tmp_path)
    disk = BM25(store, backend="disk", k=20, index_root=tmp_path, shards=shards)
    folder = disk.index()
    if shards == 1:
        assert_same_arrays(mem.index(), folder)
    a, b = mem(QUERIES), disk(QUERIES)
    assert_same_run(a, b, 20)
    assert b["3"] == [] and b["4"] == []
    assert len(bm25disk.read_stats(folder)["shards"]) == shards


def test_segments_and_merge_blocks_do_not_change_the_index(tmp_path):
    """Segments of 7 documents and merge blocks of a handful of terms write the very index one
    segment and one block write; the shards' CSRs hold the same postings, cut by document."""
    store = MemoryDocStore(dict(SYNTHETIC), name="synthetic")
    one = tmp_path / "one"
    bm25disk.build(one, store.items(), bm25s_tokenizer(), k1=0.9, b=0.4, memory_bytes=2**30, n_docs=len(store))
    many = tmp_path / "many"
    bm25disk.build(many, store.items(), bm25s_tokenizer(), k1=0.9, b=0.4, memory_bytes=2000, n_docs=len(store),
                   chunk_docs=7)
    for name in ("offsets.npy", "docs.npy", "scores.npy"):
        assert np.array_equal(np.load(one / "shard-000" / name), np.load(many / "shard-000" / name)), name
    sharded = tmp_path / "sharded"
    stats = bm25disk.build(sharded, store.items(), bm25s_tokenizer(), k1=0.9, b=0.4, memory_bytes=2000,
                           n_docs=len(store), shards=4, chunk_docs=7)
    assert [s["first"] for s in stats["shards"]] == [0, 51, 102, 153]
    whole = np.load(one / "shard-000" / "docs.npy")
    parts = [np.load(sharded / f"shard-{s:03d}" / "docs.npy") for s in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == sorted(whole.tolist())
    assert list(bm25disk.DocIds(sharded)) == list(SYNTHETIC)


def test_disk_index_is_reused_keyed_by_content_and_built_atomically(tmp_path):
    docs = {f"d{i}": f"document {i} about {'cats' if i % 2 else 'dogs'}" for i in range(30)}
    first = BM25(MemoryDocStore(dict(docs), name="pets"), backend="disk", index_root=tmp_path, k=5)
    folder = first.index()
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["backend"] == "disk" and manifest["params"]["shards"] == 1
    again = BM25(MemoryDocStore(dict(docs), name="pets"), backend="disk", index_root=tmp_path, k=5, memory_gb=0.5)
    assert again.index() == folder  # the budget does not change the index
    assert json.loads((folder / MANIFEST).read_text())["created"] == manifest["created"]

    class Broken(MemoryDocStore):
        def items(self):
            yield from list(super().items())[:10]
            raise OSError("disk gone")

    docs["d0"] = "changed"
    with pytest.raises(OSError, match="disk gone"):
        BM25(Broken(dict(docs), name="pets"), backend="disk", index_root=tmp_path).index()
    assert json.loads((folder / MANIFEST).read_text())["created"] == manifest["created"]  # the old index is intact
    with pytest.raises(DataError, match="empty corpus"):
        BM25(MemoryDocStore({}, name="empty"), backend="disk", index_root=tmp_path).index()
    with pytest.raises(ValueError, match="disk backend"):
        BM25(MemoryDocStore(dict(docs)), memory_gb=1.0)
    with pytest.raises(ValueError, match="memory_gb must be positive"):
        BM25(MemoryDocStore(dict(docs)), backend="disk", memory_gb=0)


def test_cli_indexes_and_runs_bm25_disk(tmp_path, monkeypatch):
    corpus = tmp_path / "ds" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in SYNTHETIC.items()))
    (tmp_path / "ds" / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q.qid, "text": q.text}) + "\n" for q in QUERIES))
    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))
    r = CliRunner().invoke(main, ["index", "-r", "bm25:disk", "-d", str(tmp_path / "ds"), "--bm25-memory-gb", "0.1"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "indexes").glob("*.bm25-disk.*"))) == 1
    for backend in ("bm25", "bm25:disk"):
        r = CliRunner().invoke(main, ["run", "-r", backend, "-d", str(tmp_path / "ds"), "-q", "--top-k", "5",
                                      "-o", str(tmp_path / f"{backend.replace(':', '-')}.trec")])
        assert r.exit_code == 0, r.output
    from rerank.data.formats import read_run

    assert_same_run(read_run(tmp_path / "bm25.trec"), read_run(tmp_path / "bm25-disk.trec"), 5)
    r = CliRunner().invoke(main, ["run", "-r", "bm25", "-d", str(tmp_path / "ds"), "--bm25-memory-gb", "1", "-q"])
    assert r.exit_code == 2 and "disk" in r.output


def test_mmap_flat_search_is_exact_and_shards_merge_to_it(tmp_path):
    import faiss

    from rerank.retrieve.dense import FlatShard, shard_bounds, top_k

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3000, 24)).astype(np.float16)
    np.save(tmp_path / "embeddings.npy", emb)
    q = rng.standard_normal((30, 24)).astype(np.float32)
    scores, rows = FlatShard.open(tmp_path, rows_at_once=700).search(q, 40)
    exact = faiss.IndexFlatIP(24)
    exact.add(emb.astype(np.float32))
    f_scores, f_rows = exact.search(q, 40)
    assert np.array_equal(rows, f_rows) and np.allclose(scores, f_scores, atol=1e-4)
    l2 = faiss.IndexFlatL2(24)
    l2.add(emb.astype(np.float32))
    d, r = l2.search(q, 40)
    s2, r2 = FlatShard.open(tmp_path, l2=True, rows_at_once=700).search(q, 40)
    assert np.array_equal(r2, r) and np.allclose(-s2, d, atol=1e-3)
    bounds = shard_bounds(3000, 3, 700)
    assert bounds == [0, 700, 2100, 3000]  # 5 chunks of rows cut 1, 2, 2
    parts = [FlatShard.open(tmp_path, a, b, rows_at_once=700).search(q, 40) for a, b in itertools.pairwise(bounds)]
    m_scores, m_rows = top_k(np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1), 40)
    assert np.array_equal(m_rows, rows) and np.array_equal(m_scores, scores)  # the same chunks: the same bits


def test_ivfpq_streams_its_embeddings_and_reports_recall(tmp_path):
    import faiss

    from rerank.retrieve import dense

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12000, 32)).astype(np.float16)
    np.save(tmp_path / "e.npy", emb)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")

    index = dense.build_faiss_index("ivfpq", mm, faiss.METRIC_INNER_PRODUCT, nlist=16, pq_m=8)
    assert index.ntotal == 12000 and index.pq.M == 8 and index.nlist == 16
    good = dense.exact_recall(index, mm, faiss.METRIC_INNER_PRODUCT, nprobe=16)
    poor = dense.exact_recall(index, mm, faiss.METRIC_INNER_PRODUCT, nprobe=1)
    assert 0 < poor < good <= 1 and good > 0.2, (poor, good)  # random vectors: PQ's compression bounds the recall
    assert dense.default_pq_m(384) == 48 and dense.default_pq_m(100) == 10
    with pytest.raises(ValueError, match="pq_m must divide"):
        dense.build_faiss_index("ivfpq", mm, faiss.METRIC_INNER_PRODUCT, nlist=4, pq_m=5)


def test_an_interrupted_build_resumes_from_its_checkpoint(tmp_path):
    store = MemoryDocStore(dict(SYNTHETIC), name="synthetic")
    whole = tmp_path / "whole"
    bm25disk.build(whole, store.items(), bm25s_tokenizer(), k1=0.9, b=0.4, memory_bytes=2000, n_docs=len(store),
                   chunk_docs=7, shards=2)

    def stops_at(n):
        yield from itertools.islice(store.items(), n)
        raise KeyboardInterrupt

    folder = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        bm25disk.build(folder, stops_at(100), bm25s_tokenizer(), k1=0.9, b=0.4, memory_bytes=2000, n_docs=len(store),
                       chunk_docs=7, shards=2, checkpoint_s=0)
    assert json.loads((folder / bm25disk.CHECKPOINT).read_text())["documents"] == 98  # 14 segments of 7
    tok = bm25s_tokenizer()
    seen: list[int] = []
    tokenize = tok.tokenize
    tok.tokenize = lambda texts, **kw: (seen.append(len(texts)), tokenize(texts, **kw))[1]
    bm25disk.build(folder, store.items(), tok, k1=0.9, b=0.4, memory_bytes=2000, n_docs=len(store), chunk_docs=7, shards=2,
                   checkpoint_s=0)
    assert sum(seen) == len(store) - 98  # only the documents after the checkpoint were tokenized
    for name in ("shard-000/offsets.npy", "shard-000/docs.npy", "shard-001/scores.npy", "docids.ends.npy", "df.npy"):
        assert np.array_equal(np.load(whole / name), np.load(folder / name)), name
    assert (whole / "docids.bin").read_bytes() == (folder / "docids.bin").read_bytes()
    assert not (folder / bm25disk.CHECKPOINT).exists()
    # through the stage: a killed build's .partial folder is resumed by the next one
    broken = BM25(MemoryDocStore(dict(SYNTHETIC), name="synthetic"), backend="disk", index_root=tmp_path / "idx")
    broken._impl.build = lambda tmp, docs: (_ for _ in ()).throw(KeyboardInterrupt)  # noqa: SLF001
    with pytest.raises(KeyboardInterrupt):
        broken.index()
    assert [p.name.endswith(".partial") for p in (tmp_path / "idx").iterdir()] == [True]
