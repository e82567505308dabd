"""Dense retrieval on the offline all-MiniLM-L6-v2 and real SciFact text: the encoder against
sentence-transformers, stored embeddings and their reuse, resumable encoding, FAISS index types,
and the edge cases (empty corpus, over-long documents, no queries, a changed model)."""

import json
import logging
import shutil
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import offline_model

import rerank.retrieve.dense as dense_mod
from rerank import DataError, MemoryDocStore, Query
from rerank.cli import main
from rerank.errors import ModelNotFound
from rerank.models.encoder import Encoder
from rerank.retrieve.dense import Dense
from rerank.specs import split_hybrid


@pytest.fixture(scope="session")
def minilm() -> str:
    return offline_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def enc32(minilm):
    return Encoder(minilm, dtype="float32")


@pytest.fixture(scope="session")
def sci_small(scifact):
    """300 SciFact abstracts, and the test queries whose relevant abstracts are among them."""
    ids = sorted(scifact.docs.docs)[:300]
    store = MemoryDocStore({d: scifact.docs[d] for d in ids}, name="scifact-300")
    keep = {q for q, rels in scifact.qrels.items() if any(d in store.docs for d in rels)}
    return store, [q for q in scifact.queries if q.qid in keep]


def test_encoder_equals_sentence_transformers(minilm, enc32, sci_small):
    from sentence_transformers import SentenceTransformer

    store, queries = sci_small
    texts = [t for _, t in list(store.items())[:64]]
    st = SentenceTransformer(minilm, device="cpu")
    ref = st.encode(texts, batch_size=16, convert_to_numpy=True)
    ours = enc32.encode_docs(texts)
    assert ours.shape == (64, 384) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-5
    q_ref = st.encode([q.text for q in queries[:8]], prompt_name="query", convert_to_numpy=True)
    assert np.abs(enc32.encode_queries([q.text for q in queries[:8]]) - q_ref).max() < 1e-5
    # 16 abstracts in bf16: emulated, about 10x slower than fp32, on a CPU without AVX512-BF16/AMX
    bf16 = Encoder(minilm, dtype="bfloat16").encode_docs(texts[:16])
    cos = (bf16 * ref[:16]).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(ref[:16], axis=1)
    assert cos.min() > 0.99


