"""Document stores: docid -> text, with a fingerprint that tells when a corpus changed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any


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

    def fingerprint(self) -> str:
        """A hash of every (docid, text) pair: equal fingerprints mean the same corpus."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            h = hashlib.blake2b(digest_size=16)
            n = 0
            for docid, text in self.items():
                h.update(docid.encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
                h.update(text.encode("utf-8", "surrogatepass"))
                h.update(b"\x01")
                n += 1
            cached = f"{n}:{h.hexdigest()}"
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
