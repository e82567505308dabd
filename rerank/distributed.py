"""Scale-out on Ray: the existing stages, run by Ray workers (extra ``distributed``).

Nothing here re-implements a stage. Each job cuts its input into the units the single-process
path already works in, and Ray workers (one model replica each, on a CPU share or a GPU) run the
same code on those units:

* dense encoding: the corpus shards of :func:`rerank.retrieve.dense.corpus_shards` go through a
  Ray Data ``map_batches`` over an actor pool of encoders; each shard's float16 embeddings are
  written to ``shards/`` in the index's build folder as they arrive (an interrupted build
  resumes with the missing shards) and merged into the same embeddings file the single-process
  path writes, from which FAISS is built as always;
* BM25 (bm25s): document shards are tokenized by workers with bm25s's own tokenizer; their
  vocabularies are merged in corpus order into the one a single process would build, and bm25s
  indexes the result on the driver: the index, and so every score, is the single-machine one;
* sharded search: an index cut into shards (``bm25:disk`` built with ``shards``, or a dense
  ``mmap`` index's embeddings cut into ranges of rows) is searched by one Ray actor per shard,
  each memory-mapping its shard and answering batches of queries with its top k; the driver
  merges them into the global top k. BM25 shards hold impacts computed with the collection's
  statistics, and both merges order by score then document number: the run is the single
  index's. A killed actor is restarted by Ray, reopens its shard from disk and answers the batch again;
* reranking: the query blocks of :func:`rerank.rerankers.base.query_blocks` (the unit a reranker
  scores at once) go to an actor pool of rerankers (pointwise, PRP, FIRST: any stage). Results
  stream back into a journal beside the output run (a killed driver resumes from it); Ray
  restarts a killed worker and retries its blocks; the driver checks every block arrives once.

Because every unit is computed exactly as the single-process path computes it, results are
identical to it (bit for bit on the same hardware: same batches, same kernels).

``connect`` joins the cluster at ``address`` or ``$RAY_ADDRESS``, or starts a local one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .env import atomic_write
from .errors import DataError, MissingDependency, RerankError
from .models.engine import Cost
from .types import Composite, Hit, Query, Ranking, Stage

log = logging.getLogger("rerank")
#: gRPC's chatter on success (an "E ... original_thread_pool.cc" line as workers stop), unless the
#: user set it; errors still arrive as exceptions. (RAY_BACKEND_LOG_LEVEL would hide the core
#: worker's "E core_worker.cc" notice about actor arguments, but logs a line of its own per process.)
_QUIET_RAY = {"GRPC_VERBOSITY": "NONE"}
# what workers must see as the driver does: offline switches and where models, data and indexes are
_PROPAGATE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "RERANK_OFFLINE", "RERANK_OFFLINE_MODELS",
              "RERANK_MODEL_PATH", "RERANK_SHARED_DATA", "RERANK_INDEXES", "RERANK_NO_BF16",
              "RERANK_BACKEND")


@dataclass(frozen=True)
class RayOptions:
    """How a job runs on Ray: ``workers`` model replicas (actors), each with ``cpus_per_worker``
    CPUs and ``gpus_per_worker`` GPUs; ``address``: a cluster to join (None: ``$RAY_ADDRESS``, or a
    local cluster started here). A worker that dies (killed, node lost) is restarted by Ray Data
    and the items it held are run again; an exception in the model code stops the job."""

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    address: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ValueError(f"gpus_per_worker must be >= 0 and cpus_per_worker > 0, got {self.gpus_per_worker}, "
                             f"{self.cpus_per_worker}")

    def actor_pool(self, items: int) -> dict[str, Any]:
        """map_batches arguments: a pool of ``workers`` actors (no more than ``items``) and what each one holds."""
        import ray.data

        return {"compute": ray.data.ActorPoolStrategy(size=max(1, min(self.workers, items))),
                "num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker}

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


def require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependency("running on Ray (--ray)", "distributed", "ray[data]") from None
    return ray


def connect(options: RayOptions) -> Any:
    """The ``ray`` module, connected: to ``options.address`` or ``$RAY_ADDRESS`` when given, else
    to a local cluster started here. Fails with the numbers when the cluster cannot hold the workers."""
    ray = require_ray()
    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        for key, value in _QUIET_RAY.items():
            os.environ.setdefault(key, value)
        # its notice that a local cluster has token authentication (its default) on every start
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        runtime_env = {"env_vars": {k: os.environ[k] for k in (*_PROPAGATE, *_QUIET_RAY) if k in os.environ}}
        common = {"runtime_env": runtime_env, "logging_level": logging.WARNING, "log_to_driver": True}
        if address:
            log.info("joining the Ray cluster at %s", address)
            ray.init(address=address, **common)
        else:
            need = options.workers * options.cpus_per_worker
            cpus = os.cpu_count() or 1
            if need > cpus:
                log.warning("%d workers x %g CPUs on a local machine with %d cores: they will share them",
                            options.workers, options.cpus_per_worker, cpus)
            gpus = options.workers * options.gpus_per_worker
            ray.init(num_cpus=max(cpus, int(np.ceil(need))), num_gpus=int(np.ceil(gpus)) if gpus else None,
                     include_dashboard=False, **common)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices (e.g. "progress bars disabled") are noise here
    have = ray.cluster_resources()
    for what, per in (("CPU", options.cpus_per_worker), ("GPU", options.gpus_per_worker)):
        if per and have.get(what, 0) < options.workers * per:
            raise RerankError(f"the Ray cluster has {have.get(what, 0):g} {what}s; {options.workers} workers x {per:g} "
                              f"{what}s need {options.workers * per:g}: use fewer --workers or a bigger cluster")
    return ray


def _torch_threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def _progress(total: int, initial: int, desc: str, unit: str) -> Any:
    from .progress import progress_bar

    return progress_bar(total, desc, unit, initial)


def _pack_error(e: BaseException) -> bytes:
    """An exception raised on a worker, to travel back to the driver (which raises it again):
    Ray Data would otherwise turn it into a generic error without its type or message."""
    try:
        blob = pickle.dumps(e)
        pickle.loads(blob)
        return blob
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
        return pickle.dumps(RerankError(f"{type(e).__name__}: {e}"))


def _raise_worker_error(blob: bytes) -> None:
    if blob:
        e = pickle.loads(blob)
        if isinstance(e, RerankError):
            raise e
        raise RerankError(f"a Ray worker failed: {type(e).__name__}: {e}") from e


class _Worker:
    """A Ray actor holding one model: ``build()`` makes it, ``run(row)`` processes one row. An
    error (in building or running) comes back in the ``error`` column instead of killing the job's
    error message; a dead process is Ray's to restart."""

    def __init__(self, cpus: float, **kwargs: Any) -> None:
        self.error = b""
        try:
            _torch_threads(cpus)
            self.build(**kwargs)
        except Exception as e:  # noqa: BLE001 - reported with the first row
            self.error = _pack_error(e)

    build: Callable[..., None]
    run: Callable[[dict[str, Any]], Any]

    def __call__(self, batch: Any) -> dict[str, Any]:
        rows = batch.to_pylist()
        out: dict[str, list[Any]] = {"key": [], "value": [], "error": []}
        for row in rows:
            value, error = b"", self.error
            if not error:
                try:
                    value = pickle.dumps(self.run(row))
                except Exception as e:  # noqa: BLE001 - reraised on the driver
                    error = _pack_error(e)
            out["key"].append(row["key"])
            out["value"].append(value)
            out["error"].append(error)
        return {"key": np.asarray(out["key"], dtype=np.int64), "value": np.asarray(out["value"], dtype=object),
                "error": np.asarray(out["error"], dtype=object)}


