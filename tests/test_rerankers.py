"""The scoring engine and the pointwise rerankers, on the small offline models and DL19 data.
Missing models fail these tests (CI installs them with ../shared/tools/offline-models small)."""

import asyncio
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import offline_model

from rerank import DataError, Hit, Query, evaluate, load_dataset
from rerank.cli import main
from rerank.errors import ModelNotFound, ScoringError
from rerank.models import Engine, ScoreCache, resolve_model
from rerank.rerankers import make_reranker
from rerank.rerankers.pointwise import CrossEncoder, LLMPointwise, Splade


@pytest.fixture(scope="session")
def dl19_pairs(dl19):
    ds = load_dataset(str(dl19))
    text = {q.qid: q.text for q in ds.queries}
    run = ds.candidate_run("bm25")
    return ds, [(text[q], h.text) for q, hits in run.items() for h in hits]


@pytest.fixture(scope="session")
def ce32(minilm_ce):
    return CrossEncoder(minilm_ce, dtype="float32")


def test_cross_encoder_equals_sentence_transformers(tiny_ce, dl19_pairs):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    ce = CrossEncoder(tiny_ce, dtype="float32")  # BERT's architecture, tiny: the same code path, a fraction of the time
    pairs = dl19_pairs[1][:1000]
    ours = np.array(ce.score(pairs))
    theirs = STCrossEncoder(tiny_ce, device="cpu").predict(pairs, batch_size=32, show_progress_bar=False)
    assert np.abs(ours - theirs).max() < 1e-3
    assert ce.cost.calls >= 1000 and ce.cost.tokens > 50_000


def test_scores_do_not_depend_on_batch_size(tiny_ce, dl19_pairs):
    pairs = dl19_pairs[1][:200]
    small = CrossEncoder(tiny_ce, dtype="float32", batch_tokens=256)
    big = CrossEncoder(tiny_ce, dtype="float32", batch_tokens=1 << 20)
    a, b = np.array(small.score(pairs)), np.array(big.score(pairs))
    assert small.cost.batches > 50 and big.cost.batches == 1
    assert np.abs(a - b).max() < 1e-3


def test_engine_batches_by_token_budget_and_keeps_caller_order():
    eng = Engine(batch_tokens=100)
    lengths = [10, 50, 30, 50, 5, 90]
    batches = eng.batches(lengths)
    assert batches[0] == [5] and all(max(lengths[i] for i in b) * len(b) <= 100 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(6))
    items = [{"input_ids": list(range(n))} for n in lengths]
    out = eng.run(items, lambda batch: batch["lengths"] * 2)
    assert [int(x) for x in out] == [2 * n for n in lengths]


def test_engine_halves_batches_on_out_of_memory(caplog):
    eng = Engine(batch_tokens=10_000)
    items = [{"input_ids": [1] * (i + 1)} for i in range(20)]

    def forward(batch):
        if batch["input_ids"].shape[0] > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch["lengths"].float()

    with caplog.at_level(logging.WARNING, logger="rerank"):
        out = eng.run(items, forward)
    assert [float(x) for x in out] == [float(i + 1) for i in range(20)]
    assert "halving" in caplog.text and eng.batch_tokens < 10_000

    def always(batch):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(ScoringError, match="out of memory on a single item"):
        Engine().run([{"input_ids": [1, 2]}], always)
    with pytest.raises(ValueError, match="not memory"):  # other errors are not retried
        Engine().run([{"input_ids": [1]}], lambda b: (_ for _ in ()).throw(ValueError("not memory")))


def test_nan_scores_are_refused(ce32, monkeypatch):
    import torch

    monkeypatch.setattr(ce32, "_forward", lambda batch: torch.full((batch["input_ids"].shape[0],), float("nan")))
    with pytest.raises(ScoringError, match="non-finite scores"):
        ce32.score([("q", "d")])


def test_rank_api(ce32):
    docs = ["Paris is the capital of France.", {"id": "b", "text": "Bananas are yellow."},
            {"docid": 7, "content": "Paris is the capital of France."}]
    before = copy.deepcopy(docs)
    ranked = ce32.rank("capital of France", docs)
    assert docs == before  # never mutated
    assert sorted(r.index for r in ranked) == [0, 1, 2]
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    dup = [r for r in ranked if r.index in (0, 2)]
    assert dup[0].score == pytest.approx(dup[1].score, abs=1e-6)  # duplicate texts, same score, both kept
    assert {r.index: r.id for r in ranked} == {0: None, 1: "b", 2: "7"}
    assert ranked[0].document is docs[ranked[0].index]
    assert ce32.rank("q", []) == []
    one = ce32.rank("q", ["only"])
    assert len(one) == 1 and one[0].index == 0
    assert len(ce32.rank("capital", docs, top_k=2)) == 2
    assert asyncio.run(ce32.arank("capital of France", docs)) == ranked
    with pytest.raises(DataError, match="document 1 has no text"):
        ce32.rank("q", ["fine", {"id": 1}])
    with pytest.raises(DataError, match="non-empty string"):
        ce32.rank("  ", docs)


