"""What the commands share: logging, one-line errors, option groups as small dataclasses."""

from __future__ import annotations

import functools
import logging
import re
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import RerankError

if TYPE_CHECKING:
    from ..data import Dataset
    from ..data.collections import ReadOptions
    from ..distributed import RayOptions

log = logging.getLogger("rerank")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
DEFAULT_METRICS = "nDCG@10,RR@10,R@100"
DTYPES = click.Choice(["auto", "float32", "bfloat16", "float16"])
ENCODING_ERRORS = click.Choice(["strict", "replace"])


class Coarse(logging.Filter):
    """Training's per-step and per-epoch lines (logged with ``extra={"per_step": True}``, or ``"last"``
    for the last step's) at a grain a person reads: the first, the last step's, and then one every
    ``every`` seconds (all of them with -v)."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every: float = every
        self.last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        per_step = getattr(record, "per_step", None)
        if not per_step:
            return True
        if self.last is None or per_step == "last" or record.created - self.last >= self.every:
            self.last = record.created
            return True
        return False


def setup_logging(quiet: bool, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rerank: %(message)s"))
    if not verbose:
        handler.addFilter(Coarse())
    root = logging.getLogger("rerank")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def friendly(fn: F) -> F:
    """Report user errors in one line (exit 2) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RerankError, ValueError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _record(param: click.Parameter, ctx: click.Context) -> tuple[str, str] | None:
    """A parameter's help row, without the numeric range click appends ("[x>=1]"): the type says it."""
    record = param.get_help_record(ctx)
    if record is None:
        return None
    text = re.sub(r"\s*\[[0-9.]*<?=?x[<>]=?[0-9.]*\]$", "", record[1])
    return record[0], re.sub(r"; [0-9.]*<?=?x[<>]=?[0-9.]*\]$", "]", text)