def _results(ds: Any) -> Generator[tuple[int, Any], None, None]:
    """(key, value) of every row a job's workers return, as they arrive; a worker's error is raised
    here. Closing it (or leaving the loop by an exception) stops the job and frees its workers."""
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            for key, value, error in zip(batch["key"], batch["value"], batch["error"], strict=True):
                _raise_worker_error(error)
                yield int(key), pickle.loads(value)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------ dense encoding
class _EncodeShards(_Worker):
    """One Encoder; each row is a corpus shard (key: its first row), encoded in one call."""

    def build(self, model: str, options: dict[str, Any], device: str) -> None:
        from .models.encoder import Encoder

        self.encoder = Encoder(model, device=device, **options)

    def run(self, row: dict[str, Any]) -> np.ndarray:
        return self.encoder.encode_docs(row["texts"])  # float32, as the single-process path receives them


def _shard_file(folder: Path, start: int) -> Path:
    return folder / f"{start:012d}.npy"


def _put_shards(ray: Any, docs: Any, skip: Callable[[int], bool] = lambda start: False) -> tuple[list[str], list[Any], int]:
    """Every document id of ``docs`` in order, and its shards (:func:`corpus_shards`) put into the
    object store as one-row tables (key: the shard's first row), but those ``skip`` says are done;
    with the number of documents skipped."""
    import pyarrow as pa

    from .retrieve.dense import corpus_shards

    docids: list[str] = []
    refs = []
    skipped = 0
    for start, ids, texts in corpus_shards(docs):
        docids.extend(ids)
        if skip(start):
            skipped += len(ids)
        else:
            refs.append(ray.put(pa.table({"key": [start], "texts": [texts]})))
    return docids, refs, skipped


