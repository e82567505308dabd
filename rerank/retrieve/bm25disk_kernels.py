"""numba's kernels of ``bm25:disk`` search (:mod:`rerank.retrieve.bm25disk`): compiled on first
use and cached on disk beside this file, so a process compiles them once per installation.

They live at module level on purpose: numba keys a cached closure by its captured values, and a
captured dispatcher pickles differently in every process, so kernels nested in a function (as
they were) missed the cache and compiled again in every process: 55 s a process on a 2-core AVX2
CPU, a Ray worker's restart included. ``block`` is the index's postings per block-maximum.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

#: the lowest set bit of a 64-bit word: its index is _LOWEST_BIT[(bit * _DE_BRUIJN) >> 58]
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_LOWEST_BIT = np.array([0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51, 43, 22, 45, 39,
                        33, 30, 24, 18, 12, 5, 63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11, 46, 26, 40,
                        15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6], dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def find(docs: Any, lo: int, hi: int, d: int) -> int:  # pragma: no cover - numba
    """The first position in [lo, hi) of a doc-sorted list holding a document >= d (hi: none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if docs[mid] < d:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def gallop(docs: Any, lo: int, hi: int, d: int) -> int:  # pragma: no cover - numba
    """:func:`find` from ``lo`` by steps of 1, 2, 4...: cheap when d is near, as when the
    candidates looked up in a list come in document order."""
    step = 1
    at = lo
    while at < hi and docs[at] < d:
        lo = at + 1
        at = lo + step
        step *= 2
    return find(docs, lo, min(at + 1, hi), d)


@numba.njit(cache=True, nogil=True)
def exhaustive(offsets: Any, docs: Any, scores: Any, first: int, qt: Any, acc: Any,
               touched: Any) -> tuple[int, int]:  # pragma: no cover - numba
    """Every posting of every query term added into ``acc``, in query-term order (bm25s's
    sums, bit for bit); the documents scored in ``touched``: (how many, postings read)."""
    m = 0
    read = 0
    for j in range(len(qt)):
        term = qt[j]
        for p in range(offsets[term], offsets[term + 1]):
            d = docs[p] - first
            if acc[d] == 0:
                touched[m] = d
                m += 1
            acc[d] += scores[p]
        read += offsets[term + 1] - offsets[term]
    return m, read


@numba.njit(cache=True, nogil=True)
def worse(hs: Any, hd: Any, a: int, b: int) -> bool:  # pragma: no cover - numba
    """Heap entry a ranks below b: a lower score, or the same score and a later document."""
    return hs[a] < hs[b] or (hs[a] == hs[b] and hd[a] > hd[b])


@numba.njit(cache=True, nogil=True)
def sift_down(hs: Any, hd: Any, size: int, i: int) -> None:  # pragma: no cover - numba
    while True:
        low = i
        for c in (2 * i + 1, 2 * i + 2):
            if c < size and worse(hs, hd, c, low):
                low = c
        if low == i:
            return
        hs[i], hs[low] = hs[low], hs[i]
        hd[i], hd[low] = hd[low], hd[i]
        i = low


@numba.njit(cache=True, nogil=True)
def pruned(offsets: Any, docs: Any, scores: Any, maxima: Any, blockmax: Any, block: int, first: int, n: int, qt: Any,
           k: int, window: int, out_docs: Any, out_scores: Any) -> tuple[int, int]:  # pragma: no cover - numba
    """Block-max MaxScore (Turtle & Flood; Lucene's MaxScoreBulkScorer), document at a time in
    windows of documents: the top k of :func:`exhaustive`'s scores, bit for bit, having read
    only part of the postings; (how many found, postings read).

    theta is the k-th best exact score found so far (a heap of the best k). A term's bound is
    its largest impact times how often the query holds it: over the whole list (which
    documents need a look at all) and over the blocks of postings in a window. In a window,
    the terms whose bounds sum, smallest first, to at most theta are non-essential: a document
    in none of the other (essential) lists cannot beat theta, and when every term is, the
    window is skipped. The essential lists' impacts are added over the window (term at a
    time); a document whose sum plus the non-essential bounds can beat theta has those terms
    looked up (galloping: the cursors only move forward), the largest bound first, until it
    cannot. Float32 sums depend on their order, so every bound is widened by ``widen`` (twice
    the rounding error of a float32 sum of the query's impacts) and a document that may enter
    the top k gets its score summed as :func:`exhaustive` sums it: its impacts in query-term
    order, in float32."""
    m = len(qt)
    uniq = np.empty(m, dtype=np.int64)
    mult = np.zeros(m, dtype=np.int64)
    slot = np.empty(m, dtype=np.int64)  # each query term's distinct term
    r = 0
    for j in range(m):
        i = 0
        while i < r and uniq[i] != qt[j]:
            i += 1
        if i == r:
            uniq[r] = qt[j]
            r += 1
        mult[i] += 1
        slot[j] = i
    uniq, mult = uniq[:r], mult[:r]
    bound = np.empty(r, dtype=np.float64)
    for i in range(r):
        bound[i] = mult[i] * np.float64(maxima[uniq[i]])
    order = np.argsort(bound, kind="mergesort")  # smallest bound first
    below = np.zeros(r + 1, dtype=np.float64)  # below[i]: the bounds of order[:i] summed
    for i in range(r):
        below[i + 1] = below[i] + bound[order[i]]
    unit = 2.0**-24  # float32's unit roundoff
    gamma = m * unit / (1 - m * unit)  # a float32 sum of m non-negative terms is within gamma of the exact one
    widen = 1 + 2 * gamma + 4 * unit
    cursor = offsets[uniq].copy()
    end = offsets[uniq + 1]
    stop = np.empty(r, dtype=np.int64)  # each term's first posting past the window
    wb = np.empty(r, dtype=np.float64)  # each term's bound in the window
    wbelow = np.zeros(r + 1, dtype=np.float64)
    exact = np.empty(r, dtype=np.int64)  # each term's cursor for the exact sums, in the window
    partial = np.zeros(window, dtype=np.float64)
    seen = np.zeros(window >> 6, dtype=np.uint64)  # the window's documents hit, a bit each
    one = np.uint64(1)
    hs = np.empty(k, dtype=np.float32)
    hd = np.empty(k, dtype=np.int64)
    size = 0
    theta = -1.0  # no document is refused until k are found
    read = 0
    lead = 0  # terms order[:lead] are non-essential everywhere
    while True:
        while lead < r and widen * below[lead + 1] <= theta:
            lead += 1
        w0 = n + first
        for i in range(lead, r):
            t = order[i]
            if cursor[t] < end[t] and docs[cursor[t]] < w0:
                w0 = docs[cursor[t]]
        if w0 == n + first:
            break
        w1 = w0 + window
        for t in range(r):
            p = gallop(docs, cursor[t], end[t], w0)
            cursor[t] = p
            stop[t] = gallop(docs, p, end[t], w1)
            best = np.float32(0)
            if stop[t] > p:
                for g in range(p // block, (stop[t] - 1) // block + 1):
                    best = max(best, blockmax[g])
            wb[t] = mult[t] * np.float64(best)
            exact[t] = p
        worder = np.argsort(wb)
        for i in range(r):
            wbelow[i + 1] = wbelow[i] + wb[worder[i]]
        wlead = 0
        while wlead < r and widen * wbelow[wlead + 1] <= theta:
            wlead += 1
        for i in range(wlead, r):  # the window's essential lists
            t = worder[i]
            c = mult[t]
            for p in range(cursor[t], stop[t]):
                x = docs[p] - w0
                seen[x >> 6] |= one << np.uint64(x & 63)
                partial[x] += c * np.float64(scores[p])
            read += stop[t] - cursor[t]
        for word in range(window >> 6):  # the documents hit, in order: each word's set bits, lowest first
            bits = seen[word]
            seen[word] = 0
            while bits != 0:
                low = bits & (~bits + one)
                bits ^= low
                x = (word << 6) + _LOWEST_BIT[(low * _DE_BRUIJN) >> np.uint64(58)]
                got = partial[x]
                partial[x] = 0
                d = w0 + x
                i = wlead - 1
                while i >= 0 and widen * (got + wbelow[i + 1]) > theta:
                    t = worder[i]
                    if stop[t] > cursor[t]:
                        p = gallop(docs, cursor[t], stop[t], d)
                        cursor[t] = p
                        read += 1
                        if p < stop[t] and docs[p] == d:
                            got += mult[t] * np.float64(scores[p])
                    i -= 1
                if i < 0 and widen * got > theta:  # its impacts again, summed as exhaustive() sums them
                    s = np.float32(0)
                    for j in range(m):
                        t = slot[j]
                        p = gallop(docs, exact[t], stop[t], d)
                        exact[t] = p
                        if p < stop[t] and docs[p] == d:
                            s += scores[p]
                    if size < k:
                        hs[size], hd[size] = s, d
                        size += 1
                        if size == k:
                            for g in range(k // 2 - 1, -1, -1):
                                sift_down(hs, hd, k, g)
                            theta = np.float64(hs[0])
                    elif s > hs[0]:  # later documents lose ties
                        hs[0], hd[0] = s, d
                        sift_down(hs, hd, k, 0)
                        theta = np.float64(hs[0])
        cursor[:] = stop
    by_doc = np.argsort(hd[:size])
    hs, hd = hs[:size][by_doc], hd[:size][by_doc]
    best_first = np.argsort(-hs, kind="mergesort")  # stable: ties by document number
    for i in range(size):
        out_docs[i] = hd[best_first[i]]
        out_scores[i] = hs[best_first[i]]
    return size, read


@numba.njit(parallel=True, cache=True, nogil=True)
def search(offsets: Any, docs: Any, scores: Any, maxima: Any, blockmax: Any, block: int, first: int, n: int, qterms: Any,
           qstarts: Any, k: int, threads: int, window: int, out_docs: Any, out_scores: Any, out_n: Any,
           out_read: Any) -> None:  # pragma: no cover - numba
    """Each query's top k into the out arrays: pruned (``window`` > 0) or exhaustive."""
    nq = len(qstarts) - 1
    prune = window > 0
    acc = np.zeros((0 if prune else threads, n), dtype=np.float32)
    touched = np.empty((0 if prune else threads, n), dtype=np.int32)
    for t in numba.prange(threads):
        for q in range(t, nq, threads):
            qt = qterms[qstarts[q] : qstarts[q + 1]]
            if prune:
                out_n[q], out_read[q] = pruned(offsets, docs, scores, maxima, blockmax, block, first, n, qt, k, window,
                                               out_docs[q], out_scores[q])
                continue
            m, out_read[q] = exhaustive(offsets, docs, scores, first, qt, acc[t], touched[t])
            cand = touched[t, :m].copy()
            vals = np.empty(m, dtype=np.float32)
            for i in range(m):
                vals[i] = acc[t, cand[i]]
                acc[t, cand[i]] = 0
            if m > k:  # keep what can be in the top k: above the k-th score, and ties at it
                kth_score = np.partition(-vals, k - 1)[k - 1]
                keep = np.flatnonzero(-vals <= kth_score)
                cand, vals = cand[keep], vals[keep]
            by_doc = np.argsort(cand)
            cand, vals = cand[by_doc], vals[by_doc]
            order = np.argsort(-vals, kind="mergesort")[:k]  # stable: ties by document number
            out_n[q] = len(order)
            for i in range(len(order)):
                out_docs[q, i] = cand[order[i]] + first
                out_scores[q, i] = vals[order[i]]

