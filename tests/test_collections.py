"""Collections in the formats they come in: one SciFact subset written as BEIR and as every other
format (compressed too) loads to the same queries, judgments and documents, and gives the same
BM25 run; the classic CISI collection loads from its original SMART files."""

from __future__ import annotations

import bz2
import csv
import gzip
import html
import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from rerank.cli import main
from rerank.data import load_dataset
from rerank.data.collections import ReadOptions, iter_documents, layout
from rerank.errors import DataError
from rerank.retrieve.bm25 import BM25


@pytest.fixture(scope="module")
def beir(scifact_dir, tmp_path_factory):
    """A BEIR folder: 20 SciFact test queries, their relevant abstracts and the first 200."""
    folder = tmp_path_factory.mktemp("beir")
    (folder / "qrels").mkdir()
    rows = (scifact_dir / "qrels" / "test.tsv").read_text().splitlines()
    chosen = list(dict.fromkeys(r.split("\t")[0] for r in rows[1:]))[:20]
    keep = [r for r in rows[1:] if r.split("\t")[0] in chosen]
    (folder / "qrels" / "test.tsv").write_text("\n".join([rows[0], *keep]) + "\n")
    relevant = {r.split("\t")[1] for r in keep}
    lines = (scifact_dir / "corpus.jsonl").read_text().splitlines()
    (folder / "corpus.jsonl").write_text("\n".join(x for i, x in enumerate(lines) if i < 200 or json.loads(x)["_id"] in relevant)
                                         + "\n")
    queries = {json.loads(x)["_id"]: x for x in (scifact_dir / "queries.jsonl").read_text().splitlines()}
    (folder / "queries.jsonl").write_text("\n".join(queries[q] for q in chosen) + "\n")
    return folder


def _records(beir: Path) -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    docs = [json.loads(x) for x in (beir / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(x) for x in (beir / "queries.jsonl").read_text().splitlines()]
    qrels = [(r.split("\t")[0], r.split("\t")[1], int(r.split("\t")[2])) for r in (beir / "qrels" / "test.tsv").read_text()
             .splitlines()[1:]]
    return docs, queries, qrels


def _trec_qrels(qrels) -> str:
    return "".join(f"{q} 0 {d} {g}\n" for q, d, g in qrels)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def write_format(fmt: str, beir: Path, folder: Path) -> ReadOptions:
    """``beir``'s collection written to ``folder`` in ``fmt``; the options needed to read it."""
    docs, queries, qrels = _records(beir)
    folder.mkdir()
    topics_tsv = "".join(f"{q['_id']}\t{q['text']}\n" for q in queries)
    if fmt == "tsv":  # MS MARCO style, gzip-compressed
        with gzip.open(folder / "collection.tsv.gz", "wt") as f:
            f.writelines(f"{d['_id']}\t{_one_line(d['title'] + ' ' + d['text'])}\n" for d in docs)
        (folder / "queries.tsv").write_text(topics_tsv)
        (folder / "qrels.txt").write_text(_trec_qrels(qrels))
        return ReadOptions()
    if fmt == "jsonl":  # other field names, bz2-compressed
        with bz2.open(folder / "docs.jsonl.bz2", "wt") as f:
            f.writelines(json.dumps({"doc_id": d["_id"], "headline": d["title"], "body": d["text"]}) + "\n" for d in docs)
        (folder / "queries.jsonl").write_text("".join(json.dumps({"qid": q["_id"], "text": q["text"]}) + "\n" for q in queries))
        (folder / "qrels.dev.txt").write_text(_trec_qrels(qrels))
        return ReadOptions(id_field="doc_id", text_fields=("headline", "body"))
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "title", "text"])
        writer.writerows([d["_id"], d["title"], d["text"].replace(". ", ".\n", 1)] for d in docs)  # quoted, multi-line
        (folder / "corpus.csv").write_text(buf.getvalue())
        (folder / "topics.tsv").write_text(topics_tsv)
        (folder / "qrels.txt").write_text(_trec_qrels(qrels))
        return ReadOptions()
    if fmt == "tsv-header":
        rows = ["docid\ttitle\ttext", *(f"{d['_id']}\t{_one_line(d['title'])}\t{_one_line(d['text'])}" for d in docs)]
        (folder / "corpus.tsv").write_text("\n".join(rows) + "\n")
        (folder / "topics.tsv").write_text(topics_tsv)
        (folder / "qrels.txt").write_text(_trec_qrels(qrels))
        return ReadOptions()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"_id": [d["_id"] for d in docs], "title": [d["title"] for d in docs],
                                 "text": [d["text"] for d in docs]}), folder / "corpus.parquet")
        (folder / "queries.tsv").write_text(topics_tsv)
        (folder / "qrels.txt").write_text(_trec_qrels(qrels))
        return ReadOptions()
    if fmt == "hf-datasets":
        import datasets

        datasets.Dataset.from_dict({"docid": [d["_id"] for d in docs], "contents": [f"{d['title']} {d['text']}" for d in docs]}) \
            .save_to_disk(str(folder / "corpus"))
        (folder / "queries.tsv").write_text(topics_tsv)
        (folder / "qrels.txt").write_text(_trec_qrels(qrels))
        return ReadOptions()
    if fmt == "trec-sgml":  # any file name: recognised by its <DOC> records; entities escaped
        esc = lambda t: html.escape(t, quote=False)  # noqa: E731
        (folder / "la-times.txt").write_text("".join(
            f"<DOC>\n<DOCNO> {d['_id']} </DOCNO>\n<HEADLINE>\n{esc(d['title'])}\n</HEADLINE>\n<TEXT>\n{esc(d['text'])}\n</TEXT>\n"
            f"</DOC>\n" for d in docs))
        (folder / "topics.301-350").write_text("".join(
            f"<top>\n<num> Number: {q['_id']}\n<title> {esc(q['text'])}\n\n<desc> Description:\nA description.\n\n"
            f"<narr> Narrative:\nA narrative.\n</top>\n\n" for q in queries))
        (folder / "qrels.301-350.txt").write_text(_trec_qrels(qrels))
        return ReadOptions()
    if fmt == "smart":
        (folder / "SCIFACT.ALL").write_text("".join(f".I {d['_id']}\n.T\n{_one_line(d['title'])}\n.A\nSomebody, A.\n.W\n"
                                                    f"{_one_line(d['text'])}\n.X\n1\t5\t1\n" for d in docs))
        (folder / "SCIFACT.QRY").write_text("".join(f".I {q['_id']}\n.W\n{q['text']}\n" for q in queries))
        (folder / "SCIFACT.REL").write_text("".join(f"{q:>6} {d:>6}\t0\t0.000000\n" for q, d, _ in qrels))
        return ReadOptions()
    raise AssertionError(fmt)


