"""Click logs: one search session per record, read as a stream.

Our format is JSON lines (``.jsonl``, or ``.jsonl.gz``), one session a line::

    {"session": "s17", "qid": "q3", "docs": ["d9", "d2", "d4"], "clicks": [0, 1, 0]}

``docs`` are the results shown, top first; ``clicks`` the clicked flags in the same order.
Optional fields: ``"query"`` (the query text) and ``"texts"`` (one text per shown result) for
text rankers, ``"features"`` (one feature vector per shown result), ``"policy"`` (the logging
policy that showed the list). Documents of a LETOR set are
named by their row inside the query (``"0"``, ``"1"``, ... as in ``LetorData.qrels``).

:func:`read_yandex` reads the Yandex WSCD 2012 session format as PyClick ships it: sessions
separated by ``;``, each ``QUERY<TAB>doc,doc,... : clicked,clicked,...`` (clicks in time
order; a document clicked twice counts once; clicks on documents that were not shown, which
real logs hold (0.6% of the sample's sessions), are left out and counted in ``unshown_clicks``).

Readers yield :class:`ClickSession` one at a time, so a log never has to fit in memory;
:func:`aggregate` folds a stream into per-(query, shown list) click counts, the sufficient
statistics of every learner in :mod:`rerank.ultr.learn` (its memory grows with the number of
distinct lists, not of sessions). Every malformed record is an error naming ``file:line``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..data.formats import check_id, iter_lines
from ..env import atomic_write
from ..errors import DataError


@dataclass(frozen=True)
class ClickSession:
    qid: str
    docs: tuple[str, ...]
    clicks: tuple[int, ...]
    session: str = ""
    query: str | None = None
    texts: tuple[str, ...] | None = None
    features: tuple[tuple[float, ...], ...] | None = None
    unshown_clicks: int = 0  # clicks the log records on results that were not in ``docs``
    policy: str | None = None  # the logging policy that showed the list (simulated logs with several)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session": self.session, "qid": self.qid, "docs": list(self.docs),
                               "clicks": list(self.clicks)}
        if self.query is not None:
            out["query"] = self.query
        if self.texts is not None:
            out["texts"] = list(self.texts)
        if self.features is not None:
            out["features"] = [list(f) for f in self.features]
        if self.policy is not None:
            out["policy"] = self.policy
        return out


def _log_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no click log {path}")
    return path


def _session_from_json(obj: Any, where: str) -> ClickSession:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a session must be a JSON object, got {type(obj).__name__}")
    for key in ("qid", "docs", "clicks"):
        if key not in obj:
            raise DataError(f"{where}: the session has no {key!r} field")
    docs, clicks = obj["docs"], obj["clicks"]
    if not isinstance(docs, list) or not docs:
        raise DataError(f"{where}: 'docs' must be a non-empty list of document ids")
    if not isinstance(clicks, list) or len(clicks) != len(docs):
        raise DataError(f"{where}: 'clicks' must be a list as long as 'docs' ({len(docs)}), "
                        f"got {len(clicks) if isinstance(clicks, list) else type(clicks).__name__}")
    if any(c not in (0, 1) for c in clicks):
        raise DataError(f"{where}: clicks must be 0 or 1, got {clicks}")
    docs = [check_id(d, "document id", where) for d in docs]
    if len(set(docs)) != len(docs):
        raise DataError(f"{where}: a document is shown twice in {docs}")
    qid = check_id(obj["qid"], "query id", where)
    query = obj.get("query")
    if query is not None and not isinstance(query, str):
        raise DataError(f"{where}: 'query' must be a text, got {type(query).__name__}")
    texts = obj.get("texts")
    if texts is not None and (not isinstance(texts, list) or len(texts) != len(docs)
                              or not all(isinstance(t, str) for t in texts)):
        raise DataError(f"{where}: 'texts' must hold one text (a string) per shown document")
    feats = obj.get("features")
    if feats is not None:
        if not isinstance(feats, list) or len(feats) != len(docs) or len({len(f) for f in feats}) != 1:
            raise DataError(f"{where}: 'features' must hold one vector per shown document, all of one length")
        try:
            feats = tuple(tuple(float(v) for v in f) for f in feats)
        except (TypeError, ValueError):
            raise DataError(f"{where}: 'features' must be numbers") from None
    policy = obj.get("policy")
    if policy is not None and not isinstance(policy, str):
        raise DataError(f"{where}: 'policy' must be a text, got {type(policy).__name__}")
    return ClickSession(qid, tuple(docs), tuple(int(c) for c in clicks), str(obj.get("session", "")),
                        query, tuple(texts) if texts is not None else None, feats, policy=policy)


def read_click_log(path: str | Path) -> Iterator[ClickSession]:
    """Sessions of a JSON-lines click log (``.gz`` read as gzip), one at a time."""
    path = _log_path(path)
    for n, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not a JSON object ({e.msg})") from None
        yield _session_from_json(obj, f"{path}:{n}")


def read_yandex(path: str | Path) -> Iterator[ClickSession]:
    """Sessions of a Yandex WSCD 2012 log in PyClick's layout (see the module docstring)."""
    path = _log_path(path)
    for n, line in iter_lines(path):
        for k, part in enumerate(line.split(";")):
            part = part.strip()
            if not part:
                continue
            where = f"{path}:{n} (session {k + 1} of the line)"
            query, tab, rest = part.partition("\t")
            shown, colon, clicked = rest.partition(":")
            if not tab or not colon or not query.strip():
                raise DataError(f"{where}: expected 'QUERY<TAB>doc,doc,... : clicked,...', got {part[:80]!r}")
            docs = tuple(check_id(d.strip(), "document id", where) for d in shown.split(",") if d.strip())
            if not docs:
                raise DataError(f"{where}: no shown documents")
            if len(set(docs)) != len(docs):
                raise DataError(f"{where}: a document is shown twice")
            hits = {c.strip() for c in clicked.split(",") if c.strip()}
            yield ClickSession(query.strip(), docs, tuple(int(d in hits) for d in docs), f"{n}.{k + 1}",
                               unshown_clicks=len(hits - set(docs)))


