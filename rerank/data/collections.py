"""The formats test collections come in, detected from the files (or named), compressed or not.

Documents: BEIR/any JSONL, MS MARCO-style TSV (``docid<TAB>text``), CSV or TSV with a header,
Parquet, a Hugging Face ``datasets`` folder (``save_to_disk``), TREC SGML (``<DOC><DOCNO>``) and
the SMART format of the classic collections (``.I .T .A .W .X``). Topics: TSV, JSONL, TREC SGML
(``<top><num><title><desc><narr>``) and SMART queries. Judgments: TREC/BEIR qrels and SMART
``.REL`` files. ``.gz``, ``.bz2`` and ``.xz`` files are read as their content.

Field names: ``id_field`` and ``text_fields`` (joined by a space, as BEIR joins title and text);
by default the id is the first of ``_id, id, docid, doc_id, pid, docno`` a record has, and the
text ``title`` + ``text`` (BEIR), else the first of ``contents, body, passage, content``.

:func:`layout` is the one place that decides what a folder holds.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, MissingDependency
from ..types import Query
from .formats import Qrels, check_id, check_text, iter_lines, json_line, open_binary, read_qrels, read_topics

DOC_FORMATS = ("jsonl", "tsv", "csv", "tsv-header", "parquet", "hf-datasets", "trec-sgml", "smart")
TOPIC_FORMATS = ("tsv", "jsonl", "trec-sgml", "smart")
TOPIC_FIELDS = ("title", "description", "narrative", "title+description")
COMPRESSED = (".gz", ".bz2", ".xz")
ID_FIELDS = ("_id", "id", "docid", "doc_id", "pid", "docno")
TEXT_FIELDS = ("contents", "body", "passage", "content")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a collection folder whose files do not say it themselves (CLI: --doc-format,
    --topic-format, --topic-field, --id-field, --text-fields)."""

    doc_format: str | None = None
    topic_format: str | None = None
    topic_field: str = "title"
    id_field: str | None = None
    text_fields: tuple[str, ...] = ()
    doc_store: str = "auto"  # memory | disk | auto (disk from $RERANK_DOCSTORE_MIN_MB of corpus files, default 256)

    @property
    def fields(self) -> Fields:
        return Fields(self.id_field, self.text_fields)


@dataclass(frozen=True)
class Fields:
    """How records name their id and text (None / empty: the defaults of the module docstring)."""

    id_field: str | None = None
    text_fields: tuple[str, ...] = ()

    def pick(self, record: dict[str, Any], where: str) -> tuple[str, str]:
        id_field = self.id_field or next((f for f in ID_FIELDS if f in record), None)
        if id_field is None or id_field not in record:
            want = self.id_field or " or ".join(ID_FIELDS)
            raise DataError(f"{where}: no id field {want} in a record with fields {sorted(record)[:12]} (--id-field NAME)")
        if self.text_fields:
            names: Sequence[str] = self.text_fields
        elif "text" in record:
            names = ("title", "text")
        else:
            names = [next((f for f in TEXT_FIELDS if f in record), "text")]
        missing = [n for n in names if n not in record and n != "title"]
        if missing:
            raise DataError(f"{where}: no text field {', '.join(missing)} in a record with fields {sorted(record)[:12]} "
                            f"(--text-fields A,B)")
        parts = []
        for n in names:
            value = record.get(n)
            if value is None or value == "":
                continue
            parts.append(check_text(value, f"field {n!r}", where))
        return check_id(record[id_field], "document id", where), " ".join(p.strip() for p in parts if p.strip())


def base_name(path: Path) -> str:
    """The file name without a compression suffix (``corpus.tsv.gz`` -> ``corpus.tsv``)."""
    return path.name[: -len(path.suffix)] if path.suffix in COMPRESSED else path.name


def _suffix(path: Path) -> str:
    return Path(base_name(path)).suffix.lower()


def _head(path: Path, size: int = 4096) -> str:
    with open_binary(path) as f:
        return f.read(size).decode("utf-8", errors="replace")


