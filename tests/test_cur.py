"""CUR-factorised search (ANNCUR / ADACUR) with a real scorer (SPLADE-tiny) on a SciFact subset."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
from conftest import offline_model

from rerank.data import load_dataset
from rerank.data.store import MemoryDocStore
from rerank.errors import DataError, IndexStateError, RerankError
from rerank.retrieve.bm25 import BM25
from rerank.retrieve.cur import CUR, pinv, round_sizes
from rerank.types import Query

TOL = 1e-3  # float32: in bf16 other batches (other padding) move scores by up to ~1%, and exact orders with them


@pytest.fixture(scope="module")
def mini(scifact_dir, tmp_path_factory):
    """A BEIR folder: 120 train + 20 test SciFact queries, their relevant abstracts + the first 300."""
    folder = tmp_path_factory.mktemp("mini-scifact")
    (folder / "qrels").mkdir()
    queries = {json.loads(line)["_id"]: line for line in (scifact_dir / "queries.jsonl").read_text().splitlines()}
    keep_q, keep_d = [], set()
    for split, n in (("train", 120), ("test", 20)):
        rows = (scifact_dir / "qrels" / f"{split}.tsv").read_text().splitlines()
        chosen = list(dict.fromkeys(r.split("\t")[0] for r in rows[1:]))[:n]
        keep = [r for r in rows[1:] if r.split("\t")[0] in chosen]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join([rows[0], *keep]) + "\n")
        keep_q += chosen
        keep_d |= {r.split("\t")[1] for r in keep}
    lines = (scifact_dir / "corpus.jsonl").read_text().splitlines()
    corpus = [line for i, line in enumerate(lines) if i < 300 or json.loads(line)["_id"] in keep_d]
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(queries[q] for q in keep_q) + "\n")
    return folder


@pytest.fixture(scope="module")
def splade():
    from rerank.rerankers.pointwise import Splade

    return Splade(offline_model("splade-tiny-msmarco"), dtype="float32")


@pytest.fixture(scope="module")
def data(mini):
    train, test = load_dataset(str(mini), split="train"), load_dataset(str(mini), split="test")
    docids = [d for d, _ in test.docs.items()]
    return train, test, docids


@pytest.fixture(scope="module")
def exact(data, splade):
    _, test, docids = data
    return splade.score_matrix([q.text for q in test.queries], [test.docs[d] for d in docids])


def recall_at(run, queries, exact, docids, k):
    out = []
    for i, q in enumerate(queries):
        top = {docids[j] for j in np.argsort(-exact[i], kind="stable")[:k]}
        out.append(len(top & {h.docid for h in run[q.qid][:k]}) / k)
    return float(np.mean(out))


def test_score_matrix_matches_pairwise_scores(splade, data, exact):
    _, test, docids = data
    pairs = [(q.text, test.docs[d]) for q in test.queries[:3] for d in docids[:7]]
    assert np.allclose(np.array(splade.score(pairs)).reshape(3, 7), exact[:3, :7], rtol=TOL, atol=TOL)


def test_index_is_float16_with_manifest_and_search_spends_the_budget(splade, data, exact, tmp_path):
    train, test, docids = data
    n = len(docids)
    assert 300 < n < 400  # 395: the first 300 abstracts and the relevant ones of the chosen queries
    stage = CUR(splade, test, train.queries, budget=60, rounds=3, k=10, index_root=tmp_path)
    path = stage.index()
    m = json.loads((path / "manifest.json").read_text())
    assert m["kind"] == "cur" and m["corpus"]["documents"] == n and m["params"]["anchors"].startswith("120:")
    matrix, ids = stage.matrix
    assert matrix.dtype == np.float16 and matrix.shape == (120, n) and ids == docids
    want = splade.score_matrix([q.text for q in train.queries[:5]], [test.docs[d] for d in docids])
    assert np.allclose(np.asarray(matrix[:5], dtype=np.float32), want, rtol=TOL, atol=TOL)
    run = stage(test.queries)
    assert stage.calls == 60 * len(test.queries) and stage.anchor_items == 15
    for i, q in enumerate(test.queries):  # every returned score is the exact one, best first
        col = {d: j for j, d in enumerate(docids)}
        assert [h.score for h in run[q.qid]] == pytest.approx(
            [float(exact[i, col[h.docid]]) for h in run[q.qid]], rel=TOL, abs=TOL
        )
        assert all(a.score >= b.score for a, b in itertools.pairwise(run[q.qid]))
    ada = recall_at(run, test.queries, exact, docids, 10)
    ann = recall_at(CUR(splade, test, train.queries, budget=60, rounds=1, k=10, index_root=tmp_path)(test.queries),
                    test.queries, exact, docids, 10)
    # 60 of ~395 items scored: a random 60 would hold ~15% of the exact top 10
    assert ada > 0.6 and ann > 0.3 and ada > ann
    bm25_init = CUR(splade, test, train.queries, budget=60, rounds=3, k=10, init=BM25(test, k=60), index_root=tmp_path)
    assert recall_at(bm25_init(test.queries), test.queries, exact, docids, 10) > 0.6


def test_budget_over_the_items_is_exact_and_k_over_the_items_returns_all(splade, data, exact, tmp_path):
    train, test, docids = data
    run = CUR(splade, test, train.queries, budget=5000, rounds=2, k=5000, index_root=tmp_path)(test.queries[:3])
    for i, q in enumerate(test.queries[:3]):
        assert [h.docid for h in run[q.qid]] == [docids[j] for j in np.argsort(-exact[i], kind="stable")]
    # k above the budget: the exact head, then every other item by its approximate score, below it
    stage = CUR(splade, test, train.queries, budget=40, rounds=1, k=10**6, index_root=tmp_path)
    run = stage(test.queries[:2])
    for q in test.queries[:2]:
        hits = run[q.qid]
        assert len(hits) == len(docids) == len({h.docid for h in hits})
        assert all(a.score > b.score for a, b in itertools.pairwise(hits[39:]))
    assert stage.calls == 80


def test_budget_below_the_anchor_items_is_an_error(splade, data, tmp_path):
    train, test, _ = data
    with pytest.raises(RerankError, match="budget of 10 scorer calls per query is smaller than the 20 anchor items"):
        CUR(splade, test, train.queries, budget=10, anchor_items=20)
    with pytest.raises(RerankError, match="rounds must be a positive integer"):
        CUR(splade, test, train.queries, budget=10, rounds=0)
    assert round_sizes(100, 10, 4) == [23, 23, 22, 22] and sum(round_sizes(7, 3, 5)) == 4


def test_anchor_queries_must_not_be_searched(splade, data, tmp_path):
    train, test, _ = data
    stage = CUR(splade, test, train.queries[:30], budget=20, index_root=tmp_path)
    with pytest.raises(DataError, match="anchor queries of the CUR index"):
        stage(train.queries[5:8])


def test_changed_item_set_is_detected(splade, data, tmp_path, caplog):
    train, test, docids = data
    items = {d: test.docs[d] for d in docids[:80]}
    old = CUR(splade, MemoryDocStore(items, name="items"), train.queries[:20], budget=20, index_root=tmp_path)
    path = old.index()
    changed = dict(items)
    changed[docids[3]] = changed[docids[3]] + " A late correction."
    new = CUR(splade, MemoryDocStore(changed, name="items"), train.queries[:20], budget=20, index_root=tmp_path)
    with pytest.raises(IndexStateError, match="the item set changed since indexing"):
        new.load(path)
    with caplog.at_level(logging.WARNING, logger="rerank"):
        assert new.index() == path  # the default path: rebuilt, with a warning naming the reason
    assert "the corpus changed since it was indexed" in caplog.text
    one = splade.score_matrix([train.queries[0].text], [changed[d] for d in docids[:80]])
    assert np.allclose(np.asarray(new.matrix[0][0], dtype=np.float32), one[0], rtol=TOL, atol=TOL)
    fewer = CUR(splade, MemoryDocStore(dict(list(items.items())[:79]), name="items"), train.queries[:20], budget=20)
    with pytest.raises(IndexStateError, match="79|80"):
        fewer.load(path)


def test_pinv_cuts_off_small_singular_values():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 6))
    m = np.concatenate([base, base[:, :3] + 1e-9 * rng.normal(size=(50, 3))], axis=1)  # near-duplicate columns
    ours, numpys = pinv(m), np.linalg.pinv(m)
    assert np.isfinite(ours).all() and np.abs(ours).max() < 10 and np.abs(numpys).max() > 1e6
    y = base @ rng.normal(size=6)
    assert np.allclose(m @ (ours @ y), y, atol=1e-6)  # still the least-squares fit where it is determined
    assert np.array_equal(pinv(np.zeros((4, 3))), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="rcond"):
        pinv(m, rcond=1.5)


def test_ill_conditioned_anchors_give_finite_stable_results(splade, data, tmp_path):
    """Every item three times over (identical columns of R) and anchor queries that repeat one
    another with a word changed (nearly identical rows): the search still returns the exact top."""
    train, test, docids = data
    items = {f"{d}#{c}": test.docs[d] for d in docids[:60] for c in range(3)}
    base = train.queries[:10]
    anchors = base + [Query(f"{q.qid}-again", q.text + " the") for q in base]
    stage = CUR(splade, MemoryDocStore(items, name="dups"), anchors, budget=90, rounds=3, k=9, index_root=tmp_path)
    rows = [np.arange(0, 180, 2)]  # every item of 90 with its duplicates among them
    approx = stage.approximate(rows, [np.asarray(stage.matrix[0][0, rows[0]], dtype=np.float64)])
    assert np.isfinite(approx).all()
    run = stage(test.queries[:5])
    ids = list(items)
    exact = splade.score_matrix([q.text for q in test.queries[:5]], list(items.values()))
    for i, q in enumerate(test.queries[:5]):
        scores = [h.score for h in run[q.qid]]
        assert np.isfinite(scores).all()
        assert recall_at({q.qid: run[q.qid]}, [q], exact[i : i + 1], ids, 3) == 1.0


def test_cli_index_then_search_with_a_budget(mini, tmp_path):
    from click.testing import CliRunner

    from rerank.cli import main
    from rerank.data.formats import read_run

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    spec = f"cur:splade:{offline_model('splade-tiny-msmarco')}"
    r = invoke("index", "-r", spec, "-d", mini, "--anchors-from", "train")
    assert r.exit_code == 0, r.output
    assert ".cur." in r.output
    out, metrics = tmp_path / "run.trec", tmp_path / "m.json"
    r = invoke("run", "-r", spec, "-d", mini, "--ce-budget", 60, "--cur-rounds", 3, "--cur-init", "bm25", "-k", 20,
               "-o", out, "--metrics-json", metrics)
    assert r.exit_code == 0, r.output
    data = json.loads(metrics.read_text())
    assert data["pipeline"].startswith("adacur:splade:") and data["metrics"]["nDCG@10"] > 0.5
    assert data["cost"]["first_stage_scorer_calls"] == 60 * 20 and "1200 scorer calls (60.0 a query)" in r.output
    run = read_run(out)
    assert len(run) == 20 and all(len(h) == 20 for h in run.values())
    errors = {
        ("--ce-budget", 5, "--cur-anchor-items", 10): "smaller than the 10 anchor items",
        ("--anchors-from", "test"): "the anchors would be the queries searched",
        ("--anchors-from", "dev"): "no such split",
    }
    for extra, message in errors.items():
        r = invoke("run", "-r", spec, "-d", mini, *extra)
        assert r.exit_code == 2 and message in r.output, (extra, r.output)
    r = invoke("run", "-r", "cur:prp:x", "-d", mini)
    assert r.exit_code == 2 and "needs a pointwise scorer" in r.output
