"""Learning-to-rank losses over padded lists of scores.

Every loss is a pure function ``loss(scores, labels, mask=None, **options) -> scalar tensor``:

* ``scores``: float tensor ``[B, L]`` (or ``[L]``, one list), the model's scores, higher = better;
* ``labels``: ``[B, L]`` graded relevance (>= 0; 0 = not relevant);
* ``mask``: ``[B, L]`` bool, True where an item is real, False on padding (None: all real).

Padded items never influence the value or receive gradient. The pointwise losses average over
all real items of the batch. The pairwise and listwise losses are computed per list and
averaged over the lists that carry a ranking signal: a list with no relevant item, or whose
items all share one label, contributes nothing (a batch with no such list gives a zero loss
that still back-propagates zeros). Notation below, for one list: ``s_i`` score, ``y_i`` label,
``G_i = 2^{y_i} - 1`` gain, ``D(r) = log2(1 + r)`` discount, ``maxDCG`` the ideal DCG, ``P``
the pairs ``(i, j)`` with ``y_i > y_j``, ``pos_i`` the rank of item ``i`` when sorted by the
current scores (detached; ties by list position).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossFn = Callable[..., Tensor]
_LN2 = math.log(2.0)


def prepare_lists(scores: Tensor, labels: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(scores, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("scores and labels must be torch tensors")
    if scores.dim() == 1:
        scores, labels = scores[None], labels[None]
        mask = mask[None] if mask is not None else None
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, list] (or [list]), got shape {tuple(scores.shape)}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} differs from scores shape {tuple(scores.shape)}")
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    elif mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from scores shape {tuple(scores.shape)}")
    mask = mask.bool()
    labels = labels.to(scores.dtype if scores.is_floating_point() else torch.float32)
    if bool(((labels < 0) & mask).any()):
        raise ValueError("labels must be >= 0 on real items (mark padding with the mask, not with negative labels)")
    labels = torch.where(mask, labels, torch.zeros_like(labels))
    scores = torch.where(mask, scores, torch.zeros_like(scores))  # padding: no NaN/inf leaks, no gradient
    return scores, labels, mask


def _informative(labels: Tensor, mask: Tensor) -> Tensor:
    """[B] bool: the list has a relevant item and at least two distinct labels."""
    big = torch.finfo(labels.dtype).max
    hi = torch.where(mask, labels, torch.full_like(labels, -big)).amax(dim=1)
    lo = torch.where(mask, labels, torch.full_like(labels, big)).amin(dim=1)
    return (hi > 0) & (hi > lo)


def _mean_over(per_list: Tensor, keep: Tensor, scores: Tensor) -> Tensor:
    if not bool(keep.any()):
        return (scores * 0.0).sum()
    return per_list[keep].mean()


def _pairs(labels: Tensor, mask: Tensor) -> Tensor:
    """[B, L, L] bool: (i, j) with y_i > y_j, both real."""
    both = mask[:, :, None] & mask[:, None, :]
    return both & (labels[:, :, None] > labels[:, None, :])


def _gains(labels: Tensor) -> Tensor:
    return torch.pow(2.0, labels) - 1.0


def _ideal_dcg(labels: Tensor, mask: Tensor, k: int | None = None) -> Tensor:
    g = torch.where(mask, _gains(labels), torch.zeros_like(labels))
    g = g.sort(dim=1, descending=True).values
    disc = 1.0 / torch.log2(torch.arange(2, g.shape[1] + 2, device=g.device, dtype=g.dtype))
    if k is not None:
        disc = torch.where(torch.arange(g.shape[1], device=g.device) < k, disc, torch.zeros_like(disc))
    return (g * disc).sum(dim=1)


def _positions(scores: Tensor, mask: Tensor) -> Tensor:
    """1-based rank of each item under the current (detached) scores; padding ranks last."""
    s = torch.where(mask, scores.detach(), torch.full_like(scores, -math.inf))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    pos = torch.empty_like(order)
    ranks = torch.arange(1, s.shape[1] + 1, device=s.device).expand_as(order)
    pos.scatter_(1, order, ranks)
    return pos.to(scores.dtype)


# --------------------------------------------------------------------------- pointwise
def bce(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy on logits: mean over real items of
    ``-[t_i log σ(s_i) + (1 - t_i) log(1 - σ(s_i))]`` with ``t_i = 1[y_i > 0]``."""
    s, y, m = prepare_lists(scores, labels, mask)
    t = (y > 0).to(s.dtype)
    if not bool(m.any()):
        return (s * 0.0).sum()
    return F.binary_cross_entropy_with_logits(s, t, reduction="none")[m].mean()


