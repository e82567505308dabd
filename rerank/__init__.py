"""rerank: neural retrieval and reranking.

    from rerank import BM25, load_dataset, evaluate
    ds = load_dataset("scifact")
    run = (BM25(ds.docs) % 100)(ds.queries)
    print(evaluate(run, ds.qrels, ["nDCG@10", "RR@10", "R@100"]).table())

    CrossEncoder("cross-encoder/ms-marco-MiniLM-L-6-v2").rank("query", ["doc a", "doc b"])

    # the same from text, as the CLI and the configs say it (rerank.specs)
    pipe = pipeline("bm25 % 100 >> cross-encoder:cross-encoder/ms-marco-MiniLM-L-6-v2", "scifact")

Importing rerank imports neither torch nor ir_datasets; those load when first used.
"""

from .data import ALIASES, Dataset, DocStore, MemoryDocStore, list_datasets, load_dataset
from .data.formats import read_qrels, read_run, read_topics, write_trec_run
from .errors import DataError, DatasetNotFound, DatasetUnavailable, MissingDependency, RerankError
from .evaluate import Evaluation, compare, evaluate
from .models.encoder import Encoder
from .models.engine import ScoreCache
from .rerankers import RankedDoc, Reranker, make_reranker, reranker
from .rerankers.pointwise import CrossEncoder, LLMPointwise, Splade
from .retrieve.bm25 import BM25
from .retrieve.cur import CUR
from .retrieve.dense import Dense
from .retrieve.fusion import RRF, Interpolate
from .retrieve.run import FromRun
from .specs import pipeline, stage
from .types import Cutoff, Hit, Pipeline, Query, Ranking, Stage

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "BM25",
    "CUR",
    "RRF",
    "CrossEncoder",
    "Cutoff",
    "DataError",
    "Dataset",
    "DatasetNotFound",
    "DatasetUnavailable",
    "Dense",
    "DocStore",
    "Encoder",
    "Evaluation",
    "FromRun",
    "Hit",
    "Interpolate",
    "LLMPointwise",
    "MemoryDocStore",
    "MissingDependency",
    "Pipeline",
    "Query",
    "RankedDoc",
    "Ranking",
    "RerankError",
    "Reranker",
    "ScoreCache",
    "Splade",
    "Stage",
    "compare",
    "evaluate",
    "list_datasets",
    "load_dataset",
    "make_reranker",
    "pipeline",
    "read_qrels",
    "read_run",
    "read_topics",
    "reranker",
    "stage",
    "write_trec_run",
]
