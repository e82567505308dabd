"""Trust: models used only with their own heads, caches keyed by content, no code run from files,
ids that cannot corrupt runs, relevance thresholds that follow the data, outputs checked before the
work, one line (exit 2) for every bad input, and readers that never fail but with a DataError."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank.cli import main
from rerank.data import load_dataset
from rerank.data.formats import read_beir_corpus, read_candidates, read_qrels, read_topics, read_trec_run, write_trec_run
from rerank.errors import DataError, ModelMismatch, ModelNotFound, TrainingError
from rerank.types import Hit


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *fragments: str) -> None:
    """A user error: exit 2, one line naming the problem (ours, or click's usage error), no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = [line for line in r.output.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _save_bert(folder: Path, seed: int, head: bool = True) -> str:
    """The tiny BERT of conftest (same tokenizer), with weights from ``seed``, saved into ``folder``."""
    from conftest import offline_model
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    tok = AutoTokenizer.from_pretrained(offline_model("all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512, num_labels=1)
    torch.manual_seed(seed)
    (BertForSequenceClassification(cfg) if head else BertModel(cfg)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------- 1. no silent random heads
def test_a_model_without_the_kinds_head_is_refused(tiny_bert, tiny_smol, tiny_ce):
    from rerank import stage
    from rerank.rerankers.pointwise import CrossEncoder

    with pytest.raises(ModelMismatch, match=r"holds an encoder body .* not a cross-encoder .*classifier\.(bias|weight)"):
        CrossEncoder(tiny_bert)
    with pytest.raises(ModelMismatch) as e:
        stage(f"cross-encoder:{tiny_smol}")
    assert "causal language model" in str(e.value) and "random weights" in str(e.value)
    fits = str(e.value).split("kinds that fit it: ")[1].split(", ")
    assert {"llm-pointwise", "prp", "first", "listwise-gen"} <= set(fits) and "cross-encoder" not in fits
    with pytest.raises(ModelMismatch, match="kinds that fit it: cross-encoder"):
        stage(f"splade:{tiny_ce}")
    one_line_error(invoke("run", "-r", "bm25", "-d", "scifact", "--reranker", f"cross-encoder:{tiny_bert}"),
                   "encoder body", "kinds that fit it: dense")


def test_training_gives_a_body_a_head_but_another_kinds_model_only_when_asked(tiny_bert, tiny_smol):
    from rerank.train.crossencoder import load_cross_encoder_body

    model, _ = load_cross_encoder_body(tiny_bert)  # an encoder body: the usual start of training
    assert model.config.num_labels == 1
    with pytest.raises(ModelMismatch, match="--allow-new-head"):
        load_cross_encoder_body(tiny_smol)
    model, _ = load_cross_encoder_body(tiny_smol, allow_new_head=True)
    assert type(model).__name__ == "LlamaForSequenceClassification"


def test_a_model_folder_without_weights_is_one_clean_error(tiny_ce, tmp_path):
    from rerank.rerankers.pointwise import CrossEncoder

    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_ce, broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelNotFound, match="does not load as a cross-encoder"):
        CrossEncoder(str(broken))


# ---------------------------------------------------------------- 2. caches and indexes keyed by content
def test_model_fingerprints_follow_content_not_folders(tiny_ce, tmp_path):
    from rerank.models.loading import model_fingerprint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_ce, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_ce)  # a copy: the same model
    os.utime(copy / "config.json", (1, 1))
    assert model_fingerprint(copy) == model_fingerprint(tiny_ce)  # touched, not changed
    _save_bert(copy, seed=1)  # retrained into the same folder
    assert model_fingerprint(copy) != model_fingerprint(tiny_ce)


def test_a_score_cache_never_serves_a_retrained_models_scores(tmp_path):
    from rerank.rerankers.pointwise import CrossEncoder

    folder, cache = tmp_path / "model", tmp_path / "scores.sqlite"
    pairs = [("what causes rain", "Water vapour condenses into droplets."), ("what causes rain", "A recipe for soup.")]
    old = CrossEncoder(_save_bert(folder, seed=0), dtype="float32", cache=cache).score(pairs)
    _save_bert(folder, seed=1)  # the README's workflow: train again into the same folder
    again = CrossEncoder(str(folder), dtype="float32", cache=cache)
    new = again.score(pairs)
    assert again.cost.cached == 0 and new != pytest.approx(old)
    fresh = CrossEncoder(str(folder), dtype="float32").score(pairs)
    assert new == pytest.approx(fresh, abs=1e-6)


def test_a_dense_index_is_rebuilt_for_other_weights_or_another_dtype(tmp_path, caplog):
    from rerank.data.store import MemoryDocStore
    from rerank.retrieve.dense import Dense

    docs = MemoryDocStore({f"d{i}": f"document number {i} about topic {i % 7}" for i in range(40)}, name="forty")
    folder = tmp_path / "body"
    _save_bert(folder, seed=0, head=False)
    first = Dense(str(folder), docs, index_root=tmp_path / "idx", k=5, dtype="float32")
    path = first.index()
    emb_old = first.embeddings[0][:].copy()
    bf16 = Dense(str(folder), docs, index_root=tmp_path / "idx", k=5, dtype="bfloat16")
    assert bf16.index() != path  # an fp32 index is not what a bf16 config reproduces
    _save_bert(folder, seed=1, head=False)
    again = Dense(str(folder), docs, index_root=tmp_path / "idx", k=5, dtype="float32")
    assert again.index() != path
    assert not (again.embeddings[0][:] == emb_old).all()


# ---------------------------------------------------------------- 3. no code from checkpoints
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    from rerank.train.trainer import CHECKPOINT, TrainConfig, Trainer

    class Task:
        def __len__(self):
            return 4

        def describe(self):
            return {"kind": "toy"}

    model = torch.nn.Linear(3, 1)
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "ran"
    torch.save({"identity": _Payload(marker), "model": {}}, out / CHECKPOINT)
    trainer = Trainer(model, Task(), TrainConfig(loss="listnet", epochs=1, batch_size=2), out)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="not a rerank checkpoint that loads safely"):
        trainer.resume()
    assert not marker.exists()
    (out / CHECKPOINT).write_bytes(b"not a zip")
    with pytest.raises(TrainingError, match="delete it to start over"):
        trainer.resume()


# ---------------------------------------------------------------- 4. ids that cannot corrupt runs
@pytest.mark.parametrize("docid", ["d1\nq9 Q0 forged 1 99.0 x", "d 1", "d\x001", "", "d\u20281"])
def test_an_id_a_trec_run_cannot_carry_is_refused_before_writing(tmp_path, docid):
    path = tmp_path / "run.trec"
    with pytest.raises(DataError, match=rf"{path}: document id .*(whitespace|control character|is empty)"):
        write_trec_run({"q1": [Hit("ok", 2.0), Hit(docid, 1.0)]}, path)
    assert not path.exists()
    write_trec_run({"q1": [Hit("ok", 2.0)]}, path, tag="my run\n")
    assert path.read_text() == "q1 Q0 ok 1 2.000000 my_run_\n"


def test_beir_qrels_are_read_as_tsv_and_ids_are_checked_where_they_enter(tmp_path):
    tsv = tmp_path / "test.tsv"
    tsv.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t d2 \t2\n")
    assert read_qrels(tsv) == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    tsv.write_text("query-id\tcorpus-id\tscore\nq 1\td1\t1\n")
    with pytest.raises(DataError, match=r"test.tsv:2: query id 'q 1' holds ' '"):
        read_qrels(tsv)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a\\nb", "text": "x"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:1: document id 'a\\nb' holds '\\n'"):
        read_beir_corpus(corpus)
    corpus.write_text('{"_id": 7, "title": "T", "text": "seven"}\n')
    assert read_beir_corpus(corpus) == {"7": "T seven"}  # an integer id is its decimal string