def test_long_documents_lose_their_end_never_the_query(ce32, caplog):
    query = "which enzyme breaks down lactose in the small intestine"
    long_doc = " ".join(["lactase"] + ["filler words about nothing"] * 800)
    with caplog.at_level(logging.INFO, logger="rerank"):
        ce32.truncation._logged = False  # other tests may have cut a passage already
        items = ce32.encode([(query, long_doc), (query, "short")])
        ce32.encode([(query, long_doc)])
    q_ids = ce32.tokenizer(query, add_special_tokens=False)["input_ids"]
    ids = items[0]["input_ids"]
    assert len(ids) == ce32.window == 512
    assert ids[1 : 1 + len(q_ids)] == q_ids  # the query whole, right after [CLS]
    assert caplog.text.count("truncated") == 1  # logged once
    huge_query = " ".join(["lactose"] * 1000)
    [item] = ce32.encode([(huge_query, "a short passage")])
    assert len(item["input_ids"]) == 512  # a query that alone overflows is shortened too, never an error


def test_llm_pointwise_batches_and_truncates(dl19_pairs, tiny_smol, caplog):
    # the causal-LM architecture, tiny: batching, truncation and score resolution do not depend on what it knows
    llm = LLMPointwise(tiny_smol, dtype="float32", max_length=256)
    pairs = dl19_pairs[1][:24]
    one_by_one = LLMPointwise(tiny_smol, dtype="float32", max_length=256, batch_tokens=1)
    a, b = np.array(llm.score(pairs)), np.array(one_by_one.score(pairs))
    assert np.abs(a - b).max() < 1e-3 and one_by_one.cost.batches == 24
    query = "what is the boiling point of water"
    items = llm.encode([(query, "steam " * 2000)])
    ids = items[0]["input_ids"]
    q_ids = llm.tokenizer(query, add_special_tokens=False)["input_ids"]
    assert len(ids) == 256
    tail = ids[-(len(q_ids) + len(llm.suffix)) :]
    assert tail[: len(q_ids)] == q_ids  # the query is kept whole after the passage
    assert math.isfinite(llm.score([(query, "steam " * 2000)])[0])
    # in bf16 the yes/no projection stays fp32, so scores keep their resolution (a bf16 product
    # left 20 passages with 6-7 distinct values)
    bf16 = LLMPointwise(tiny_smol, dtype="bfloat16", max_length=256)
    assert len(set(bf16.score(pairs))) >= 22


def test_splade_scores_are_dot_products_and_rerank_dl19(dl19_pairs):
    import torch

    ds, pairs = dl19_pairs
    sp = Splade(offline_model("splade-tiny-msmarco"), dtype="float32")
    q, d = pairs[0]

    def dense(text):
        enc = sp.tokenizer(text, return_tensors="pt", truncation=True, max_length=sp.window)
        with torch.no_grad():
            logits = sp.model(**enc).logits[0]
        return torch.log1p(torch.relu(logits)).amax(0)

    assert sp.score([(q, d)])[0] == pytest.approx(float(dense(q) @ dense(d)), rel=1e-4)
    run = {qid: hits[:20] for qid, hits in ds.candidate_run("bm25").items()}
    reranked = Splade(offline_model("splade-tiny-msmarco"), depth=20)(ds.queries, run)
    before = evaluate(run, ds.qrels, ["nDCG@10"], rel=2).metrics["nDCG@10"]
    after = evaluate(reranked, ds.qrels, ["nDCG@10"], rel=2).metrics["nDCG@10"]
    assert before == pytest.approx(0.5058, abs=1e-4) and after > before + 0.05



def test_splade_reranks_on_the_query_terms_only_and_equals_whole_vectors(dl19_pairs):
    """Reranking projects documents onto the call's query terms only (the documents' whole vectors
    are neither computed nor kept), and its scores are those of the whole vectors."""
    import numpy as np

    from rerank.models.engine import kept_now

    ds, pairs = dl19_pairs
    sp = Splade(offline_model("splade-tiny-msmarco"), dtype="float32", backend="torch")
    pairs = pairs[:40]
    docs = list(dict.fromkeys(d for _, d in pairs))
    scores = sp.score(pairs)
    assert kept_now(sp.model_key, docs) == {}  # projected on the query terms: nothing whole was made
    whole = sp.vectors(docs + [q for q, _ in pairs])
    vocab = sp.model.config.vocab_size

    def dense(text):
        i, v = whole[text]
        out = np.zeros(vocab, dtype=np.float32)
        out[i.numpy()] = v.numpy()
        return out

    expect = [float(dense(q) @ dense(d)) for q, d in pairs]
    assert np.allclose(scores, expect, rtol=1e-5, atol=1e-5) and max(expect) > 1
    cols = np.unique(np.concatenate([whole[q][0].numpy() for q, _ in pairs]))
    assert len(cols) < vocab / 20  # the projection reranking needs is a small part of the vocabulary
    import torch

    assert np.allclose(sp.weights_on(docs[:3], torch.from_numpy(cols)), np.stack([dense(d)[cols] for d in docs[:3]]),
                       rtol=1e-5, atol=1e-6)
    assert np.allclose(sp.score(pairs), scores, rtol=1e-5, atol=1e-5)  # now from the kept whole vectors
    assert sp.weights_on(docs[:2], torch.zeros(0, dtype=torch.long)).shape == (2, 0)  # queries without a term