FORMATS = ["tsv", "jsonl", "csv", "tsv-header", "parquet", "hf-datasets", "trec-sgml", "smart"]


@pytest.fixture(scope="module")
def reference(beir):
    ds = load_dataset(str(beir))
    return ds, BM25(ds.docs, k=10)(ds.queries)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_beir_collection_and_its_bm25_run(fmt, beir, reference, tmp_path):
    ref, ref_run = reference
    read = write_format(fmt, beir, tmp_path / fmt)
    assert layout(tmp_path / fmt).corpus_format == fmt
    ds = load_dataset(str(tmp_path / fmt), read=read)
    assert [(q.qid, q.text) for q in ds.queries] == [(q.qid, q.text) for q in ref.queries]
    assert ds.qrels == ref.qrels
    assert ds.docs is not None and ds.docs.complete
    assert {d: _one_line(t) for d, t in ds.docs.items()} == {d: _one_line(t) for d, t in ref.docs.items()}
    run = BM25(ds.docs, k=10)(ds.queries)
    assert {q: [h.docid for h in hits] for q, hits in run.items()} == {q: [h.docid for h in hits] for q, hits in ref_run.items()}


def test_the_classic_cisi_collection_loads_from_its_original_files(shared, tmp_path):
    with tarfile.open(shared / "classic" / "cisi.tar.gz") as tar:
        tar.extractall(tmp_path / "cisi", filter="data")
    ds = load_dataset(str(tmp_path / "cisi"))
    assert len(ds.docs) == 1460 and len(ds.queries) == 112 and len(ds.qrels) == 76  # the collection's own counts
    assert sum(map(len, ds.qrels.values())) == 3114
    assert ds.docs["1"].startswith("18 Editions of the Dewey Decimal Classifications The present study")
    r = CliRunner().invoke(main, ["datasets", "inspect", str(tmp_path / "cisi")])
    assert r.exit_code == 0 and "CISI.ALL (smart): 1,460 documents" in r.output and "3,114 judgments of 76 queries" in r.output


def test_topic_fields_and_malformed_records(tmp_path):
    topics = tmp_path / "topics.txt"
    topics.write_text("<top>\n<num> Number: 301\n<title> International Organized Crime\n<desc> Description:\n"
                      "Identify organizations.\n<narr> Narrative:\nA relevant document ...\n</top>\n")
    from rerank.data.collections import read_topics_any

    assert read_topics_any(topics)[0].text == "International Organized Crime"
    assert read_topics_any(topics, field="title+description")[0].text == "International Organized Crime Identify organizations."
    bad = tmp_path / "bad.sgml"
    bad.write_text("<DOC>\n<DOCNO>a</DOCNO>\ntext\n<DOC>\n")
    with pytest.raises(DataError, match=r"bad.sgml:4: <DOC> inside the <DOC> that starts on line 1"):
        list(iter_documents(bad))
    rows = tmp_path / "c.csv"
    rows.write_text("id,title,text\n1,a,b\n2,c\n")
    with pytest.raises(DataError, match=r"c.csv:3: 2 fields, the header names 3"):
        list(iter_documents(rows))
    with pytest.raises(DataError, match=r"no id field doc_id"):
        list(iter_documents(rows, fields=ReadOptions(id_field="doc_id").fields))


