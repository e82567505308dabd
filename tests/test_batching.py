"""Cross-request batching: concurrent callers of one reranker share its batches, each gets exactly
its own scores (equal to scoring its request alone), errors and cancellations stay with their request."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rerank import CrossEncoder
from rerank.models.batching import Cancelled, Combiner, Ticket


@pytest.fixture(scope="module")
def dl19_requests(dl19_requests_30):
    """One request per DL19 query: its text and the texts of its BM25 top 20."""
    return [(q, docs[:20]) for q, docs in dl19_requests_30]


def _slow_double(calls: list[list[int]]):
    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(0.02)  # long enough that concurrent callers queue behind a round
        if any(x < 0 for x in items):
            raise ValueError(f"negative item in {items}")
        return [2 * x for x in items]
    return run


def test_concurrent_requests_share_rounds_and_get_their_own_results():
    calls: list[list[int]] = []
    comb = Combiner(_slow_double(calls), max_items=64)
    requests = [list(range(i * 10, i * 10 + 1 + i % 5)) for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(comb.submit, requests))
    assert results == [[2 * x for x in r] for r in requests]
    assert sorted(x for c in calls for x in c) == sorted(x for r in requests for x in r)  # every item run once
    assert len(calls) < len(requests) / 2  # combined: far fewer rounds than requests
    assert all(len(c) <= 64 or len(c) == max(map(len, requests)) for c in calls)
    assert comb.stats.requests == 40 and comb.stats.rounds == len(calls)


def test_a_lone_caller_runs_at_once():
    comb = Combiner(lambda items: [x + 1 for x in items], max_wait_ms=50)
    t0 = time.perf_counter()
    for _ in range(20):
        assert comb.submit([1, 2]) == [2, 3]
    assert time.perf_counter() - t0 < 0.5  # no 50 ms wait per call: a lone caller never waits for company
    assert comb.submit([]) == []


def test_one_requests_error_is_its_own():
    calls: list[list[int]] = []
    comb = Combiner(_slow_double(calls))
    requests = [[1, 2], [3, -1], [5], [6, 7]] * 4
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(comb.submit, r) for r in requests]
    for r, f in zip(requests, futures, strict=True):
        if -1 in r:
            with pytest.raises(ValueError, match="negative item"):
                f.result()
        else:
            assert f.result() == [2 * x for x in r]


def test_a_cancelled_request_is_dropped_before_it_runs():
    calls: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        gate.wait(5)
        return items

    comb = Combiner(run)
    first = threading.Thread(target=comb.submit, args=([1],))
    first.start()  # holds the model while the next request queues
    while not calls:
        time.sleep(0.001)
    ticket = Ticket()
    outcome: list[object] = []

    def cancelled_caller() -> None:
        with ticket:
            try:
                outcome.append(comb.submit([99]))
            except Cancelled as e:
                outcome.append(e)

    t = threading.Thread(target=cancelled_caller)
    t.start()
    while comb.waiting < 1:
        time.sleep(0.001)
    ticket.cancel()
    t.join(5)
    gate.set()
    first.join(5)
    assert isinstance(outcome[0], Cancelled)
    assert [99] not in calls and comb.waiting == 0
    with ticket, pytest.raises(Cancelled):
        comb.submit([1])  # a ticket cancelled beforehand runs nothing


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-5), ("bfloat16", 1e-3)])
def test_concurrent_cross_encoder_calls_equal_each_alone(tiny_ce, dl19_requests, dtype, tol):
    ce = CrossEncoder(tiny_ce, dtype=dtype)
    alone = [ce.score([(q, d) for d in docs]) for q, docs in dl19_requests]
    rounds = ce.combiner.stats.rounds
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: [x.score for x in sorted(ce.rank(r[0], r[1]), key=lambda x: x.index)],
                                 dl19_requests))
    for a, b in zip(alone, together, strict=True):
        assert np.abs(np.array(a) - np.array(b)).max() < tol
    assert ce.combiner.stats.rounds - rounds < len(dl19_requests)  # some requests shared a round

    async def gathered():
        return await asyncio.gather(*(ce.arank(q, docs) for q, docs in dl19_requests[:12]))

    for a, ranked in zip(alone[:12], asyncio.run(gathered()), strict=True):  # a random tiny model has near ties: compare scores
        got = [r.score for r in sorted(ranked, key=lambda x: x.index)]
        assert np.abs(np.array(a) - np.array(got)).max() < tol


def test_concurrent_listwise_calls_equal_each_alone(tiny_smol, dl19_requests):
    from rerank.rerankers.listwise import First

    first = First(tiny_smol, window=4, stride=2, depth=8, max_passage_tokens=32, dtype="float32")
    requests = [(q, docs[:8]) for q, docs in dl19_requests[:6]]
    alone = [[r.index for r in first.rank(q, docs)] for q, docs in requests]
    calls = first.cost.calls
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda r: [x.index for x in first.rank(*r)], requests))
    assert together == alone
    assert first.cost.calls - calls == calls  # the same prompts, whatever rounds they shared


_FORKED = Combiner(lambda items: [x * 3 for x in items])


def _in_child(conn) -> None:
    conn.send(_FORKED.submit([2, 5]))


def test_a_forked_child_scores_on_its_own_model_thread():
    import multiprocessing

    assert _FORKED.submit([1]) == [3]  # the parent's model thread is running now
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_in_child, args=(child,))
    proc.start()
    assert parent.poll(20), "the child's request was never served"
    assert parent.recv() == [6, 15]
    proc.join(5)