def test_stage_contract(ce32):
    ranking = {"q": [Hit("a", 3.0, "alpha"), Hit("b", 2.0, "beta"), Hit("c", 1.0, "gamma")], "other": [Hit("x", 1.0, "x")]}
    before = copy.deepcopy(ranking)
    ce32.depth = 2
    try:
        out = ce32([Query("q", "beta")], ranking)
    finally:
        ce32.depth = 100
    assert ranking == before
    assert {h.docid for h in out["q"][:2]} == {"a", "b"} and out["q"][2].docid == "c"
    assert out["q"][2].score < min(h.score for h in out["q"][:2])  # the unreranked tail stays below
    assert out["other"] == ranking["other"]  # queries not asked for pass through
    with pytest.raises(ValueError, match="give it a first stage"):
        ce32([Query("q", "x")])
    with pytest.raises(DataError, match="hit 'a' has no text"):
        ce32([Query("q", "x")], {"q": [Hit("a", 1.0)]})


def test_score_cache_serves_repeats(minilm_ce, tmp_path, dl19_pairs):
    pairs = dl19_pairs[1][:50]
    first = CrossEncoder(minilm_ce, dtype="float32", cache=tmp_path / "scores.sqlite")
    a = first.score(pairs)
    second = CrossEncoder(minilm_ce, dtype="float32", cache=tmp_path / "scores.sqlite")
    b = second.score(pairs)
    assert a == b and second.cost.calls == 0 and second.cost.cached == 50
    assert len(ScoreCache(tmp_path / "scores.sqlite")) == 50
    other = CrossEncoder(minilm_ce, dtype="float32", activation="none", cache=tmp_path / "scores.sqlite")
    other.score(pairs[:5])
    assert other.cost.calls == 5  # another model key is never served this one's scores


def test_an_interrupted_run_resumes_from_the_cache(minilm_ce, tmp_path, dl19_pairs):
    pairs = dl19_pairs[1][:30]
    ce = CrossEncoder(minilm_ce, dtype="float32", cache=tmp_path / "c.sqlite")
    ce.cache_chunk = 10
    real, calls = ce._score, []

    def dies_on_third_chunk(chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(chunk)

    ce._score = dies_on_third_chunk
    with pytest.raises(KeyboardInterrupt):
        ce.score(pairs)
    again = CrossEncoder(minilm_ce, dtype="float32", cache=tmp_path / "c.sqlite")
    scores = again.score(pairs)
    assert again.cost.cached == 20 and again.cost.calls == 10  # only the unfinished chunk is scored
    assert np.allclose(scores, CrossEncoder(minilm_ce, dtype="float32").score(pairs), atol=1e-5)


def test_unknown_model_fails_fast_and_names_the_folders():
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound, match=r"'nobody/no-such-model' is not available offline.*searched: .*offline-models"):
        resolve_model("nobody/no-such-model")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ModelNotFound, match="has no config.json"):
        resolve_model(str(Path(__file__).parent))
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").endswith("all-MiniLM-L6-v2")
    with pytest.raises(Exception, match="unknown reranker 'rankt5:x'"):
        make_reranker("rankt5:x")


def test_cli_reranks_and_reports_cost(minilm_ce, dl19, tmp_path):
    out = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["run", "-r", "bm25", "-d", str(dl19), "--reranker", f"cross-encoder:{minilm_ce}",
                                  "--rerank-depth", "5", "--dtype", "float32", "--metrics-json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["cost"]["rerank"]["model_calls"] == 43 * 5 and data["cost"]["rerank"]["tokens"] > 0
    assert data["metrics"]["R@100"] == pytest.approx(0.4910, abs=1e-4)  # reranking the top 5 keeps the same 100
    r = CliRunner().invoke(main, ["run", "-r", "bm25", "-d", str(dl19), "--reranker", "cross-encoder:nobody/nothing"])
    assert r.exit_code == 2 and "not available offline" in r.stderr
