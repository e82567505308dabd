"""Document stores: docid -> text, with a fingerprint that tells when a corpus changed.

:class:`MemoryDocStore` holds a dict (small corpora, candidate passages, the Python API);
:class:`DiskDocStore` keeps a corpus in files built once per source (beside the indexes), read
through memory maps: random access by docid without the corpus in RAM, shared read-only by
processes and Ray workers, iteration in corpus order for indexing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

log = logging.getLogger("rerank")

#: documents per fingerprint chunk (and per resumable step of a disk store build)
CHUNK = 10_000
#: hashes per window of a disk store's lookup table (its fence, every FENCE-th hash, is kept in memory)
FENCE = 512


def _chunk_digest(items: Iterable[tuple[str, str]]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for docid, text in items:
        h.update(docid.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x01")
    return h.digest()


def _combine(n: int, digests: Iterable[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for d in digests:
        h.update(d)
    return f"{n}:{h.hexdigest()}"


class DocStore:
    """Read access to a corpus. ``complete`` is False when it holds only some documents
    (e.g. the passages of candidate files), which a first-stage retriever must not index
    as if it were the collection."""

    name: str = "docs"
    complete: bool = True

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, docid: str) -> str:
        raise NotImplementedError

    def items(self) -> Iterator[tuple[str, str]]:
        """(docid, text) for every document, in a fixed order."""
        raise NotImplementedError

    def get(self, docid: str, default: str | None = None) -> str | None:
        try:
            return self[docid]
        except KeyError:
            return default

    def __contains__(self, docid: object) -> bool:
        return isinstance(docid, str) and self.get(docid) is not None

    def get_many(self, docids: Sequence[str]) -> list[str | None]:
        """The texts of ``docids`` (None for an unknown id), in order: a ranking's texts in one call."""
        return [self.get(d) for d in docids]

    def fingerprint(self) -> str:
        """A hash of every (docid, text) pair, in order (by chunks of :data:`CHUNK`, so that a
        disk store computes the same one while it is built): equal fingerprints, same corpus."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            digests, chunk, n = [], [], 0
            for item in self.items():
                chunk.append(item)
                n += 1
                if len(chunk) == CHUNK:
                    digests.append(_chunk_digest(chunk))
                    chunk = []
            if chunk:
                digests.append(_chunk_digest(chunk))
            cached = _combine(n, digests)
            self._fingerprint = cached
        return cached

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class MemoryDocStore(DocStore):
    """Documents held in a dict (BEIR corpora, candidate passages), optionally loaded on first use."""

    def __init__(self, docs: dict[str, str] | Callable[[], dict[str, str]], name: str = "docs", complete: bool = True) -> None:
        self._docs: dict[str, str] | None = docs if isinstance(docs, dict) else None
        self._load = None if isinstance(docs, dict) else docs
        self.name = name
        self.complete = complete

    @property
    def docs(self) -> dict[str, str]:
        if self._docs is None:
            assert self._load is not None
            self._docs = self._load()
        return self._docs

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, docid: str) -> str:
        return self.docs[docid]

    def get(self, docid: str, default: str | None = None) -> str | None:
        return self.docs.get(docid, default)

    def get_many(self, docids: Sequence[str]) -> list[str | None]:
        docs = self.docs
        return [docs.get(d) for d in docids]

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self.docs.items())


class IrdsDocStore(DocStore):
    """The documents of an ir_datasets dataset (streamed for indexing, looked up by id)."""

    def __init__(self, dataset: Any, dataset_id: str) -> None:
        self._ds = dataset
        self.name = dataset_id
        self._store: Any = None

    def __len__(self) -> int:
        from .irds import loading

        with loading(self.name):
            return int(self._ds.docs_count())

    def __getitem__(self, docid: str) -> str:
        from .irds import doc_text, loading

        with loading(self.name):
            if self._store is None:
                self._store = self._ds.docs_store()
            return doc_text(self._store.get(docid))

    def items(self) -> Iterator[tuple[str, str]]:
        from .irds import doc_text, loading

        with loading(self.name):
            for doc in self._ds.docs_iter():
                yield doc.doc_id, doc_text(doc)

    def fingerprint(self) -> str:
        # ir_datasets versions its corpora by id; hashing 8.8M MS MARCO passages on every run
        # would cost more than it protects. The count still catches a truncated local copy.
        import ir_datasets

        return f"irds:{self.name}:{len(self)}:{ir_datasets.__version__}"


def source_fingerprint(files: Iterable[Path]) -> str:
    """A cheap key of source files: names, sizes, modification times and the first and last MiB
    of each (a changed file changes it; the store built from them keeps the full fingerprint)."""
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if st.st_size > 2 << 20:
                fh.seek(st.st_size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()


#: hashes sorted in memory at once while a disk store's lookup table is built (16 bytes each with their rows)
SORT_BUCKET = 1 << 20


def _sort_table(folder: Path, name: str) -> None:
    """``hashes.bin`` (the ids' hashes in row order) sorted into ``keys.bin``, with ``rows.bin`` (their rows), in memory
    flat in the corpus size: the hashes are uniform, so they are dealt into 2^b buckets by their top
    b bits (about :data:`SORT_BUCKET` each, one streaming pass), and each bucket is sorted alone and
    appended; buckets in order are the table in order. Equal ids share a hash, hence a bucket: a
    repeated id is found there."""
    path = folder / "hashes.bin"
    n = path.stat().st_size // 8
    bits = min(10, max(0, (max(1, -(-n // SORT_BUCKET)) - 1).bit_length()))
    parts = folder / "sort-buckets"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    outs = [(open(parts / f"{b}.keys", "wb"), open(parts / f"{b}.rows", "wb")) for b in range(1 << bits)]  # noqa: SIM115
    try:
        for start in range(0, n, SORT_BUCKET):
            block = np.fromfile(path, dtype=np.uint64, count=SORT_BUCKET, offset=8 * start)  # read, not mapped: no pages kept
            rows = np.arange(start, start + len(block), dtype=np.int64)
            bucket = (block >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(len(block), dtype=np.int64)
            order = np.argsort(bucket, kind="stable")  # rows stay in order within a bucket
            bounds = np.searchsorted(bucket[order], np.arange((1 << bits) + 1))
            for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                if hi > lo:
                    outs[b][0].write(block[order[lo:hi]].tobytes())
                    outs[b][1].write(rows[order[lo:hi]].tobytes())
    finally:
        for fk, fr in outs:
            fk.close()
            fr.close()
    id_offsets = np.memmap(folder / "id_offsets.bin", dtype=np.int64, mode="r")
    raw = np.memmap(folder / "ids.bin", dtype=np.uint8, mode="r") if (folder / "ids.bin").stat().st_size else None
    tmp_keys, tmp_rows = folder / "keys.sorted.tmp", folder / "rows.bin.tmp"
    with open(tmp_keys, "wb") as out_keys, open(tmp_rows, "wb") as out_rows:
        for b in range(1 << bits):
            bk, br = np.fromfile(parts / f"{b}.keys", dtype=np.uint64), np.fromfile(parts / f"{b}.rows", dtype=np.int64)
            order = np.argsort(bk, kind="stable")
            bk, br = bk[order], br[order]
            for j in np.flatnonzero(bk[1:] == bk[:-1]):
                assert raw is not None
                first, second = (bytes(raw[id_offsets[r] : id_offsets[r + 1]]) for r in (br[j], br[j + 1]))
                if first == second:
                    raise DataError(f"{name}: document id {first.decode(errors='replace')!r} appears twice")
            out_keys.write(bk.tobytes())
            out_rows.write(br.tobytes())
    os.replace(tmp_rows, folder / "rows.bin")
    os.replace(tmp_keys, folder / "keys.bin")  # hashes.bin stays until the build is marked done: a resumed build sorts again
    shutil.rmtree(parts, ignore_errors=True)


class DiskDocStore(DocStore):
    """A corpus in files: ``texts.bin``/``text_offsets.bin`` (UTF-8 texts and int64 offsets, in
    corpus order), ``ids.bin``/``id_offsets.bin`` (the ids), and a lookup table ``keys.bin``/
    ``rows.bin`` (64-bit hashes of the ids, sorted, with their rows): a document is found by a
    binary search over memory-mapped hashes and two reads, with nothing of the corpus in RAM.
    ``corpus.json`` holds the count and the corpus fingerprint. Build one with :meth:`build`
    or :meth:`for_source`; open it with ``DiskDocStore(folder)``."""

    complete = True

    def __init__(self, folder: str | Path, name: str | None = None) -> None:
        self.folder = Path(folder)
        corpus = json.loads((self.folder / "corpus.json").read_text())
        self.name = name or corpus.get("name", self.folder.name)
        self._n = int(corpus["documents"])
        self._fingerprint = corpus["fingerprint"]
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:  # memory maps are opened again where it is unpickled
        return {k: v for k, v in self.__dict__.items() if k != "_maps"} | {"_maps": {}}

    def _map(self, name: str, dtype: Any) -> np.ndarray:
        if name not in self._maps:
            path = self.folder / name
            self._maps[name] = (np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size
                                else np.zeros(0, dtype=dtype))
        return self._maps[name]

    def __len__(self) -> int:
        return self._n

    def _text(self, row: int) -> str:
        offsets = self._map("text_offsets.bin", np.int64)
        return bytes(self._map("texts.bin", np.uint8)[offsets[row] : offsets[row + 1]]).decode("utf-8", "surrogatepass")

    def _id(self, row: int) -> str:
        offsets = self._map("id_offsets.bin", np.int64)
        return bytes(self._map("ids.bin", np.uint8)[offsets[row] : offsets[row + 1]]).decode("utf-8", "surrogatepass")

    def _fence(self) -> np.ndarray:
        """Every FENCE-th hash, in memory (8 bytes per FENCE documents): a lookup searches it, then
        one window of FENCE hashes on disk (two pages), instead of ~log2(n) pages of the table."""
        if "fence" not in self._maps:
            self._maps["fence"] = np.array(self._map("keys.bin", np.uint64)[::FENCE])
        return self._maps["fence"]

    def _position(self, key: int) -> int:
        """The first position in the sorted hash table whose hash is >= ``key``."""
        keys, fence = self._map("keys.bin", np.uint64), self._fence()
        b = int(np.searchsorted(fence, np.uint64(key), side="right"))
        start, end = max(0, (b - 1) * FENCE), min(len(keys), b * FENCE + 1)
        return start + int(np.searchsorted(keys[start:end], np.uint64(key)))

    def row(self, docid: str) -> int | None:
        keys, rows = self._map("keys.bin", np.uint64), self._map("rows.bin", np.int64)
        key = _key(docid)
        i = self._position(key)
        while i < len(keys) and keys[i] == key:
            if self._id(int(rows[i])) == docid:
                return int(rows[i])
            i += 1
        return None

    def __getitem__(self, docid: str) -> str:
        row = self.row(docid) if isinstance(docid, str) else None
        if row is None:
            raise KeyError(docid)
        return self._text(row)

    def get(self, docid: str, default: str | None = None) -> str | None:
        row = self.row(docid) if isinstance(docid, str) else None
        return default if row is None else self._text(row)

    def get_many(self, docids: Sequence[str]) -> list[str | None]:
        """Many lookups at once: the hashes searched together, the offsets read together."""
        if not docids:
            return []
        keys, rows = self._map("keys.bin", np.uint64), self._map("rows.bin", np.int64)
        if not len(keys):
            return [None] * len(docids)
        want = np.fromiter((_key(d) for d in docids), dtype=np.uint64, count=len(docids))
        # one vectorised search of the whole table: a ranking's lookups are many, and its pages soon warm
        pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        found = (np.asarray(keys[pos]) == want).tolist()
        row = np.asarray(rows[pos])
        id_off, t_off = self._map("id_offsets.bin", np.int64), self._map("text_offsets.bin", np.int64)
        id_raw, t_raw = self._map("ids.bin", np.uint8), self._map("texts.bin", np.uint8)
        ia, ib = np.asarray(id_off[row]).tolist(), np.asarray(id_off[row + 1]).tolist()
        ta, tb = np.asarray(t_off[row]).tolist(), np.asarray(t_off[row + 1]).tolist()
        out: list[str | None] = []
        for j, docid in enumerate(docids):
            if not found[j]:
                out.append(None)
            elif bytes(id_raw[ia[j] : ib[j]]).decode("utf-8", "surrogatepass") != docid:
                out.append(self.get(docid))  # another id with the same hash sits first: the exact search
            else:
                out.append(bytes(t_raw[ta[j] : tb[j]]).decode("utf-8", "surrogatepass"))
        return out

    def items(self) -> Iterator[tuple[str, str]]:
        for row in range(self._n):
            yield self._id(row), self._text(row)

    def fingerprint(self) -> str:
        return str(self._fingerprint)

    # ------------------------------------------------------------------ building
    @staticmethod
    def build(docs: Iterable[tuple[str, str]], folder: Path, name: str = "docs") -> None:
        """Write ``docs`` into ``folder`` (which may hold an interrupted build of the same source:
        it resumes after the last finished chunk of :data:`CHUNK` documents)."""
        folder.mkdir(parents=True, exist_ok=True)
        progress_file = folder / "progress.json"
        done: dict[str, Any] = (json.loads(progress_file.read_text()) if progress_file.is_file()
                                else {"documents": 0, "digests": [], "texts": 0, "ids": 0})
        names = ("texts.bin", "text_offsets.bin", "ids.bin", "id_offsets.bin", "hashes.bin")
        sizes = {"texts.bin": done["texts"], "ids.bin": done["ids"], "text_offsets.bin": 8 * done["documents"],
                 "id_offsets.bin": 8 * done["documents"], "hashes.bin": 8 * done["documents"]}
        files = {}
        for n in names:
            f = open(folder / n, "ab")  # noqa: SIM115 - closed below
            f.truncate(sizes[n])  # drop what an interrupted chunk wrote
            f.seek(sizes[n])
            files[n] = f
        if done["documents"]:
            log.info("resuming the document store build in %s after %d documents", folder, done["documents"])
        count, text_pos, id_pos = int(done["documents"]), int(done["texts"]), int(done["ids"])
        digests = [bytes.fromhex(d) for d in done["digests"]]
        chunk: list[tuple[str, str]] = []

        def flush() -> None:
            nonlocal text_pos, id_pos
            text_off, id_off, keys = [], [], []
            texts, ids = [], []
            for docid, text in chunk:
                t, d = text.encode("utf-8", "surrogatepass"), docid.encode("utf-8", "surrogatepass")
                text_off.append(text_pos)
                id_off.append(id_pos)
                text_pos += len(t)
                id_pos += len(d)
                texts.append(t)
                ids.append(d)
                keys.append(_key(docid))
            files["texts.bin"].write(b"".join(texts))
            files["ids.bin"].write(b"".join(ids))
            files["text_offsets.bin"].write(np.asarray(text_off, dtype=np.int64).tobytes())
            files["id_offsets.bin"].write(np.asarray(id_off, dtype=np.int64).tobytes())
            files["hashes.bin"].write(np.asarray(keys, dtype=np.uint64).tobytes())
            for f in files.values():
                f.flush()
                os.fsync(f.fileno())
            digests.append(_chunk_digest(chunk))
            progress = {"documents": count, "digests": [d.hex() for d in digests], "texts": text_pos, "ids": id_pos}
            tmp = progress_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(progress))
            os.replace(tmp, progress_file)

        try:
            for i, (docid, text) in enumerate(docs):
                if i < done["documents"]:
                    continue  # written before the interruption
                chunk.append((docid, text))
                count += 1
                if len(chunk) == CHUNK:
                    flush()
                    chunk = []
            if chunk:
                flush()
            files["text_offsets.bin"].write(np.asarray([text_pos], dtype=np.int64).tobytes())
            files["id_offsets.bin"].write(np.asarray([id_pos], dtype=np.int64).tobytes())
        finally:
            for f in files.values():
                f.close()
        _sort_table(folder, name)
        progress_file.unlink()
        (folder / "hashes.bin").unlink()
        (folder / "corpus.json").write_text(json.dumps({"name": name, "documents": count,
                                                         "fingerprint": _combine(count, digests)}))

    @classmethod
    def for_source(cls, name: str, files: list[Path], reader: Callable[[], Iterable[tuple[str, str]]],
                   params: dict[str, Any], *, root: Path | None = None, rebuild: bool = False) -> DiskDocStore:
        """The store of the corpus ``reader()`` yields from ``files``: built once (atomically,
        resumably) under the indexes folder, rebuilt when a source file changed."""
        from ..indexes import build_or_reuse, index_path

        params = {**params, "format": 2}  # 2: row-order hashes kept in hashes.bin until the table is sorted
        path = index_path("docstore", name, params, root)
        expected = {"kind": "docstore", "backend": "rerank", "params": params, "name": name,
                    "corpus": {"name": name, "fingerprint": f"source:{source_fingerprint(files)}"}}

        def build(tmp: Path) -> None:
            cls.build(reader(), tmp, name)

        build_or_reuse(path, expected, build, rebuild=rebuild, resumable=True)
        return cls(path, name)


def _key(docid: str) -> int:
    return int.from_bytes(hashlib.blake2b(docid.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
