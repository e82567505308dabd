"""Stages from specs through the library (rerank.stage / rerank.pipeline) are the CLI's stages."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import offline_model

import rerank
from rerank import specs
from rerank.cli import main
from rerank.data.formats import read_run
from rerank.errors import RerankError
from rerank.rerankers.listwise import First, ListwiseGenerate
from rerank.rerankers.pairwise import PRP
from rerank.rerankers.pointwise import CrossEncoder, LLMPointwise, Splade
from rerank.retrieve.bm25 import BM25
from rerank.retrieve.cur import CUR
from rerank.retrieve.dense import Dense
from rerank.retrieve.fusion import RRF
from rerank.types import Cutoff, Pipeline, leaves


def cli_run(tmp_path, *args):
    out = tmp_path / "cli.trec"
    r = CliRunner().invoke(main, ["run", *map(str, args), "-o", str(out), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return read_run(out)


def same_run(a, b):
    assert list(a) == list(b)
    for qid in a:
        assert [h.docid for h in a[qid]] == [h.docid for h in b[qid]]
        assert [h.score for h in a[qid]] == pytest.approx([h.score for h in b[qid]], abs=1e-4)


def test_every_registered_kind_has_help_and_a_role():
    reg = specs.registry()
    assert set(specs.kinds("retriever")) == {"bm25", "dense", "hybrid", "run", "candidates", "cur"}
    assert set(specs.kinds("reranker")) == {"cross-encoder", "llm-pointwise", "splade", "prp", "rank-r1", "first",
                                               "listwise-gen", "monot5", "duot5", "lit5", "colbert", "api", "auto"}
    for kind, cls in reg.items():
        assert cls.kind == kind and cls.spec_help
    r = CliRunner().invoke(main, ["run", "--help"])
    for kind in reg:
        assert kind in r.output  # the help text is generated from the classes
    r = CliRunner().invoke(main, ["kinds"])
    assert r.exit_code == 0 and "prp:MODEL[:allpair|sorting|sliding]" in r.output and "first[:MODEL]" in r.output
    assert "rank-r1:MODEL[:heapsort|bubblesort]" in r.output


def test_retrievers_from_specs_equal_the_cli_stages(dl19, tmp_path):
    ds = rerank.load_dataset(str(dl19))
    runfile = dl19 / "bm25.top100.trec"
    for spec in ("bm25", f"run:{runfile}", "candidates:splade-pp-ed", f"hybrid:candidates:splade-pp-ed+run:{runfile}"):
        lib = rerank.stage(spec, ds, k=50)(ds.queries)
        same_run(lib, cli_run(tmp_path, "-r", spec, "-d", dl19, "-k", 50))
    hybrid = rerank.stage(f"hybrid:bm25+run:{runfile}", ds, k=20)
    assert isinstance(hybrid, Pipeline) and isinstance(hybrid.stages[0], RRF) and hybrid.stages[1].k == 20
    assert [len(p.stages) if isinstance(p, Pipeline) else 1 for p in hybrid.stages[0].stages] == [2, 2]


def test_bm25_dense_and_cur_from_specs(scifact_dir, tmp_path):
    ds = rerank.load_dataset(str(scifact_dir))
    bm25 = rerank.stage("bm25", ds, k=10)
    assert isinstance(bm25, BM25) and bm25.k == 10 and bm25.backend == "bm25s"
    queries = ds.queries[:20]
    same_run(bm25(queries), {q: h for q, h in cli_run(tmp_path, "-r", "bm25", "-d", scifact_dir, "-k", 10).items()
                             if q in {x.qid for x in queries}})
    minilm = offline_model("all-MiniLM-L6-v2")
    dense = rerank.stage(f"dense:{minilm}", ds, k=7, dense_index="hnsw", dtype="float32")
    assert (
        isinstance(dense, Dense) and dense.index_type == "hnsw" and dense.k == 7 and str(dense.encoder.dtype) == "torch.float32"
    )
    splade = offline_model("splade-tiny-msmarco")
    cur = rerank.stage(f"cur:splade:{splade}", ds, dataset_ref=str(scifact_dir), budget=50, rounds=4, dtype="float32")
    assert isinstance(cur, CUR) and (cur.budget, cur.rounds, cur.k) == (50, 4, 100)
    assert isinstance(cur.scorer, Splade) and len(cur.anchors) == 809  # SciFact's train queries
    assert (CUR.BUDGET, CUR.ROUNDS) == (200, 9)  # the defaults, in the class only
    with pytest.raises(RerankError, match="needs a pointwise scorer"):
        rerank.stage(f"cur:prp:{splade}", ds)
    with pytest.raises(RerankError, match="unknown BM25 backend"):
        rerank.stage("bm25:nope", ds)


def test_rerankers_from_specs(minilm_ce):
    smol = offline_model("SmolLM2-135M-Instruct")
    ce = rerank.stage(f"cross-encoder:{minilm_ce}", depth=30, dtype="float32", block=4)
    assert isinstance(ce, CrossEncoder) and (ce.depth, ce.block) == (30, 4)
    direct = CrossEncoder(minilm_ce, dtype="float32")
    pairs = [("what is bm25", "BM25 is a ranking function."), ("what is bm25", "A cat sat on the mat.")]
    assert ce.score(pairs) == pytest.approx(direct.score(pairs), abs=1e-6)
    prp = rerank.make_reranker(f"prp:{smol}:sliding", k=3, dtype="float32")
    assert isinstance(prp, PRP) and (prp.method, prp.k) == ("sliding", 3)
    first = rerank.stage(f"first:{smol}", window=5, stride=2, dtype="float32")
    assert isinstance(first, First) and (first.window, first.stride) == (5, 2)
    assert isinstance(rerank.stage(f"listwise-gen:{smol}", dtype="float32"), ListwiseGenerate)
    assert isinstance(rerank.stage(f"llm-pointwise:{smol}", dtype="float32"), LLMPointwise)
    with pytest.raises(RerankError, match="window applies to the listwise rerankers"):
        rerank.stage(f"cross-encoder:{minilm_ce}", window=5)
    with pytest.raises(RerankError, match="cache applies to the pointwise rerankers"):
        rerank.stage(f"prp:{smol}", cache="x.sqlite")
    with pytest.raises(RerankError, match="needs a model"):
        rerank.stage("cross-encoder")


def test_pipeline_text_and_list_forms(dl19):
    ds = rerank.load_dataset(str(dl19))
    splade = offline_model("splade-tiny-msmarco")
    text = rerank.pipeline(f"bm25 % 10 >> splade:{splade} % 5", ds, dtype="float32")
    same = rerank.pipeline(["bm25 % 10", f"splade:{splade} % 5"], ds, dtype="float32")
    parts = leaves(text)
    assert [type(p).__name__ for p in parts] == ["FromRun", "Cutoff", "Cutoff", "Splade", "Cutoff"]
    assert isinstance(parts[-1], Cutoff) and parts[-1].k == 5
    queries = ds.queries[:5]
    by_hand = (rerank.stage("bm25", ds, k=10) % 10 >> Splade(splade, dtype="float32") % 5)(queries)
    a, b = text(queries), same(queries)
    same_run(a, by_hand)
    same_run(b, by_hand)
    assert all(len(h) == 5 for h in a.values())


@pytest.mark.parametrize(("text", "message"), [
    ("cross-encoder:m >> bm25", "unknown retriever 'cross-encoder:m'"),
    ("bm25 >> bm25", "unknown reranker 'bm25'"),
    ("bm25 % ten >> splade:m", "must cut to a positive whole number"),
    ("bm25 % 0", "must cut to a positive whole number"),
    ("bm25 >>  >> splade:m", "give stage specs joined by ' >> '"),
    ("monot5:x", "unknown retriever 'monot5:x'; use one of: bm25[:lucene|disk], dense:MODEL"),
])
def test_bad_pipelines_are_one_line_errors(text, message):
    with pytest.raises(RerankError, match=message.replace("[", r"\[").replace("(", r"\(")):
        specs.parse_pipeline(text)


def test_an_option_no_stage_takes_is_an_error(dl19):
    ds = rerank.load_dataset(str(dl19))
    with pytest.raises(RerankError, match="window applies to the listwise rerankers"):
        rerank.pipeline("bm25 >> splade:x", ds, window=5)
    with pytest.raises(RerankError, match="unknown option 'colour'"):
        rerank.pipeline("bm25", ds, colour="red")


def test_hybrid_parts_split_before_retriever_kinds_only():
    s = specs.parse("hybrid:bm25:lucene+dense:org/a+b-model+candidates:tas-b")
    assert [str(p) for p in s.parts] == ["bm25:lucene", "dense:org/a+b-model", "candidates:tas-b"]
    assert str(specs.parse("cur:cross-encoder:org/m").parts[0]) == "cross-encoder:org/m"
