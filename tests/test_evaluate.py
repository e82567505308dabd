import ir_measures
import pytest

from rerank import DataError, Hit, compare, evaluate, load_dataset, read_run
from rerank.evaluate import format_comparison, parse_metric


@pytest.fixture(scope="module")
def dl(dl19):
    ds = load_dataset(str(dl19))
    return ds, read_run(dl19 / "bm25.top100.json"), read_run(dl19 / "splade-pp-ed.top100.json")


def test_official_dl19_figures(dl):
    ds, bm25, splade = dl
    ev = evaluate(bm25, ds.qrels, ["nDCG@10", "RR@10", "R@100"], rel=ds.rel)
    assert ev.metrics["nDCG@10"] == pytest.approx(0.5058, abs=5e-5)
    assert ev.metrics["RR@10"] == pytest.approx(0.702, abs=5e-4)
    assert ev.metrics["R@100"] == pytest.approx(0.491, abs=5e-4)
    assert evaluate(splade, ds.qrels, ["nDCG@10"]).metrics["nDCG@10"] == pytest.approx(0.7308, abs=5e-5)


def test_trec_run_and_candidate_file_agree(dl, dl19):
    ds, bm25, _ = dl
    a = evaluate(bm25, ds.qrels, ["nDCG@10", "AP"], rel=2).metrics
    b = evaluate(read_run(dl19 / "bm25.top100.trec"), ds.qrels, ["nDCG@10", "AP"], rel=2).metrics
    assert a == pytest.approx(b, abs=1e-9)


def test_matches_ir_measures_directly(dl):
    ds, bm25, _ = dl
    run = {q: {h.docid: h.score for h in hits} for q, hits in bm25.items()}
    for name in ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@100", "AP(rel=2)", "P(rel=2)@5"):
        want = ir_measures.calc_aggregate([ir_measures.parse_measure(name)], ds.qrels, run)
        got = evaluate(bm25, ds.qrels, [name]).metrics[name]
        assert got == pytest.approx(next(iter(want.values())), abs=1e-9), name


def test_relevance_threshold_applies_to_binary_measures_only(dl):
    ds, bm25, _ = dl
    lenient = evaluate(bm25, ds.qrels, ["nDCG@10", "RR@10"], rel=1).metrics
    strict = evaluate(bm25, ds.qrels, ["nDCG@10", "RR@10"], rel=2).metrics
    assert lenient["nDCG@10"] == strict["nDCG@10"]
    assert lenient["RR@10"] > strict["RR@10"]
    assert str(parse_metric("RR@10", 2)) == "RR(rel=2)@10" and str(parse_metric("RR(rel=3)@10", 2)) == "RR(rel=3)@10"
    with pytest.raises(DataError, match="unknown measure 'nDGC@10'"):
        evaluate(bm25, ds.qrels, ["nDGC@10"])


def test_missing_queries_count_as_zero(dl):
    ds, bm25, _ = dl
    full = evaluate(bm25, ds.qrels, ["nDCG@10"])
    dropped = next(iter(bm25))
    partial = evaluate({q: h for q, h in bm25.items() if q != dropped}, ds.qrels, ["nDCG@10"])
    assert partial.missing == [dropped] and partial.per_query["nDCG@10"][dropped] == 0.0
    expected = (full.metrics["nDCG@10"] * 43 - full.per_query["nDCG@10"][dropped]) / 43
    assert partial.metrics["nDCG@10"] == pytest.approx(expected)


def test_list_order_wins_over_disagreeing_scores(dl):
    ds, bm25, _ = dl
    # a stage that returns hits best-first but with scores that increase: the list order is the ranking
    flipped = {q: [Hit(h.docid, float(i)) for i, h in enumerate(hits)] for q, hits in bm25.items()}
    assert evaluate(flipped, ds.qrels, ["nDCG@10"]).metrics == evaluate(bm25, ds.qrels, ["nDCG@10"]).metrics


def test_duplicate_docids_in_a_ranking_are_refused(dl):
    ds, _, _ = dl
    with pytest.raises(DataError, match="lists document 'd' twice"):
        evaluate({"156493": [Hit("d", 2.0), Hit("d", 1.0)]}, ds.qrels, ["nDCG@10"])


def test_paired_significance(dl):
    ds, bm25, splade = dl
    a = evaluate(bm25, ds.qrels, ["nDCG@10", "RR@10"], rel=2)
    b = evaluate(splade, ds.qrels, ["nDCG@10", "RR@10"], rel=2)
    rows = compare(a, b)
    nd = rows[0]
    assert nd.metric == "nDCG@10" and nd.queries == 43
    assert nd.delta == pytest.approx(0.7308 - 0.5058, abs=1e-3)
    assert nd.t_pvalue < 1e-3 and nd.randomization_pvalue < 1e-3
    same = compare(a, a)
    assert all(r.t_pvalue == 1.0 and r.randomization_pvalue == 1.0 for r in same)
    assert "nDCG@10" in format_comparison(rows)