def _encode_on_ray(dense: Any, folder: Path, options: RayOptions) -> None:
    """``Dense``'s corpus encoding done by Ray workers into ``folder`` (its build folder)."""
    from .retrieve.dense import EMBEDDINGS, SHARD_DOCS

    ray = connect(options)
    shards = folder / "shards"
    shards.mkdir(exist_ok=True)
    n, dim = len(dense.docs), dense.encoder.dim
    docids, refs, done = _put_shards(ray, dense.docs, lambda start: _shard_file(shards, start).is_file())
    if done:
        log.info("resuming the encoding of %s: %d of %d documents already encoded", dense.docs.name, done, n)
    if refs:
        model = dense.encoder.name
        ds = ray.data.from_arrow_refs(refs).map_batches(
            _EncodeShards, batch_size=1, batch_format="pyarrow",
            fn_constructor_kwargs={"model": model, "options": dense.encoder.options(), "device": options.device,
                                   "cpus": options.cpus_per_worker}, **options.actor_pool(len(refs)))
        bar = _progress(n, done, f"encoding {dense.docs.name} on {options.workers} Ray workers", "doc")
        results = _results(ds)
        try:
            for start, vecs in results:
                if vecs.ndim != 2 or vecs.shape[1] != dim:
                    raise DataError(f"a worker's {model} gives embeddings of shape {vecs.shape}, this one {dim} "
                                    f"dimensions: the workers load another model")
                with atomic_write(_shard_file(shards, start), "wb") as f:
                    np.save(f, dense.half(vecs))
                bar.update(len(vecs))
        finally:
            results.close()
            bar.close()
    out = np.lib.format.open_memmap(folder / EMBEDDINGS, mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, SHARD_DOCS):
        part = np.load(_shard_file(shards, start))
        if part.shape != (min(SHARD_DOCS, n - start), dim):
            raise DataError(f"shard {_shard_file(shards, start)} holds {part.shape}, expected "
                            f"{(min(SHARD_DOCS, n - start), dim)}; delete it to encode it again")
        out[start : start + len(part)] = part
    out.flush()
    del out
    dense.finish_corpus(folder, docids)
    shutil.rmtree(shards)


def encode_corpus(dense: Any, options: RayOptions) -> Path:
    """Build ``dense``'s index (a :class:`rerank.Dense`) with the corpus encoded on Ray; the FAISS
    index is then built from the merged embeddings as in a single process. Returns the embeddings folder."""
    use_ray(dense, options)
    return dense.index()


# ------------------------------------------------------------------ BM25
class _TokenizeShards(_Worker):
    """bm25s's tokenizer over each row's shard, with the vocabulary it grew."""

    def build(self) -> None:
        pass

    def run(self, row: dict[str, Any]) -> tuple[Any, ...]:
        from .retrieve.bm25 import bm25s_tokenizer

        tok = bm25s_tokenizer()
        ids = tok.tokenize(row["texts"], update_vocab=True, return_as="ids", show_progress=False)
        return ids, tok.word_to_stem, tok.stem_to_sid, tok.word_to_id