# ---------------------------------------------------------------- 5. the relevance threshold follows the data
def test_a_copy_of_trec_dl_is_judged_like_trec_dl(dl19, tmp_path):
    copy = tmp_path / "anywhere" / "my-dl19"
    copy.mkdir(parents=True)
    for name in ("topics.dl19-passage.txt", "qrels.dl19-passage.txt", "bm25.top100.json"):
        shutil.copy(dl19 / name, copy / name)
    ds = load_dataset(str(copy))
    assert ds.rel == 2 and "recognised by content" in ds.rel_source and ds.name == "trec-dl-19"
    out = tmp_path / "m.json"
    r = invoke("eval", copy / "bm25.top100.json", "-d", copy, "--metrics", "RR@10", "--metrics-json", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert "grade >= 2" in r.output and data["relevance_threshold"] == 2
    assert data["runs"][str(copy / "bm25.top100.json")]["metrics"]["RR@10"] == pytest.approx(0.7024, abs=1e-4)
    (copy / "dataset.json").write_text('{"rel": 3, "name": "dl19-strict"}')
    strict = load_dataset(str(copy))
    assert strict.rel == 3 and strict.name == "dl19-strict" and strict.rel_source.endswith("dataset.json")
    (copy / "dataset.json").write_text('{"rel": "two"}')
    one_line_error(invoke("eval", copy / "bm25.top100.json", "-d", copy), "'rel' must be a positive integer")


def test_the_threshold_is_printed_beside_every_evaluation(scifact_dir, tmp_path):
    out = tmp_path / "m.json"
    r = invoke("run", "-r", "bm25", "-d", scifact_dir, "--metrics", "nDCG@10", "--metrics-json", out)
    assert r.exit_code == 0, r.output
    assert "grade >= 1 as relevant: default" in r.output
    data = json.loads(out.read_text())
    assert data["relevance_threshold"] == 1 and data["relevance_threshold_source"] == "default"


# ---------------------------------------------------------------- 6. outputs checked before the work
def test_outputs_that_cannot_be_written_fail_before_any_work(dl19, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = ("run", "-r", "run:" + str(dl19 / "bm25.top100.json"), "-d", dl19)
    t = time.perf_counter()
    one_line_error(invoke(*run, "-o", blocker / "run.trec"), "is not a folder")
    one_line_error(invoke(*run, "--metrics-json", tmp_path), "is a directory")
    one_line_error(invoke(*run, "--score-cache", blocker / "c.sqlite", "--reranker", "cross-encoder:x"), "is not a folder")
    one_line_error(invoke("train", "-m", "x", "-d", "scifact", "-o", blocker), "is a file")
    assert time.perf_counter() - t < 30  # nothing was loaded, nothing was reranked


def test_written_files_respect_the_umask_and_keep_their_mode(tmp_path):
    path = tmp_path / "run.trec"
    old = os.umask(0o022)
    try:
        write_trec_run({"q": [Hit("d", 1.0)]}, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        write_trec_run({"q": [Hit("d", 2.0)]}, path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


# ---------------------------------------------------------------- 7. one line, exit 2, for each bad input
def _beir(folder: Path, corpus: str = '{"_id": "d1", "text": "a text"}\n', qrels: str = "q1\td1\t1\n",
          queries: str | None = '{"_id": "q1", "text": "a query"}\n') -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    if queries is not None:
        (folder / "queries.jsonl").write_text(queries)
    return folder


@pytest.mark.parametrize(("files", "message"), [
    ({"queries": None}, "has no queries.jsonl"),
    ({"corpus": '{"_id": "d1", "text": 42}\n'}, "text must be a string, got int"),
    ({"corpus": '{"_id": 1.5, "text": "x"}\n'}, "document id must be a string, got float"),
    ({"corpus": '{"_id": "d1", "text": "bad \\ud800 text"}\n'}, "lone surrogate"),
    ({"qrels": "q1\td1\tinf\n"}, "relevance 'inf' is not an integer grade"),
    ({"qrels": "q1\td1\t1.5\n"}, "relevance '1.5' is not an integer grade"),
    ({"qrels": "q1\td1\t1\nq1\td1\t0\n"}, "judged 0 here and 1 on line 2"),
])
def test_a_bad_collection_is_one_line(tmp_path, files, message):
    folder = _beir(tmp_path / "c", **files)
    one_line_error(invoke("run", "-r", "bm25", "-d", folder), message)


def test_bad_configs_and_caches_are_one_line(scifact_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: {scifact_dir}\nretriever: [bm25, dense]\n")
    one_line_error(invoke("run", "-c", config), "'retriever' is one spec string, got list")
    config.write_text(f"dataset: {scifact_dir}\nretriever: bm25\ntop_k: ten\n")
    one_line_error(invoke("run", "-c", config), "'top_k' is a int, got str")
    cache = tmp_path / "scores.sqlite"
    cache.write_text("these are not scores\n" * 100)
    from rerank.models.engine import ScoreCache

    with pytest.raises(DataError, match="not a rerank score cache"):
        ScoreCache(cache)


def test_the_app_api_refuses_what_it_cannot_score(tiny_ce):
    from rerank.rerankers.pointwise import CrossEncoder

    ce = CrossEncoder(tiny_ce, dtype="float32")
    with pytest.raises(DataError, match="pair 0 must be .* two strings; got \\('q', None\\)"):
        ce.score([("q", None)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="top_k must be a positive integer, got '2'"):
        ce.rank("q", ["a", "b"], top_k="2")  # type: ignore[arg-type]
    assert ce.cost.calls == 0  # refused before any scoring
    with pytest.raises(DataError, match="document 1 holds a lone surrogate"):
        ce.rank("q", ["fine", "bad \ud800"])


# ---------------------------------------------------------------- 8. a hub that fails TLS fails fast
def test_a_host_that_accepts_tcp_but_fails_tls_is_unreachable_at_once(monkeypatch):
    from rerank import env

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def serve() -> None:  # a proxy that accepts, answers something that is not TLS, and closes
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    t = time.perf_counter()
    try:
        assert env.reachable("127.0.0.1", port) is False
    finally:
        server.close()
    assert time.perf_counter() - t < env.PROBE_TIMEOUT_S + 1


# ---------------------------------------------------------------- readers never fail but with a DataError
READERS = {
    "topics.tsv": read_topics,
    "queries.jsonl": read_topics,
    "qrels.txt": read_qrels,
    "run.trec": read_trec_run,
    "cands.json": lambda p: read_candidates(p),
    "cands.jsonl": lambda p: read_candidates(p),
    "corpus.jsonl": read_beir_corpus,
}


def _click_log(path: Path) -> object:
    from rerank.ultr.log import iter_sessions

    return list(iter_sessions(path))


def _letor(path: Path) -> object:
    from rerank.train.features import read_letor

    return read_letor(path)


def _collection(fmt: str):
    from rerank.data.collections import iter_documents

    return lambda path: list(iter_documents(path, fmt))


def _topics(fmt: str):
    from rerank.data.collections import read_topics_any

    return lambda path: read_topics_any(path, fmt)


def _smart_qrels(path: Path) -> object:
    from rerank.data.collections import read_smart_qrels

    return read_smart_qrels(path)


READERS |= {"clicks.jsonl": _click_log, "yandex.txt": _click_log, "rank.letor": _letor,
            "docs.tsv": _collection("tsv"), "docs.csv": _collection("csv"), "docs-h.tsv": _collection("tsv-header"),
            "docs.jsonl": _collection("jsonl"), "docs.sgml": _collection("trec-sgml"), "docs.all": _collection("smart"),
            "docs.tsv.gz": _collection("tsv"), "topics.sgml": _topics("trec-sgml"), "topics.qry": _topics("smart"),
            "qrels.rel": _smart_qrels}

# bytes that look like the formats often enough to get past their first checks
_PIECES = st.sampled_from([b"q1", b"d1", b" ", b"\t", b"\n", b"Q0", b"1", b"-2.5", b"inf", b"nan", b"{", b"}", b"[", b"]",
                           b'"_id": ', b'"text": ', b'"query": ', b'"hits": ', b'"docid": ', b'"qid": ', b",", b":", b'"',
                           b"\\ud800", b"\xff", b"\x00", b"qid:1", b"1:0.5", b"query-id", b'"clicks": ', b'"docs": ',
                           b"<DOC>", b"</DOC>", b"<DOCNO>", b"</DOCNO>", b"<top>", b"</top>", b"<num>", b"<title>", b".I ",
                           b".W", b".T", b"id,text", b"\x1f\x8b"])
_CONTENT = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=60).map(b"".join))


@pytest.mark.parametrize("name", sorted(READERS))
def test_readers_give_a_result_or_a_data_error_for_any_bytes(name, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / name

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_CONTENT)
    def check(content: bytes) -> None:
        path.write_bytes(content)
        try:
            READERS[name](path)
        except DataError:
            pass

    check()


# ---------------------------------------------------------------- 10. second pass: weights, kinds, builds, caches, the app API
def _payload_model(src: str, folder: Path, marker: Path) -> Path:
    """A copy of the model folder ``src`` whose weights are a pytorch_model.bin that would run code."""
    shutil.copytree(src, folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save({"classifier.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("command", ["run", "serve", "clicks simulate"])
def test_a_pickle_payload_in_weights_is_one_line_and_runs_nothing(command, tiny_ce, scifact_dir, tmp_path):
    marker = tmp_path / "ran"
    if command == "clicks simulate":  # a feature ranker's model.pt
        ranker = tmp_path / "ranker"
        ranker.mkdir()
        (ranker / "ranker.json").write_text(json.dumps({"kind": "feature-mlp", "num_features": 2, "hidden": [4],
                                                        "dropout": 0.0}))
        torch.save({"net.0.weight": _Payload(marker)}, ranker / "model.pt")
        letor = tmp_path / "train.txt"
        letor.write_text("1 qid:1 1:0.5 2:0.1\n0 qid:1 1:0.2 2:0.3\n")
        args = ["clicks", "simulate", "--features", letor, "--logging-ranker", ranker, "--sessions", 5,
                "-o", tmp_path / "log.jsonl"]
        culprit = ranker / "model.pt"
    else:  # a model folder's pytorch_model.bin
        culprit = _payload_model(tiny_ce, tmp_path / "model", marker)
        spec = f"cross-encoder:{culprit}"
        args = (["run", "-r", "bm25", "-d", scifact_dir, "--reranker", spec, "--rerank-depth", 2] if command == "run"
                else ["serve", "--reranker", spec, "--port", 0])
    one_line_error(invoke(*args), str(culprit), "loads safely", "GLOBAL exec", "nothing in it ran")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["splade", "monot5", "colbert", "cross-encoder"])
def test_a_model_of_another_kind_names_the_kinds_that_fit_in_every_family(kind, tiny_smol):
    from rerank import stage

    with pytest.raises(ModelMismatch, match=r"holds a causal language model .*kinds that fit it: llm-pointwise, prp"):
        stage(f"{kind}:{tiny_smol}")


def test_a_causal_lm_given_as_splade_is_one_line_naming_the_kinds_that_fit(tiny_smol, scifact_dir):
    one_line_error(invoke("run", "-r", "bm25", "-d", scifact_dir, "--reranker", f"splade:{tiny_smol}"),
                   "causal language model", "not a masked language model", "kinds that fit it: llm-pointwise")


def test_a_killed_builds_temporary_folders_are_removed_by_the_next_build(tmp_path):
    import signal
    import subprocess
    import sys

    from rerank.indexes import build_or_reuse

    path = tmp_path / "corpus.bm25.0123abcd"
    expected = {"kind": "bm25", "backend": "bm25s", "params": {}, "corpus": {"fingerprint": "f"}}
    builder = (f"import pathlib, sys, time\nfrom rerank.indexes import build_or_reuse\n"
               f"def build(tmp):\n    (tmp / 'data.bin').write_bytes(bytes(1 << 20))\n    print(tmp, flush=True)\n"
               f"    time.sleep(120)\nbuild_or_reuse(pathlib.Path({str(path)!r}), {expected!r}, build)\n")
    proc = subprocess.Popen([sys.executable, "-c", builder], stdout=subprocess.PIPE, text=True)
    try:
        theirs = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        assert theirs.parent == tmp_path and theirs.name.startswith(".corpus.bm25.0123abcd.") and theirs.is_dir()
        partial = tmp_path / ".corpus.bm25.0123abcd.partial"  # a resumable build's work: kept to resume from
        other = tmp_path / ".corpus.bm25.99999999.abcdefgh.tmp"  # another index's
        for keep in (partial, other):
            keep.mkdir()
        for old in (theirs, partial, other):  # older than any age bound: only the lock tells a live build
            os.utime(old, (time.time() - 3600, time.time() - 3600))

        def build(tmp: Path) -> None:
            (tmp / "data.bin").write_bytes(b"ours")

        build_or_reuse(path, expected, build)  # while the other process still builds: its folder is left alone
        assert (path / "data.bin").read_bytes() == b"ours" and (theirs / "data.bin").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert theirs.is_dir()  # what kill -9 leaves behind
    build_or_reuse(path, expected, build, rebuild=True)
    assert not theirs.exists() and partial.is_dir() and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, partial.name, other.name])


@pytest.mark.parametrize("other", ["tables", "application_id"])
def test_another_programs_sqlite_database_is_refused_as_a_score_cache_unchanged(other, tiny_ce, scifact_dir, tmp_path):
    import sqlite3

    from rerank.models.engine import ScoreCache

    db_path = tmp_path / "other.sqlite"
    db = sqlite3.connect(db_path)
    if other == "tables":
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("INSERT INTO notes (body) VALUES ('keep me')")
    else:
        db.execute("PRAGMA application_id = 1234")
    db.commit()
    db.close()
    before = db_path.read_bytes()
    with pytest.raises(DataError, match="another program.* not a rerank score cache"):
        ScoreCache(db_path)
    one_line_error(invoke("run", "-r", "bm25", "-d", scifact_dir, "--reranker", f"cross-encoder:{tiny_ce}",
                          "--rerank-depth", 2, "--score-cache", db_path), str(db_path), "not a rerank score cache")
    assert db_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.sqlite"]
    ours = ScoreCache(tmp_path / "ours.sqlite")  # a new cache, and one opened again, are taken
    ours.put_many([(b"k", 1.0)])
    ours.close()
    assert len(ScoreCache(tmp_path / "ours.sqlite")) == 1


def _docs_gen():
    yield from ("Rain falls from clouds.", "A recipe for soup.", "Clouds are water droplets.")


@pytest.mark.parametrize(("docs", "message"), [
    (None, r"docs \(the documents to rank\) must be a list, got NoneType"),
    ({"d1": "a text"}, r"must be a list, not a dict: pass list\(d.values\(\)\)"),
    (42, "must be a list, got int"),
    ("one string", "must be a list, not a single str"),
    (["fine", None], "document 1 has no text"),
])
def test_rank_and_arank_refuse_what_is_not_documents_before_any_scoring(tiny_ce, docs, message):
    import asyncio

    from rerank.rerankers.pointwise import CrossEncoder

    ce = CrossEncoder(tiny_ce, dtype="float32")
    with pytest.raises(DataError, match=message):
        ce.rank("what causes rain", docs)
    with pytest.raises(DataError, match=message):
        asyncio.run(ce.arank("what causes rain", docs))
    assert ce.cost.calls == 0


@pytest.mark.parametrize(("pairs", "message"), [
    (None, "must be a list, got NoneType"), ({"q": "d"}, "not a dict"), ("qd", "not a single str"),
])
def test_score_refuses_what_is_not_pairs(tiny_ce, pairs, message):
    from rerank.rerankers.pointwise import CrossEncoder

    ce = CrossEncoder(tiny_ce, dtype="float32")
    with pytest.raises(DataError, match=message):
        ce.score(pairs)
    assert ce.cost.calls == 0


def test_rank_and_arank_take_any_iterable_of_documents(tiny_ce):
    import asyncio

    from rerank.rerankers.pointwise import CrossEncoder

    ce = CrossEncoder(tiny_ce, dtype="float32")
    expected = [(r.index, r.text, r.document) for r in ce.rank("what causes rain", list(_docs_gen()))]
    assert [(r.index, r.text, r.document) for r in ce.rank("what causes rain", _docs_gen())] == expected
    assert [(r.index, r.text, r.document) for r in asyncio.run(ce.arank("what causes rain", _docs_gen()))] == expected
    assert ce.score(((q, d) for q, d in [("q", "a"), ("q", "b")])) == ce.score([("q", "a"), ("q", "b")])


@pytest.mark.parametrize("when", ["queued", "running"])
def test_a_cancelled_arank_gives_up_its_place_on_the_model(tiny_ce, when):
    """A deliberately slow model: each batch waits for ``go``; counting the rows it scores shows
    whether a cancelled task's pairs were dropped (queued behind another call, or between the
    batches of its own running round)."""
    import asyncio

    from rerank.rerankers.pointwise import CrossEncoder

    ce = CrossEncoder(tiny_ce, dtype="float32", batch_tokens=128)
    started, go = threading.Event(), threading.Event()
    rows: list[int] = []
    run = ce._run

    def slow(batch):
        started.set()
        assert go.wait(30)
        rows.append(int(batch["input_ids"].shape[0]))
        return run(batch)

    ce._run = slow
    big = [f"big document number {i}" for i in range(150)]
    small = ["small one", "small two", "small three"]

    async def until(condition) -> None:
        for _ in range(3000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def scenario():
        first = asyncio.create_task(ce.arank("q", ["the call ahead"])) if when == "queued" else None
        if first is not None:
            await until(started.is_set)
        task = asyncio.create_task(ce.arank("q", big))
        await until(lambda: ce.combiner.waiting == 1 if when == "queued" else started.is_set())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        behind = asyncio.create_task(ce.arank("q", small))
        await until(lambda: ce.combiner.waiting >= 1)
        go.set()
        return await behind, (await first if first is not None else None)

    ranked, ahead = asyncio.run(scenario())
    assert sorted(r.text for r in ranked) == sorted(small)
    if when == "queued":
        assert len(ahead) == 1 and rows == [1, 3]  # the call ahead, then the small one: none of the 150
    else:
        assert len(rows) == 2 and rows[0] < len(big) and rows[1] == 3  # the batch under way, then the small one
