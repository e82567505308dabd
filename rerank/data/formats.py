"""Readers and writers for the field's plain file formats.

Every reader reports problems as ``DataError("FILE:LINE: what is wrong")``. Text is decoded as
UTF-8; ``encoding_errors="replace"`` loads files with a few bad bytes instead of refusing them.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import IO, Any

from ..env import atomic_write
from ..errors import DataError
from ..types import Hit, Query, Ranking

Qrels = dict[str, dict[str, int]]
"""qid -> docid -> graded relevance."""

PathLike = str | os.PathLike[str]


def _utf8_error(path: Path, lineno: int, byte: int, column: int) -> DataError:
    return DataError(
        f"{path}:{lineno}: not valid UTF-8 (byte 0x{byte:02x} at column {column}); "
        f"fix the file or load it with encoding_errors='replace' (CLI: --encoding-errors replace)"
    )


#: compression suffixes read as their content (``.Z`` and TREC disks' ``.0z``/``.1z``/``.2z``: Unix compress)
COMPRESSED = (".gz", ".bz2", ".xz", ".z", ".0z", ".1z", ".2z")
_BOM = b"\xef\xbb\xbf"


def max_record_bytes() -> int:
    """The longest line (or CSV field) a reader accepts: ``$RERANK_MAX_RECORD_MB`` MB, default 64.
    A file with no newlines is refused once past it, not read whole into memory."""
    raw = os.environ.get("RERANK_MAX_RECORD_MB", "64")
    try:
        mb = float(raw)
    except ValueError:
        raise DataError(f"RERANK_MAX_RECORD_MB must be a number of megabytes, got {raw!r}") from None
    if not mb > 0:
        raise DataError(f"RERANK_MAX_RECORD_MB must be positive, got {raw!r}")
    return int(mb * 1_000_000)


def _compression(path: Path) -> str:
    return path.suffix.lower() if path.suffix.lower() in COMPRESSED else ""


class _Uncompress(io.RawIOBase):
    """The output of ``gzip -dc`` (which reads Unix compress's ``.Z`` files), streamed."""

    def __init__(self, path: Path) -> None:
        import shutil
        import subprocess

        gzip = shutil.which("gzip")
        if gzip is None:
            raise DataError(f"{path}: a Unix compress file; reading it needs the gzip program (not found on PATH), "
                            f"or decompress it first with `uncompress`")
        self._proc = subprocess.Popen([gzip, "-dc", "--", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        assert self._proc.stdout is not None and self._proc.stderr is not None
        n = self._proc.stdout.readinto(buffer)  # type: ignore[attr-defined]
        if not n and self._proc.wait() != 0:
            why = self._proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            raise OSError(why[-1] if why else f"gzip -d exited with {self._proc.returncode}")
        return n or 0

    def close(self) -> None:
        if not self.closed:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
        super().close()


def open_binary(path: PathLike) -> IO[bytes]:
    """A file's bytes, decompressed when its name ends in ``.gz``, ``.bz2``, ``.xz`` or ``.Z``
    (see :data:`COMPRESSED`). Read it inside :func:`reading`, which turns a bad file into a
    :class:`DataError`."""
    import bz2
    import gzip
    import lzma

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    kind = _compression(path)
    if kind in (".gz", ".bz2", ".xz"):
        return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[kind](path, "rb")  # type: ignore[no-any-return, operator]
    if kind:
        return io.BufferedReader(_Uncompress(path))
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None


@contextmanager
def reading(path: Path, line: Callable[[], int] = lambda: 0) -> Iterator[None]:
    """Errors of reading ``path`` (a compressed file that is not what its name says, a truncated
    one, a disk error) as one :class:`DataError`; ``line()``: the line being read."""
    import lzma
    import zlib

    try:
        yield
    except (EOFError, zlib.error, lzma.LZMAError, OSError) as e:  # gzip's and bz2's bad data are OSErrors
        at = f"{path}:{line()}" if line() else f"{path}"
        kind = _compression(path)
        what = ("cannot read the file" if not kind else f"not a readable {kind} file" if kind in (".gz", ".bz2", ".xz")
                else "not a readable Unix compress file")
        raise DataError(f"{at}: {what} ({getattr(e, 'strerror', None) or e})") from None


def head(path: PathLike, size: int = 4096) -> str:
    """The first ``size`` bytes of a file's content (decompressed, without a byte-order mark), as text."""
    path = Path(path)
    with reading(path), open_binary(path) as f:
        data = f.read(size)
    return data.removeprefix(_BOM).decode("utf-8", errors="replace")


def iter_lines(path: PathLike, encoding_errors: str = "strict", *, raw: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a file: the one place that decompresses (:func:`open_binary`),
    drops a leading UTF-8 byte-order mark, bounds a line's length (:func:`max_record_bytes`) and reports
    bad UTF-8 at its line. ``raw``: every line as it is, newline included (for the csv module);
    else non-blank lines without their newline."""
    path = Path(path)
    limit = max_record_bytes()
    lineno = 0
    with reading(path, lambda: lineno + 1), open_binary(path) as f:
        first = f.readline(limit + 1).removeprefix(_BOM)
        chunks: Iterator[bytes] = chain([first], iter(lambda: f.readline(limit + 1), b""))
        if b"\r" in first.rstrip(b"\r") and not first.endswith(b"\n") and len(first) <= limit:
            # the whole file in one "line" with bare carriage returns: classic Mac line endings (old Excel
            # exports); its lines are those, the file being within the record bound
            chunks = iter(first.splitlines(keepends=True))
        for data in chunks:
            if not data:
                break
            lineno += 1
            if len(data) > limit and not data.endswith(b"\n"):
                raise DataError(f"{path}:{lineno}: a line longer than {limit:,} bytes (a file without newlines?); "
                                f"set RERANK_MAX_RECORD_MB to allow longer records")
            try:
                line = data.decode("utf-8", encoding_errors)
            except UnicodeDecodeError as e:
                raise _utf8_error(path, lineno, data[e.start], e.start + 1) from None
            if raw:
                yield lineno, line
            elif not line.isspace():
                yield lineno, line.rstrip("\r\n")


def json_line(path: Path, lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None


# whitespace (Unicode's too) and control characters: a TREC file splits on the one, and the other
# forges or hides lines
_BAD_ID = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def check_id(value: Any, what: str, where: str) -> str:
    """``value`` as an id (a string, or an integer written as one): never empty, no whitespace or
    control characters, which TREC run and qrels files cannot carry."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: {what} must be a string, got {type(value).__name__} {value!r:.60}")
    text = str(value)
    bad = _BAD_ID.search(text)
    if not text or bad:
        why = "is empty" if not text else f"holds {bad.group()!r} (whitespace or a control character)" if bad else ""
        raise DataError(f"{where}: {what} {text!r:.80} {why}, which TREC runs and qrels cannot carry")
    return text


def check_text(value: Any, what: str, where: str) -> str:
    """A text field: a string of valid Unicode (a JSON "\\ud800" escape decodes to a lone surrogate)."""
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string, got {type(value).__name__} {value!r:.60}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: {what} holds a lone surrogate (\\u{ord(value[e.start]):04x} at character {e.start + 1}), "
                        f"which is not text") from None
    return value


def _query(qid: Any, text: Any, where: str) -> Query:
    qid = check_id(qid, "query id", where)
    text = check_text(text, f"query {qid!r}: text", where)
    try:
        return Query(qid, text)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


# ---------------------------------------------------------------- topics
def unique_queries(path: Path, queries: Iterable[tuple[int, Query]]) -> list[Query]:
    """The queries of a topics file, each with the line it starts on: a query id defined twice is
    refused, naming both lines (every topic format has this one rule), and so is a file with none."""
    out: list[Query] = []
    seen: dict[str, int] = {}
    for lineno, q in queries:
        if q.qid in seen:
            raise DataError(f"{path}:{lineno}: query id {q.qid!r} already defined on line {seen[q.qid]}")
        seen[q.qid] = lineno
        out.append(q)
    if not out:
        raise DataError(f"{path}: no queries in the file")
    return out


def read_topics(path: PathLike, encoding_errors: str = "strict", fmt: str | None = None) -> list[Query]:
    """Queries from a TSV file (``qid<TAB>text``) or JSONL (BEIR ``{"_id", "text"}``); ``fmt``
    (``tsv`` or ``jsonl``) says which, else the name (``.jsonl``, compressed too)."""
    path = Path(path)
    jsonl = fmt == "jsonl" if fmt else path.suffix == ".jsonl" or (path.suffix.lower() in COMPRESSED
                                                                    and path.stem.endswith(".jsonl"))

    def queries() -> Iterator[tuple[int, Query]]:
        for lineno, line in iter_lines(path, encoding_errors):
            where = f"{path}:{lineno}"
            if jsonl:
                obj = json_line(path, lineno, line)
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object with '_id' and 'text', got {type(obj).__name__}")
                qid = obj.get("_id", obj.get("qid", obj.get("query_id")))
                if qid is None or "text" not in obj:
                    raise DataError(f"{where}: expected a JSON object with '_id' and 'text'")
                yield lineno, _query(qid, obj["text"], where)
            else:
                parts = line.split("\t", 1)
                if len(parts) != 2:
                    raise DataError(f"{where}: expected 'qid<TAB>text', got {line[:80]!r}")
                yield lineno, _query(parts[0].strip(), parts[1].strip(), where)

    return unique_queries(path, queries())


# ---------------------------------------------------------------- qrels
def read_qrels(path: PathLike) -> Qrels:
    """TREC qrels (``qid iter docid rel``) or BEIR TSV (``query-id corpus-id score`` with a header).
    A line with a TAB is split on TABs (BEIR), others on whitespace (TREC). Grades are integers; a
    judgment given twice with different grades is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"qrels file not found: {path}")
    qrels: Qrels = {}
    lines: dict[tuple[str, str], int] = {}
    for lineno, line in iter_lines(path):
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if lineno == 1 and parts and parts[0].lower() in ("query-id", "qid", "query_id"):
            continue  # BEIR header
        if len(parts) == 4:
            qid, _, docid, rel = parts
        elif len(parts) == 3:
            qid, docid, rel = parts
        else:
            raise DataError(f"{path}:{lineno}: expected 'qid iter docid relevance' (or 'qid docid relevance'), got {len(parts)} "
                            f"columns")
        where = f"{path}:{lineno}"
        qid, docid = check_id(qid, "query id", where), check_id(docid, "document id", where)
        try:
            value = float(rel)
        except ValueError:
            raise DataError(f"{where}: relevance {rel!r} is not a number") from None
        if not math.isfinite(value) or value != int(value):
            raise DataError(f"{where}: relevance {rel!r} is not an integer grade")
        grade = int(value)
        judged = qrels.setdefault(qid, {})
        if docid in judged and judged[docid] != grade:
            raise DataError(f"{where}: document {docid!r} of query {qid!r} is judged {grade} here and {judged[docid]} on line "
                            f"{lines[qid, docid]}")
        judged[docid] = grade
        lines[qid, docid] = lineno
    if not qrels:
        raise DataError(f"{path}: no judgments in the file")
    return qrels


# ---------------------------------------------------------------- runs
def read_trec_run(path: PathLike) -> Ranking:
    """A TREC run (``qid Q0 docid rank score tag``); hits sorted by score, best first."""
    path = Path(path)
    run: dict[str, list[tuple[float, int, str]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for lineno, line in iter_lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DataError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}: {line[:80]!r}")
        qid, _, docid, rank, score, _tag = parts
        where = f"{path}:{lineno}"
        qid, docid = check_id(qid, "query id", where), check_id(docid, "document id", where)
        try:
            int(rank)
        except ValueError:
            raise DataError(f"{path}:{lineno}: rank {rank!r} is not an integer") from None
        try:
            s = float(score)
        except ValueError:
            raise DataError(f"{path}:{lineno}: score {score!r} is not a number") from None
        if math.isnan(s):
            raise DataError(f"{path}:{lineno}: score is NaN")
        if (qid, docid) in seen:
            raise DataError(f"{path}:{lineno}: document {docid!r} already ranked for query {qid!r} on line {seen[qid, docid]}")
        seen[qid, docid] = lineno
        run.setdefault(qid, []).append((s, lineno, docid))
    if not run:
        raise DataError(f"{path}: no run lines in the file")
    return {qid: [Hit(d, s) for s, _, d in sorted(rows, key=lambda r: (-r[0], r[1]))] for qid, rows in run.items()}


def write_trec_run(ranking: Mapping[str, Iterable[Hit]], path: PathLike, tag: str = "rerank") -> None:
    """Write a TREC run atomically (temporary file, then rename). Every id is checked first
    (:func:`check_id`): an id with a space or a newline would write a run that reads back wrong."""
    tag = _BAD_ID.sub("_", tag) or "rerank"
    rows = {qid: list(hits) for qid, hits in ranking.items()}
    for qid, hits in rows.items():
        check_id(qid, "query id", f"{path}")
        for h in hits:
            check_id(h.docid, f"document id (query {qid!r})", f"{path}")
            if not math.isfinite(h.score):
                raise DataError(f"{path}: document {h.docid!r} of query {qid!r} has score {h.score}")
    with atomic_write(path) as f:
        for qid, hits in rows.items():
            for rank, h in enumerate(hits, 1):
                f.write(f"{qid} Q0 {h.docid} {rank} {h.score:.6f} {tag}\n")


# ---------------------------------------------------------------- candidates with texts
_TEXT_KEYS = ("content", "contents", "text", "passage")


def _hit_text(hit: Mapping[str, Any]) -> str | None:
    for k in _TEXT_KEYS:
        if k in hit and hit[k] is not None:
            return str(hit[k])
    return None


def read_candidates(path: PathLike, encoding_errors: str = "strict") -> tuple[Ranking, dict[str, str]]:
    """First-stage candidates with passage texts, as published with rank_llm.

    The file is a JSON list (or JSONL, one per line) of ``{"query": TEXT, "hits": [{"qid",
    "docid", "rank", "score", "content"}]}``; an entry may carry its own ``"qid"``. Returns the
    ranking (hits with text, best first) and the query texts by qid.
    """
    path = Path(path)
    entries: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl":
        entries = [(f"{path}:{n}", json_line(path, n, line)) for n, line in iter_lines(path, encoding_errors)]
    else:
        with reading(path):
            raw = path.read_bytes().removeprefix(_BOM)
        try:
            text = raw.decode("utf-8", errors=encoding_errors)
        except UnicodeDecodeError as e:
            line_start = raw.rfind(b"\n", 0, e.start) + 1
            raise _utf8_error(path, raw.count(b"\n", 0, e.start) + 1, raw[e.start], e.start - line_start + 1) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of {{query, hits}} objects, got {type(data).__name__}")
        entries = [(f"{path}: entry {i + 1}", obj) for i, obj in enumerate(data)]
    ranking: Ranking = {}
    texts: dict[str, str] = {}
    for where, obj in entries:
        if not isinstance(obj, dict) or "hits" not in obj or "query" not in obj:
            raise DataError(f"{where}: expected an object with 'query' and 'hits'")
        hits = obj["hits"]
        if not isinstance(hits, list):
            raise DataError(f"{where}: 'hits' must be a list, got {type(hits).__name__}")
        qids = {str(h["qid"]) for h in hits if isinstance(h, dict) and "qid" in h}
        if "qid" in obj:
            qids.add(str(obj["qid"]))
        if len(qids) > 1:
            raise DataError(f"{where}: hits name several query ids {sorted(qids)}")
        if not qids:
            raise DataError(f"{where}: query {obj['query']!r} has no hits and no 'qid', so it cannot be matched to a topic")
        qid = check_id(qids.pop(), "query id", where)
        q = _query(qid, obj["query"], where)
        if qid in ranking:
            raise DataError(f"{where}: query {qid!r} appears twice in the file")
        seen: dict[str, int] = {}
        out: list[tuple[float, int, Hit]] = []
        for i, h in enumerate(hits):
            if not isinstance(h, dict) or "docid" not in h:
                raise DataError(f"{where}, hit {i + 1}: expected an object with 'docid'")
            docid = check_id(h["docid"], "document id", f"{where}, hit {i + 1}")
            if docid in seen:
                raise DataError(f"{where}: document {docid!r} appears twice for query {qid!r} (hits {seen[docid]} and {i + 1})")
            seen[docid] = i + 1
            try:
                score = float(h.get("score", -float(h.get("rank", i + 1))))
            except (TypeError, ValueError):
                raise DataError(f"{where}, hit {i + 1}: score {h.get('score')!r} is not a number") from None
            if math.isnan(score):
                raise DataError(f"{where}, hit {i + 1}: score is NaN")
            field = _hit_text(h)
            passage = None if field is None else check_text(field, "passage", f"{where}, hit {i + 1}")
            out.append((score, i, Hit(docid, score, passage)))
        ranking[qid] = [h for _, _, h in sorted(out, key=lambda r: (-r[0], r[1]))]
        texts[qid] = q.text
    return ranking, texts


def read_run(path: PathLike, encoding_errors: str = "strict") -> Ranking:
    """A run from a TREC run file or a candidate file (.json/.jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"run file not found: {path}")
    if path.suffix in (".json", ".jsonl"):
        return read_candidates(path, encoding_errors)[0]
    return read_trec_run(path)


# ---------------------------------------------------------------- BEIR corpus
def read_beir_corpus(path: PathLike, encoding_errors: str = "strict") -> dict[str, str]:
    """docid -> "title text" from a BEIR corpus.jsonl (title and text in one field, as Pyserini's flat index)."""
    return dict(iter_beir_corpus(path, encoding_errors))


def iter_beir_corpus(path: PathLike, encoding_errors: str = "strict", *, unique: bool = True) -> Iterator[tuple[str, str]]:
    """(docid, "title text") of a BEIR corpus.jsonl, in file order; a repeated id is an error
    (``unique=False``: left to the caller, which then holds no set of every id)."""
    path = Path(path)
    docs: set[str] = set()
    for lineno, line in iter_lines(path, encoding_errors):
        obj = json_line(path, lineno, line)
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict) or "_id" not in obj:
            raise DataError(f"{where}: expected a JSON object with '_id'")
        docid = check_id(obj["_id"], "document id", where)
        if unique:
            if docid in docs:
                raise DataError(f"{where}: document id {docid!r} appears twice")
            docs.add(docid)
        title, text = obj.get("title") or "", obj.get("text") or ""
        if _SURROGATE_ESCAPE.search(line) or not isinstance(title, str) or not isinstance(text, str):
            title, text = check_text(title, "title", where), check_text(text, "text", where)
        yield docid, f"{title} {text}".strip() if title else text
