"""The collection readers against bad and unusual input (issues 38 and 39): every bad file is one
line naming the file and line (exit 2 from the CLI), a byte-order mark or a compressed file reads as
its text, collections load as their distributors lay them out, and judgments that name a query or
document the collection lacks are counted and warned of."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import lzma
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank.cli import main
from rerank.data import load_dataset
from rerank.data.collections import iter_documents, layout, read_qrels_any, read_topics_any
from rerank.data.formats import read_qrels, read_topics
from rerank.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
BOM = b"\xef\xbb\xbf"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *fragments: str) -> None:
    """A user error: exit 2, one line naming the problem, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.output and "Aborted" not in r.output, r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def fruit(folder: Path, corpus: str | None = None, name: str = "corpus.tsv") -> Path:
    """A three-document collection: q1 wants d2 (bananas), q2 wants d1 (apples)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queries.tsv").write_text("q1\tbananas yellow\nq2\tapples red\n")
    (folder / "qrels.txt").write_text("q1 0 d2 1\nq2 0 d1 1\n")
    if corpus is not None:
        (folder / name).write_text(corpus)
    return folder


def bm25_ndcg(folder: Path) -> float:
    r = invoke("run", "-r", "bm25", "-d", folder, "--metrics", "nDCG@10")
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if "bm25" in line and line.split()[-1][0].isdigit())
    return float(row.split()[-1])


def compress_z(data: bytes) -> bytes:
    """``data`` in Unix compress's .Z format, every byte a 9-bit literal code (valid LZW, for short data)."""
    assert len(data) < 250
    out, bits, n = bytearray(b"\x1f\x9d\x90"), 0, 0
    for b in data:
        bits, n = bits | b << n, n + 9
        while n >= 8:
            out.append(bits & 0xFF)
            bits, n = bits >> 8, n - 8
    return bytes(out + (bytes([bits]) if n else b""))


# ---------------------------------------------------------------- 38.1: a CSV quote left open
_TAIL = "d3,Cherries are red.\nd4,Dates are brown.\nd5,Figs are purple.\n"


@pytest.mark.parametrize("case,corpus,env", [
    ("to the end of the file", 'id,text\nd1,Apples are red.\nd2,"Bananas are yellow.\n' + _TAIL, None),
    ("over later records", 'id,text\nd1,Apples are red.\nd2,"Bananas are yellow.\n' + _TAIL + 'd6,"Grapes"\n', None),
    ("past the size bound", 'id,text\nd1,Apples are red.\nd2,"Bananas are yellow.\n' + "d9,Kiwis\n" * 20_000 + 'd7,"x"\n',
     "0.05"),
])
def test_an_unclosed_csv_quote_is_an_error_at_its_line(case, corpus, env, tmp_path, monkeypatch):
    if env:
        monkeypatch.setenv("RERANK_MAX_RECORD_MB", env)
    folder = fruit(tmp_path / "c", corpus, "corpus.csv")
    with pytest.raises(DataError, match=r"corpus.csv:3: .*a quote left open"):
        list(iter_documents(folder / "corpus.csv"))
    one_line_error(invoke("datasets", "inspect", folder), "corpus.csv:3:")
    one_line_error(invoke("run", "-r", "bm25", "-d", folder), "corpus.csv:3:")


def test_a_well_quoted_csv_keeps_its_multiline_fields(tmp_path):
    p = tmp_path / "corpus.csv"
    p.write_text('id,text\nd1,"Apples, ""red""\nand round."\nd2,He said "hi" there\n')
    assert list(iter_documents(p)) == [("d1", 'Apples, "red"\nand round.'), ("d2", 'He said "hi" there')]


@pytest.mark.parametrize("name,content", [
    ("corpus.csv", b"id,text\rd1,\"Apples, red\"\rd2,Bananas\r"),  # classic Mac line endings (old Excel)
    ("corpus.tsv", b"d1\tApples, red\rd2\tBananas"),
])
def test_bare_carriage_return_line_endings_read(name, content, tmp_path):
    p = tmp_path / name
    p.write_bytes(content)
    assert list(iter_documents(p)) == [("d1", "Apples, red"), ("d2", "Bananas")]


