"""Datasets by name or path.

``load_dataset`` accepts, in this order:

1. a path: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), a
   collection folder in any of the formats of :mod:`rerank.data.collections` (a corpus as TSV,
   JSONL, CSV, Parquet, a datasets folder, TREC SGML or SMART, one file or a folder of them;
   topics as TSV, JSONL, TREC SGML or SMART; qrels; candidate files with passage texts and TREC
   runs), or a single candidate
   file (JSON/JSONL) or topics file;
2. an alias (``trec-dl-19``, ``scifact``, ...; see :data:`ALIASES`): loaded through ir_datasets,
   falling back to the same data under the local mirror (``$RERANK_SHARED_DATA``, default
   ``../shared/data``) when ir_datasets cannot get it;
3. any ir_datasets id (``beir/nfcorpus/test``, ``msmarco-passage/trec-dl-2020/judged``, ...).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..env import shared_data_dir
from ..errors import DataError, DatasetNotFound, DatasetUnavailable
from ..types import Query, Ranking
from .collections import ReadOptions, iter_corpus, layout, read_qrels_any, read_topics_any, unknown_judgments
from .formats import Qrels, iter_beir_corpus, read_candidates, read_qrels, read_run, read_topics
from .store import DiskDocStore, DocStore, IrdsDocStore, MemoryDocStore

log = logging.getLogger("rerank")

__all__ = ["ALIASES", "Dataset", "DiskDocStore", "DocStore", "MemoryDocStore", "Qrels", "ReadOptions", "list_datasets",
           "load_dataset"]


@dataclass(frozen=True)
class Alias:
    irds: str
    shared: str | None
    rel: int
    description: str


ALIASES: dict[str, Alias] = {
    "trec-dl-19": Alias("msmarco-passage/trec-dl-2019/judged", "trec-dl/dl19", 2,
                        "TREC DL 2019 passage, 43 judged queries (MS MARCO 8.8M passages)"),
    "trec-dl-20": Alias("msmarco-passage/trec-dl-2020/judged", "trec-dl/dl20", 2,
                        "TREC DL 2020 passage, 54 judged queries (MS MARCO 8.8M passages)"),
    "msmarco-dev": Alias("msmarco-passage/dev/small", None, 1, "MS MARCO passage dev (small), 6,980 queries"),
    "scifact": Alias("beir/scifact/test", "beir/scifact", 1, "BEIR SciFact test, 300 queries, 5,183 abstracts"),
    "cranfield": Alias("cranfield", None, 1, "Cranfield, 225 queries, 1,400 abstracts"),
}


@dataclass
class Dataset:
    """Queries, relevance judgments and documents of one test collection.

    ``candidates`` names first-stage runs shipped with the data (e.g. the published BM25 top-100
    of TREC DL with passage texts), usable as a first stage when the full corpus is absent.
    ``rel`` is the relevance grade from which a document counts as relevant for binary
    measures (RR, R, P, AP): 2 for TREC DL, 1 elsewhere; ``rel_source`` says where it comes from
    (an alias, qrels recognised by their content, a ``dataset.json``, or the default).
    """

    name: str
    queries: list[Query]
    qrels: Qrels | None = None
    docs: DocStore | None = None
    candidates: dict[str, Path] = field(default_factory=dict)
    rel: int = 1
    source: str = ""
    encoding_errors: str = "strict"
    rel_source: str = "default"
    _runs: dict[str, Ranking] = field(default_factory=dict, repr=False)

    def set_qrels(self, qrels: Qrels, source: str = "") -> None:
        """Judge with ``qrels`` (e.g. ``--qrels FILE``): the relevance threshold follows them when
        they are a known collection's (recognised by content), else stays as it was. Judgments of
        queries or documents the dataset does not have are warned of (:meth:`unknown_judgments`)."""
        self.qrels = qrels
        known = KNOWN_QRELS.get(qrels_fingerprint(qrels))
        if known is not None:
            self.rel, self.rel_source = ALIASES[known].rel, f"{known} qrels, recognised by content"
        self.warn_unknown_judgments(source)

    def unknown_judgments(self) -> str:
        """What of the qrels judges a query not in the topics, or a document not in the corpus (when
        the corpus is here whole, in files), in one line; empty when nothing."""
        if self.qrels is None:
            return ""
        docs = self.docs if isinstance(self.docs, (MemoryDocStore, DiskDocStore)) and self.docs.complete else None
        judged = sorted({d for j in self.qrels.values() for d in j})
        found = None if docs is None else {d for d, text in zip(judged, docs.get_many(judged), strict=True) if text is not None}
        return unknown_judgments(self.qrels, [q.qid for q in self.queries], found)

    def warn_unknown_judgments(self, source: str = "") -> None:
        unknown = self.unknown_judgments()
        if unknown:
            log.warning("%s: the qrels%s hold %s", self.name, f" ({source})" if source else "", unknown)

    def candidate_run(self, name: str) -> Ranking:
        if name not in self.candidates:
            have = ", ".join(sorted(self.candidates)) or "none"
            raise DataError(f"dataset {self.name!r} has no candidate run {name!r} (it has: {have})")
        if name not in self._runs:
            self._runs[name] = read_run(self.candidates[name], self.encoding_errors)
        return self._runs[name]

    def require_qrels(self) -> Qrels:
        if self.qrels is None:
            raise DataError(f"dataset {self.name!r} ({self.source}) has no relevance judgments (qrels); pass --qrels FILE")
        return self.qrels


#: qrels recognised by content (:func:`qrels_fingerprint`): a copy anywhere is judged by its collection's conventions
KNOWN_QRELS: dict[str, str] = {"65d10133a143898ad5c20f2b13d38e74": "trec-dl-19"}  # NIST's 9,260 judgments, 43 queries

#: a dataset folder's own conventions: ``{"rel": 2}`` (and optionally ``"name"``)
METADATA = "dataset.json"


def qrels_fingerprint(qrels: Qrels) -> str:
    """A hash of every (query, document, grade) judgment, independent of file layout and order."""
    h = hashlib.blake2b(digest_size=16)
    for qid in sorted(qrels):
        for docid in sorted(qrels[qid]):
            h.update(f"{qid}\t{docid}\t{qrels[qid][docid]}\n".encode())
    return h.hexdigest()


def _conventions(ds: Dataset, folder: Path) -> None:
    """The name and relevance threshold of a dataset read from files: its qrels recognised by
    content, then the folder's ``dataset.json`` (which wins)."""
    if ds.qrels is not None:
        known = KNOWN_QRELS.get(qrels_fingerprint(ds.qrels))
        if known is not None:
            ds.name, ds.rel, ds.rel_source = known, ALIASES[known].rel, f"{known} qrels, recognised by content"
    meta = folder / METADATA
    if not meta.is_file():
        return
    try:
        data = json.loads(meta.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{meta}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or set(data) - {"rel", "name", "description"}:
        raise DataError(f"{meta}: expected an object with 'rel' (an integer grade) and optionally 'name', 'description'")
    if "rel" in data:
        if isinstance(data["rel"], bool) or not isinstance(data["rel"], int) or data["rel"] < 1:
            raise DataError(f"{meta}: 'rel' must be a positive integer grade, got {data['rel']!r}")
        ds.rel, ds.rel_source = data["rel"], str(meta)
    if isinstance(data.get("name"), str) and data["name"].strip():
        ds.name = data["name"].strip()


# ---------------------------------------------------------------- paths
def _load_beir(folder: Path, split: str, encoding_errors: str, read: ReadOptions) -> Dataset:
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DataError(f"BEIR folder {folder} has no qrels file qrels/{split}.tsv (splits present: {', '.join(have) or 'none'})")
    qrels = read_qrels(qrels_path)
    for name in ("queries.jsonl", "corpus.jsonl"):
        if not (folder / name).is_file():
            raise DataError(f"BEIR folder {folder} has no {name} (a BEIR folder holds corpus.jsonl, queries.jsonl and "
                            f"qrels/<split>.tsv)")
    queries = [q for q in read_topics(folder / "queries.jsonl", encoding_errors) if q.qid in qrels]
    if not queries:
        raise DataError(f"{folder}: none of the queries in queries.jsonl is judged in qrels/{split}.tsv")
    corpus = folder / "corpus.jsonl"
    docs = corpus_store(folder.name, corpus, lambda unique: iter_beir_corpus(corpus, encoding_errors, unique=unique),
                        {"format": "beir"}, read)
    return Dataset(folder.name, queries, qrels, docs, source=str(folder))


def corpus_store(name: str, source: Path, reader: Callable[[bool], Iterable[tuple[str, str]]], params: dict[str, object],
                 read: ReadOptions, files: list[Path] | None = None) -> DocStore:
    """The documents ``reader(unique)`` yields from ``source`` (its ``files``: by default the file,
    or every file under the folder): a :class:`MemoryDocStore` for a small
    corpus, a :class:`DiskDocStore` (built once, beside the indexes) for one of
    ``$RERANK_DOCSTORE_MIN_MB`` MB (default 256) or more, or as ``read.doc_store`` says. ``unique``:
    the reader refuses a repeated id itself (naming its line; memory per document); the disk store
    finds one while it sorts its table instead, in memory flat in the corpus."""
    if read.doc_store not in ("auto", "memory", "disk"):
        raise DataError(f"doc_store must be auto, memory or disk, not {read.doc_store!r}")
    if files is None:
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    threshold = float(os.environ.get("RERANK_DOCSTORE_MIN_MB", "256"))
    if read.doc_store == "memory" or (read.doc_store == "auto" and size_mb < threshold):
        return MemoryDocStore(lambda: dict(reader(True)), name=name)
    log.info("%s: %.0f MB of documents: reading them through a document store on disk", name, size_mb)
    return DiskDocStore.for_source(name, files, lambda: reader(False), {**params, "source": source.name})


def _candidate_name(p: Path) -> str:
    return p.name.split(".")[0]


def _load_folder(folder: Path, encoding_errors: str, read: ReadOptions) -> Dataset:
    """A collection folder (not BEIR): its corpus, topics and qrels as :func:`collections.layout`
    finds them, and candidate files (JSON/JSONL with passage texts, TREC runs)."""
    lay = layout(folder, read.doc_format, read.topic_format)
    taken = {lay.corpus, lay.topics, lay.qrels, *(p for p, _ in lay.corpus_files)}
    candidates: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix in (".trec", ".run") and p not in taken and _candidate_name(p) not in candidates:
            candidates[_candidate_name(p)] = p
    for p in sorted(folder.iterdir()):
        if p.suffix in (".json", ".jsonl") and p not in taken and p.name != METADATA:
            candidates[_candidate_name(p)] = p  # texts beat a bare TREC run of the same name
    texted_names = [n for n, p in candidates.items() if p.suffix in (".json", ".jsonl")]
    if lay.topics is None and not texted_names:
        raise DataError(f"{folder}: no topics file (queries.*, topics.*, *.QRY) and no candidate files with query texts; "
                        f"`rerank datasets inspect {folder}` shows what was recognised")
    if lay.topics is not None:
        queries = read_topics_any(lay.topics, lay.topics_format, read.topic_field, encoding_errors)
    else:
        seen: dict[str, str] = {}
        for name in texted_names:
            seen.update(read_candidates(candidates[name], encoding_errors)[1])
        queries = [Query(q, t) for q, t in seen.items()]
    qrels = read_qrels_any(lay.qrels) if lay.qrels else None
    ds = Dataset(folder.name, queries, qrels, None, candidates, source=str(folder), encoding_errors=encoding_errors)
    if lay.corpus is not None:
        files = lay.corpus_files
        ds.docs = corpus_store(folder.name, lay.corpus, lambda unique: iter_corpus(files, read.fields, encoding_errors,
                                                                                   unique=unique),
                               {"format": lay.corpus_format, "id_field": read.id_field, "text_fields": list(read.text_fields)},
                               read, files=[p for p, _ in files])
        return ds

    def union() -> dict[str, str]:  # parsed once: the runs stay cached for candidate_run
        docs: dict[str, str] = {}
        for name in texted_names:
            for hits in ds.candidate_run(name).values():
                for h in hits:
                    if h.text is not None:
                        docs.setdefault(h.docid, h.text)
        return docs

    if texted_names:
        ds.docs = MemoryDocStore(union, name=f"{folder.name}-candidates", complete=False)
    return ds


def _load_file(path: Path, encoding_errors: str) -> Dataset:
    if path.suffix in (".json", ".jsonl"):
        with path.open("rb") as f:
            head = f.read(4096)
        if b'"hits"' in head or path.suffix == ".json":
            ranking, texts = read_candidates(path, encoding_errors)
            docs = {h.docid: h.text for hits in ranking.values() for h in hits if h.text is not None}
            ds = Dataset(path.stem, [Query(q, t) for q, t in texts.items()], None,
                         MemoryDocStore(docs, name=path.stem, complete=False), {_candidate_name(path): path}, source=str(path))
            ds._runs[_candidate_name(path)] = ranking
            return ds
    return Dataset(path.stem, read_topics(path, encoding_errors), source=str(path))


def _load_path(path: Path, split: str, encoding_errors: str, read: ReadOptions) -> Dataset:
    if path.is_dir():
        if (path / "corpus.jsonl").is_file() and (path / "qrels").is_dir() and replace(read, doc_store="auto") == ReadOptions():
            ds = _load_beir(path, split, encoding_errors, read)
        else:
            ds = _load_folder(path, encoding_errors, read)
    else:
        ds = _load_file(path, encoding_errors)
    _conventions(ds, path if path.is_dir() else path.parent)
    ds.warn_unknown_judgments()
    return ds


# ---------------------------------------------------------------- ir_datasets
def _load_irds(dataset_id: str, name: str | None = None, rel: int = 1) -> Dataset:
    from .irds import irds_load, loading

    with loading(dataset_id):
        ds = irds_load(dataset_id)
        if not ds.has_queries():
            raise DataError(f"ir_datasets id {dataset_id!r} has no queries; pick a dataset with topics (e.g. its /test or "
                            f"/judged subset)")
        queries = []
        for q in ds.queries_iter():
            try:
                queries.append(Query(str(q.query_id), q.default_text()))
            except DataError as e:
                raise DataError(f"ir_datasets {dataset_id}: {e}") from None
        qrels: Qrels | None = None
        if ds.has_qrels():
            qrels = {}
            for r in ds.qrels_iter():
                qrels.setdefault(str(r.query_id), {})[str(r.doc_id)] = int(r.relevance)
    docs = IrdsDocStore(ds, dataset_id) if ds.has_docs() else None
    return Dataset(name or dataset_id, queries, qrels, docs, rel=rel, source=f"ir_datasets:{dataset_id}",
                   rel_source=f"the {name} alias" if name else "default")


def _close_matches(name: str) -> list[str]:
    from .irds import registry_ids

    pool = list(ALIASES) + registry_ids()
    close = difflib.get_close_matches(name, pool, n=6, cutoff=0.5)
    close += [p for p in pool if name.lower() in p.lower() and p not in close][:3]
    return close


def load_dataset(name_or_path: str, *, split: str = "test", encoding_errors: str = "strict",
                 read: ReadOptions | None = None) -> Dataset:
    """Load a dataset by path, alias or ir_datasets id (see the module docstring); ``read``: how to
    read a collection folder whose files do not say it (formats, id and text fields, topic field)."""
    read = read or ReadOptions()
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise DatasetNotFound(f"dataset name must be a non-empty string, got {name_or_path!r}")
    if encoding_errors not in ("strict", "replace", "ignore"):
        raise ValueError(f"encoding_errors must be strict, replace or ignore, not {encoding_errors!r}")
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_path(path, split, encoding_errors, read)
    alias = ALIASES.get(name_or_path)
    if alias is not None:
        try:
            return _load_irds(alias.irds, name_or_path, alias.rel)
        except DatasetUnavailable as e:
            shared = shared_data_dir()
            local = shared / alias.shared if shared and alias.shared else None
            if local is not None and local.is_dir():
                log.info("%s: using the local copy at %s (ir_datasets: %s)", name_or_path, local, e.cause)
                ds = _load_path(local, split, encoding_errors, ReadOptions())
                ds.source = f"{local} (local copy of ir_datasets:{alias.irds})"
                ds.name, ds.rel, ds.rel_source = name_or_path, alias.rel, f"the {name_or_path} alias"
                return ds
            hint = f" Or put the files under $RERANK_SHARED_DATA/{alias.shared}." if alias.shared else ""
            raise DatasetUnavailable(f"{e}.{hint}") from None
    from .irds import registry_ids

    if name_or_path in registry_ids():
        return _load_irds(name_or_path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or path.suffix in (".json", ".jsonl", ".tsv", ".txt", ".trec")
    missing = f" No file or folder {path} exists." if looks_like_path else ""
    close = _close_matches(name_or_path)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise DatasetNotFound(f"unknown dataset {name_or_path!r}: not a path, an alias ({', '.join(ALIASES)}) "
                          f"or an ir_datasets id.{missing}{hint} `rerank datasets` lists the aliases.")


def list_datasets() -> list[tuple[str, str, str]]:
    """(alias, ir_datasets id, description) for every alias, plus where a local copy is."""
    shared = shared_data_dir()
    rows = []
    for name, a in ALIASES.items():
        local = shared / a.shared if shared and a.shared else None
        where = f"{a.irds}" + (f" | local copy: {local}" if local is not None and local.is_dir() else "")
        rows.append((name, where, a.description))
    return rows
