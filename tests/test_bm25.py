import json
import logging

import pytest

from rerank import BM25, DataError, MemoryDocStore, Query, evaluate
from rerank.indexes import MANIFEST


@pytest.fixture(scope="module")
def scifact_bm25s(scifact, tmp_path_factory):
    stage = BM25(scifact, k=100, index_root=tmp_path_factory.mktemp("idx"))
    return stage, stage(scifact.queries)


def test_bm25s_scifact_quality(scifact, scifact_bm25s):
    _, run = scifact_bm25s
    m = evaluate(run, scifact.qrels, ["nDCG@10", "R@100"]).metrics
    # bm25s with Snowball stemming: about 0.676 (Lucene: 0.6789)
    assert m["nDCG@10"] == pytest.approx(0.676, abs=0.004)
    assert m["R@100"] == pytest.approx(0.913, abs=0.005)
    # documents sharing no term with the query are not returned (as with Lucene)
    assert all(len(h) <= 100 and all(x.score > 0 for x in h) for h in run.values())
    assert sum(len(h) == 100 for h in run.values()) > 250
    hit = run["1"][0]
    assert hit.text == scifact.docs[hit.docid]


def test_index_is_reused_then_rebuilt_when_the_corpus_changes(tmp_path, caplog):
    docs = {f"d{i}": f"document number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(50)}
    queries = [Query("q", "cats")]
    first = BM25(MemoryDocStore(dict(docs), name="pets"), index_root=tmp_path, k=5)
    folder = first.index()
    built = json.loads((folder / MANIFEST).read_text())
    assert built["corpus"]["documents"] == 50 and built["params"]["k1"] == 0.9 and built["params"]["b"] == 0.4
    with caplog.at_level(logging.INFO, logger="rerank"):
        again = BM25(MemoryDocStore(dict(docs), name="pets"), index_root=tmp_path, k=5)
        assert again.index() == folder
    assert "using index" in caplog.text
    assert json.loads((folder / MANIFEST).read_text())["created"] == built["created"]
    assert again(queries) == first(queries)

    docs["d0"] = "a new document about cats cats cats"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rerank"):
        changed = BM25(MemoryDocStore(dict(docs), name="pets"), index_root=tmp_path, k=5)
        run = changed(queries)
    assert "stale" in caplog.text and "corpus changed" in caplog.text
    assert run["q"][0].docid == "d0"
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # replaced in place, no debris


def test_query_without_indexable_terms_gets_no_hits(tmp_path, caplog):
    stage = BM25(MemoryDocStore({"a": "alpha beta", "b": "beta gamma"}, name="tiny"), index_root=tmp_path)
    with caplog.at_level(logging.WARNING, logger="rerank"):
        run = stage([Query("stop", "the of and"), Query("unk", "zzzz"), Query("ok", "gamma")])
    assert run["stop"] == [] and run["unk"] == []
    assert [h.docid for h in run["ok"]] == ["b"]
    assert "found nothing for 2 queries" in caplog.text


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="empty corpus"):
        BM25(MemoryDocStore({}, name="empty"), index_root=tmp_path).index()
    with pytest.raises(ValueError, match="unknown BM25 backend"):
        BM25(MemoryDocStore({"a": "x"}), backend="elastic")
    stage = BM25(MemoryDocStore({"a": "x y"}, name="one"), index_root=tmp_path)
    with pytest.raises(ValueError, match="first-stage retriever"):
        stage([Query("q", "x")], {"q": []})


def test_partial_corpus_is_flagged(tmp_path, caplog):
    store = MemoryDocStore({"a": "alpha", "b": "beta"}, name="cands", complete=False)
    with caplog.at_level(logging.WARNING, logger="rerank"):
        BM25(store, index_root=tmp_path).index()
    assert "only part of a collection" in caplog.text


@pytest.mark.lucene
def test_lucene_backend_matches_pyserini_and_bm25s(scifact, scifact_bm25s, tmp_path):
    lucene = BM25(scifact, backend="lucene", k=100, index_root=tmp_path, threads=2)
    run = lucene(scifact.queries)
    m = evaluate(run, scifact.qrels, ["nDCG@10", "R@100"]).metrics
    # Pyserini 1.6.0 BM25 flat on BEIR SciFact: 0.6789 / 0.925
    assert m["nDCG@10"] == pytest.approx(0.6789, abs=5e-4)
    assert m["R@100"] == pytest.approx(0.925, abs=1e-3)
    bm25s_m = evaluate(scifact_bm25s[1], scifact.qrels, ["nDCG@10"]).metrics
    assert abs(m["nDCG@10"] - bm25s_m["nDCG@10"]) < 0.005
    assert run["1"][0].text == scifact.docs[run["1"][0].docid]
