"""The batched scoring engine shared by every model-backed component.

Items arrive tokenized once (lists of token ids). The engine sorts them by length, forms
batches by a token budget (longest padded length x batch size <= ``batch_tokens``, so short
passages travel in big batches and long ones in small), pads each batch, runs the model under
``torch.inference_mode``, halves a batch and retries when it runs out of memory (and shrinks
later batches alike), refuses non-finite outputs, and returns one output per item in the
caller's order. Padding is masked, so outputs do not depend on the batch size.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ..errors import DataError, ScoringError
from .batching import check_cancelled

log = logging.getLogger("rerank")
Encoded = dict[str, list[int]]


@dataclass
class Cost:
    """What scoring cost: model items run, tokens fed, seconds spent, items served from cache.
    ``unit`` names what one call is ("pairs" for pointwise scorers, "prompts" for LLMs)."""

    unit: ClassVar[str] = "pairs"
    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0
    cached: int = 0
    batches: int = 0

    def add(self, other: Cost, sign: int = 1) -> None:
        """Add ``other``'s counts to these (``sign=-1``: subtract them)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + sign * getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        return {"model_calls": self.calls, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "cached": self.cached, "batches": self.batches}


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in ("out of memory", "can't allocate memory"))


@dataclass
class Engine:
    """Runs ``forward`` over tokenized items in length-sorted, token-budgeted batches."""

    device: str = "cpu"
    batch_tokens: int = 16384
    max_batch: int = 512
    pad_id: int = 0
    padding_side: str = "right"
    cost: Cost = field(default_factory=Cost)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches, longest first, each within the token budget."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            longest = lengths[cur[0]] if cur else lengths[i]
            if cur and (longest * (len(cur) + 1) > self.batch_tokens or len(cur) >= self.max_batch):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def pad(self, items: Sequence[Encoded]) -> dict[str, Any]:
        import torch

        width = max(len(x["input_ids"]) for x in items)
        tensors: dict[str, Any] = {}
        for key in items[0]:
            fill = self.pad_id if key == "input_ids" else 0
            rows = []
            for x in items:
                seq = x[key]
                padding = [fill] * (width - len(seq))
                rows.append(padding + seq if self.padding_side == "left" else seq + padding)
            tensors[key] = torch.tensor(rows, dtype=torch.long)
        masks = [[1] * len(x["input_ids"]) for x in items]
        tensors["attention_mask"] = torch.tensor(
            [([0] * (width - len(m)) + m) if self.padding_side == "left" else (m + [0] * (width - len(m))) for m in masks],
            dtype=torch.long)
        tensors["lengths"] = torch.tensor([len(x["input_ids"]) for x in items], dtype=torch.long)
        return {k: v.to(self.device) for k, v in tensors.items()}

    def run(self, items: Sequence[Encoded], forward: Callable[[dict[str, Any]], Any],
            progress: Callable[[int], None] | None = None) -> list[Any]:
        """``forward(batch)`` gets padded tensors (plus ``lengths``) and returns one output per row
        (a tensor with a leading batch dimension, or a list). Returns outputs in ``items`` order:
        floats for a 1-d tensor, NumPy rows for a 2-d one. ``progress(n)`` hears of each finished batch."""
        import torch

        results: list[Any] = [None] * len(items)
        if not items:
            return results
        t0 = time.perf_counter()
        lengths = [len(x["input_ids"]) for x in items]
        pending = self.batches(lengths)
        with torch.inference_mode():
            while pending:
                check_cancelled()  # every caller of this round gone: stop here
                idx = pending.pop(0)
                try:
                    out = forward(self.pad([items[i] for i in idx]))
                except Exception as e:
                    if not _is_oom(e):
                        raise
                    if len(idx) == 1:
                        raise ScoringError(f"out of memory on a single item of {lengths[idx[0]]} tokens; "
                                           f"lower max_length or use a larger device") from e
                    if self.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                    self.batch_tokens = max(1, self.batch_tokens // 2)
                    log.warning("out of memory on a batch of %d; halving it (batch_tokens now %d)", len(idx), self.batch_tokens)
                    half = len(idx) // 2
                    pending[:0] = [idx[:half], idx[half:]]
                    continue
                if isinstance(out, torch.Tensor):  # one device sync per batch, not one per item
                    out = out.cpu().tolist() if out.dim() == 1 else out.cpu().numpy()
                self.cost.batches += 1
                self.cost.calls += len(idx)
                self.cost.tokens += sum(lengths[i] for i in idx)
                for row, i in enumerate(idx):
                    results[i] = out[row]
                if progress is not None:
                    progress(len(idx))
        self.cost.seconds += time.perf_counter() - t0
        return results


def finite_scores(values: Iterable[Any], what: str) -> list[float]:
    """Plain floats; NaN or infinite scores are an error (they would silently scramble a ranking)."""
    import math

    out = [float(v) for v in values]
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise ScoringError(f"{what} produced {len(bad)} non-finite scores (first at item {bad[0]}); "
                           f"half precision can overflow: try dtype='float32'")
    return out


class Truncation:
    """Texts cut to fit a model's window. Inside a ``job()`` (a whole run: a corpus encoding, a
    reranking stage) they are counted and reported once, as the total; outside one (an app's
    single calls) the first cut is reported once for the object's lifetime."""

    def __init__(self, name: str, unit: str, level: int = logging.INFO) -> None:
        self.name, self.unit, self.level = name, unit, level
        self.cut = self.total = self.window = 0
        self._depth = 0
        self._logged = False

    def add(self, cut: int, total: int, window: int) -> None:
        if self._depth:
            self.cut, self.total, self.window = self.cut + cut, self.total + total, window
        elif cut and not self._logged:
            log.log(self.level, "%s: %d of %d %s are longer than %d tokens and were truncated (reported once)", self.name,
                    cut, total, self.unit, window)
            self._logged = True

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                if self.cut:
                    log.log(self.level, "%s: %d of %d %s are longer than %d tokens and were truncated", self.name, self.cut,
                            self.total, self.unit, self.window)
                self.cut = self.total = 0


_KEPT: dict[str, OrderedDict[str, Any]] = {}
_KEPT_LOCK = threading.Lock()


def kept_encodings(model_key: str, texts: Sequence[str], encode: Callable[[list[str]], list[Any]], limit: int) -> dict[str, Any]:
    """The encodings of ``texts`` by the model ``model_key`` names (SPLADE vectors, ColBERT token
    embeddings), encoding only the distinct texts not kept from earlier calls: the last ``limit``
    texts' encodings are kept per model in a process, shared by its instances and threads (a
    search or a run scores the same documents for many queries and rounds)."""
    with _KEPT_LOCK:
        kept = _KEPT.setdefault(model_key, OrderedDict())
        todo = [t for t in dict.fromkeys(texts) if t not in kept]
    fresh = encode(todo) if todo else []
    with _KEPT_LOCK:
        kept.update(zip(todo, fresh, strict=True))
        out = {}
        for t in texts:
            kept.move_to_end(t)
            out[t] = kept[t]
        while len(kept) > limit:
            kept.popitem(last=False)
    return out


class ScoreCache:
    """Scores on disk (SQLite), keyed by a hash of (model key, query, document): a repeated
    experiment is served without running the model."""

    #: SQLite's application_id of a rerank score cache (b"rrsc"): another program's database is told apart
    APPLICATION_ID = 0x72727363

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
        except sqlite3.Error as e:
            raise DataError(f"score cache {self.path}: cannot open it ({e}); give another --score-cache file") from None
        try:
            self._check()  # before anything is written: another program's database is left as it was
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA application_id={self.APPLICATION_ID}")
            self._db.execute("CREATE TABLE IF NOT EXISTS scores (key BLOB PRIMARY KEY, score REAL NOT NULL)")
            self._db.commit()
        except (sqlite3.Error, DataError) as e:
            self._db.close()
            if isinstance(e, DataError):
                raise
            raise DataError(f"score cache {self.path}: not a rerank score cache ({e}); give another --score-cache file") from None

    def _check(self) -> None:
        """Refuse a database that is not a score cache (read only): one stamped by another program,
        or with tables besides ``scores`` (key, score). An empty database becomes one."""
        stamp = self._db.execute("PRAGMA application_id").fetchone()[0]
        tables = [row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                                     "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(scores)")]
        if stamp not in (0, self.APPLICATION_ID) or any(t != "scores" for t in tables):
            held = f"tables {', '.join(tables)}" if tables else f"application_id {stamp:#x}"
            raise DataError(f"score cache {self.path}: an SQLite database of another program ({held}), not a rerank "
                            "score cache; it was left unchanged: give another --score-cache file")
        if tables and columns != ["key", "score"]:
            raise DataError(f"score cache {self.path}: its 'scores' table has columns {columns}, not a rerank score cache")

    @staticmethod
    def key(model_key: str, query: str, doc: str) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for part in (model_key, query, doc):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.digest()

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, float]:
        found: dict[bytes, float] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, score FROM scores WHERE key IN ({marks})", chunk).fetchall())
        return found

    def put_many(self, items: Iterable[tuple[bytes, float]]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO scores (key, score) VALUES (?, ?)", list(items))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def kept_now(model_key: str, texts: Sequence[str]) -> dict[str, Any]:
    """Those of ``texts`` whose encodings :func:`kept_encodings` keeps now for ``model_key`` (none is encoded)."""
    with _KEPT_LOCK:
        kept: dict[str, Any] = _KEPT.get(model_key) or {}
        return {t: kept[t] for t in texts if t in kept}