def merge_vocabularies(parts: Iterable[tuple[list[list[int]], dict[str, str], dict[str, int], dict[str, int]]]) -> Any:
    """Shards tokenized separately (in corpus order), as one tokenizer would have tokenized the
    whole corpus: stems get ids in order of first appearance, so the ids, the vocabulary and the
    index bm25s builds from them are the single-process ones. Returns (token ids, tokenizer)."""
    from .retrieve.bm25 import TokenIds, bm25s_tokenizer

    tok = bm25s_tokenizer()
    tok.reset_vocab()
    tokens = TokenIds()
    for ids, word_to_stem, stem_to_sid, word_to_id in parts:
        local = np.empty(len(stem_to_sid), dtype=np.int64)
        for stem, sid in stem_to_sid.items():
            local[sid] = tok.stem_to_sid.setdefault(stem, len(tok.stem_to_sid))
        for word, stem in word_to_stem.items():
            tok.word_to_stem.setdefault(word, stem)
        for word, sid in word_to_id.items():
            tok.word_to_id.setdefault(word, int(local[sid]))
        tokens.add([local[np.asarray(doc, dtype=np.int64)].tolist() for doc in ids])
    return tokens, tok


def _bm25_on_ray(bm25: Any, folder: Path, options: RayOptions) -> None:
    from .retrieve.dense import SHARD_DOCS

    ray = connect(options)
    docids, refs, _ = _put_shards(ray, bm25.docs)
    if not docids:
        raise DataError("cannot build a BM25 index over an empty corpus")
    pool = {k: v for k, v in options.actor_pool(len(refs)).items() if k != "num_gpus"}
    ds = ray.data.from_arrow_refs(refs).map_batches(_TokenizeShards, batch_size=1, batch_format="pyarrow",
                                                     fn_constructor_kwargs={"cpus": options.cpus_per_worker}, **pool)
    got = dict(_results(ds))
    if sorted(got) != list(range(0, len(docids), SHARD_DOCS)):
        raise RerankError(f"Ray returned {len(got)} tokenized shards of {-(-len(docids) // SHARD_DOCS)}")
    tokens, tok = merge_vocabularies(got[s] for s in sorted(got))
    bm25.write_index(folder, docids, tokens, tok)


# ------------------------------------------------------------------ sharded search
class ShardSearcher:
    """A Ray actor holding one shard, memory-mapped: ``("bm25", folder, shard)`` a shard of a
    ``bm25:disk`` index, ``("dense", folder, (first, end, l2, rows_at_once))`` rows of a dense
    index's embeddings. Built again from disk when Ray restarts it."""

    def __init__(self, kind: str, folder: str, shard: Any, threads: int) -> None:
        self.kind, self.threads = kind, threads
        if kind == "bm25":
            from .retrieve.bm25disk import Shard

            self.shard: Any = Shard(Path(folder), int(shard))
        else:
            from .retrieve.dense import FlatShard

            first, end, l2, rows = shard
            self.shard = FlatShard.open(Path(folder), first, end, l2, rows)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, ...]:
        if self.kind == "bm25":
            return self.shard.search(queries, k, self.threads)
        return self.shard.search(queries, k)  # type: ignore[no-any-return]

    def pid(self) -> int:
        return os.getpid()


def _shard_actors(kind: str, folder: Path, shards: list[Any], options: RayOptions) -> list[Any]:
    ray = connect(options)
    actor = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=0, max_restarts=-1, max_task_retries=-1)(ShardSearcher)
    threads = max(1, int(options.cpus_per_worker))
    return [actor.remote(kind, str(folder), shard, threads) for shard in shards]


def _search_batches(kind: str, folder: Path, shards: list[Any], queries: Sequence[Any] | np.ndarray, k: int,
                    options: RayOptions, merge: Callable[[list[Any]], list[list[tuple[int, float]]]], batch: int,
                    on_batch: Callable[[int, int, list[Any]], None] | None) -> list[list[tuple[int, float]]]:
    ray = connect(options)
    actors = _shard_actors(kind, folder, shards, options)
    out: list[list[tuple[int, float]]] = []
    try:
        for start in range(0, len(queries), batch):
            part = queries[start : start + batch]
            payload = ray.put(part)
            out.extend(merge(ray.get([a.search.remote(payload, k) for a in actors])))
            if on_batch is not None:
                on_batch(len(out), len(queries), actors)
    finally:
        for a in actors:
            ray.kill(a)
    return out