def iter_sessions(path: str | Path, fmt: str = "auto") -> Iterator[ClickSession]:
    """Sessions of a log in our JSON-lines format or the Yandex one (``fmt``: auto | jsonl | yandex;
    auto looks at the first non-blank character: ``{`` is JSON lines)."""
    path = _log_path(path)
    if fmt == "auto":
        first = next(iter_lines(path), (0, ""))[1]
        fmt = "jsonl" if first.lstrip().startswith("{") else "yandex"
    if fmt == "jsonl":
        return read_click_log(path)
    if fmt == "yandex":
        return read_yandex(path)
    raise ValueError(f"unknown click-log format {fmt!r}: jsonl, yandex or auto")


def write_click_log(sessions: Iterable[ClickSession], path: str | Path) -> int:
    """Write sessions as JSON lines (gzip when the name ends in ``.gz``), atomically; returns
    the number written. The iterable is consumed as it is written."""
    path = Path(path)
    count = 0
    with atomic_write(path, "wb", encoding=None) as raw:
        out: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else raw  # type: ignore[assignment]
        try:
            for s in sessions:
                out.write(json.dumps(s.to_json(), separators=(",", ":")).encode("utf-8") + b"\n")
                count += 1
        finally:
            if out is not raw:
                out.close()
    return count


@dataclass
class ClickGroup:
    """All sessions of one query that showed the same list: ``clicks[i]`` clicks at rank ``i``."""

    qid: str
    docs: tuple[str, ...]
    sessions: int = 0
    clicks: np.ndarray = field(default_factory=lambda: np.zeros(0))
    query: str | None = None
    texts: tuple[str, ...] | None = None
    features: tuple[tuple[float, ...], ...] | None = None


@dataclass
class ClickStats:
    """A click log folded into :class:`ClickGroup` s, with what was seen on the way."""

    groups: list[ClickGroup]
    list_size: int
    sessions: int = 0
    clicks: int = 0
    zero_click_sessions: int = 0
    truncated_sessions: int = 0  # sessions longer than list_size, cut to it
    dropped_clicks: int = 0  # clicks below the cut
    unshown_clicks: int = 0  # clicks on results the session did not show (left out)
    source: str = ""

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "sessions": self.sessions, "lists": len(self.groups),
                "queries": len({g.qid for g in self.groups}), "clicks": self.clicks,
                "zero_click_sessions": self.zero_click_sessions, "list_size": self.list_size,
                "truncated_sessions": self.truncated_sessions, "dropped_clicks": self.dropped_clicks,
                "unshown_clicks": self.unshown_clicks,
                "ctr_by_rank": [round(float(v), 5) for v in self.ctr_by_rank()]}

    def ctr_by_rank(self) -> np.ndarray:
        clicks, shown = self.by_rank()
        return np.divide(clicks, shown, out=np.zeros_like(clicks), where=shown > 0)

    def by_rank(self) -> tuple[np.ndarray, np.ndarray]:
        """Clicks and sessions that showed a result, per rank."""
        clicks = np.zeros(self.list_size)
        shown = np.zeros(self.list_size)
        for g in self.groups:
            clicks[: len(g.clicks)] += g.clicks
            shown[: len(g.clicks)] += g.sessions
        return clicks, shown

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per (query, document, rank) shown: the pair's index, the rank, its clicks and its sessions."""
        keys: dict[tuple[str, str], int] = {}
        key, rank, clicks, shown = [], [], [], []
        for g in self.groups:
            for r, d in enumerate(g.docs):
                key.append(keys.setdefault((g.qid, d), len(keys)))
                rank.append(r)
                clicks.append(g.clicks[r])
                shown.append(g.sessions)
        return (np.asarray(key, dtype=np.int64), np.asarray(rank, dtype=np.int64), np.asarray(clicks, dtype=np.float64),
                np.asarray(shown, dtype=np.float64))


