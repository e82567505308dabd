"""The formats test collections come in, detected from the files (or named), compressed or not.

Documents: BEIR/any JSONL, MS MARCO-style TSV (``docid<TAB>text``), CSV or TSV with a header,
Parquet, a Hugging Face ``datasets`` folder (``save_to_disk``), TREC SGML (``<DOC><DOCNO>``) and
the SMART format of the classic collections (``.I .T .A .W .X``). Topics: TSV, JSONL, TREC SGML
(``<top><num><title><desc><narr>``) and SMART queries. Judgments: TREC/BEIR qrels and SMART
``.REL`` files. ``.gz``, ``.bz2``, ``.xz`` and ``.Z`` files are read as their content. A corpus may be
one file, or a folder (nested folders too) of document files, as collections are distributed.

Field names: ``id_field`` and ``text_fields`` (joined by a space, as BEIR joins title and text);
by default the id is the first of ``_id, id, docid, doc_id, pid, docno`` a record has, and the
text ``title`` + ``text`` (BEIR), else the first of ``contents, body, passage, content``.

:func:`layout` is the one place that decides what a folder holds.
"""

from __future__ import annotations

import csv
import html
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, MissingDependency
from ..types import Query
from .formats import (
    COMPRESSED,
    Qrels,
    check_id,
    check_text,
    head,
    iter_lines,
    json_line,
    max_record_bytes,
    read_qrels,
    read_topics,
    unique_queries,
)

DOC_FORMATS = ("jsonl", "tsv", "csv", "tsv-header", "parquet", "hf-datasets", "trec-sgml", "smart")
TOPIC_FORMATS = ("tsv", "jsonl", "trec-sgml", "smart")
TOPIC_FIELDS = ("title", "description", "narrative", "title+description")
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
    return path.name[: -len(path.suffix)] if path.suffix.lower() in COMPRESSED else path.name


def _suffix(path: Path) -> str:
    return Path(base_name(path)).suffix.lower()


def _is_datasets_folder(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "state.json").is_file()


def _starts_sgml(text: str) -> bool:
    return text.lstrip().upper().startswith("<DOC>")


def detect_doc_format(path: Path) -> str:
    """A document file's (or datasets folder's) format, from its name and first bytes."""
    if path.is_dir():
        if _is_datasets_folder(path):
            return "hf-datasets"
        raise DataError(f"{path}: a folder, not a document file (a folder of documents is read by `layout`)")
    suffix = _suffix(path)
    if suffix == ".parquet":
        return "parquet"
    text = head(path).lstrip()
    if _starts_sgml(text):
        return "trec-sgml"
    if re.match(r"\.I\s+\S+", text) or suffix == ".all":  # a SMART .ALL file is SMART, stray text and all
        return "smart"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    first = text.splitlines()[0] if text else ""
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
    return iter_corpus([(path, fmt or detect_doc_format(path))], fields, encoding_errors, unique=unique)


def iter_corpus(files: Iterable[tuple[Path, str]], fields: Fields = Fields(), encoding_errors: str = "strict", *,
                unique: bool = True) -> Iterator[tuple[str, str]]:
    """(docid, text) of every document of the ``(file, format)`` pairs, in order (a corpus of many
    files, :attr:`Layout.corpus_files`); a repeated id, in one file or across files, is an error."""
    seen: set[str] = set()
    for path, fmt in files:
        if fmt not in DOC_FORMATS:
            raise DataError(f"unknown document format {fmt!r}; one of {', '.join(DOC_FORMATS)}")
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
    """Rows of a CSV file (quoted fields may span lines, but must close: a quote left open is an
    error at the line it opens on) or a TSV file with a header (no quoting: a field is everything
    between TABs); ``where`` is the row's first line. A field may hold up to
    :func:`~rerank.data.formats.max_record_bytes` characters."""
    limit = max_record_bytes()
    lines = (text for _, text in iter_lines(path, errors, raw=True))
    reader = (csv.reader(lines, delimiter=",", quoting=csv.QUOTE_MINIMAL, strict=True) if delimiter == ","
              else csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE))
    start = 1  # the line the row being read starts on
    previous = csv.field_size_limit(limit)
    try:
        header = [h.strip() for h in next(reader, [])]
        if not header:
            return
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, the header names {len(header)}")
            yield (where, *fields.pick(dict(zip(header, row, strict=True)), where))
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            raise DataError(f"{path}:{start}: a field longer than {limit:,} characters (a quote left open?); "
                            f"set RERANK_MAX_RECORD_MB to allow longer fields") from None
        if reader.line_num > start or "end of data" in str(e):
            raise DataError(f"{path}:{start}: a quoted field opens on this line and does not close properly "
                            f"(by line {reader.line_num}: {e}): a quote left open?") from None
        raise DataError(f"{path}:{start}: {e}") from None
    finally:
        csv.field_size_limit(previous)


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