def search_bm25_shards(folder: Path, queries: Sequence[np.ndarray], k: int, options: RayOptions, *, batch: int = 1024,
                       on_batch: Callable[[int, int, list[Any]], None] | None = None) -> list[list[tuple[int, float]]]:
    """Top ``k`` (document number, score) of each query (its term ids) in a ``bm25:disk`` index at
    ``folder``, one Ray actor per shard; ``on_batch(done, total, actors)`` after each batch."""
    from .retrieve.bm25disk import merge_top_k, read_stats

    shards = list(range(len(read_stats(folder)["shards"])))
    return _search_batches("bm25", folder, shards, queries, k, options, lambda parts: merge_top_k(parts, k), batch,
                           on_batch)


def search_dense_shards(folder: Path, vectors: np.ndarray, k: int, options: RayOptions, *, l2: bool = False,
                        rows_at_once: int | None = None, batch: int = 1024,
                        on_batch: Callable[[int, int, list[Any]], None] | None = None) -> list[list[tuple[int, float]]]:
    """Exact top ``k`` (row, score) of each query vector over a dense index's embeddings at
    ``folder``, cut into ``options.workers`` shards of rows, one Ray actor each."""
    from .retrieve.dense import EMBEDDINGS, ROWS_AT_ONCE, shard_bounds, top_k

    rows = rows_at_once or ROWS_AT_ONCE
    n = len(np.load(folder / EMBEDDINGS, mmap_mode="r"))
    bounds = shard_bounds(n, options.workers, rows)
    shards = [(bounds[i], bounds[i + 1], l2, rows) for i in range(len(bounds) - 1)]

    def merge(parts: list[tuple[np.ndarray, ...]]) -> list[list[tuple[int, float]]]:
        scores, ids = top_k(np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1), k)
        return [list(zip(i.tolist(), s.tolist(), strict=True)) for s, i in zip(scores, ids, strict=True)]

    return _search_batches("dense", folder, shards, vectors, k, options, merge, batch, on_batch)


# ------------------------------------------------------------------ reranking
def _stage_cost(stage: Any) -> Cost | None:
    try:
        cost = stage.cost
    except (AttributeError, NotImplementedError):
        return None
    return cost if isinstance(cost, Cost) else None


class _RerankBlocks(_Worker):
    """One reranker (built by ``factory``); each row is a block of queries (key: its number)."""

    def build(self, factory: Callable[[], Stage]) -> None:
        self.stage = factory()

    def run(self, row: dict[str, Any]) -> tuple[dict[str, list[tuple[str, float]]], Cost]:
        queries, ranking = pickle.loads(row["payload"])
        if isinstance(getattr(self.stage, "block", None), int):  # the driver's block is scored in one call
            self.stage.block = max(self.stage.block, len(queries))  # type: ignore[attr-defined]
        cost = _stage_cost(self.stage)
        spent = Cost()
        if cost is not None:
            spent.add(cost, -1)
        out = self.stage(queries, ranking)
        if cost is not None:
            spent.add(cost)
        return {qid: [(h.docid, h.score) for h in out[qid]] for qid in ranking}, spent


class _Journal:
    """Finished blocks, one JSON line each, beside the output run: a killed job resumes from it.
    Its first line names the job, so a journal of another job is never mixed in."""

    def __init__(self, path: Path, job: str) -> None:
        self.path = path
        self.done: dict[int, dict[str, list[tuple[str, float]]]] = {}
        if path.is_file():
            lines = path.read_text(encoding="utf-8").split("\n")
            if json.loads(lines[0] or "{}").get("job") == job:
                for line in lines[1:]:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        break  # the line being written when the job stopped
                    self.done[int(rec["block"])] = {q: [(d, float(s)) for d, s in hits] for q, hits in rec["hits"].items()}
                log.info("resuming from %s: %d blocks already reranked", path, len(self.done))
            else:
                log.warning("%s belongs to another job: starting afresh", path)
                path.unlink()
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                f.write(json.dumps({"job": job}) + "\n")
        self._f = path.open("a", encoding="utf-8")

    def add(self, block: int, hits: dict[str, list[tuple[str, float]]]) -> None:
        self._f.write(json.dumps({"block": block, "hits": hits}) + "\n")
        self._f.flush()

    def close(self, remove: bool) -> None:
        self._f.close()
        if remove:
            self.path.unlink(missing_ok=True)


