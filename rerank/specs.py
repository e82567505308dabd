"""Stages from text: the one parser and registry of stage kinds.

A *stage spec* names a kind and, after a colon, its argument::

    bm25            bm25:lucene          dense:sentence-transformers/all-MiniLM-L6-v2
    hybrid:bm25+dense:MODEL              cur:cross-encoder:MODEL       run:FILE
    candidates:splade-pp-ed              cross-encoder:MODEL           prp:MODEL:sliding

A *pipeline* joins stage specs with ``>>`` and cuts with ``% K``, as in Python::

    rerank.pipeline("bm25 % 100 >> cross-encoder:MODEL", "scifact")

or takes the same as a list (``["bm25 % 100", "cross-encoder:MODEL"]``), the form YAML configs
use. The CLI, the configs, training (hard-negative mining) and the distributed runner all build
stages here.

Kinds come from the stage classes themselves: each registered class declares its ``kind``,
``role`` (retriever or reranker), the argument it takes (``spec_arg``), a one-line
``spec_help`` and the options it accepts (``spec_options``), and builds itself in
``from_spec(spec, context)``. Adding a kind is one module plus one line in :data:`STAGES` (or an
entry point in the ``rerank.stages`` group, for plugins); help texts and error messages are
generated from the classes.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ModelMismatch, RerankError
from .types import Cutoff, Pipeline, Stage

if TYPE_CHECKING:
    from .data import Dataset

#: The registered stage classes ("module:Class"), in the order help texts list them.
STAGES: tuple[str, ...] = (
    "rerank.retrieve.bm25:BM25",
    "rerank.retrieve.dense:Dense",
    "rerank.retrieve.fusion:RRF",
    "rerank.retrieve.run:FromRun",
    "rerank.retrieve.run:Candidates",
    "rerank.retrieve.cur:CUR",
    "rerank.rerankers.pointwise:CrossEncoder",
    "rerank.rerankers.pointwise:LLMPointwise",
    "rerank.rerankers.pointwise:Splade",
    "rerank.rerankers.pairwise:PRP",
    "rerank.rerankers.setwise:RankR1",
    "rerank.rerankers.listwise:First",
    "rerank.rerankers.listwise:ListwiseGenerate",
    "rerank.rerankers.t5:MonoT5",
    "rerank.rerankers.t5:DuoT5",
    "rerank.rerankers.t5:LiT5",
    "rerank.rerankers.colbert:ColBERT",
    "rerank.rerankers.api:API",
    "rerank.rerankers.auto:Auto",
)
ENTRY_POINTS = "rerank.stages"
RETRIEVER, RERANKER = "retriever", "reranker"

_registry: dict[str, type[Stage]] | None = None


def _load(target: str) -> type[Stage]:
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Stage) and cls.kind and cls.role in (RETRIEVER, RERANKER)):
        raise RerankError(f"{target} is not a stage class with a kind and a role")
    return cls


def registry() -> dict[str, type[Stage]]:
    """Every stage kind -> its class (the built-in ones, then plugins' entry points)."""
    global _registry
    if _registry is None:
        from importlib.metadata import entry_points

        found: dict[str, type[Stage]] = {}
        for target in STAGES:
            cls = _load(target)
            found[cls.kind] = cls
        for ep in entry_points(group=ENTRY_POINTS):
            cls = _load(ep.value)
            found.setdefault(cls.kind, cls)
        for cls in found.values():
            if getattr(cls, "takes_every_option", False):  # auto: the options of the kind it picks
                cls.spec_options = tuple(dict.fromkeys(o for c in found.values() if c is not cls and c.role == cls.role
                                                       for o in c.spec_options))
        _registry = found
    return _registry


def kinds(role: str | None = None) -> list[str]:
    return [k for k, cls in registry().items() if role is None or cls.role == role]


def usage(kind: str) -> str:
    arg = registry()[kind].spec_arg
    if arg.startswith("[") and arg.endswith("]"):
        return f"{kind}[:{arg[1:-1]}]"
    return f"{kind}:{arg}" if arg else kind


def help_text(role: str) -> str:
    """One line per kind of ``role``, for --help and error messages."""
    return "; ".join(f"{usage(k)} ({registry()[k].spec_help})" for k in kinds(role))


# ---------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Spec:
    """One stage spec, parsed once: its kind, its argument, and the specs inside it (a hybrid's
    retrievers, a CUR stage's scorer)."""

    kind: str
    arg: str = ""
    parts: tuple[Spec, ...] = ()

    @property
    def cls(self) -> type[Stage]:
        return registry()[self.kind]

    @property
    def role(self) -> str:
        return self.cls.role

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def split_hybrid(arg: str) -> list[str]:
    """``bm25+dense:org/model`` -> ``["bm25", "dense:org/model"]``: a ``+`` starts a part only
    before a retriever kind, so one inside a model name stays."""
    names = "|".join(re.escape(k) for k in sorted(kinds(RETRIEVER), key=len, reverse=True))
    return [p for p in re.split(rf"\+(?=(?:{names})(?::|\+|$))", arg) if p]


def parse(text: str | Spec, role: str | None = None, label: str | None = None) -> Spec:
    """A stage spec, checked against the registry (``role``: the role it must have; ``label``:
    how errors name it, e.g. "--retriever")."""
    if isinstance(text, Spec):
        return text
    label = label or role or "stage"
    if not isinstance(text, str) or not text.strip():
        raise RerankError(f"{label} must be a non-empty spec string, got {text!r}")
    text = text.strip()
    kind, _, arg = text.partition(":")
    cls = registry().get(kind)
    if cls is None or (role is not None and cls.role != role):
        allowed = kinds(role)
        raise RerankError(f"unknown {label} {text!r}; use one of: {', '.join(usage(k) for k in allowed)}")
    if cls.spec_parts == "stages":
        parts = tuple(parse(p, RETRIEVER, f"part of {text!r}") for p in split_hybrid(arg))
    elif cls.spec_parts == "stage" and arg:
        parts = (parse(arg, None, f"{kind}'s scorer"),)
    else:
        parts = ()
    return Spec(kind, arg, parts)


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: a stage spec and the cut-off after it (``% k``), if any."""

    spec: Spec
    cutoff: int | None = None

    def __str__(self) -> str:
        return f"{self.spec} % {self.cutoff}" if self.cutoff else str(self.spec)


_CUT = re.compile(r"^(?P<spec>.*?)\s+%\s*(?P<k>\S+)$")


def parse_pipeline(text: str | Sequence[str]) -> list[Step]:
    """``"bm25 % 100 >> cross-encoder:M"`` (or ``["bm25 % 100", "cross-encoder:M"]``) -> steps.
    The first step is a retriever, the others rerankers."""
    pieces = [p.strip() for p in re.split(r"\s*>>\s*", text)] if isinstance(text, str) else [str(p).strip() for p in text]
    if not pieces or not all(pieces):
        raise RerankError(f"pipeline {text!r}: give stage specs joined by ' >> ', e.g. 'bm25 % 100 >> cross-encoder:MODEL'")
    steps = []
    for i, piece in enumerate(pieces):
        m = _CUT.match(piece)
        cutoff = None
        if m:
            piece = m["spec"]
            try:
                cutoff = int(m["k"])
            except ValueError:
                cutoff = 0
            if cutoff < 1:
                raise RerankError(f"pipeline {text!r}: '% {m['k']}' must cut to a positive whole number of hits")
        steps.append(Step(parse(piece, RETRIEVER if i == 0 else RERANKER, "retriever" if i == 0 else "reranker"), cutoff))
    return steps


# ---------------------------------------------------------------- building
class IndexBuilder(Protocol):
    """Builds retrievers' indexes somewhere else than this process (e.g. on Ray workers)."""

    def encode_dense(self, dense: Any, folder: Path) -> None: ...

    def build_bm25(self, bm25: Any, folder: Path) -> None: ...


@dataclass(frozen=True)
class Context:
    """What building a stage may need besides its spec.

    ``k``: hits a retriever returns; ``options``: the stages' own options by name (each class
    takes those in its ``spec_options``; None means the class's default). ``dataset_ref`` and
    ``split`` say where the dataset came from (a CUR stage loads its anchor queries from another
    split of it); ``index_builder`` builds the indexes elsewhere (``rerank.distributed.RayIndexBuilder``)."""

    dataset: Dataset | None = None
    k: int = 100
    with_text: bool = True
    threads: int = 0
    rebuild: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    dataset_ref: str | None = None
    split: str = "test"
    index_builder: IndexBuilder | None = None

    def take(self, cls: type[Stage]) -> dict[str, Any]:
        """The options ``cls`` accepts that were given (not None)."""
        return {k: v for k, v in self.options.items() if k in cls.spec_options and v is not None}

    def with_(self, **changes: Any) -> Context:
        return replace(self, **changes)

    def require_dataset(self, spec: Spec) -> Dataset:
        if self.dataset is None:
            raise RerankError(f"{spec} needs a dataset (its documents or runs)")
        return self.dataset

    def full_corpus(self, spec: Spec) -> Dataset:
        """The dataset, checked to hold a whole corpus to index."""
        ds = self.require_dataset(spec)
        if ds.docs is None:
            raise RerankError(f"dataset {ds.name!r} has no documents to index; use --retriever run:FILE")
        if not ds.docs.complete:
            raise RerankError(f"{ds.name} has no full corpus here to index for --retriever {spec} (only candidate passages); "
                              f"use --retriever run:FILE or candidates:NAME (e.g. candidates:tas-b for a dense first stage)")
        return ds

    def build(self, spec: str | Spec, role: str | None = None, **changes: Any) -> Stage:
        """The stage for ``spec`` (a sub-stage of another: a hybrid's parts, a CUR scorer)."""
        ctx = self.with_(**changes) if changes else self
        s = parse(spec, role)
        return _build(s, ctx)


def _build(spec: Spec, ctx: Context) -> Stage:
    """``spec``'s stage; a model folder that does not fit its kind names the kinds it fits."""
    try:
        return spec.cls.from_spec(spec, ctx)
    except ModelMismatch as e:
        if not e.fits or "kinds that fit" in str(e):
            raise
        fits = [k for k, c in registry().items() if c.model_kind in e.fits]
        raise ModelMismatch(f"{e}; kinds that fit it: {', '.join(fits)}" if fits else str(e), e.fits) from None


def check_options(specs: Sequence[Spec], options: Mapping[str, Any]) -> None:
    """Every option given (not None) must be one that a stage of the pipeline takes."""
    classes = [s.cls for spec in specs for s in (spec, *_nested(spec))]
    for name, value in options.items():
        if value is None or any(name in c.spec_options for c in classes):
            continue
        takers = [k for k, c in registry().items() if name in c.spec_options]
        if not takers:
            raise RerankError(f"unknown option {name!r}")
        families = sorted({registry()[k].family for k in takers if registry()[k].family})
        what = f"the {' and '.join(families)} {'rerankers' if families else 'stages'} ({', '.join(takers)})"
        raise RerankError(f"{name} applies to {what}, not {', '.join(str(s.kind) for s in specs)}")


def _nested(spec: Spec) -> list[Spec]:
    return [n for p in spec.parts for n in (p, *_nested(p))]


def _context(dataset: Dataset | str | None, kw: dict[str, Any], depth: str) -> Context:
    """The build context of ``stage``/``pipeline``; ``depth``: the keyword that sets the
    retriever's number of hits (``k`` for a retriever alone, ``top_k`` in a pipeline, where
    ``k`` is PRP's)."""
    ref = dataset if isinstance(dataset, str) else None
    if kw.get(depth) is not None:
        kw["_depth"] = kw.pop(depth)
    if isinstance(dataset, str):
        from .data import load_dataset

        dataset = load_dataset(dataset, split=kw.get("split") or "test")
    fields = {k: kw.pop(k) for k in ("with_text", "threads", "rebuild", "split", "index_builder") if kw.get(k) is not None}
    if "_depth" in kw:
        fields["k"] = kw.pop("_depth")
    return Context(dataset=dataset, dataset_ref=kw.pop("dataset_ref", ref), options=kw, **fields)


def stage(spec: str | Spec, dataset: Dataset | str | None = None, *, role: str | None = None, **options: Any) -> Stage:
    """One stage from a spec: ``stage("bm25", ds, k=100)``, ``stage("cross-encoder:MODEL", depth=50)``.
    ``dataset``: a :class:`Dataset` or its name (retrievers need one); ``options``: ``k`` (a retriever's hits),
    ``with_text``, ``threads``, ``rebuild`` and the stage's own options (``rerank.specs.describe``);
    ``role``: the role the spec must have ("retriever" or "reranker")."""
    s = parse(spec, role, role)
    ctx = _context(dataset, dict(options), "k" if s.role == RETRIEVER else "_")
    check_options([s], ctx.options)
    return _build(s, ctx)


def pipeline(text: str | Sequence[str], dataset: Dataset | str | None = None, **options: Any) -> Stage:
    """A whole pipeline from text: ``pipeline("bm25 % 100 >> cross-encoder:MODEL", "scifact")``.
    The retriever returns as many hits as the cut-off after it asks for (else ``top_k``, default 100);
    options go to the stages that take them (an option no stage takes is an error)."""
    steps = parse_pipeline(text)
    ctx = _context(dataset, dict(options), "top_k")
    check_options([st.spec for st in steps], ctx.options)
    if len(steps) > 1:
        ctx = ctx.with_(with_text=True)  # rerankers read the texts the retriever returns
    stages: list[Stage] = []
    for i, st in enumerate(steps):
        here = ctx.with_(k=st.cutoff) if i == 0 and st.cutoff else ctx
        stages.append(_build(st.spec, here))
        if st.cutoff:
            stages.append(Cutoff(st.cutoff))
    return stages[0] if len(stages) == 1 else Pipeline(stages)


def describe() -> str:
    """Every kind, its argument, what it is and the options it takes (``rerank kinds``)."""
    lines = []
    for role in (RETRIEVER, RERANKER):
        lines.append(f"{role}s:")
        for k in kinds(role):
            cls = registry()[k]
            lines.append(f"  {usage(k):<28} {cls.spec_help}")
            if cls.spec_options:
                lines.append(f"  {'':<28} options: {', '.join(cls.spec_options)}")
    return "\n".join(lines)
