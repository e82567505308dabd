"""A precomputed run (TREC run file, candidate file with texts, or an in-memory ranking) as a stage."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.formats import read_run
from ..data.store import DocStore
from ..errors import RerankError
from ..types import Hit, Query, Ranking, Stage, validate_ranking

if TYPE_CHECKING:
    from ..specs import Context, Spec

log = logging.getLogger("rerank")


def restrict(ranking: Ranking, queries: Sequence[Query], source: str) -> Ranking:
    """The ranking's hit lists for ``queries`` (in their order); a query without candidates gets
    an empty list and one warning names every such query."""
    out: Ranking = {}
    empty = []
    for q in queries:
        hits = ranking.get(q.qid)
        if not hits:
            empty.append(q.qid)
        out[q.qid] = list(hits or [])
    if empty:
        shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
        log.warning("%d of %d queries have no candidates in %s: %s (they are scored 0)", len(empty), len(queries), source, shown)
    return out


class FromRun(Stage):
    """Serve a stored run as a first stage. With ``docs``, hits without text get it from there."""

    kind, role = "run", "retriever"
    spec_arg = "FILE"
    spec_help = "a TREC run or candidate file (rank_llm JSON/JSONL)"

    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        if not spec.arg:
            raise RerankError(f"--retriever {spec} needs a {cls.spec_arg.lower()}: {cls.kind}:{cls.spec_arg}")
        run, name = cls.spec_run(spec, ctx)
        docs = ctx.dataset.docs if ctx.dataset is not None and ctx.with_text else None
        return cls(run, docs, name=name) % ctx.k

    @classmethod
    def spec_run(cls, spec: Spec, ctx: Context) -> tuple[Ranking | str, str | None]:
        """The run a spec names, and the stage's name (None: from the file)."""
        return spec.arg, None

    def __init__(self, run: Ranking | str | os.PathLike[str], docs: DocStore | None = None, name: str | None = None) -> None:
        if isinstance(run, (str, os.PathLike)):
            self.source = str(run)
            self._run = read_run(run)
            self.name = name or f"run:{Path(run).name}"
        else:
            validate_ranking(run)
            self.source = name or "ranking"
            self._run = run
            self.name = name or "run"
        self.docs = docs

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        out = restrict(self._run, queries, self.source)
        if self.docs is not None:
            docs = self.docs
            filled = {}
            for qid, hits in out.items():
                texts = docs.get_many([h.docid for h in hits if h.text is None])
                it = iter(texts)
                filled[qid] = [h if h.text is not None else Hit(h.docid, h.score, next(it)) for h in hits]
            out = filled
        return out


class Candidates(FromRun):
    """A candidate run shipped with the dataset (``candidates:NAME``, e.g. TREC DL's ``bm25``)."""

    kind, role = "candidates", "retriever"
    spec_arg = "NAME"
    spec_help = "a candidate run shipped with the dataset, e.g. candidates:splade-pp-ed"

    @classmethod
    def spec_run(cls, spec: Spec, ctx: Context) -> tuple[Ranking | str, str | None]:
        return ctx.require_dataset(spec).candidate_run(spec.arg), f"candidates:{spec.arg}"