_DOC_MARK = re.compile(r"<(/?)DOC>", re.IGNORECASE)


def _trec_sgml(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    """``<DOC>`` records (one per line, or spanning lines): the id from ``<DOCNO>``; the text from
    the ``text_fields`` tags (e.g. ``HEADLINE,TEXT``), else every tag's content but DOCNO's, tags removed."""
    buf: list[str] | None = None
    start = size = 0
    limit = max_record_bytes()
    for n, line in iter_lines(path, errors):
        pos = 0
        for mark in _DOC_MARK.finditer(line):
            piece, pos = line[pos : mark.start()], mark.end()
            if not mark.group(1):  # <DOC>
                if buf is not None:
                    raise DataError(f"{path}:{n}: <DOC> inside the <DOC> that starts on line {start}")
                if piece.strip():
                    raise DataError(f"{path}:{n}: text outside a <DOC> element: {piece.strip()[:80]!r}")
                start, buf, size = n, [], 0
            else:
                if buf is None:
                    raise DataError(f"{path}:{n}: </DOC> without a <DOC>")
                buf.append(piece)
                yield _sgml_record(path, start, "\n".join(buf), fields)
                buf = None
        rest = line[pos:]
        if buf is not None:
            buf.append(rest)
            size += len(rest)
            if size > limit:
                raise _record_too_long(path, start, "<DOC>", limit)
        elif rest.strip():
            raise DataError(f"{path}:{n}: text outside a <DOC> element: {rest.strip()[:80]!r}")
    if buf is not None:
        raise DataError(f"{path}:{start}: the <DOC> that starts here never ends (no </DOC>)")


def _record_too_long(path: Path, start: int, what: str, limit: int) -> DataError:
    return DataError(f"{path}:{start}: the {what} that starts here runs past {limit:,} characters (never closed?); "
                     f"set RERANK_MAX_RECORD_MB to allow longer records")


def _sgml_record(path: Path, start: int, record: str, fields: Fields) -> tuple[str, str, str]:
    where = f"{path}:{start}"
    m = _DOCNO.search(record)
    if m is None:
        raise DataError(f"{where}: a <DOC> without <DOCNO>")
    docid = check_id(m.group(1), "document id", where)
    if fields.text_fields:
        parts = [p for tag in fields.text_fields for p in re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", record,
                                                                     re.IGNORECASE | re.DOTALL)]
    else:
        parts = [record[: m.start()] + record[m.end() :]]
    return where, docid, " ".join(" ".join(html.unescape(_TAG.sub(" ", p)).split()) for p in parts).strip()