# ---------------------------------------------------------------- 38.2: byte-order marks
def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    folder = fruit(tmp_path / "bom")
    (folder / "corpus.tsv").write_bytes(BOM + b"d1\tApples are red.\nd2\tBananas are yellow.\nd3\tCherries.\n")
    (folder / "queries.tsv").write_bytes(BOM + (folder / "queries.tsv").read_bytes())
    (folder / "qrels.txt").write_bytes(BOM + (folder / "qrels.txt").read_bytes())
    ds = load_dataset(str(folder))
    assert [q.qid for q in ds.queries] == ["q1", "q2"] and set(ds.require_qrels()) == {"q1", "q2"}
    assert ds.docs is not None and ds.docs.get("d1") == "Apples are red."
    assert bm25_ndcg(folder) == 1.0


@pytest.mark.parametrize("name,content,first", [
    ("corpus.csv", b"id,text\r\nd1,Apples\r\n", "d1"),  # Excel's CSV
    ("corpus.jsonl", b'{"_id": "d1", "text": "Apples"}\n', "d1"),
    ("corpus.tsv.gz", gzip.compress(BOM + b"d1\tApples\n", mtime=0), "d1"),
    ("docs.trec", b"<DOC><DOCNO>d1</DOCNO>Apples</DOC>\n", "d1"),
])
def test_every_document_reader_drops_a_byte_order_mark(name, content, first, tmp_path):
    p = tmp_path / name
    p.write_bytes(content if content.startswith(b"\x1f") else BOM + content)
    assert next(iter_documents(p))[0] == first


@pytest.mark.parametrize("reader,name,content", [
    (read_topics, "queries.jsonl", b'{"_id": "q1", "text": "apples"}\n'),
    (read_topics_any, "topics.txt", b"<top>\n<num> Number: q1\n<title> apples\n</top>\n"),
    (read_topics_any, "CISI.QRY", b".I q1\n.W\napples\n"),
])
def test_every_topic_reader_drops_a_byte_order_mark(reader, name, content, tmp_path):
    p = tmp_path / name
    p.write_bytes(BOM + content)
    assert [q.qid for q in reader(p)] == ["q1"]


@pytest.mark.parametrize("name,content", [("qrels.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t1\n"),
                                          ("CISI.REL", b"q1 d1 0 0.0\n")])
def test_every_qrels_reader_drops_a_byte_order_mark(name, content, tmp_path):
    p = tmp_path / name
    p.write_bytes(BOM + content)
    assert read_qrels_any(p) == {"q1": {"d1": 1}}


def test_topics_read_in_the_format_named_or_detected_compressed_too(tmp_path):
    (tmp_path / "q.txt").write_text('{"_id": "q1", "text": "apples"}\n')
    assert [q.qid for q in read_topics_any(tmp_path / "q.txt", "jsonl")] == ["q1"]
    (tmp_path / "queries.jsonl.gz").write_bytes(gzip.compress(BOM + b'{"_id": "q2", "text": "pears"}\n'))
    assert [q.qid for q in read_topics_any(tmp_path / "queries.jsonl.gz")] == ["q2"]


# ---------------------------------------------------------------- 38.3: one rule for repeated query ids
@pytest.mark.parametrize("name,content,lines", [
    ("queries.tsv", "1\tapples\n2\tpears\n1\tbananas\n", (3, 1)),
    ("queries.jsonl", '{"_id": "1", "text": "apples"}\n{"_id": "1", "text": "bananas"}\n', (2, 1)),
    ("topics.txt", "<top>\n<num> 1\n<title> apples\n</top>\n<top>\n<num> 1\n<title> bananas\n</top>\n", (5, 1)),
    ("CISI.QRY", ".I 1\n.W\napples\n.I 2\n.W\npears\n.I 1\n.W\nbananas\n", (7, 1)),
])
def test_a_query_id_defined_twice_is_refused_naming_both_lines(name, content, lines, tmp_path):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=rf"{name}:{lines[0]}: query id '1' already defined on line {lines[1]}$"):
        read_topics_any(p)


# ---------------------------------------------------------------- 38.6: compressed files that cannot be read
_DOCS = b"d1\tApples are red.\nd2\tBananas are yellow.\n"


