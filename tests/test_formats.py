import json
import os

import pytest

from rerank import DataError, Hit, read_qrels, read_run, read_topics, write_trec_run
from rerank.data.formats import read_beir_corpus, read_candidates


def test_malformed_run_line_names_file_and_line(tmp_path):
    p = tmp_path / "run.trec"
    p.write_text("1 Q0 d1 1 3.5 tag\n1 Q0 d2 2 2.5 tag\n1 Q0 d3 3\n")
    with pytest.raises(DataError, match=rf"{p}:3: expected 6 columns"):
        read_run(p)
    p.write_text("1 Q0 d1 1 high tag\n")
    with pytest.raises(DataError, match=rf"{p}:1: score 'high' is not a number"):
        read_run(p)
    p.write_text("1 Q0 d1 1 3 tag\n1 Q0 d1 2 2 tag\n")
    with pytest.raises(DataError, match=rf"{p}:2: document 'd1' already ranked for query '1' on line 1"):
        read_run(p)


def test_trec_run_sorted_by_score_and_round_trips(tmp_path):
    p = tmp_path / "run.trec"
    p.write_text("q1 Q0 a 2 1.0 x\nq1 Q0 b 1 3.0 x\nq2 Q0 c 1 0.5 x\n")
    run = read_run(p)
    assert [h.docid for h in run["q1"]] == ["b", "a"]
    out = tmp_path / "sub" / "out.trec"
    write_trec_run(run, out, tag="my tag")
    assert out.read_text().splitlines()[0] == "q1 Q0 b 1 3.000000 my_tag"
    assert read_run(out) == {q: [Hit(h.docid, h.score) for h in hs] for q, hs in run.items()}
    assert [f for f in os.listdir(out.parent) if f != "out.trec"] == []  # no temp file left


def test_failed_write_keeps_the_old_file(tmp_path):
    out = tmp_path / "run.trec"
    out.write_text("old\n")

    class Boom:
        def items(self):
            yield "q", [Hit("d", 1.0)]
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_trec_run(Boom(), out)
    assert out.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["run.trec"]


def test_duplicate_docids_in_candidate_file(tmp_path):
    p = tmp_path / "cands.json"
    hits = [{"qid": 5, "docid": "7", "rank": 1, "score": 2.0, "content": "a"},
            {"qid": 5, "docid": "7", "rank": 2, "score": 1.0, "content": "b"}]
    p.write_text(json.dumps([{"query": "what", "hits": hits}]))
    with pytest.raises(DataError, match=r"document '7' appears twice for query '5' \(hits 1 and 2\)"):
        read_candidates(p)


def test_candidates_jsonl_and_query_without_hits(tmp_path):
    p = tmp_path / "cands.jsonl"
    rows = [{"query": "first", "hits": [{"qid": "1", "docid": "a", "score": 1.0, "content": "text a"},
                                       {"qid": "1", "docid": "b", "score": 2.0, "content": "text b"}]},
            {"query": "second", "qid": "2", "hits": []}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ranking, texts = read_candidates(p)
    assert [h.docid for h in ranking["1"]] == ["b", "a"] and ranking["1"][0].text == "text b"
    assert ranking["2"] == [] and texts == {"1": "first", "2": "second"}
    p.write_text(json.dumps({"query": "third", "hits": []}) + "\n")
    with pytest.raises(DataError, match=rf"{p}:1: query 'third' has no hits and no 'qid'"):
        read_candidates(p)


def test_non_utf8_document_is_reported_or_replaced(tmp_path):
    p = tmp_path / "corpus.jsonl"
    good = json.dumps({"_id": "d1", "title": "T", "text": "fine"}).encode()
    bad = b'{"_id": "d2", "title": "", "text": "caf\xe9 au lait"}'
    p.write_bytes(good + b"\n" + bad + b"\n")
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8 \(byte 0xe9 at column 40\)"):
        read_beir_corpus(p)
    docs = read_beir_corpus(p, encoding_errors="replace")
    assert docs == {"d1": "T fine", "d2": "caf\ufffd au lait"}


def test_non_utf8_in_candidate_json_names_the_line(tmp_path):
    p = tmp_path / "c.json"
    p.write_bytes(b'[{"query": "q",\n "hits": [{"qid": 1, "docid": "x", "score": 1, "content": "\xff"}]}]')
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8"):
        read_candidates(p)


def test_qrels_formats_and_errors(tmp_path, dl19, scifact_dir):
    trec = read_qrels(dl19 / "qrels.dl19-passage.txt")
    assert len(trec) == 43 and sum(len(v) for v in trec.values()) == 9260
    beir = read_qrels(scifact_dir / "qrels" / "test.tsv")
    assert len(beir) == 300 and sum(len(v) for v in beir.values()) == 339
    bad = tmp_path / "qrels.txt"
    bad.write_text("1 0 d1 1\n1 0 d2 yes\n")
    with pytest.raises(DataError, match=rf"{bad}:2: relevance 'yes' is not a number"):
        read_qrels(bad)
    with pytest.raises(DataError, match="qrels file not found"):
        read_qrels(tmp_path / "nope.txt")


def test_topics_reject_empty_and_duplicate_queries(tmp_path, dl19):
    assert len(read_topics(dl19 / "topics.dl19-passage.txt")) == 43
    p = tmp_path / "topics.tsv"
    p.write_text("1\tfine\n2\t  \n")
    with pytest.raises(DataError, match=rf"{p}:2: query '2' has empty text"):
        read_topics(p)
    p.write_text("1\tfine\n1\tagain\n")
    with pytest.raises(DataError, match="already defined on line 1"):
        read_topics(p)