def _smart_records(path: Path, errors: str) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line, id, {field letter: text}) of the ``.I`` records of a SMART file."""
    start, rid, current, size = 0, None, None, 0
    limit = max_record_bytes()
    fields_: dict[str, str] = {}
    for n, line in iter_lines(path, errors):
        m = re.match(r"^\.([A-Z])(?:\s+(.*))?$", line.rstrip())
        if m and m.group(1) == "I":
            if rid is not None:
                yield start, rid, {k: " ".join(v.split()) for k, v in fields_.items()}
            start, current, fields_, size = n, None, {}, 0
            rid = check_id((m.group(2) or "").strip(), "record id", f"{path}:{n}")
        elif m:
            if rid is None:
                raise DataError(f"{path}:{n}: .{m.group(1)} before the first .I")
            current = m.group(1)
            fields_[current] = fields_.get(current, "") + " " + (m.group(2) or "")
        else:
            if rid is None or current is None:
                raise DataError(f"{path}:{n}: text outside a .I record field: {line[:80]!r}")
            fields_[current] += " " + line
            size += len(line)
            if size > limit:
                raise _record_too_long(path, start, ".I record", limit)
    if rid is not None:
        yield start, rid, {k: " ".join(v.split()) for k, v in fields_.items()}


def _smart(path: Path, fields: Fields, errors: str) -> Iterator[tuple[str, str, str]]:
    """SMART documents: the text is ``.T`` (title) and ``.W`` (abstract), or the ``text_fields`` letters."""
    letters = fields.text_fields or ("T", "W")
    for start, rid, record in _smart_records(path, errors):
        yield f"{path}:{start}", rid, " ".join(record[k] for k in letters if record.get(k))


_READERS = {"jsonl": _jsonl, "tsv": _tsv, "csv": _csv, "tsv-header": _tsv_header, "parquet": _parquet,
            "hf-datasets": _hf_datasets, "trec-sgml": _trec_sgml, "smart": _smart}


# ---------------------------------------------------------------- topics
def detect_topic_format(path: Path) -> str:
    text = head(path).lstrip()
    if text.lower().startswith("<top>"):
        return "trec-sgml"
    if re.match(r"\.I\s+\S+", text) or _suffix(path) == ".qry":
        return "smart"
    return "jsonl" if _suffix(path) in (".jsonl", ".json") else "tsv"


_TOPIC_TAGS = {"num": "num", "title": "title", "desc": "description", "narr": "narrative"}


def read_trec_topics(path: Path, field: str = "title", errors: str = "strict") -> list[Query]:
    """``<top>`` topics (TREC ad hoc, Robust, ...): ``field`` is title, description, narrative or
    title+description. Tags need not be closed; ``Number:``/``Description:``/``Narrative:`` labels go."""
    if field not in TOPIC_FIELDS:
        raise DataError(f"unknown topic field {field!r}; one of {', '.join(TOPIC_FIELDS)}")
    return unique_queries(path, _trec_topics(path, field, errors))


def _trec_topics(path: Path, field: str, errors: str) -> Iterator[tuple[int, Query]]:
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
            yield start, Query(qid, text)
            buf = []
            continue
        buf.append(line)


def read_topics_any(path: str | Path, fmt: str | None = None, field: str = "title", errors: str = "strict") -> list[Query]:
    """Topics in any of :data:`TOPIC_FORMATS` (detected when ``fmt`` is None)."""
    path = Path(path)
    fmt = fmt or detect_topic_format(path)
    if fmt == "trec-sgml":
        return read_trec_topics(path, field, errors)
    if fmt == "smart":
        return unique_queries(path, ((start, Query(rid, " ".join(rec[k] for k in ("T", "W") if rec.get(k))))
                                     for start, rid, rec in _smart_records(path, errors)))
    if fmt in ("tsv", "jsonl"):
        return read_topics(path, errors, fmt)
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
    """What a collection folder holds: the corpus, topics and qrels files and their formats.
    ``corpus`` is the corpus file, or the folder its document files are in (``corpus_files``, each
    with its format, in reading order; ``skipped``: the files there that hold no documents)."""

    folder: Path
    corpus: Path | None = None
    corpus_format: str | None = None
    topics: Path | None = None
    topics_format: str | None = None
    qrels: Path | None = None
    corpus_files: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def _stem(path: Path) -> str:
    return Path(base_name(path)).stem.lower()


def _one(folder: Path, what: str, matches: list[Path]) -> Path | None:
    if len(matches) > 1:
        raise DataError(f"{folder}: several {what} files {[p.name for p in matches]}; keep one, or name it with an option")
    return matches[0] if matches else None


_NAMED_DOC_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".all")


def _document_file(path: Path, by_name: bool) -> str | None:
    """The format of a file in a corpus folder, or None for one that holds no documents (a README,
    a DTD): SGML and SMART files are known by their first bytes, others (``by_name``) by their suffix."""
    if by_name and _suffix(path) in _NAMED_DOC_SUFFIXES:
        return detect_doc_format(path)
    text = head(path, 64).lstrip()
    if _starts_sgml(text):
        return "trec-sgml"
    return "smart" if re.match(r"\.I\s+\S+", text) else None


def _corpus_folder(folder: Path, doc_format: str | None, by_name: bool = True) -> tuple[list[tuple[Path, str]], list[Path]]:
    """The document files under ``folder`` (nested folders too, in path order) and the files skipped."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                            p.relative_to(folder).parts))
    found: list[tuple[Path, str]] = []
    skipped: list[Path] = []
    for p in files:
        fmt = doc_format or _document_file(p, by_name)
        if fmt is None:
            skipped.append(p)
        else:
            found.append((p, fmt))
    return found, skipped