class Grouped(click.Command):
    """A command whose --help lists its options under headings: ``groups`` maps a heading to the
    options' parameter names; options it does not name come last, under "Other"."""

    def __init__(self, *args: Any, groups: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = groups

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = {"help" if "--help" in p.opts else p.name: _record(p, ctx) for p in self.get_params(ctx)}
        named = {n for names in self.groups.values() for n in names}
        sections = [*self.groups.items(), ("Other", [n for n in rows if n not in named])]
        for heading, names in sections:
            records = [r for n in names if (r := rows.get(n)) is not None]
            if records:
                with formatter.section(heading):
                    formatter.write_dl(records)


def _set_progress(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    from ..progress import set_progress

    set_progress(value)


progress_option = click.option(
    "--progress", type=click.Choice(["auto", "bar", "lines", "none"]), expose_value=False, callback=_set_progress,
    help="auto: a bar on a terminal, else a line every 30 s.")
verbose_option = click.option("--verbose", "-v", is_flag=True, help="A line for every step and epoch.")


def options(*opts: Callable[[F], F]) -> Callable[[F], F]:
    """Several click options as one decorator, in the order given."""

    def apply(fn: F) -> F:
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return apply


def take(cls: type[T], kw: dict[str, Any], **renamed: str) -> T:
    """An option group's dataclass from a command's keyword arguments (removed from ``kw``);
    ``renamed``: field name -> the click parameter that fills it."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: kw.pop(renamed.get(n, n)) for n in names if renamed.get(n, n) in kw})


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def metric_list(value: str | None) -> list[str]:
    names = [m.strip() for m in (value or DEFAULT_METRICS).split(",") if m.strip()]
    if not names:
        raise click.BadParameter("give at least one measure")
    return names


# ---------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetArgs:
    """Which dataset, which judgments, how to evaluate (--dataset, --split, --qrels, --rel, --metrics)."""

    dataset: str | None = None
    split: str | None = None
    qrels: str | None = None
    rel: int | None = None
    metrics: str | None = None
    encoding_errors: str = "strict"
    quiet: bool = False
    doc_format: str | None = None
    topic_format: str | None = None
    topic_field: str = "title"
    id_field: str | None = None
    text_fields: str | None = None
    doc_store: str = "auto"

    def read(self) -> ReadOptions:
        """How to read a collection folder (formats and fields the files do not say themselves)."""
        from ..data.collections import ReadOptions

        fields = tuple(f.strip() for f in (self.text_fields or "").split(",") if f.strip())
        return ReadOptions(self.doc_format, self.topic_format, self.topic_field, self.id_field, fields, self.doc_store)


def read_options() -> Callable[[F], F]:
    """--doc-format, --topic-format, --topic-field, --id-field, --text-fields."""
    from ..data.collections import DOC_FORMATS, TOPIC_FIELDS, TOPIC_FORMATS

    return options(
        click.option("--doc-format", type=click.Choice(DOC_FORMATS), help="Corpus format [default: from the files]."),
        click.option("--topic-format", type=click.Choice(TOPIC_FORMATS), help="Topics format [default: from the files]."),
        click.option("--topic-field", type=click.Choice(TOPIC_FIELDS), default="title", show_default=True,
                     help="TREC topics: the field that is the query."),
        click.option("--id-field", help="The documents' id field [default: _id, id, ...]."),
        click.option("--text-fields", help="Fields joined as the text [default: title,text]."),
        click.option("--doc-store", type=click.Choice(["auto", "memory", "disk"]), default="auto", show_default=True,
                     help="Keep documents on disk or in memory."),
    )


dataset_options = options(
    click.option("--dataset", "-d", help="Alias (`rerank datasets`), ir_datasets id, path."),
    click.option("--split", help="Qrels split [default: test]."),
    click.option("--qrels", type=click.Path(exists=True, dir_okay=False), help="Judgments instead of the dataset's."),
    click.option("--rel", type=int, help="Lowest relevant grade [default: the dataset's]."),
    click.option("--metrics", help="Measures [default: nDCG@10,RR@10,R@100]."),
    click.option("--encoding-errors", type=ENCODING_ERRORS, default="strict", show_default=True,
                 help="Bytes that are not UTF-8."),
    click.option("--quiet", "-q", is_flag=True, help="Only warnings and results."),
    read_options(),
)


def load(dataset: str, split: str, qrels: str | None = None, encoding_errors: str = "strict",
         read: ReadOptions | None = None) -> Dataset:
    from ..data import load_dataset
    from ..data.formats import read_qrels

    ds = load_dataset(dataset, split=split, encoding_errors=encoding_errors, read=read)
    if qrels:
        ds.set_qrels(read_qrels(qrels))
    return ds


# ---------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelArgs:
    """Where and how models run (--device, --dtype, --batch-tokens, --backend, --quantize)."""

    device: str | None = None
    dtype: str | None = None
    batch_tokens: int | None = None
    backend: str | None = None
    quantize: str | None = None

    def as_options(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "batch_tokens": self.batch_tokens, "backend": self.backend,
                "quantize": self.quantize}


model_options = options(
    click.option("--backend", type=click.Choice(["auto", "torch", "onnx", "openvino", "vllm"]),
                 help="Runtime [auto: OpenVINO for encoders on CPUs if installed, vLLM for LLMs if installed]."),
    click.option("--quantize", type=click.Choice(["none", "int8"]),
                 help="int8 on onnx/openvino [default: none]."),
    click.option("--batch-tokens", type=click.IntRange(min=1), help="Tokens per model batch [default: 4096 on CPU]."),
    click.option("--device", help="auto, cpu, cuda, cuda:N [default: auto]."),
    click.option("--dtype", type=DTYPES, help="Precision [auto: bf16 where the chip has it]."),
)


# ---------------------------------------------------------------- CUR
@dataclass(frozen=True)
class CurArgs:
    """Options of a ``cur:SCORER`` first stage (defaults in rerank.retrieve.cur.CUR)."""

    budget: int | None = None
    rounds: int | None = None
    anchor_items: int | None = None
    init: str | None = None
    anchors_from: str | None = None

    def as_options(self) -> dict[str, Any]:
        return {"budget": self.budget, "rounds": self.rounds, "anchor_items": self.anchor_items, "init": self.init,
                "anchors_from": self.anchors_from}


cur_options = options(
    click.option("--ce-budget", type=click.IntRange(min=1), help="Scorer calls per query [default: 200]."),
    click.option("--cur-rounds", type=click.IntRange(min=1),
                 help="Rounds; 1 is ANNCUR, more ADACUR [default: 9]."),
    click.option("--cur-anchor-items", type=click.IntRange(min=1),
                 help="Items every query is scored against first."),
    click.option("--cur-init", help="A retriever for each query's first items."),
    click.option("--anchors-from", help="Anchor queries: a split or file [default: train]."),
)
CUR_PARAMS = {"budget": "ce_budget", "rounds": "cur_rounds", "anchor_items": "cur_anchor_items", "init": "cur_init"}


# ---------------------------------------------------------------- Ray
@dataclass(frozen=True)
class RayArgs:
    """--ray and its options; :meth:`resolve` gives RayOptions (None without --ray)."""

    use_ray: bool = False
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None

    def resolve(self) -> RayOptions | None:
        if not self.use_ray:
            given = [n for n, v in (("--workers", self.workers), ("--gpus-per-worker", self.gpus_per_worker),
                                    ("--cpus-per-worker", self.cpus_per_worker)) if v is not None]
            if given:
                raise RerankError(f"{', '.join(given)} apply with --ray")
            return None
        from ..distributed import RayOptions, require_ray

        require_ray()  # without the extra, say how to get it before any work
        return RayOptions(workers=self.workers or 2, gpus_per_worker=self.gpus_per_worker or 0.0,
                          cpus_per_worker=self.cpus_per_worker or 1.0)


ray_options = options(
    click.option("--ray", "use_ray", is_flag=True, help="Run on Ray ($RAY_ADDRESS, else a local cluster)."),
    click.option("--workers", type=click.IntRange(min=1), help="--ray: model replicas [default: 2]."),
    click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="--ray: GPUs per worker [default: 0]."),
    click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), help="--ray: CPUs per worker [default: 1]."),
)


def check_writable(*paths: str | None, folder: bool = False) -> None:
    """Fail before any work when an output could not be written: a file is created (and removed)
    in the nearest existing folder on the way to each path. ``folder``: the paths are folders."""
    import os
    import tempfile

    for p in paths:
        if not p:
            continue
        path = Path(p)
        if path.is_dir() and not folder:
            raise RerankError(f"output {p} is a folder; give a file name")
        if path.exists() and not path.is_dir() and folder:
            raise RerankError(f"output {p} is a file; give a folder")
        probe = path if folder and path.is_dir() else path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise RerankError(f"cannot write {p}: {probe} is not a folder")
        if path.is_file() and not os.access(path, os.W_OK):
            raise RerankError(f"cannot write {p}: the file is read-only")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".rerank-probe.", dir=probe)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise RerankError(f"cannot write {p}: {e.strerror or e} in {probe}") from None