@pytest.mark.parametrize("name,content,says", [
    ("corpus.tsv.gz", b"hello, not gzip\n", "not a readable .gz file"),
    ("corpus.tsv.gz", gzip.compress(_DOCS, mtime=0)[:20], "not a readable .gz file"),  # truncated, small
    ("corpus.tsv.bz2", bz2.compress(_DOCS)[:30], "not a readable .bz2 file"),
    ("corpus.tsv.xz", b"not xz", "not a readable .xz file"),
    ("corpus.tsv.Z", b"not compress", "not a readable Unix compress file"),
])
def test_a_compressed_file_that_cannot_be_read_is_one_line(name, content, says, tmp_path):
    folder = fruit(tmp_path / "z")
    (folder / name).write_bytes(content)
    with pytest.raises(DataError, match=re.escape(says)):
        list(iter_documents(folder / name))
    one_line_error(invoke("datasets", "inspect", folder), name, says)
    one_line_error(invoke("run", "-r", "bm25", "-d", folder), name, says)


# ---------------------------------------------------------------- 38.14: install hints name real extras
def test_every_install_hint_names_an_extra_that_installs_the_package():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {extra: {re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower() for req in reqs} for extra, reqs in extras.items()}
    hints, calls = set(), []
    for path in (ROOT / "rerank").rglob("*.py"):
        text = path.read_text()
        hints |= {(path.name, m) for m in re.findall(r"rerank\[([\w-]+)\]", text)}
        calls += [(path.name, extra, package) for extra, package in
                  re.findall(r'MissingDependency\([^,]+,\s*"([\w-]+)",\s*"([^"]+)"', text)]
    assert calls and {c[1] for c in calls} >= {"parquet", "hf"}
    for where, extra in hints | {(w, e) for w, e, _ in calls}:
        assert extra in extras, f"{where}: the hint names rerank[{extra}], which pyproject.toml does not define"
    for where, extra, package in calls:
        assert re.split(r"[\[ ]", package)[0].lower() in names[extra], f"{where}: rerank[{extra}] does not install {package}"


# ---------------------------------------------------------------- 38.15: CSV line numbers and long fields
def test_bad_utf8_in_a_csv_names_its_line(tmp_path):
    p = tmp_path / "corpus.csv"
    p.write_bytes(b'id,text\nd1,Apples\nd2,"Ban\xe9nas\nare yellow"\n')
    with pytest.raises(DataError, match=r"corpus.csv:3: not valid UTF-8 \(byte 0xe9 at column 8\)"):
        list(iter_documents(p))
    assert list(iter_documents(p, encoding_errors="replace"))[1] == ("d2", "Ban\ufffdnas\nare yellow")


def test_a_csv_field_past_131072_characters_reads_and_the_bound_is_set_by_the_environment(tmp_path, monkeypatch):
    p = tmp_path / "corpus.csv"
    long = ("banana " * 10 + "\n") * 4_000  # 284,000 characters on 4,000 lines
    p.write_text(f'id,text\nd1,"{long}"\nd2,Apples\n')
    assert [len(t) for _, t in iter_documents(p)] == [len(long.strip()), 6]
    monkeypatch.setenv("RERANK_MAX_RECORD_MB", "0.1")
    with pytest.raises(DataError, match=r"corpus.csv:2: a field longer than 100,000 characters .*RERANK_MAX_RECORD_MB"):
        list(iter_documents(p))
    assert csv.field_size_limit() == 131072  # the csv module's setting is the caller's again


# ---------------------------------------------------------------- 38.16: SGML on one line, SMART with stray text
def test_trec_sgml_with_one_document_a_line_reads(tmp_path):
    folder = fruit(tmp_path / "sgml", "<DOC><DOCNO>d1</DOCNO><TEXT>Apples are red.</TEXT></DOC>\n"
                                      "<DOC><DOCNO>d2</DOCNO><TEXT>Bananas are yellow.</TEXT></DOC>\n", "docs.trec")
    assert list(iter_documents(folder / "docs.trec")) == [("d1", "Apples are red."), ("d2", "Bananas are yellow.")]
    assert bm25_ndcg(folder) == 1.0


