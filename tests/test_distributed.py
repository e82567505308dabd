"""rerank.distributed on a local Ray cluster of 2 workers: the same indexes and rankings as one
process, a killed worker's items retried (none lost, none twice), resumable runs, clear errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rerank import BM25, Dense, load_dataset
from rerank.cli import main
from rerank.data.formats import read_run
from rerank.distributed import (
    RayOptions,
    RayReranker,
    _encode_on_ray,
    connect,
    encode_corpus,
    merge_vocabularies,
    rerank,
    use_ray,
)
from rerank.errors import MissingDependency, ModelNotFound, RerankError
from rerank.rerankers import make_reranker
from rerank.retrieve.dense import SHARD_DOCS

OPTIONS = RayOptions(workers=2)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray = connect(OPTIONS)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dl19_top(dl19):
    ds = load_dataset(str(dl19))
    return ds, {q: hits[:20] for q, hits in ds.candidate_run("bm25").items()}


def _pairs(ranking):
    return {(q, h.docid): h.score for q, hits in ranking.items() for h in hits}


def _actor_pids(name: str) -> list[int]:
    """Processes of Ray actors of class ``name`` (Ray names them ``ray::...name...``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::") and name in cmd:
                pids.append(int(proc.name))
    return pids


def test_dense_encoding_on_ray_is_bit_identical_and_resumes(tiny_bert, tmp_path):
    ds = load_dataset("cranfield")  # 1,400 documents: shards of 1,024 and 376, one per worker
    model = tiny_bert
    on_ray = Dense(model, ds, index_root=tmp_path / "ray", k=10)
    encode_corpus(on_ray, OPTIONS)
    assert not list((tmp_path / "ray").glob(".*.partial"))
    single = Dense(on_ray.encoder, ds, index_root=tmp_path / "one", k=10)
    emb_ray, ids_ray = on_ray.embeddings
    emb_one, ids_one = single.embeddings
    assert ids_ray == ids_one and emb_ray.dtype == np.float16
    assert np.array_equal(np.asarray(emb_ray), np.asarray(emb_one))  # the same batches: the same bits
    queries = ds.queries[:20]
    assert {q: [(h.docid, h.score) for h in hits] for q, hits in on_ray(queries).items()} == \
           {q: [(h.docid, h.score) for h in hits] for q, hits in single(queries).items()}

    # a build folder holding a finished shard: only the missing shard is encoded, the kept one is used as is
    folder = tmp_path / "partial"
    (folder / "shards").mkdir(parents=True)
    np.save(folder / "shards" / f"{0:012d}.npy", np.zeros((SHARD_DOCS, on_ray.encoder.dim), dtype=np.float16))
    _encode_on_ray(on_ray, folder, OPTIONS)
    merged = np.load(folder / "embeddings.npy")
    assert not merged[:SHARD_DOCS].any() and np.array_equal(merged[SHARD_DOCS:], np.asarray(emb_one)[SHARD_DOCS:])
    assert json.loads((folder / "docids.json").read_text()) == ids_one and not (folder / "shards").exists()


def test_bm25_tokenized_on_ray_is_the_single_process_index(scifact, tmp_path):
    on_ray = BM25(scifact, index_root=tmp_path / "ray", k=100)
    assert use_ray(on_ray, OPTIONS) == [on_ray]
    single = BM25(scifact, index_root=tmp_path / "one", k=100)
    a, b = on_ray.index(), single.index()
    for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"):
        assert np.array_equal(np.load(a / name), np.load(b / name)), name
    assert json.loads((a / "vocab.tokenizer.json").read_text()) == json.loads((b / "vocab.tokenizer.json").read_text())
    assert on_ray(scifact.queries) == single(scifact.queries)


def test_merging_vocabularies_numbers_stems_by_first_appearance():
    from rerank.retrieve.bm25 import _Bm25s

    texts = ["Cats chase mice", "", "the dogs chase cats", "mice and DOGS", "birds"]
    whole = _Bm25s._tokenizer()
    ids = whole.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
    parts = []
    for chunk in (texts[:2], texts[2:4], texts[4:]):
        tok = _Bm25s._tokenizer()
        parts.append((tok.tokenize(chunk, update_vocab=True, return_as="ids", show_progress=False),
                      tok.word_to_stem, tok.stem_to_sid, tok.word_to_id))
    merged_ids, merged = merge_vocabularies(parts)
    assert merged_ids == ids
    assert merged.stem_to_sid == whole.stem_to_sid and merged.word_to_id == whole.word_to_id


def test_reranking_on_ray_gives_the_single_process_run(dl19_top, tiny_ce, tmp_path):
    ds, run = dl19_top
    single = make_reranker(f"cross-encoder:{tiny_ce}", dtype="float32")(ds.queries, run)
    journal = tmp_path / "run.trec.journal"
    stage = RayReranker(f"cross-encoder:{tiny_ce}", OPTIONS, journal=journal, dtype="float32")
    out = stage(ds.queries, run)
    assert list(out) == list(single)
    for qid in single:
        assert [h.docid for h in out[qid]] == [h.docid for h in single[qid]], qid
        assert np.allclose([h.score for h in out[qid]], [h.score for h in single[qid]], atol=1e-5)
        assert [h.text for h in out[qid]] == [h.text for h in single[qid]]
    assert stage.cost.calls == sum(len(h) for h in run.values())
    assert not journal.exists()  # finished: the journal is gone
    assert [len(h) for h in run.values()] == [20] * len(run)  # the caller's ranking is untouched


def test_a_killed_worker_loses_no_query_and_repeats_none(dl19_top, tiny_ce):
    ds, run = dl19_top
    factory = functools.partial(make_reranker, f"cross-encoder:{tiny_ce}")
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if not killed:  # the first block is back: both workers are mid-job
            pids = _actor_pids("_RerankBlocks")
            assert pids, "no reranking worker found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    out, cost = rerank(factory, ds.queries, run, OPTIONS, block=4, on_block=kill_one)
    assert killed
    assert list(out) == list(run)  # every query exactly once, in order
    for qid, hits in run.items():
        assert sorted(h.docid for h in out[qid]) == sorted(h.docid for h in hits)
    assert cost.calls == sum(len(h) for h in run.values())  # each block's scores counted once
    single = make_reranker(f"cross-encoder:{tiny_ce}")(ds.queries, run)
    a, b = _pairs(out), _pairs(single)
    assert max(abs(a[k] - b[k]) for k in b) < 1e-3


def test_a_stopped_run_resumes_from_its_journal(dl19_top, tiny_ce, tmp_path):
    ds, run = dl19_top
    journal = tmp_path / "j.jsonl"
    factory = functools.partial(make_reranker, f"cross-encoder:{tiny_ce}", dtype="float32")

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rerank(factory, ds.queries, run, OPTIONS, block=8, journal=journal, on_block=stop)
    kept = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert len(kept) >= 2
    done_queries = sum(len(rec["hits"]) for rec in kept)
    out, cost = rerank(factory, ds.queries, run, OPTIONS, block=8, journal=journal)
    assert cost.calls == 20 * (len(run) - done_queries)  # only the blocks not yet reranked
    single = make_reranker(f"cross-encoder:{tiny_ce}", dtype="float32")(ds.queries, run)
    assert list(out) == list(single)
    for qid in single:
        assert [h.docid for h in out[qid]] == [h.docid for h in single[qid]]
    assert not journal.exists()
    # a journal of another job is not mixed in
    journal.write_text(json.dumps({"job": "another"}) + "\n" + json.dumps({"block": 0, "hits": {"x": []}}) + "\n")
    out2, cost2 = rerank(factory, ds.queries, {q: run[q] for q in list(run)[:8]}, OPTIONS, block=8, journal=journal)
    assert cost2.calls == 160 and len(out2) == 8


def test_worker_errors_reach_the_driver_with_their_type(dl19_top):
    ds, run = dl19_top
    with pytest.raises(ModelNotFound, match="no-such-org/no-such-ce"):
        RayReranker("cross-encoder:no-such-org/no-such-ce", OPTIONS)(ds.queries, run)
    with pytest.raises(RerankError, match="window"):
        RayReranker("cross-encoder:x", OPTIONS, window=4)  # checked on the driver, before any worker starts
    with pytest.raises(ValueError, match="workers"):
        RayOptions(workers=0)
    with pytest.raises(RerankError, match="GPUs"):
        connect(RayOptions(workers=2, gpus_per_worker=1))  # this cluster has none


def test_cli_ray_runs_the_same_pipeline(dl19, tiny_ce, tmp_path, monkeypatch):
    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    common = ["run", "-r", "bm25", "-d", dl19, "--reranker", f"cross-encoder:{tiny_ce}", "--top-k", 15,
              "--rerank-depth", 15, "--dtype", "float32", "--block-queries", 4, "-q"]
    r = invoke(*common, "-o", tmp_path / "one.trec")
    assert r.exit_code == 0, r.output
    r = invoke(*common, "-o", tmp_path / "ray.trec", "--ray", "--workers", 2, "--metrics-json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    one, ray = read_run(tmp_path / "one.trec"), read_run(tmp_path / "ray.trec")
    assert list(one) == list(ray)
    for qid in one:
        assert [h.docid for h in one[qid]] == [h.docid for h in ray[qid]]
        assert np.allclose([h.score for h in one[qid]], [h.score for h in ray[qid]], atol=1e-5)
    assert json.loads((tmp_path / "m.json").read_text())["cost"]["rerank"]["model_calls"] == 15 * len(one)
    assert not (tmp_path / "ray.trec.journal").exists()

    r = invoke("run", "-r", "bm25", "-d", dl19, "--workers", 2)
    assert r.exit_code != 0 and "--workers apply with --ray" in r.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the extra
    r = invoke("run", "-r", "bm25", "-d", dl19, "--ray")
    assert r.exit_code != 0 and "pip install 'rerank[distributed]'" in r.output
    with pytest.raises(MissingDependency, match="distributed"):
        use_ray(BM25(load_dataset(str(dl19)).docs), OPTIONS)


def test_sharded_search_on_ray_gives_the_single_index_run_and_survives_a_killed_worker(scifact, tmp_path):
    """bm25:disk cut into 2 shards, one Ray worker each, scores with the collection's statistics:
    the run file is the single index's, byte for byte, though a worker is killed mid-run (Ray
    restarts it, it reopens its shard from disk and answers the batch again). Dense: the rows of
    the embeddings cut into 2 shards give the exact top k of the whole matrix, bit for bit."""
    import ray

    from rerank.data.formats import write_trec_run
    from rerank.distributed import search_bm25_shards, search_dense_shards
    from rerank.retrieve.dense import FlatShard

    single = BM25(scifact, backend="disk", k=100, index_root=tmp_path)
    sharded = BM25(scifact, backend="disk", k=100, index_root=tmp_path)
    assert use_ray(sharded, OPTIONS) == [sharded] and sharded.shards == 2
    from rerank.distributed import RayIndexBuilder
    from rerank.specs import Context

    built = Context(scifact, index_builder=RayIndexBuilder(OPTIONS)).build("bm25:disk")  # as `rerank run --ray` builds it
    assert built.shards == 2 and built.search_with.func is search_bm25_shards
    pids: list[int] = []

    def kill_one(done: int, total: int, actors: list) -> None:
        pid = ray.get(actors[0].pid.remote())
        if not pids:
            os.kill(pid, signal.SIGKILL)
        pids.append(pid)

    sharded.search_with = functools.partial(search_bm25_shards, options=OPTIONS, batch=64, on_batch=kill_one)
    write_trec_run(single(scifact.queries), tmp_path / "single.trec", "bm25")
    write_trec_run(sharded(scifact.queries), tmp_path / "sharded.trec", "bm25")
    assert single.index() != sharded.index()  # two indexes: one whole, one of 2 shards
    assert len(pids) == -(-len(scifact.queries) // 64) and pids[1] != pids[0]  # restarted: a new process
    assert (tmp_path / "single.trec").read_bytes() == (tmp_path / "sharded.trec").read_bytes()

    rng = np.random.default_rng(0)
    folder = tmp_path / "dense"
    folder.mkdir()
    np.save(folder / "embeddings.npy", rng.standard_normal((5000, 32)).astype(np.float16))
    queries = rng.standard_normal((40, 32)).astype(np.float32)
    for l2 in (False, True):
        scores, rows = FlatShard.open(folder, l2=l2, rows_at_once=1000).search(queries, 50)
        got = search_dense_shards(folder, queries, 50, OPTIONS, l2=l2, rows_at_once=1000, batch=16)
        assert [[r for r, _ in hits] for hits in got] == rows.tolist()
        # BLAS may round a product differently in another batch of queries: equal to float32 rounding
        assert np.allclose([[s for _, s in hits] for hits in got], scores, rtol=1e-6, atol=1e-5)