# ---------------------------------------------------------------- the document store on disk
def test_a_disk_store_serves_what_the_memory_store_does(beir, reference, tmp_path, monkeypatch):
    import rerank.data.store as store_mod
    from rerank.data import DiskDocStore

    monkeypatch.setattr(store_mod, "CHUNK", 64)  # several chunks: the fingerprint is chunked the same way in memory
    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))
    ref, ref_run = reference
    ds = load_dataset(str(beir), read=ReadOptions(doc_store="disk"))
    assert isinstance(ds.docs, DiskDocStore) and ds.docs.folder.parent == tmp_path / "indexes"
    assert list(ds.docs.items()) == list(ref.docs.items()) and len(ds.docs) == len(ref.docs)
    assert ds.docs.fingerprint() == store_mod.MemoryDocStore(dict(ref.docs.items())).fingerprint()
    for docid, text in list(ref.docs.items())[::37]:
        assert ds.docs[docid] == text and docid in ds.docs
    assert ds.docs.get("no-such-doc") is None and "no-such-doc" not in ds.docs
    with pytest.raises(KeyError):
        ds.docs["no-such-doc"]
    run = BM25(ds.docs, k=10, index_root=tmp_path / "bm25")(ds.queries)
    assert {q: [h.docid for h in hits] for q, hits in run.items()} == {q: [h.docid for h in hits] for q, hits in ref_run.items()}
    again = load_dataset(str(beir), read=ReadOptions(doc_store="disk"))  # reused, not rebuilt
    assert again.docs.folder == ds.docs.folder and (again.docs.folder / "corpus.json").stat().st_mtime_ns == \
        (ds.docs.folder / "corpus.json").stat().st_mtime_ns


def test_a_killed_store_build_resumes_and_a_changed_source_is_rebuilt(beir, tmp_path, monkeypatch, caplog):
    import logging

    import rerank.data.store as store_mod
    from rerank.data.formats import iter_beir_corpus
    from rerank.data.store import DiskDocStore

    monkeypatch.setattr(store_mod, "CHUNK", 50)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((beir / "corpus.jsonl").read_text())

    def killed_after(n):
        def reader():
            for i, item in enumerate(iter_beir_corpus(corpus)):
                if i == n:
                    raise KeyboardInterrupt
                yield item
        return reader

    with pytest.raises(KeyboardInterrupt):
        DiskDocStore.for_source("sf", [corpus], killed_after(120), {}, root=tmp_path / "idx")
    partial = next((tmp_path / "idx").glob(".*.partial"))
    assert json.loads((partial / "progress.json").read_text())["documents"] == 100  # two whole chunks kept
    with caplog.at_level(logging.INFO, logger="rerank"):
        resumed = DiskDocStore.for_source("sf", [corpus], lambda: iter_beir_corpus(corpus), {}, root=tmp_path / "idx")
    assert "resuming the document store build" in caplog.text and not partial.exists()
    whole = DiskDocStore.for_source("sf", [corpus], lambda: iter_beir_corpus(corpus), {}, root=tmp_path / "other")
    for name in ("texts.bin", "text_offsets.bin", "ids.bin", "id_offsets.bin", "keys.bin", "rows.bin", "corpus.json"):
        assert (resumed.folder / name).read_bytes() == (whole.folder / name).read_bytes(), name
    # the source changes: the store is rebuilt in place, with the new text
    first = json.loads(corpus.read_text().splitlines()[0])
    corpus.write_text(corpus.read_text().replace(first["text"][:40], "A corrected opening sentence.", 1))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rerank"):
        changed = DiskDocStore.for_source("sf", [corpus], lambda: iter_beir_corpus(corpus), {}, root=tmp_path / "idx")
    assert changed.folder == resumed.folder and "is stale" in caplog.text
    assert changed[first["_id"]].startswith(f"{first['title']} A corrected opening sentence.".strip())
    assert changed.fingerprint() != resumed.fingerprint()