def test_a_smart_file_with_stray_leading_text_gets_a_smart_error(tmp_path):
    folder = tmp_path / "cisi"
    folder.mkdir()
    (folder / "CISI.ALL").write_text("Collection: CISI\n.I 1\n.T\nApples\n.W\nare red.\n")
    (folder / "CISI.QRY").write_text(".I 1\n.W\napples\n")
    assert layout(folder).corpus_format == "smart"
    one_line_error(invoke("datasets", "inspect", folder), "CISI.ALL:1: text outside a .I record field")


# ---------------------------------------------------------------- 38.17: a file without newlines
def test_a_file_without_newlines_is_refused_with_memory_flat(tmp_path):
    p = tmp_path / "corpus.tsv"
    with p.open("wb") as f:
        f.truncate(300_000_000)  # sparse: 300 MB of NULs, no newline
    code = textwrap.dedent("""
        import resource, sys
        from rerank.data.collections import iter_documents
        from rerank.errors import DataError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            list(iter_documents(sys.argv[1]))
        except DataError as e:
            print(e)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    env = {**os.environ, "RERANK_MAX_RECORD_MB": "8", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, env=env, timeout=120)
    message, grown_mb = out.stdout.splitlines()
    assert "corpus.tsv:1: a line longer than 8,000,000 bytes" in message and "RERANK_MAX_RECORD_MB" in message
    assert int(grown_mb) < 60, f"reading grew memory by {grown_mb} MB"


@pytest.mark.parametrize("name,head,line,what", [("docs.trec", "<DOC>\n<DOCNO>d1</DOCNO>\n", "more text", "<DOC>"),
                                                 ("CISI.ALL", ".I 1\n.W\n", "more text", ".I record")])
def test_a_record_never_closed_is_refused_past_the_bound(name, head, line, what, tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_MAX_RECORD_MB", "0.01")
    p = tmp_path / name
    p.write_text(head + f"{line}\n" * 2_000)
    with pytest.raises(DataError, match=rf"{name}:1: the {re.escape(what)} that starts here runs past 10,000 characters"):
        list(iter_documents(p))


# ---------------------------------------------------------------- 39.6: collections as distributed
def _sgml(*docs: tuple[str, str]) -> bytes:
    return "".join(f"<DOC>\n<DOCNO>{d}</DOCNO>\n<TEXT>\n{t}\n</TEXT>\n</DOC>\n" for d, t in docs).encode()


def test_a_collection_with_its_documents_in_subfolders_loads(tmp_path):
    """Topics and qrels at the top, the documents under corpus/ in many files, nested, some
    compressed (gzip, Unix compress), a README beside them."""
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "topics.txt").write_text("<top>\n<num> Number: 1\n<title> bananas yellow\n</top>\n"
                                       "<top>\n<num> Number: 2\n<title> apples red\n</top>\n")
    (folder / "qrels.txt").write_text("1 0 d2 1\n2 0 d1 1\n")
    (folder / "corpus" / "b" / "c").mkdir(parents=True)
    (folder / "corpus" / "doc-text.trec").write_bytes(_sgml(("d1", "Apples are red.")))
    (folder / "corpus" / "b" / "more.trec.gz").write_bytes(gzip.compress(_sgml(("d2", "Bananas are yellow."))))
    (folder / "corpus" / "b" / "c" / "old.Z").write_bytes(compress_z(_sgml(("d3", "Cherries."))))
    (folder / "corpus" / "README").write_text("The fruit collection.\n")
    lay = layout(folder)
    assert [p.relative_to(folder).as_posix() for p, _ in lay.corpus_files] == [
        "corpus/b/c/old.Z", "corpus/b/more.trec.gz", "corpus/doc-text.trec"]
    assert lay.skipped == [folder / "corpus" / "README"]
    r = invoke("datasets", "inspect", folder)
    assert r.exit_code == 0, r.output
    assert "corpus/ (3 files, trec-sgml): 3 documents" in r.output and "skipped 1 file without documents: corpus/README" \
        in r.output
    assert bm25_ndcg(folder) == 1.0


def test_sgml_files_anywhere_in_the_subfolders_are_the_corpus(tmp_path):
    """As TREC's disks lay them out: disk4/fr94/01/fr940104.0z (compress), beside topics and qrels."""
    folder = fruit(tmp_path / "robust")
    (folder / "disk4" / "fr94" / "01").mkdir(parents=True)
    (folder / "disk4" / "fr94" / "01" / "fr940104.0z").write_bytes(compress_z(_sgml(("d1", "Apples are red."))))
    (folder / "disk4" / "ft").mkdir()
    (folder / "disk4" / "ft" / "ft911_1").write_bytes(_sgml(("d2", "Bananas are yellow."), ("d3", "Kiwis are green.")))
    (folder / "disk4" / "readme.txt").write_text("Disk 4\n")
    r = invoke("datasets", "inspect", folder)
    assert r.exit_code == 0 and "documents  2 files (trec-sgml): 3 documents" in r.output, r.output
    assert "files: disk4/fr94/01/fr940104.0z, disk4/ft/ft911_1" in r.output
    assert bm25_ndcg(folder) == 1.0


def test_a_corpus_folder_without_documents_says_so(tmp_path):
    folder = fruit(tmp_path / "empty")
    (folder / "corpus").mkdir()
    (folder / "corpus" / "README").write_text("nothing here\n")
    one_line_error(invoke("datasets", "inspect", folder), "corpus: a corpus folder with no document files")


# ---------------------------------------------------------------- 39.7: judgments of unknown queries or documents
def test_judgments_of_unknown_queries_and_documents_are_counted_and_warned_of(tmp_path, caplog, monkeypatch):
    folder = fruit(tmp_path / "extra", "d1\tApples are red.\nd2\tBananas are yellow.\nd3\tCherries.\n")
    assert bm25_ndcg(folder) == 1.0
    with (folder / "qrels.txt").open("a") as f:
        f.write("q9 0 dX 1\nq1 0 dY 2\n")
    r = invoke("datasets", "inspect", folder)
    assert r.exit_code == 0, r.output
    warning = next(line for line in r.output.splitlines() if line.strip().startswith("warning"))
    assert "1 judgment of 1 query not in the topics (q9)" in warning and "1 judgment of 1 document not in the corpus (dY)" \
        in warning
    monkeypatch.setattr(logging.getLogger("rerank"), "propagate", True)  # the CLI turned it off; caplog listens at the root
    with caplog.at_level(logging.WARNING, logger="rerank"):
        ds = load_dataset(str(folder))
    warned = [r.getMessage() for r in caplog.records if "not in the topics" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "(dY)" in warned[0]
    # what the evaluation does with them: q9 scores 0 in the mean over 3 queries; dY, never retrieved, lowers q1's nDCG
    from rerank.evaluate import evaluate
    from rerank.types import Hit

    ev = evaluate({"q1": [Hit("d2", 2.0)], "q2": [Hit("d1", 2.0)]}, ds.require_qrels(), ["nDCG@10"])
    assert ev.per_query["nDCG@10"]["q9"] == 0.0 and 0 < ev.per_query["nDCG@10"]["q1"] < 1
    assert ev.metrics["nDCG@10"] == pytest.approx((ev.per_query["nDCG@10"]["q1"] + 1.0) / 3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rerank"):
        ds.set_qrels(read_qrels(folder / "qrels.txt"), "qrels.txt")
    assert any("(qrels.txt) hold 1 judgment of 1 query not in the topics" in r.getMessage() for r in caplog.records)


def test_the_run_warns_of_unknown_judgments_at_its_start(tmp_path):
    folder = fruit(tmp_path / "warn", "d1\tApples are red.\nd2\tBananas are yellow.\n")
    with (folder / "qrels.txt").open("a") as f:
        f.write("q9 0 d9 1\n")
    r = invoke("run", "-r", "bm25", "-d", folder)
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert "not in the topics (q9)" in first and "not in the corpus" not in first, r.output


# ---------------------------------------------------------------- acceptance: fuzz and counts
_CSV_PIECES = st.sampled_from([b"id", b"text", b"d1", b"d2", b",", b'"', b'""', b"\n", b"\r\n", b" ", b"apples", b"\xff",
                               b"\xc3\xa9", BOM, b"\t", b"\x00"])
_WRAP = st.sampled_from(["plain", "gz", "bz2", "xz", "Z", "gz-truncated"])


def _wrap(content: bytes, how: str) -> tuple[str, bytes]:
    if how == "plain":
        return "", content
    if how == "Z":
        return ".Z", compress_z(content[:240])
    packed = {"gz": gzip.compress, "gz-truncated": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[how](content)
    return (".gz" if how.startswith("gz") else f".{how}"), packed[: len(packed) // 2] if how.endswith("truncated") else packed


def test_the_csv_reader_gives_documents_or_a_data_error_for_any_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-csv")

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.booleans(), st.lists(_CSV_PIECES, max_size=60).map(b"".join), _WRAP)
    def check(bom: bool, body: bytes, how: str) -> None:
        suffix, content = _wrap((BOM if bom else b"") + b"id,text\n" + body, how)
        path = folder / f"corpus.csv{suffix}"
        path.write_bytes(content)
        try:
            list(iter_documents(path, "csv"))
        except DataError:
            pass
        path.unlink()

    check()


_IDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=8)
_TEXTS = st.lists(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="<>&")
                  | st.sampled_from(['"', ",", "\n", "\r\n", "\t"]), min_size=1, max_size=40).map("".join)


def test_csv_round_trips_quotes_newlines_bom_and_compression(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv-trip")

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(_IDS, _TEXTS.filter(lambda t: t.strip()), min_size=1, max_size=12), st.booleans(),
           st.sampled_from(["plain", "gz", "bz2", "xz"]))
    def check(docs: dict[str, str], bom: bool, how: str) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows([("id", "text"), *docs.items()])
        suffix, content = _wrap((BOM if bom else b"") + buf.getvalue().encode(), how)
        path = folder / f"corpus.csv{suffix}"
        path.write_bytes(content)
        assert dict(iter_documents(path)) == {d: t.strip() for d, t in docs.items()}
        path.unlink()

    check()


def _write(fmt: str, docs: dict[str, str], path: Path) -> tuple[Path, int]:
    """``docs`` written in ``fmt`` to a file; the number of documents counted in its bytes, not by a reader."""
    one = {d: " ".join(t.split()) for d, t in docs.items()}
    if fmt == "tsv":
        data = "".join(f"{d}\t{t}\n" for d, t in one.items()).encode()
        count = data.count(b"\n")
    elif fmt == "tsv-header":
        data = ("id\ttext\n" + "".join(f"{d}\t{t}\n" for d, t in one.items())).encode()
        count = data.count(b"\n") - 1
    elif fmt == "jsonl":
        data = "".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()).encode()
        count = data.count(b"\n")
    elif fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([("id", "text"), *docs.items()])
        data = buf.getvalue().encode()
        import pyarrow.csv

        count = len(pyarrow.csv.read_csv(io.BytesIO(data)))
    elif fmt in ("trec-sgml", "trec-sgml-lines"):
        sep = "" if fmt == "trec-sgml-lines" else "\n"
        data = "".join(f"<DOC>{sep}<DOCNO>{d}</DOCNO>{sep}<TEXT>{t}</TEXT>{sep}</DOC>\n" for d, t in one.items()).encode()
        count = len(re.findall(rb"<DOC>", data))
    else:  # smart
        data = "".join(f".I {d}\n.T\n{t}\n" for d, t in one.items()).encode()
        count = len(re.findall(rb"^\.I ", data, re.MULTILINE))
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path, count


@pytest.mark.parametrize("fmt,name", [("tsv", "c.tsv"), ("tsv-header", "c.tsv.gz"), ("jsonl", "c.jsonl"), ("csv", "c.csv"),
                                      ("trec-sgml", "c.trec"), ("trec-sgml-lines", "c.trec.gz"), ("smart", "C.ALL")])
def test_every_reader_counts_the_documents_a_file_holds(fmt, name, tmp_path_factory):
    folder = tmp_path_factory.mktemp("count")
    texts = _TEXTS.filter(lambda t: t.strip() and "\t" not in t and "\r" not in t and not t.lstrip().startswith("."))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(_IDS, texts, min_size=1, max_size=20))
    def check(docs: dict[str, str]) -> None:
        path, count = _write(fmt, docs, folder / name)
        assert len(list(iter_documents(path, fmt.removesuffix("-lines")))) == count == len(docs)

    check()


def test_a_json_error_reads_as_one_sentence(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"_id": "d1", "text": "Apples}\n')
    with pytest.raises(DataError) as e:
        list(iter_documents(p))
    assert "corpus.jsonl:1: not valid JSON (Unterminated string starting at column" in str(e.value)
    assert "at at" not in str(e.value)
