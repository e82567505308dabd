import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from rerank import DataError, DatasetNotFound, DatasetUnavailable, load_dataset
from rerank.env import offline

CRAN_MD5 = "1730f7be572d95a5a4b56c59a7b900a5"


def test_dl19_folder_with_candidates(dl19):
    ds = load_dataset(str(dl19))
    assert ds.name == "trec-dl-19" and ds.rel == 2  # the alias's local copy keeps its conventions
    assert len(ds.queries) == 43 and len(ds.qrels) == 43
    assert set(ds.candidates) == {"bm25", "bm25-rm3", "splade-pp-ed", "tas-b", "openai-ada2", "repllama"}
    assert ds.candidates["bm25"].suffix == ".json"  # texts beat the bare bm25.top100.trec
    bm25 = ds.candidate_run("bm25")
    assert len(bm25) == 43 and all(len(h) == 100 for h in bm25.values())
    assert not ds.docs.complete and len(ds.docs) > 4000
    first = bm25["264014"][0]
    assert first.docid == "5611210" and ds.docs[first.docid] == first.text and "flea" in first.text


def test_alias_falls_back_to_local_copy_offline(dl19):
    assert offline()
    t0 = time.perf_counter()
    ds = load_dataset("trec-dl-19")
    assert time.perf_counter() - t0 < 10  # no download retry loop
    assert ds.name == "trec-dl-19" and len(ds.queries) == 43 and ds.rel == 2
    assert "local copy of ir_datasets:msmarco-passage/trec-dl-2019/judged" in ds.source


def test_scifact_alias_and_beir_splits(scifact_dir):
    ds = load_dataset("scifact")
    assert len(ds.queries) == 300 and len(ds.docs) == 5183 and ds.docs.complete
    train = load_dataset(str(scifact_dir), split="train")
    assert len(train.queries) == 809
    assert not {q.qid for q in train.queries} & {q.qid for q in ds.queries}


def test_cranfield_through_ir_datasets_from_the_mirror(shared):
    ds = load_dataset("cranfield")
    assert ds.source == "ir_datasets:cranfield"
    assert len(ds.queries) == 225 and len(ds.docs) == 1400 and len(ds.qrels) == 225
    copied = Path(os.environ["IR_DATASETS_HOME"]) / "cranfield" / "cran.tar.gz"
    assert hashlib.md5(copied.read_bytes()).hexdigest() == CRAN_MD5
    assert "slipstream" in ds.docs["1"]


def test_offline_unavailable_dataset_fails_fast_and_says_where(monkeypatch, tmp_path):
    monkeypatch.setenv("RERANK_SHARED_DATA", str(tmp_path))  # no local copy of anything
    t0 = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("trec-dl-20")
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "msmarco-passage/trec-dl-2020/judged" in msg and "offline" in msg
    assert os.environ["IR_DATASETS_HOME"] in msg  # where to put the file
    assert "RERANK_SHARED_DATA/trec-dl/dl20" in msg


@pytest.fixture
def online(monkeypatch):
    """Online mode whose downloads are refused (this machine has no route to the hosts)."""
    import requests

    from rerank import env

    calls = []

    def refuse(*a, **k):
        calls.append(k.get("url"))
        raise requests.exceptions.ConnectionError("network unreachable")

    monkeypatch.delenv("RERANK_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("IR_DATASETS_DL_TRIES", "1")
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(env, "_reachable", {})
    return calls


def test_failing_download_is_one_clear_error_then_fallback(online, monkeypatch):
    import socket

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())  # hosts "answer"
    ds = load_dataset("scifact")  # the zip cannot be fetched: the local BEIR copy serves
    assert online and len(ds.queries) == 300
    with pytest.raises(DatasetUnavailable, match=r"download failed \(.*\).*put the file at"):
        load_dataset("msmarco-passage/trec-dl-2020/judged")


def test_unreachable_hosts_fail_before_any_download_retry(online, monkeypatch):
    import socket

    from rerank import env

    probes = []

    def silent(addr, timeout):
        probes.append((addr, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(DatasetUnavailable, match="no network connection to its download hosts"):
        load_dataset("msmarco-passage/trec-dl-2020/judged")
    assert online == []  # ir_datasets' retry loop never started
    assert probes and all(t == env.PROBE_TIMEOUT_S for _, t in probes)


def test_unknown_dataset_lists_close_matches():
    with pytest.raises(DatasetNotFound, match=r"unknown dataset 'trec-dl19'.*Close matches: trec-dl-19"):
        load_dataset("trec-dl19")
    with pytest.raises(DatasetNotFound, match="Close matches: .*scifact"):
        load_dataset("scifcat")
    with pytest.raises(DatasetNotFound, match=r"No file or folder .*nothere.tsv exists"):
        load_dataset("./nothere.tsv")


def test_missing_qrels_file_is_named(tmp_path, scifact_dir):
    (tmp_path / "qrels").mkdir()
    for f in ("corpus.jsonl", "queries.jsonl"):
        (tmp_path / f).symlink_to(scifact_dir / f)
    shutil.copy(scifact_dir / "qrels" / "train.tsv", tmp_path / "qrels" / "train.tsv")
    with pytest.raises(DataError, match=r"has no qrels file qrels/test.tsv \(splits present: train\)"):
        load_dataset(str(tmp_path))
    assert len(load_dataset(str(tmp_path), split="train").queries) == 809


def test_folder_without_qrels_loads_but_cannot_be_evaluated(tmp_path, dl19):
    shutil.copy(dl19 / "topics.dl19-passage.txt", tmp_path / "topics.tsv")
    ds = load_dataset(str(tmp_path))
    assert len(ds.queries) == 43 and ds.qrels is None
    with pytest.raises(DataError, match="has no relevance judgments"):
        ds.require_qrels()