def test_two_processes_read_one_store_at_once(beir, tmp_path):
    import subprocess
    import sys

    from rerank.data.formats import iter_beir_corpus
    from rerank.data.store import DiskDocStore

    corpus = beir / "corpus.jsonl"
    store = DiskDocStore.for_source("sf", [corpus], lambda: iter_beir_corpus(corpus), {}, root=tmp_path)
    code = ("import hashlib, sys; from rerank.data.store import DiskDocStore; s = DiskDocStore(sys.argv[1]); "
            "ids = [d for d, _ in s.items()]; h = hashlib.sha256(); "
            "[h.update(s[d].encode()) for _ in range(20) for d in ids]; print(len(ids), h.hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(store.folder)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and int(outs[0][0]) == len(store)


def test_the_cli_reads_a_large_collection_through_a_disk_store(beir, tmp_path, monkeypatch):
    from rerank.data import DiskDocStore

    write_format("tsv", beir, tmp_path / "c")
    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))
    out = {}
    for store in ("memory", "disk"):
        r = CliRunner().invoke(main, ["run", "-r", "bm25", "-d", str(tmp_path / "c"), "--doc-store", store, "--metrics",
                                      "nDCG@10", "--metrics-json", str(tmp_path / f"{store}.json")])
        assert r.exit_code == 0, r.output
        out[store] = json.loads((tmp_path / f"{store}.json").read_text())["metrics"]["nDCG@10"]
    assert out["memory"] == out["disk"]
    monkeypatch.setenv("RERANK_DOCSTORE_MIN_MB", "0")  # auto: every corpus is "large"
    assert isinstance(load_dataset(str(tmp_path / "c")).docs, DiskDocStore)
    monkeypatch.setenv("RERANK_DOCSTORE_MIN_MB", "1000")
    assert not isinstance(load_dataset(str(tmp_path / "c")).docs, DiskDocStore)


def test_every_document_is_found_through_the_fence(tmp_path, monkeypatch):
    import rerank.data.store as store_mod
    from rerank.data.store import DiskDocStore

    monkeypatch.setattr(store_mod, "FENCE", 16)  # many windows over 3,000 hashes
    docs = [(f"doc-{i}", f"text of document {i} " * (i % 5 + 1)) for i in range(3000)]
    DiskDocStore.build(iter(docs), tmp_path / "s", "synthetic")
    store = DiskDocStore(tmp_path / "s")
    assert all(store[d] == t for d, t in docs[::7])
    ids = [d for d, _ in docs] + ["doc-3000", "", "doc-1 "]
    assert store.get_many(ids) == [t for _, t in docs] + [None, None, None]


def test_the_lookup_table_is_sorted_in_buckets_with_memory_flat_in_the_corpus(tmp_path, monkeypatch):
    """The table is sorted a bucket of hashes at a time: with buckets of 64 hashes (64 of them over
    3,000 documents) it is byte-identical to the one sorted in one piece, and a repeated id is still
    found (equal ids share a bucket)."""
    import rerank.data.store as store_mod
    from rerank.data.store import DiskDocStore

    docs = [(f"doc-{i}", f"text {i}") for i in range(3000)]
    DiskDocStore.build(iter(docs), tmp_path / "whole", "synthetic")
    monkeypatch.setattr(store_mod, "SORT_BUCKET", 64)
    DiskDocStore.build(iter(docs), tmp_path / "buckets", "synthetic")
    for name in ("keys.bin", "rows.bin", "corpus.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "buckets" / name).read_bytes(), name
    assert not (tmp_path / "buckets" / "hashes.bin").exists() and not (tmp_path / "buckets" / "sort-buckets").exists()
    store = DiskDocStore(tmp_path / "buckets")
    assert store.get_many(["doc-0", "doc-2999", "doc-x"]) == ["text 0", "text 2999", None]
    with pytest.raises(DataError, match="document id 'doc-1717' appears twice"):
        DiskDocStore.build(iter(docs + [("doc-1717", "again")]), tmp_path / "dup", "synthetic")


def test_a_repeated_id_in_a_corpus_read_into_the_disk_store_is_refused(tmp_path):
    """Through the disk store, the reader keeps no set of every id (memory flat in the corpus):
    the repeat is found while the store sorts its table."""
    from rerank.data import corpus_store
    from rerank.data.collections import ReadOptions
    from rerank.data.formats import iter_beir_corpus

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d, "text": f"text {i}"}) + "\n" for i, d in enumerate(["a", "b", "a"])))
    def reader(unique):
        return iter_beir_corpus(corpus, unique=unique)

    memory = corpus_store("dup", corpus, reader, {}, ReadOptions(doc_store="memory"))
    with pytest.raises(DataError, match="corpus.jsonl:3: document id 'a' appears twice"):
        len(memory)
    with pytest.raises(DataError, match="dup: document id 'a' appears twice"):
        corpus_store("dup", corpus, reader, {}, ReadOptions(doc_store="disk"))