def layout(folder: str | Path, doc_format: str | None = None, topic_format: str | None = None) -> Layout:
    """The corpus, topics and qrels of a collection folder (not a BEIR folder, which has its own
    fixed layout), as collections are distributed. Topics: ``queries|topics*`` (or ``*.QRY``);
    qrels: ``qrels*`` (or ``*.REL``), both at the top. The corpus, the first of: a file or folder
    named ``corpus|collection|docs|documents`` (a folder: a Hugging Face datasets folder, or every
    document file under it, nested folders too) or a SMART ``*.ALL``; the files at the top that
    start with ``<DOC>``; the TREC SGML (or SMART) files anywhere in the subfolders."""
    folder = Path(folder)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    out = Layout(folder)
    topics = [p for p in entries if p.is_file() and (_stem(p).startswith(_TOPIC_NAMES) or _suffix(p) == ".qry")
              and not p.name.endswith((".json",))]
    out.topics = _one(folder, "topics", topics)
    qrels = [p for p in entries if p.is_file() and (_stem(p).startswith(_QREL_NAMES) or _suffix(p) == ".rel"
                                                    or ".qrels" in p.name)]
    out.qrels = _one(folder, "qrels", qrels)
    named = _one(folder, "corpus", [p for p in entries if _stem(p) in _CORPUS_NAMES or (p.is_file() and _suffix(p) == ".all")])
    if named is not None and (named.is_file() or _is_datasets_folder(named)):
        out.corpus, out.corpus_files = named, [(named, doc_format or detect_doc_format(named))]
    elif named is not None:
        out.corpus = named
        out.corpus_files, out.skipped = _corpus_folder(named, doc_format)
        if not out.corpus_files:
            raise DataError(f"{named}: a corpus folder with no document files in it (TREC SGML, SMART, JSONL, CSV, TSV, "
                            f"Parquet; {len(out.skipped)} other files)")
    else:
        sgml = [p for p in entries if p.is_file() and p not in (out.topics, out.qrels) and _starts_sgml(head(p, 64))]
        if sgml:
            out.corpus_files = [(p, doc_format or "trec-sgml") for p in sgml]
        else:
            for sub in (p for p in entries if p.is_dir()):  # known by their first bytes, whatever the format forced
                out.corpus_files += [(p, doc_format or fmt) for p, fmt in _corpus_folder(sub, None, by_name=False)[0]]
        if out.corpus_files:
            out.corpus = sgml[0] if len(sgml) == 1 else folder
    if out.corpus_files:
        out.corpus_format = "+".join(sorted({fmt for _, fmt in out.corpus_files}))
    if out.topics is not None:
        out.topics_format = topic_format or detect_topic_format(out.topics)
    return out


