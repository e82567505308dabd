"""The one contract: queries in, rankings out. No heavy imports here.

A :class:`Stage` turns queries (and, for rerankers, the previous stage's ranking) into a
:data:`Ranking`. Stages compose like PyTerrier's operators::

    pipe = BM25(ds.docs) % 100 >> reranker      # retrieve, keep the top 100, rerank
    run = pipe(ds.queries)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from .errors import DataError

if TYPE_CHECKING:
    from .specs import Context, Spec


@dataclass(frozen=True, slots=True)
class Query:
    """A query: its id and its text (never empty)."""

    qid: str
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.qid, str) or not self.qid.strip():
            raise DataError(f"query id must be a non-empty string, got {self.qid!r}")
        if not isinstance(self.text, str):
            raise DataError(f"query {self.qid!r}: text must be a string, got {type(self.text).__name__}")
        if not self.text.strip():
            raise DataError(f"query {self.qid!r} has empty text")


@dataclass(frozen=True, slots=True)
class Hit:
    """One ranked document: its id, its score (higher is better) and, when known, its text."""

    docid: str
    score: float
    text: str | None = None


Ranking = dict[str, list[Hit]]
"""qid -> hits, best first (a TREC run, in memory)."""


def validate_ranking(ranking: Ranking, source: str = "ranking") -> None:
    """Raise DataError when a query's hit list repeats a document id."""
    for qid, hits in ranking.items():
        seen: set[str] = set()
        for i, h in enumerate(hits):
            if h.docid in seen:
                raise DataError(f"{source}: query {qid!r} lists document {h.docid!r} twice (again at position {i + 1})")
            seen.add(h.docid)


class Stage:
    """Anything that turns queries into a ranking: retrievers and rerankers alike.

    Subclasses implement :meth:`__call__`. ``a >> b`` runs ``b`` on ``a``'s ranking;
    ``a % k`` keeps the top ``k`` hits of each query.
    """

    name: str = "stage"

    # how a class is built from a spec (rerank.specs): set by the classes registered there
    kind: ClassVar[str] = ""  # the spec's kind, e.g. "bm25", "cross-encoder"
    role: ClassVar[str] = ""  # "retriever" or "reranker"
    family: ClassVar[str] = ""  # rerankers: "pointwise", "pairwise" or "listwise"
    spec_arg: ClassVar[str] = ""  # what follows "kind:", e.g. "MODEL" (help texts)
    spec_help: ClassVar[str] = ""  # one line for help texts
    spec_parts: ClassVar[str] = ""  # "stages": the argument is retriever specs joined by '+'; "stage": one spec
    spec_options: ClassVar[tuple[str, ...]] = ()  # options it takes from a spec's context
    model_kind: ClassVar[str] = ""  # the model it loads (rerank.models.loading.AUTO_CLASSES), if any

    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        raise NotImplementedError(f"{cls.__name__} is not built from specs")

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        raise NotImplementedError

    def __rshift__(self, other: Stage) -> Pipeline:
        if not isinstance(other, Stage):
            return NotImplemented
        return Pipeline([self, other])

    def __mod__(self, k: int) -> Pipeline:
        return Pipeline([self, Cutoff(k)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Cutoff(Stage):
    """Keep the top ``k`` hits of each query (the ``% k`` operator)."""

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"cut-off must be a positive integer, got {k!r}")
        self.k = k
        self.name = f"top{k}"

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        if ranking is None:
            raise ValueError(f"{self.name} needs a ranking to cut; put it after a retriever")
        return {qid: hits[: self.k] for qid, hits in ranking.items()}


class Pipeline(Stage):
    """Stages run one after another, each on the previous one's ranking."""

    stages: list[Stage]

    def __init__(self, stages: Iterable[Stage]) -> None:
        flat: list[Stage] = []
        for s in stages:
            flat.extend(s.stages if isinstance(s, Pipeline) else [s])
        if not flat:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = flat
        self.name = " >> ".join(s.name for s in flat)

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        for stage in self.stages:
            ranking = stage(queries, ranking)
        assert ranking is not None
        return ranking

    def __repr__(self) -> str:
        return f"Pipeline({self.name})"


# ---------------------------------------------------------------- optional abilities
@runtime_checkable
class Costed(Protocol):
    """A stage that counts what it spent (model calls, tokens, seconds): ``stage.cost.as_dict()``."""

    @property
    def cost(self) -> Any: ...


@runtime_checkable
class ScorerSearch(Protocol):
    """A first stage that searches by calling a scorer: ``calls`` is how many it made."""

    calls: int


@runtime_checkable
class Indexed(Protocol):
    """A stage with an index to build (or reuse) before it searches: ``index()`` returns its folder."""

    def index(self) -> Any: ...


@runtime_checkable
class Composite(Protocol):
    """A stage made of other stages (pipelines, fusion): ``stages`` lists them."""

    stages: list[Stage]


def leaves(stage: Stage) -> list[Stage]:
    """The stages inside ``stage``, depth first (a pipeline's steps, a fusion's parts), itself
    when it has none."""
    if isinstance(stage, Composite):
        return [leaf for s in stage.stages for leaf in leaves(s)]
    return [stage]