def rerank(factory: Callable[[], Stage], queries: Sequence[Query], ranking: Ranking, options: RayOptions, *,
           block: int = 8, journal: str | os.PathLike[str] | None = None, name: str = "reranker",
           on_block: Callable[[int, int], None] | None = None) -> tuple[Ranking, Cost]:
    # ``name`` identifies the job in its journal with the queries (give the model's content fingerprint in it)
    """Rerank ``ranking`` on Ray: ``factory()`` builds the reranker on every worker; the queries are
    cut into blocks of ``block`` (use the reranker's own ``block`` for results identical to one
    process). ``journal``: a file that keeps finished blocks, so that a stopped job resumes (it
    is removed when the job finishes). ``on_block(done, total)`` is called as blocks arrive.
    Returns the ranking (queries in ``ranking``'s order, texts kept) and the workers' summed cost."""
    import pyarrow as pa

    from .rerankers.base import query_blocks

    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    blocks = query_blocks(queries, ranking, block)
    by_id = {q.qid: q for q in queries}
    payloads = [pickle.dumps(([by_id[q] for q in b], {q: ranking[q] for q in b})) for b in blocks]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}|{block}|{len(blocks)}".encode())
    for p in payloads:
        digest.update(hashlib.blake2b(p, digest_size=16).digest())
    log_ = _Journal(Path(journal), digest.hexdigest()) if journal is not None else None
    done: dict[int, dict[str, list[tuple[str, float]]]] = dict(log_.done) if log_ else {}
    cost = Cost()
    todo = [i for i in range(len(blocks)) if i not in done]
    finished = False
    try:
        if todo:
            ray = connect(options)
            refs = [ray.put(pa.table({"key": [i], "payload": [payloads[i]]})) for i in todo]
            ds = ray.data.from_arrow_refs(refs).map_batches(
                _RerankBlocks, batch_size=1, batch_format="pyarrow",
                fn_constructor_kwargs={"factory": factory, "cpus": options.cpus_per_worker}, **options.actor_pool(len(refs)))
            bar = _progress(len(blocks), len(done), f"reranking on {options.workers} Ray workers", "block")
            try:
                results = _results(ds)
                for i, (hits, spent) in results:
                    if i in done:
                        log.warning("block %d came back twice; its first result is kept", i)
                        continue
                    done[i] = hits
                    cost.add(spent)
                    if log_ is not None:
                        log_.add(i, hits)
                    bar.update(1)
                    if on_block is not None:
                        on_block(len(done), len(blocks))
            finally:
                results.close()
                bar.close()
        missing = [i for i in range(len(blocks)) if i not in done]
        if missing:
            raise RerankError(f"Ray returned no result for {len(missing)} of {len(blocks)} query blocks (e.g. block "
                              f"{missing[0]}: {', '.join(blocks[missing[0]][:3])}); run again to resume")
        finished = True
    finally:
        if log_ is not None:
            log_.close(remove=finished)
    out: Ranking = {}
    scored = {qid: hits for part in done.values() for qid, hits in part.items()}
    for qid, hits in ranking.items():
        if qid not in scored:
            out[qid] = list(hits)
            continue
        texts = {h.docid: h.text for h in hits}
        new = scored[qid]
        if sorted(d for d, _ in new) != sorted(texts):
            raise RerankError(f"query {qid!r}: a worker returned other documents than it was given")
        out[qid] = [Hit(d, s, texts[d]) for d, s in new]
    return out, cost


def _model_identity(cls: Any, spec: str, options: dict[str, Any]) -> str:
    """The content fingerprint of the model a reranker spec names (its name when not local): a
    journal of a run with other weights is not resumed."""
    from .errors import RerankError
    from .models.loading import model_fingerprint, resolve_model
    from .specs import parse

    try:
        return model_fingerprint(resolve_model(cls.spec_model(parse(spec).arg, dict(options))))
    except RerankError as e:
        return str(e)