def unknown_judgments(qrels: Mapping[str, Mapping[str, int]], qids: Iterable[str], docids: Iterable[str] | None) -> str:
    """What of ``qrels`` judges a query not in ``qids`` or a document not in ``docids`` (None: not
    checked), said in one line for a warning; empty when nothing. Such a query counts 0 in every mean
    (no run has results for it), such a document as a relevant one never retrieved."""
    queries = set(qids)
    lost_q = sorted(q for q in qrels if q not in queries)
    parts = []
    if lost_q:
        n = sum(len(qrels[q]) for q in lost_q)
        parts.append(f"{_count(n, 'judgment')} of {len(lost_q):,} quer{'ies' if len(lost_q) != 1 else 'y'} not in the "
                     f"topics ({_some(lost_q, 3)}), scored 0 in every mean")
    if docids is not None:
        known = docids if isinstance(docids, (set, frozenset)) else set(docids)
        lost = [(q, d) for q, judged in qrels.items() if q in queries for d in judged if d not in known]
        if lost:
            docs = sorted({d for _, d in lost})
            parts.append(f"{_count(len(lost), 'judgment')} of {_count(len(docs), 'document')} not in the corpus "
                         f"({_some(docs, 3)}), relevant but never retrieved")
    return "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _some(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown:,} more" if len(names) > shown else "")


def _shown(lay: Layout, path: Path) -> str:
    return str(path.relative_to(lay.folder)) if path.is_relative_to(lay.folder) else str(path)


def describe_layout(lay: Layout, fields: Fields = Fields(), topic_field: str = "title", errors: str = "strict",
                    sample: int = 2) -> str:
    """What ``rerank datasets inspect`` prints: each file, its format, counts and a sample, and the
    judgments that name a query or document the collection does not have."""
    lines = [f"{lay.folder}"]
    qrels = read_qrels_any(lay.qrels) if lay.qrels is not None else None
    judged = {d for j in qrels.values() for d in j} if qrels is not None else set()
    found: set[str] = set()
    if lay.corpus is not None:
        n, first = 0, list[str]()
        for docid, text in iter_corpus(lay.corpus_files, fields, errors):
            n += 1
            if docid in judged:
                found.add(docid)
            if len(first) < sample:
                first.append(f"      {docid}: {text[:100]!r}")
        many = lay.corpus.is_dir() and lay.corpus_format != "hf-datasets"
        files = _count(len(lay.corpus_files), "file")
        what = (f"{files} ({lay.corpus_format})" if lay.corpus == lay.folder  # files at the top or in the subfolders
                else f"{_shown(lay, lay.corpus)}/ ({files}, {lay.corpus_format})" if many
                else f"{_shown(lay, lay.corpus)} ({lay.corpus_format})")
        lines += [f"  documents  {what}: {n:,} documents", *first]
        if many:
            lines.append(f"      files: {_some([_shown(lay, p) for p, _ in lay.corpus_files])}")
        if lay.skipped:
            lines.append(f"      skipped {_count(len(lay.skipped), 'file')} without documents: "
                         f"{_some([_shown(lay, p) for p in lay.skipped])}")
    else:
        lines.append("  documents  none (no corpus|collection|docs|documents file or folder, *.ALL, or <DOC> files)")
    queries: list[Query] | None = None
    if lay.topics is not None:
        queries = read_topics_any(lay.topics, lay.topics_format, topic_field, errors)
        lines += [f"  topics     {lay.topics.name} ({lay.topics_format}, {topic_field}): {len(queries):,} queries",
                  *[f"      {q.qid}: {q.text[:100]!r}" for q in queries[:sample]]]
    else:
        lines.append("  topics     none")
    if lay.qrels is not None and qrels is not None:
        grades = sorted({g for j in qrels.values() for g in j.values()})
        lines.append(f"  qrels      {lay.qrels.name}: {sum(map(len, qrels.values())):,} judgments of {len(qrels):,} queries, "
                     f"grades {grades}")
        unknown = unknown_judgments(qrels, [q.qid for q in queries] if queries is not None else qrels,
                                    found if lay.corpus is not None else None)
        if unknown:
            lines.append(f"  warning    {unknown}")
    else:
        lines.append("  qrels      none")
    return "\n".join(lines)


__all__ = ["DOC_FORMATS", "TOPIC_FORMATS", "Fields", "Layout", "ReadOptions", "describe_layout", "detect_doc_format",
           "iter_corpus", "iter_documents", "unknown_judgments",
           "layout", "read_qrels_any", "read_topics_any", "read_trec_topics"]