def test_prefixes_come_from_the_model_config_and_can_be_overridden(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "e5-like"
    shutil.copytree(minilm, folder)
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    cfg["prompts"] = {"query": "query: ", "document": "passage: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    enc = Encoder(str(folder), dtype="float32")
    assert (enc.query_prefix, enc.doc_prefix) == ("query: ", "passage: ")
    st = SentenceTransformer(str(folder), device="cpu")
    text = "Vitamin D deficiency is linked to multiple sclerosis."
    assert np.abs(enc.encode_queries([text]) - st.encode([text], prompt="query: ")).max() < 1e-5
    assert np.abs(enc.encode_docs([text]) - st.encode([text], prompt="passage: ")).max() < 1e-5
    plain = Encoder(str(folder), dtype="float32", query_prefix="", doc_prefix="")
    assert np.abs(plain.encode_queries([text]) - st.encode([text])).max() < 1e-5
    assert plain.params()["doc_prefix"] == "" and enc.params()["doc_prefix"] == "passage: "
    assert Encoder(str(folder), normalize=False).similarity == "dot"


def test_dense_matches_exhaustive_search_and_reuses_its_embeddings(enc32, sci_small, tmp_path):
    store, queries = sci_small
    flat = Dense(enc32, store, k=10, index_root=tmp_path)
    run = flat(queries)
    emb, docids = flat.embeddings
    assert emb.dtype == np.float16 and emb.shape == (300, 384) and docids == list(store.docs)
    # the same ranking as brute force over the stored vectors
    qv = enc32.encode_queries([q.text for q in queries])
    brute = qv @ np.asarray(emb, dtype=np.float32).T
    for q, row in zip(queries, brute, strict=True):
        top = [docids[i] for i in np.argsort(-row, kind="stable")[:10]]
        assert [h.docid for h in run[q.qid]] == top
        assert run[q.qid][0].text == store[top[0]]
    # ANN indexes reuse the embeddings (no document re-encoded) and, searched exhaustively, agree
    calls = enc32.cost.calls
    hnsw = Dense(enc32, store, k=10, index="hnsw", ef_search=300, index_root=tmp_path)
    ivf = Dense(enc32, store, k=10, index="ivf", nlist=4, nprobe=4, index_root=tmp_path)
    for other in (hnsw, ivf):
        got = other(queries)
        assert {q: [h.docid for h in hits] for q, hits in got.items()} == {q: [h.docid for h in hits] for q, hits in run.items()}
        assert other.paths["embeddings"] == flat.paths["embeddings"] and "faiss" in other.paths
    assert enc32.cost.calls - calls == 2 * len(queries)
    # a new process (new stage) loads everything from disk
    again = Dense(enc32, store, k=10, index="hnsw", ef_search=300, index_root=tmp_path)
    again.index()
    assert enc32.cost.calls - calls == 2 * len(queries)
    assert again.paths == hnsw.paths
    # beyond memory: exact search over the memory-mapped embeddings, and IVF-PQ with its recall measured
    mmap = Dense(enc32, store, k=10, index="mmap", index_root=tmp_path)
    got = mmap(queries)
    assert {q: [h.docid for h in hits] for q, hits in got.items()} == {q: [h.docid for h in hits] for q, hits in run.items()}
    # the same float32 dot products through another BLAS path (faiss vs NumPy): equal to float32 rounding
    # (rounding both to 4 decimals is not: a score near a rounding boundary can fall either side)
    assert all(np.allclose([h.score for h in got[q]], [h.score for h in run[q]], rtol=0, atol=1e-6) for q in run)
    assert "faiss" not in mmap.paths and mmap.name.endswith("@mmap")
    pq = Dense(enc32, store, k=10, index="ivfpq", nlist=4, nprobe=4, index_root=tmp_path)
    got = pq(queries)
    recall = json.loads((pq.paths["faiss"] / "recall.json").read_text())
    assert recall["nprobe"] == 4 and 0.5 < recall["recall@100"] <= 1
    overlap = np.mean([len({h.docid for h in got[q]} & {h.docid for h in run[q]}) / 10 for q in run])
    assert overlap > 0.5


def test_a_changed_corpus_is_detected_and_reencoded(enc32, sci_small, tmp_path, caplog):
    store, _ = sci_small
    docs = dict(list(store.docs.items())[:50])
    Dense(enc32, MemoryDocStore(dict(docs), name="c"), k=5, index_root=tmp_path).index()
    first = next(iter(docs))
    docs[first] = "Aspirin lowers the risk of colorectal cancer in a randomized trial."
    changed = Dense(enc32, MemoryDocStore(docs, name="c"), k=5, index_root=tmp_path)
    with caplog.at_level(logging.WARNING, logger="rerank"):
        changed.index()
    assert any("corpus changed" in r.message for r in caplog.records)
    hits = changed([Query("q", "aspirin colorectal cancer randomized trial")])["q"]
    assert hits[0].docid == first


def test_empty_corpus_and_empty_query_batch(enc32, sci_small, tmp_path):
    with pytest.raises(DataError, match="empty corpus"):
        Dense(enc32, MemoryDocStore({}, name="nothing"), index_root=tmp_path).index()
    store, _ = sci_small
    d = Dense(enc32, store, k=5, index_root=tmp_path)
    assert d([]) == {}
    assert enc32.encode_queries([]).shape == (0, 384)
    with pytest.raises(ValueError, match="first-stage"):
        d([Query("q", "x")], {"q": []})
    with pytest.raises(ValueError, match="unknown dense index"):
        Dense(enc32, store, index="lsh")
    with pytest.raises(ValueError, match="k must be"):
        Dense(enc32, store, k=0)


def test_long_documents_are_truncated_and_logged_once(minilm, caplog):
    enc = Encoder(minilm, dtype="float32", max_length=32)
    long_doc = "Cells divide by mitosis and the spindle separates the chromosomes. " * 40
    with caplog.at_level(logging.WARNING, logger="rerank"):
        a = enc.encode_docs([long_doc, "short text"])
        b = enc.encode_docs([long_doc])
    notes = [r for r in caplog.records if "truncated" in r.message]
    assert len(notes) == 1 and "1 of 2 texts are longer than 32 tokens" in notes[0].message
    assert np.allclose(a[0], b[0], atol=1e-6)  # the truncated text is encoded the same way each time
    # truncation keeps the start: a document equal to its first 32 tokens embeds the same
    head = enc._tokenizer.decode(enc._tokenizer(long_doc, truncation=True, max_length=32)["input_ids"][1:-1])
    assert (enc.encode_docs([head])[0] @ a[0]) > 0.999


def test_a_model_replaced_under_its_name_gets_its_own_index(minilm, sci_small, tmp_path):
    """Indexes are keyed by the model's content: a model replaced in its folder (here by one with a
    128-d projection) is never served the old model's index, and needs no --rebuild."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense as DenseLayer

    store, _ = sci_small
    small = MemoryDocStore(dict(list(store.docs.items())[:20]), name="dim")
    model = tmp_path / "my-encoder"
    shutil.copytree(minilm, model)
    old = Dense(str(model), small, index_root=tmp_path / "idx", dtype="float32")
    old_path = old.index()
    st = SentenceTransformer(minilm, device="cpu")
    import torch

    torch.manual_seed(0)
    projected = SentenceTransformer(modules=[*st, DenseLayer(384, 128)], device="cpu")
    shutil.rmtree(model)
    projected.save(str(model))
    new = Dense(str(model), small, index_root=tmp_path / "idx", dtype="float32")
    assert new.index() != old_path and old_path.is_dir()
    assert new.embeddings[0].shape == (20, 128)


def test_an_interrupted_encoding_resumes(tiny_bert, sci_small, tmp_path, monkeypatch):
    enc32 = Encoder(tiny_bert, dtype="float32")  # BERT's architecture, tiny: resumption does not depend on the model
    store, _ = sci_small
    monkeypatch.setattr(dense_mod, "SHARD_DOCS", 64)
    calls = {"n": 0}
    real = enc32.encode_docs

    def failing(texts, progress=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(texts, progress)

    monkeypatch.setattr(enc32, "encode_docs", failing)
    with pytest.raises(KeyboardInterrupt):
        Dense(enc32, store, index_root=tmp_path / "a").index()
    partial = list((tmp_path / "a").glob(".*.partial"))
    assert len(partial) == 1 and json.loads((partial[0] / "progress.json").read_text()) == {"done": 128}
    monkeypatch.setattr(enc32, "encode_docs", real)
    before = enc32.cost.calls
    resumed = Dense(enc32, store, index_root=tmp_path / "a")
    resumed.index()
    assert enc32.cost.calls - before == 300 - 128  # only the documents not yet encoded
    assert not list((tmp_path / "a").glob(".*.partial"))
    whole = Dense(enc32, store, index_root=tmp_path / "b")
    whole.index()
    assert np.array_equal(np.asarray(resumed.embeddings[0]), np.asarray(whole.embeddings[0]))


def test_missing_model_fails_fast_offline(sci_small):
    store, _ = sci_small
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound, match="no-such-org/no-such-encoder.*searched"):
        Dense("no-such-org/no-such-encoder", store)
    assert time.perf_counter() - t0 < 5


def test_hybrid_spec_parsing_and_cli_errors(dl19):
    assert split_hybrid("bm25+dense:org/model") == ["bm25", "dense:org/model"]
    assert split_hybrid("bm25:lucene+dense:org/a+b-model+candidates:tas-b") == [
        "bm25:lucene",
        "dense:org/a+b-model",
        "candidates:tas-b",
    ]
    r = CliRunner().invoke(main, ["run", "-r", "dense:all-MiniLM-L6-v2", "-d", str(dl19)])
    assert r.exit_code == 2 and "candidates:tas-b" in r.output
    r = CliRunner().invoke(main, ["run", "-r", "hybrid:bm25", "-d", "scifact"])
    assert r.exit_code == 2 and "two or more" in r.output
    r = CliRunner().invoke(main, ["run", "-r", "dense", "-d", "scifact"])
    assert r.exit_code == 2 and "dense:MODEL" in r.output