@dataclass
class RankStats:
    """A click log folded as it streams by into what the propensity estimators need: clicks and
    sessions per rank (result randomization) and per (query, document, rank) (EM). Its memory
    grows with the distinct (query, document, rank) triples, never with the sessions or the
    distinct shown lists (a randomized log shows a new list almost every session)."""

    list_size: int
    sessions: int = 0
    source: str = ""
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    counts: dict[int, list[int]] = field(default_factory=dict)  # pair * list_size + rank -> [sessions, clicks]

    def add(self, qid: str, docs: Sequence[str], clicks: Sequence[int]) -> None:
        pairs, counts, width = self.pairs, self.counts, self.list_size
        for r, (d, c) in enumerate(zip(docs[:width], clicks[:width], strict=True)):
            k = pairs.setdefault((qid, d), len(pairs)) * width + r
            cell = counts.get(k)
            if cell is None:
                counts[k] = [1, c]
            else:
                cell[0] += 1
                cell[1] += c
        self.sessions += 1

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`ClickStats.cells`."""
        keys = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
        values = np.array(list(self.counts.values()), dtype=np.float64).reshape(-1, 2)
        return keys // self.list_size, keys % self.list_size, values[:, 1], values[:, 0]

    def by_rank(self) -> tuple[np.ndarray, np.ndarray]:
        _, rank, clicks, shown = self.cells()
        return (np.bincount(rank, weights=clicks, minlength=self.list_size)[: self.list_size],
                np.bincount(rank, weights=shown, minlength=self.list_size)[: self.list_size])


def fold_ranks(sessions: Iterable[ClickSession], list_size: int = 10, source: str = "") -> RankStats:
    """:class:`RankStats` of a stream of sessions (each cut to ``list_size`` results)."""
    if list_size < 1:
        raise ValueError(f"list_size must be >= 1, got {list_size}")
    stats = RankStats(list_size, source=source)
    for s in sessions:
        stats.add(s.qid, s.docs, s.clicks)
    if stats.sessions == 0:
        raise DataError(f"{source or 'the click log'} holds no sessions")
    return stats


def aggregate(sessions: Iterable[ClickSession], list_size: int = 10, source: str = "") -> ClickStats:
    """Fold sessions into click counts per (query, shown list). Sessions showing more than
    ``list_size`` results are cut to the top ``list_size`` (clicks below are counted in
    ``dropped_clicks``): learners model position effects only that deep."""
    if list_size < 1:
        raise ValueError(f"list_size must be >= 1, got {list_size}")
    index: dict[tuple[str, tuple[str, ...]], ClickGroup] = {}
    stats = ClickStats([], list_size, source=source)
    for s in sessions:
        docs, clicks = s.docs, s.clicks
        if len(docs) > list_size:
            stats.truncated_sessions += 1
            stats.dropped_clicks += sum(clicks[list_size:])
            docs, clicks = docs[:list_size], clicks[:list_size]
        key = (s.qid, docs)
        g = index.get(key)
        if g is None:
            feats = s.features[: len(docs)] if s.features is not None else None
            texts = s.texts[: len(docs)] if s.texts is not None else None
            g = index[key] = ClickGroup(s.qid, docs, 0, np.zeros(len(docs)), s.query, texts, feats)
            stats.groups.append(g)
        g.sessions += 1
        g.clicks += clicks
        n = sum(clicks)
        stats.sessions += 1
        stats.clicks += n
        stats.zero_click_sessions += n == 0
        stats.unshown_clicks += s.unshown_clicks
    if stats.sessions == 0:
        raise DataError(f"{source or 'the click log'} holds no sessions")
    return stats