def mse(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error against the graded labels: mean over real items of ``(s_i - y_i)^2``."""
    s, y, m = prepare_lists(scores, labels, mask)
    if not bool(m.any()):
        return (s * 0.0).sum()
    return ((s - y) ** 2)[m].mean()


# --------------------------------------------------------------------------- pairwise
def ranknet(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, weighted: bool = False,
            sigma: float = 1.0) -> Tensor:
    """RankNet: per list ``Σ_P w_ij log(1 + exp(-σ (s_i - s_j))) / Σ_P w_ij`` with ``w_ij = 1``, or
    ``w_ij = |y_i - y_j|`` when ``weighted``."""
    s, y, m = prepare_lists(scores, labels, mask)
    p = _pairs(y, m)
    diff = s[:, :, None] - s[:, None, :]
    w = (y[:, :, None] - y[:, None, :]).abs() if weighted else torch.ones_like(diff)
    w = torch.where(p, w, torch.zeros_like(w))
    per = (w * F.softplus(-sigma * diff)).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp_min(1e-12)
    return _mean_over(per, p.any(dim=(1, 2)), s)


def hinge(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, margin: float = 1.0) -> Tensor:
    """Pairwise margin hinge: per list ``mean_P max(0, margin - (s_i - s_j))``."""
    s, y, m = prepare_lists(scores, labels, mask)
    p = _pairs(y, m)
    diff = s[:, :, None] - s[:, None, :]
    per_pair = torch.where(p, F.relu(margin - diff), torch.zeros_like(diff))
    per = per_pair.sum(dim=(1, 2)) / p.sum(dim=(1, 2)).clamp_min(1).to(s.dtype)
    return _mean_over(per, p.any(dim=(1, 2)), s)


WEIGHTINGS = ("ndcg1", "ndcg2", "ndcg2pp", "lambdarank")


def lambdaloss(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, weighting: str = "ndcg2pp",
               k: int | None = None, sigma: float = 1.0, mu: float = 10.0) -> Tensor:
    """The LambdaLoss framework (Wang et al., CIKM 2018): per list
    ``-Σ_P w_ij log2 σ(σ_s (s_i - s_j))``, with ``g_i = G_i / maxDCG`` and

    * ``ndcg1`` (NDCG-Loss1): ``w_ij = g_i / D(pos_i)``;
    * ``ndcg2`` (NDCG-Loss2): ``w_ij = δ_ij |g_i - g_j|``,
      ``δ_ij = |1/D(|pos_i - pos_j|) - 1/D(|pos_i - pos_j| + 1)|``;
    * ``lambdarank`` (LambdaRank's ΔNDCG): ``w_ij = |1/D(pos_i) - 1/D(pos_j)| |g_i - g_j|``;
    * ``ndcg2pp`` (NDCG-Loss2++): ``μ · ndcg2 + lambdarank``.

    Weights use the current ranks and are constants (no gradient). With ``k``, only pairs with at
    least one item in the current top ``k`` count, and maxDCG is the ideal DCG@k.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    if k is not None and k < 1:
        raise ValueError(f"k must be positive, got {k}")
    s, y, m = prepare_lists(scores, labels, mask)
    p = _pairs(y, m)
    with torch.no_grad():
        idcg = _ideal_dcg(y, m, k)
        g = _gains(y) / idcg.clamp_min(1e-12)[:, None]
        pos = _positions(s, m)
        inv_d = 1.0 / torch.log2(1.0 + pos)
        gi, gj = g[:, :, None], g[:, None, :]
        if weighting == "ndcg1":
            w = (g * inv_d)[:, :, None].expand_as(p).clone()
        else:
            lam = (inv_d[:, :, None] - inv_d[:, None, :]).abs() * (gi - gj).abs()
            gap = (pos[:, :, None] - pos[:, None, :]).abs()
            delta = (1.0 / torch.log2(1.0 + gap.clamp_min(1)) - 1.0 / torch.log2(2.0 + gap)).abs()
            ndcg2 = delta * (gi - gj).abs()
            w = {"ndcg2": ndcg2, "lambdarank": lam, "ndcg2pp": mu * ndcg2 + lam}[weighting]
        if k is not None:
            top = pos <= k
            p = p & (top[:, :, None] | top[:, None, :])
        w = torch.where(p, w, torch.zeros_like(w))
    diff = s[:, :, None] - s[:, None, :]
    per = (w * F.softplus(-sigma * diff)).sum(dim=(1, 2)) / _LN2
    return _mean_over(per, p.any(dim=(1, 2)) & (idcg > 0), s)


def lambdarank(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, k: int | None = None,
               sigma: float = 1.0) -> Tensor:
    """LambdaRank as a loss: RankNet pairs weighted by |ΔNDCG| of swapping them (see :func:`lambdaloss`)."""
    return lambdaloss(scores, labels, mask, weighting="lambdarank", k=k, sigma=sigma)


# --------------------------------------------------------------------------- listwise
def listnet(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, temperature: float = 1.0) -> Tensor:
    """ListNet (top-one probabilities): per list ``-Σ_i softmax(y)_i log softmax(s / T)_i``."""
    s, y, m = prepare_lists(scores, labels, mask)
    neg = torch.full_like(s, -math.inf)
    target = torch.softmax(torch.where(m, y, neg), dim=1)
    logp = torch.log_softmax(torch.where(m, s / temperature, neg), dim=1)
    per = -(target * torch.where(m, logp, torch.zeros_like(logp))).sum(dim=1)
    return _mean_over(per, _informative(y, m), s)


def softmax(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy (TF-Ranking's softmax loss; the loss of DLA and IPW on clicks):
    ``Σ_lists Σ_i y_i · -log softmax(s)_i / Σ_lists Σ_i y_i``. Labels act as weights (click
    counts times propensity weights in :mod:`rerank.ultr`), so a list counts in proportion to its
    label mass and lists with none add nothing."""
    s, y, m = prepare_lists(scores, labels, mask)
    logp = torch.log_softmax(torch.where(m, s, torch.full_like(s, -math.inf)), dim=1)
    total = y.sum()
    if not bool(total > 0):
        return (s * 0.0).sum()
    return -(y * torch.where(m, logp, torch.zeros_like(logp))).sum() / total


def listmle(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, ties: str = "random",
            generator: torch.Generator | None = None) -> Tensor:
    """ListMLE: the negative Plackett-Luce log-likelihood of the label order,
    ``Σ_r [log Σ_{t >= r} exp(s_{π_t}) - s_{π_r}]`` with ``π`` the items sorted by label (best first).
    Ties in the labels: ``random`` (a fresh random order each call, from ``generator``) or
    ``first`` (list order)."""
    if ties not in ("random", "first"):
        raise ValueError(f"ties must be 'random' or 'first', not {ties!r}")
    s, y, m = prepare_lists(scores, labels, mask)
    if ties == "random":
        noise = torch.rand(y.shape, generator=generator, device="cpu").to(device=y.device, dtype=y.dtype)
        key = y + 0.5 * noise / (1.0 + noise.max())  # labels are integers or separated by > 0.5
    else:
        key = y.clone()
    key = torch.where(m, key, torch.full_like(key, -math.inf))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    s_sorted = s.gather(1, order)
    m_sorted = m.gather(1, order)
    masked = torch.where(m_sorted, s_sorted, torch.full_like(s_sorted, -math.inf))
    tail_lse = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)
    per_pos = torch.where(m_sorted, tail_lse - s_sorted, torch.zeros_like(s_sorted))
    return _mean_over(per_pos.sum(dim=1), _informative(y, m), s)


def approx_ndcg(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, alpha: float = 10.0) -> Tensor:
    """ApproxNDCG (Qin et al. 2010): ``-Σ_i G_i / log2(1 + π̂_i) / maxDCG`` with the smooth rank
    ``π̂_i = 1 + Σ_{j ≠ i} σ(α (s_j - s_i))``."""
    s, y, m = prepare_lists(scores, labels, mask)
    both = m[:, :, None] & m[:, None, :]
    eye = torch.eye(s.shape[1], dtype=torch.bool, device=s.device)[None]
    sig = torch.sigmoid(alpha * (s[:, None, :] - s[:, :, None]))  # [b, i, j] = σ(α (s_j - s_i))
    rank = 1.0 + torch.where(both & ~eye, sig, torch.zeros_like(sig)).sum(dim=2)
    dcg = torch.where(m, _gains(y) / torch.log2(1.0 + rank), torch.zeros_like(s)).sum(dim=1)
    idcg = _ideal_dcg(y, m)
    per = -dcg / idcg.clamp_min(1e-12)
    return _mean_over(per, idcg > 0, s)


def neural_sort(scores: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """NeuralSort (Grover et al. 2019): the relaxed permutation matrix ``P̂[b, r, j]`` (row r = rank
    r + 1) of each list's real items, ``softmax_j(((n + 1 - 2(r + 1)) s_j - Σ_t |s_j - s_t|) / τ)``;
    rows beyond a list's length and padded columns are zero."""
    n = mask.sum(dim=1).to(scores.dtype)[:, None, None]
    both = mask[:, :, None] & mask[:, None, :]
    a = torch.where(both, (scores[:, :, None] - scores[:, None, :]).abs(), torch.zeros((), dtype=scores.dtype)).sum(dim=2)
    r = torch.arange(scores.shape[1], device=scores.device, dtype=scores.dtype)[None, :, None]
    logits = ((n - 1.0 - 2.0 * r) * scores[:, None, :] - a[:, None, :]) / temperature
    logits = torch.where(mask[:, None, :], logits, torch.full_like(logits, -math.inf))
    p = torch.softmax(logits, dim=2)
    rows = mask.sum(dim=1)[:, None] > torch.arange(scores.shape[1], device=scores.device)[None, :]
    return torch.where(rows[:, :, None], p, torch.zeros_like(p))


def sinkhorn(p: Tensor, mask: Tensor, iterations: int = 50, tol: float = 1e-6) -> Tensor:
    """Alternate row and column normalisation of each list's ``n x n`` block until doubly stochastic."""
    rows = mask.sum(dim=1)[:, None] > torch.arange(p.shape[1], device=p.device)[None, :]
    block = rows[:, :, None] & mask[:, None, :]
    p = torch.where(block, p, torch.zeros_like(p))
    for _ in range(iterations):
        p = p / p.sum(dim=2, keepdim=True).clamp_min(1e-30)
        p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)
        p = torch.where(block, p, torch.zeros_like(p))
        with torch.no_grad():
            err = (p.sum(dim=2) - rows.to(p.dtype)).abs().max()
        if float(err) < tol:
            break
    return p


def neural_ndcg(scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, temperature: float = 1.0,
                k: int | None = None, sinkhorn_iterations: int = 50) -> Tensor:
    """NeuralNDCG (Pobrotyn & Białobrzeski 2021): ``-Σ_{r <= k} (P̂ G)_r / D(r) / maxDCG@k`` with
    ``P̂`` the Sinkhorn-scaled NeuralSort matrix of the scores."""
    s, y, m = prepare_lists(scores, labels, mask)
    p = sinkhorn(neural_sort(s, m, temperature), m, sinkhorn_iterations)
    g = torch.where(m, _gains(y), torch.zeros_like(y))
    at_rank = torch.bmm(p, g[:, :, None])[:, :, 0]  # expected gain at each rank
    disc = 1.0 / torch.log2(torch.arange(2, s.shape[1] + 2, device=s.device, dtype=s.dtype))
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        disc = torch.where(torch.arange(s.shape[1], device=s.device) < k, disc, torch.zeros_like(disc))
    idcg = _ideal_dcg(y, m, k)
    per = -(at_rank * disc).sum(dim=1) / idcg.clamp_min(1e-12)
    return _mean_over(per, idcg > 0, s)


# --------------------------------------------------------------------------- registry
def _fixed(fn: LossFn, **fixed: Any) -> LossFn:
    def loss(scores: Tensor, labels: Tensor, mask: Tensor | None = None, **kw: Any) -> Tensor:
        return fn(scores, labels, mask, **{**fixed, **kw})

    loss.__doc__ = fn.__doc__
    loss.__name__ = fn.__name__
    return loss


LOSSES: dict[str, LossFn] = {
    "bce": bce,
    "mse": mse,
    "ranknet": ranknet,
    "ranknet-weighted": _fixed(ranknet, weighted=True),
    "hinge": hinge,
    "lambdarank": lambdarank,
    "ndcg1": _fixed(lambdaloss, weighting="ndcg1"),
    "ndcg2": _fixed(lambdaloss, weighting="ndcg2"),
    "lambdaloss": _fixed(lambdaloss, weighting="ndcg2pp"),  # NDCG-Loss2++, the paper's best
    "listnet": listnet,
    "softmax": softmax,
    "listmle": listmle,
    "approxndcg": approx_ndcg,
    "neuralndcg": neural_ndcg,
}


# "pgrank" (policy gradient, a stochastic surrogate) is added by rerank.train, which imports both modules
ALIASES = {"ndcg2pp": "lambdaloss", "ndcg2++": "lambdaloss", "approx-ndcg": "approxndcg", "neural-ndcg": "neuralndcg",
           "pointwise-bce": "bce", "pointwise-mse": "mse"}


def get_loss(name: str) -> LossFn:
    """A loss by name (``rerank train --loss NAME``)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[key]


# ---------------------------------------------------------------- label-token losses (generative rerankers)
def importance_weights(separator: list[bool]) -> list[float]:
    """Weights of a generated permutation's tokens for the importance-aware loss of Liu et al.
    2024 ("Sliding Windows Are Not the End", as their released code computes it): the rank
    ``r`` starts at 1 and grows by one after each separator token (the one holding ``>``); a
    separator weighs 1, any other token (the identifier of rank ``r``, and the end of the answer,
    which keeps the last rank) weighs ``1 + 1 / log2(r + 1)``: 2 for the first identifier, 1.63
    for the second, about 1.15 at rank 100."""
    out, rank = [], 1
    for sep in separator:
        if sep:
            out.append(1.0)
            rank += 1
        else:
            out.append(1.0 + 1.0 / math.log2(rank + 1))
    return out


def weighted_token_loss(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """``Σ_t w_t · CE(logits_t, target_t) / T`` over the ``T`` label tokens (``logits`` [T, V],
    ``targets`` [T], ``weights`` [T]): with all weights 1 (``None``) the plain language-modelling
    loss; with :func:`importance_weights` the importance-aware loss, normalised by the token count
    (not the weight sum) as in the paper's code, so it is the LM loss plus a top-heavy term."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    if weights is None:
        return ce.mean()
    if weights.shape != ce.shape:
        raise ValueError(f"weights shape {tuple(weights.shape)} differs from the {ce.shape[0]} label tokens")
    return (ce * weights.to(ce.dtype)).sum() / ce.shape[0]