class RayReranker(Stage):
    """A reranker run by Ray workers, usable wherever the reranker is:
    ``bm25 % 100 >> RayReranker("cross-encoder:MODEL", RayOptions(workers=4, gpus_per_worker=1))``.

    ``reranker``: a spec for :func:`rerank.make_reranker` (with ``reranker_options``: depth,
    device, dtype, window, ...), or a picklable callable returning a Stage (then give ``block``).
    ``journal``: a file keeping finished blocks so a stopped run resumes."""

    def __init__(self, reranker: str | Callable[[], Stage], options: RayOptions | None = None, *, block: int | None = None,
                 journal: str | os.PathLike[str] | None = None, **reranker_options: Any) -> None:
        from .rerankers import make_reranker, reranker_class

        if isinstance(reranker, str):
            cls = reranker_class(reranker, **reranker_options)  # a bad spec fails here, not on the workers
            self.factory: Callable[[], Stage] = functools.partial(make_reranker, reranker, **reranker_options)
            self.block = block or cls.block
            self.name = f"ray({reranker})"
            self._job = f"{self.name}|{_model_identity(cls, reranker, reranker_options)}|{sorted(reranker_options.items())}"
        else:
            if reranker_options:
                raise ValueError("reranker options go with a reranker spec; build them into the factory instead")
            self.factory = reranker
            self.block = block or 8
            self.name = f"ray({getattr(reranker, '__name__', 'reranker')})"
            self._job = self.name
        self.options = options or RayOptions()
        self.journal = journal
        self.cost = Cost()

    def __call__(self, queries: Sequence[Query], ranking: Ranking | None = None) -> Ranking:
        if ranking is None:
            raise ValueError(f"{self.name} is a reranker: give it a first stage (retriever >> reranker)")
        out, cost = rerank(self.factory, queries, ranking, self.options, block=self.block, journal=self.journal,
                           name=self._job)
        self.cost.add(cost)
        return out


# ------------------------------------------------------------------ pipelines
def use_ray(stage: Stage, options: RayOptions) -> list[Stage]:
    """Make the index builds of ``stage`` (a retriever or a pipeline) run on Ray: dense corpus
    encoding and bm25s tokenization; and the searches of sharded indexes: bm25:disk (built in
    ``options.workers`` shards) and dense ``mmap`` (its rows cut into as many), one worker a
    shard. Returns the stages changed (Lucene BM25 and prebuilt runs stay as they are: Lucene
    indexes with its own threads)."""
    from .retrieve.bm25 import BM25
    from .retrieve.dense import Dense

    require_ray()  # without the extra, say so before any work
    builder = RayIndexBuilder(options)
    changed: list[Stage] = []
    todo: list[Any] = [stage]
    while todo:
        s = todo.pop()
        if isinstance(s, Composite):
            todo.extend(s.stages)
        if isinstance(s, Dense):
            s.encode_with = builder.encode_dense
            if s.index_type == "mmap":
                builder.shard_search(s)
            changed.append(s)
        elif isinstance(s, BM25) and s.backend == "bm25s":
            s.build_with = builder.build_bm25
            changed.append(s)
        elif isinstance(s, BM25) and s.backend == "disk":
            builder.shard_search(s)
            changed.append(s)
    return changed


@dataclass(frozen=True)
class RayIndexBuilder:
    """Index builds on Ray, given to stages as they are built (``rerank.specs.Context.index_builder``):
    dense corpus encoding by shards and bm25s tokenization by shards."""

    options: RayOptions

    def encode_dense(self, dense: Any, folder: Path) -> None:
        _encode_on_ray(dense, folder, self.options)

    def build_bm25(self, bm25: Any, folder: Path) -> None:
        _bm25_on_ray(bm25, folder, self.options)

    def shard_search(self, stage: Any) -> None:
        """A bm25:disk stage (built in ``workers`` shards) or a dense ``mmap`` one: its shards
        searched by one Ray worker each."""
        from .retrieve.bm25 import BM25

        if isinstance(stage, BM25):
            stage.shards = max(stage.shards, self.options.workers)
            stage.search_with = functools.partial(search_bm25_shards, options=self.options)
        else:
            stage.search_with = functools.partial(search_dense_shards, options=self.options)