def detect_doc_format(path: Path) -> str:
    """A document file's (or folder's) format, from its name and first bytes."""
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "hf-datasets"
        raise DataError(f"{path}: a folder of documents must be a Hugging Face datasets folder (save_to_disk)")
    suffix, head = _suffix(path), _head(path).lstrip()
    if suffix == ".parquet":
        return "parquet"
    if head.startswith("<DOC>") or head.upper().startswith("<DOC>"):
        return "trec-sgml"
    if re.match(r"\.I\s+\S+", head):
        return "smart"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    first = head.splitlines()[0] if head else ""
    cells = [c.strip().lower() for c in first.split("\t")]
    if len(cells) >= 2 and cells[0] in ID_FIELDS + ("corpus-id", "doc-id"):
        return "tsv-header"
    return "tsv"


def iter_documents(path: str | Path, fmt: str | None = None, fields: Fields = Fields(),
                   encoding_errors: str = "strict", *, unique: bool = True) -> Iterator[tuple[str, str]]:
    """(docid, text) of every document of ``path`` in file order; ``fmt``: one of :data:`DOC_FORMATS`
    (None: detected). A repeated id is an error (``unique=False``: left to the caller)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    fmt = fmt or detect_doc_format(path)
    if fmt not in DOC_FORMATS:
        raise DataError(f"unknown document format {fmt!r}; one of {', '.join(DOC_FORMATS)}")
    seen: set[str] = set()
    for where, docid, text in _READERS[fmt](path, fields, encoding_errors):
        if unique:
            if docid in seen:
                raise DataError(f"{where}: document id {docid!r} appears twice")
            seen.add(docid)
        yield docid, text


def _jsonl(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    for n, line in iter_lines(path, errors):
        where = f"{path}:{n}"
        record = json_line(path, n, line)
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield (where, *fields.pick(record, where))


def _tsv(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    for n, line in iter_lines(path, errors):
        where = f"{path}:{n}"
        docid, tab, text = line.partition("\t")
        if not tab:
            raise DataError(f"{where}: expected 'docid<TAB>text', got {line[:80]!r}")
        yield where, check_id(docid.strip(), "document id", where), " ".join(t.strip() for t in text.split("\t") if t.strip())


def _delimited(path: Path, fields: Fields, errors: str, delimiter: str) -> Iterator[tuple[str, str, str]]:
    """Rows of a CSV file (quoted fields may span lines) or a TSV file with a header (no quoting:
    a field is everything between TABs); ``where`` is the row's first line."""
    with open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", errors=errors, newline="") as text:
        reader = (csv.reader(text, delimiter=",", quoting=csv.QUOTE_MINIMAL) if delimiter == ","
                  else csv.reader(text, delimiter=delimiter, quoting=csv.QUOTE_NONE))
        line = 1
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header:
                return
            for row in reader:
                where, line = f"{path}:{line + 1}", reader.line_num
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, the header names {len(header)}")
                yield (where, *fields.pick(dict(zip(header, row, strict=True)), where))
        except csv.Error as e:
            raise DataError(f"{path}:{line + 1}: {e}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte 0x{e.object[e.start]:02x}); "
                            f"load it with --encoding-errors replace") from None


def _csv(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    return _delimited(path, fields, errors, ",")


def _tsv_header(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    return _delimited(path, fields, errors, "\t")


def _arrow_rows(table: Any, where: str, fields: Fields) -> Iterator[tuple[str, str, str]]:
    for start in range(0, table.num_rows, 10_000):
        for i, record in enumerate(table.slice(start, 10_000).to_pylist()):
            here = f"{where}: row {start + i + 1}"
            yield (here, *fields.pick(record, here))


def _parquet(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency("Parquet collections", "parquet", "pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    yield from _arrow_rows(table, str(path), fields)


def _hf_datasets(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    try:
        import datasets
    except ImportError:
        raise MissingDependency("Hugging Face datasets folders", "hf", "datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets' errors for a folder it cannot read
        raise DataError(f"{path}: not a datasets folder saved with save_to_disk ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(f"{path}: a DatasetDict with splits {sorted(ds)}; save the corpus split alone")
        ds = next(iter(ds.values()))
    yield from _arrow_rows(ds.data.table if hasattr(ds.data, "table") else ds.data, str(path), fields)


_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")  # a tag, not "p < 0.05 > q"
_DOCNO = re.compile(r"<DOCNO>\s*(.*?)\s*</DOCNO>", re.IGNORECASE | re.DOTALL)


def _trec_sgml(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    """``<DOC>`` records: the id from ``<DOCNO>``; the text from the ``text_fields`` tags (e.g.
    ``HEADLINE,TEXT``), else every tag's content but DOCNO's, tags removed."""
    buf: list[str] = []
    start = 0
    for n, line in iter_lines(path, errors):
        upper = line.strip().upper()
        if upper.startswith("<DOC>"):
            if buf:
                raise DataError(f"{path}:{n}: <DOC> inside the <DOC> that starts on line {start}")
            start, buf = n, [line]
            continue
        if not buf:
            raise DataError(f"{path}:{n}: text outside a <DOC> element: {line[:80]!r}")
        buf.append(line)
        if upper.endswith("</DOC>"):
            where = f"{path}:{start}"
            record = "\n".join(buf)
            m = _DOCNO.search(record)
            if m is None:
                raise DataError(f"{where}: a <DOC> without <DOCNO>")
            docid = check_id(m.group(1), "document id", where)
            if fields.text_fields:
                parts = [p for tag in fields.text_fields for p in re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", record,
                                                                             re.IGNORECASE | re.DOTALL)]
            else:
                parts = [record[: m.start()] + record[m.end() :]]
            text = " ".join(" ".join(html.unescape(_TAG.sub(" ", p)).split()) for p in parts).strip()
            yield where, docid, text
            buf = []
    if buf:
        raise DataError(f"{path}:{start}: the <DOC> that starts here never ends (no </DOC>)")


def _smart_records(path: Path, errors: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(where, id, {field letter: text}) of the ``.I`` records of a SMART file."""
    where, rid, current = "", None, None
    fields_: dict[str, str] = {}
    for n, line in iter_lines(path, errors):
        m = re.match(r"^\.([A-Z])(?:\s+(.*))?$", line.rstrip())
        if m and m.group(1) == "I":
            if rid is not None:
                yield where, rid, {k: " ".join(v.split()) for k, v in fields_.items()}
            where, current, fields_ = f"{path}:{n}", None, {}
            rid = check_id((m.group(2) or "").strip(), "record id", where)
        elif m:
            if rid is None:
                raise DataError(f"{path}:{n}: .{m.group(1)} before the first .I")
            current = m.group(1)
            fields_[current] = fields_.get(current, "") + " " + (m.group(2) or "")
        else:
            if rid is None or current is None:
                raise DataError(f"{path}:{n}: text outside a .I record field: {line[:80]!r}")
            fields_[current] += " " + line
    if rid is not None:
        yield where, rid, {k: " ".join(v.split()) for k, v in fields_.items()}


def _smart(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    """SMART documents: the text is ``.T`` (title) and ``.W`` (abstract), or the ``text_fields`` letters."""
    letters = fields.text_fields or ("T", "W")
    for where, rid, record in _smart_records(path, errors):
        yield where, rid, " ".join(record[k] for k in letters if record.get(k))


_READERS = {"jsonl": _jsonl, "tsv": _tsv, "csv": _csv, "tsv-header": _tsv_header, "parquet": _parquet,
            "hf-datasets": _hf_datasets, "trec-sgml": _trec_sgml, "smart": _smart}


# ---------------------------------------------------------------- topics
def detect_topic_format(path: Path) -> str:
    head = _head(path).lstrip()
    if head.lower().startswith("<top>"):
        return "trec-sgml"
    if re.match(r"\.I\s+\S+", head):
        return "smart"
    return "jsonl" if _suffix(path) in (".jsonl", ".json") else "tsv"


_TOPIC_TAGS = {"num": "num", "title": "title", "desc": "description", "narr": "narrative"}


def read_trec_topics(path: Path, field: str = "title", errors: str = "strict") -> list[Query]:
    """``<top>`` topics (TREC ad hoc, Robust, ...): ``field`` is title, description, narrative or
    title+description. Tags need not be closed; ``Number:``/``Description:``/``Narrative:`` labels go."""
    if field not in TOPIC_FIELDS:
        raise DataError(f"unknown topic field {field!r}; one of {', '.join(TOPIC_FIELDS)}")
    queries: list[Query] = []
    seen: dict[str, int] = {}
    buf: list[str] = []
    start = 0
    for n, line in iter_lines(path, errors):
        if line.strip().lower().startswith("<top>"):
            start, buf = n, []
            continue
        if line.strip().lower().startswith("</top>"):
            where = f"{path}:{start}"
            parts: dict[str, str] = {}
            current = None
            for text in "\n".join(buf).splitlines():
                m = re.match(r"^\s*<(num|title|desc|narr)>\s*(.*)$", text, re.IGNORECASE)
                if m:
                    current = _TOPIC_TAGS[m.group(1).lower()]
                    text = m.group(2)
                if current is not None:
                    parts[current] = parts.get(current, "") + " " + html.unescape(_TAG.sub(" ", text))
            clean = {k: re.sub(r"^\s*(Number|Topic|Description|Narrative)\s*:", "", v.strip(), flags=re.IGNORECASE).strip()
                     for k, v in parts.items()}
            if not clean.get("num"):
                raise DataError(f"{where}: a <top> without <num>")
            qid = check_id(clean["num"].split()[0], "query id", where)
            names = ("title", "description") if field == "title+description" else (field,)
            text = " ".join(" ".join(clean.get(k, "").split()) for k in names).strip()
            if not text:
                raise DataError(f"{where}: topic {qid} has no {field}")
            if qid in seen:
                raise DataError(f"{where}: topic {qid} already defined on line {seen[qid]}")
            seen[qid] = start
            queries.append(Query(qid, text))
            buf = []
            continue
        buf.append(line)
    if not queries:
        raise DataError(f"{path}: no <top> topics in the file")
    return queries


def read_topics_any(path: str | Path, fmt: str | None = None, field: str = "title", errors: str = "strict") -> list[Query]:
    """Topics in any of :data:`TOPIC_FORMATS` (detected when ``fmt`` is None)."""
    path = Path(path)
    fmt = fmt or detect_topic_format(path)
    if fmt == "trec-sgml":
        return read_trec_topics(path, field, errors)
    if fmt == "smart":
        queries = [Query(rid, " ".join(rec[k] for k in ("T", "W") if rec.get(k))) for _, rid, rec in _smart_records(path, errors)]
        if not queries:
            raise DataError(f"{path}: no .I queries in the file")
        return queries
    if fmt in ("tsv", "jsonl"):
        return read_topics(path, errors)
    raise DataError(f"unknown topic format {fmt!r}; one of {', '.join(TOPIC_FORMATS)}")


def read_smart_qrels(path: str | Path) -> Qrels:
    """SMART relevance files (``CISI.REL``: ``qid docid 0 0.0``): every listed pair is relevant (1)."""
    path = Path(path)
    qrels: Qrels = {}
    for n, line in iter_lines(path):
        parts = line.split()
        if len(parts) < 2:
            raise DataError(f"{path}:{n}: expected 'qid docid ...', got {line[:80]!r}")
        where = f"{path}:{n}"
        qrels.setdefault(check_id(parts[0], "query id", where), {})[check_id(parts[1], "document id", where)] = 1
    if not qrels:
        raise DataError(f"{path}: no judgments in the file")
    return qrels


def read_qrels_any(path: str | Path) -> Qrels:
    path = Path(path)
    return read_smart_qrels(path) if _suffix(path) == ".rel" else read_qrels(path)


# ---------------------------------------------------------------- folders
_CORPUS_NAMES = ("corpus", "collection", "docs", "documents")
_TOPIC_NAMES = ("queries", "topics")
_QREL_NAMES = ("qrels",)


@dataclass
class Layout:
    """What a collection folder holds: the corpus, topics and qrels files and their formats."""

    folder: Path
    corpus: Path | None = None
    corpus_format: str | None = None
    topics: Path | None = None
    topics_format: str | None = None
    qrels: Path | None = None


def _stem(path: Path) -> str:
    return Path(base_name(path)).stem.lower()


def _one(folder: Path, what: str, matches: list[Path]) -> Path | None:
    if len(matches) > 1:
        raise DataError(f"{folder}: several {what} files {[p.name for p in matches]}; keep one, or name it with an option")
    return matches[0] if matches else None


def layout(folder: str | Path, doc_format: str | None = None, topic_format: str | None = None) -> Layout:
    """The corpus, topics and qrels of a collection folder (not a BEIR folder, which has its own
    fixed layout): files named ``corpus|collection|docs|documents.*`` (or SMART ``*.ALL``, or any
    file that starts with ``<DOC>``), ``queries|topics*`` (or ``*.QRY``), ``qrels*`` (or ``*.REL``);
    a Hugging Face datasets folder named like a corpus."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    out = Layout(folder)
    corpus = [p for p in files if _stem(p) in _CORPUS_NAMES or _suffix(p) == ".all"]
    if not corpus:
        corpus = [p for p in files if p.is_file() and _head(p, 64).lstrip().upper().startswith("<DOC>")]
    out.corpus = _one(folder, "corpus", corpus)
    topics = [p for p in files if p.is_file() and (_stem(p).startswith(_TOPIC_NAMES) or _suffix(p) == ".qry")
              and not p.name.endswith((".json",))]
    out.topics = _one(folder, "topics", topics)
    qrels = [p for p in files if p.is_file() and (_stem(p).startswith(_QREL_NAMES) or _suffix(p) == ".rel"
                                                  or ".qrels" in p.name)]
    out.qrels = _one(folder, "qrels", qrels)
    if out.corpus is not None:
        out.corpus_format = doc_format or detect_doc_format(out.corpus)
    if out.topics is not None:
        out.topics_format = topic_format or detect_topic_format(out.topics)
    return out


def describe_layout(lay: Layout, fields: Fields = Fields(), topic_field: str = "title", errors: str = "strict",
                    sample: int = 2) -> str:
    """What ``rerank datasets inspect`` prints: each file, its format, counts and a sample."""
    lines = [f"{lay.folder}"]
    if lay.corpus is not None:
        n, first = 0, list[str]()
        for docid, text in iter_documents(lay.corpus, lay.corpus_format, fields, errors):
            n += 1
            if len(first) < sample:
                first.append(f"      {docid}: {text[:100]!r}")
        lines += [f"  documents  {lay.corpus.name} ({lay.corpus_format}): {n:,} documents", *first]
    else:
        lines.append("  documents  none (no corpus|collection|docs|documents file, *.ALL, or <DOC> file)")
    if lay.topics is not None:
        queries = read_topics_any(lay.topics, lay.topics_format, topic_field, errors)
        lines += [f"  topics     {lay.topics.name} ({lay.topics_format}, {topic_field}): {len(queries):,} queries",
                  *[f"      {q.qid}: {q.text[:100]!r}" for q in queries[:sample]]]
    else:
        lines.append("  topics     none")
    if lay.qrels is not None:
        qrels = read_qrels_any(lay.qrels)
        grades = sorted({g for j in qrels.values() for g in j.values()})
        lines.append(f"  qrels      {lay.qrels.name}: {sum(map(len, qrels.values())):,} judgments of {len(qrels):,} queries, "
                     f"grades {grades}")
    else:
        lines.append("  qrels      none")
    return "\n".join(lines)


__all__ = ["DOC_FORMATS", "TOPIC_FORMATS", "Fields", "Layout", "ReadOptions", "describe_layout", "detect_doc_format",
           "iter_documents",
           "layout", "read_qrels_any", "read_topics_any", "read_trec_topics"]
