"""Each loss against a slow, direct implementation written from its formula (values and gradients),
over padded batches with ties, a list with no relevant item and an all-padding list."""

from __future__ import annotations

import math

import pytest
import torch

from rerank.train import losses as L

# ----------------------------------------------------------------------------- direct formulas
# One list at a time, real items only, Python loops over items and pairs.


def g(y: float) -> float:
    return 2.0**y - 1.0


def D(r: float) -> float:
    return math.log2(1.0 + r)


def idcg(ys: list[float], k: int | None = None) -> float:
    best = sorted(ys, reverse=True)[: k or len(ys)]
    return sum(g(y) / D(r + 1) for r, y in enumerate(best))


def ranks(s: torch.Tensor) -> list[int]:
    vals = [float(x) for x in s.detach()]
    order = sorted(range(len(vals)), key=lambda i: (-vals[i], i))
    pos = [0] * len(vals)
    for r, i in enumerate(order):
        pos[i] = r + 1
    return pos


def informative(ys: list[float]) -> bool:
    return max(ys) > 0 and max(ys) > min(ys)


def ref_ranknet(s, ys, weighted=False, sigma=1.0):
    num, den = 0.0, 0.0
    for i in range(len(ys)):
        for j in range(len(ys)):
            if ys[i] > ys[j]:
                w = abs(ys[i] - ys[j]) if weighted else 1.0
                num = num + w * torch.log(1 + torch.exp(-sigma * (s[i] - s[j])))
                den += w
    return None if den == 0 else num / den


def ref_hinge(s, ys, margin=1.0):
    tot, n = 0.0, 0
    for i in range(len(ys)):
        for j in range(len(ys)):
            if ys[i] > ys[j]:
                tot = tot + torch.clamp(margin - (s[i] - s[j]), min=0)
                n += 1
    return None if n == 0 else tot / n


def ref_lambdaloss(s, ys, weighting, k=None, mu=10.0, sigma=1.0):
    best = idcg(ys, k)
    if best == 0:
        return None
    pos = ranks(s)
    gn = [g(y) / best for y in ys]
    tot, any_pair = 0.0, False
    for i in range(len(ys)):
        for j in range(len(ys)):
            if ys[i] <= ys[j]:
                continue
            if k is not None and pos[i] > k and pos[j] > k:
                continue
            any_pair = True
            lam = abs(1 / D(pos[i]) - 1 / D(pos[j])) * abs(gn[i] - gn[j])
            gap = abs(pos[i] - pos[j])
            nd2 = abs(1 / D(gap) - 1 / D(gap + 1)) * abs(gn[i] - gn[j])
            w = {"ndcg1": gn[i] / D(pos[i]), "ndcg2": nd2, "lambdarank": lam, "ndcg2pp": mu * nd2 + lam}[weighting]
            tot = tot - w * math.log2(math.e) * torch.log(torch.sigmoid(sigma * (s[i] - s[j])))
    return tot if any_pair else None


def ref_listnet(s, ys):
    if not informative(ys):
        return None
    zt = sum(math.exp(y) for y in ys)
    zs = torch.logsumexp(s, dim=0)
    return -sum(math.exp(y) / zt * (s[i] - zs) for i, y in enumerate(ys))


def ref_listmle(s, ys):
    if not informative(ys):
        return None
    order = sorted(range(len(ys)), key=lambda i: (-ys[i], i))
    tot = 0.0
    for r, i in enumerate(order):
        rest = torch.stack([s[t] for t in order[r:]])
        tot = tot + torch.logsumexp(rest, dim=0) - s[i]
    return tot


def ref_approx(s, ys, alpha=10.0):
    best = idcg(ys)
    if best == 0:
        return None
    dcg = 0.0
    for i in range(len(ys)):
        rank = 1.0
        for j in range(len(ys)):
            if j != i:
                rank = rank + torch.sigmoid(alpha * (s[j] - s[i]))
        dcg = dcg + g(ys[i]) / torch.log2(1 + rank)
    return -dcg / best


def ref_neural(s, ys, tau=1.0, k=None, iters=200):
    best = idcg(ys, k)
    if best == 0:
        return None
    n = len(ys)
    rows = []
    for r in range(1, n + 1):
        logits = [((n + 1 - 2 * r) * s[j] - sum(torch.abs(s[j] - s[t]) for t in range(n))) / tau for j in range(n)]
        rows.append(torch.softmax(torch.stack(logits), dim=0))
    p = torch.stack(rows)
    for _ in range(iters):
        p = p / p.sum(dim=1, keepdim=True)
        p = p / p.sum(dim=0, keepdim=True)
    gains = torch.tensor([g(y) for y in ys], dtype=s.dtype)
    at = p @ gains
    return -sum(at[r] / D(r + 1) for r in range(min(n, k or n))) / best


def batch():
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(6, 8, generator=gen, dtype=torch.float64) * 2
    labels = torch.tensor([[3, 0, 1, 1, 0, 2, 0, 0],   # full, ties
                           [0, 1, 0, 0, 2, 0, 9, 9],   # padded tail (9s must be ignored)
                           [0, 0, 0, 0, 0, 0, 0, 0],   # no relevant item
                           [1, 1, 1, 0, 0, 0, 0, 0],   # ties only among relevant ones
                           [2, 2, 2, 2, 2, 2, 2, 2],   # all padding
                           [0, 4, 0, 1, 0, 0, 0, 0]], dtype=torch.float64)
    lengths = [8, 6, 8, 5, 0, 7]
    mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    scores[~mask] = float("nan")  # padding may hold anything: it must not leak
    return scores, labels, mask


REFS = {
    "ranknet": (lambda s, y: ref_ranknet(s, y), {}),
    "ranknet-weighted": (lambda s, y: ref_ranknet(s, y, weighted=True), {}),
    "hinge": (ref_hinge, {}),
    "lambdarank": (lambda s, y: ref_lambdaloss(s, y, "lambdarank"), {}),
    "ndcg1": (lambda s, y: ref_lambdaloss(s, y, "ndcg1"), {}),
    "ndcg2": (lambda s, y: ref_lambdaloss(s, y, "ndcg2"), {}),
    "lambdaloss": (lambda s, y: ref_lambdaloss(s, y, "ndcg2pp"), {}),
    "lambdaloss@3": (lambda s, y: ref_lambdaloss(s, y, "ndcg2pp", k=3), {"k": 3}),
    "listnet": (ref_listnet, {}),
    "listmle": (ref_listmle, {"ties": "first"}),
    "approxndcg": (ref_approx, {}),
    "neuralndcg": (ref_neural, {"sinkhorn_iterations": 200, "temperature": 1.0}),
    "neuralndcg@3": (lambda s, y: ref_neural(s, y, k=3), {"sinkhorn_iterations": 200, "k": 3}),
}


def reference(name, scores, labels, mask):
    fn, _ = REFS[name]
    per = []
    for b in range(scores.shape[0]):
        n = int(mask[b].sum())
        if n == 0:
            continue
        v = fn(scores[b, :n], [float(x) for x in labels[b, :n]])
        if v is not None:
            per.append(v)
    return torch.stack([torch.as_tensor(v) for v in per]).mean()


@pytest.mark.parametrize("name", list(REFS))
def test_loss_matches_direct_formula(name):
    scores, labels, mask = batch()
    fast_in = scores.clone().requires_grad_(True)
    ref_in = torch.where(mask, scores, torch.zeros_like(scores)).requires_grad_(True)
    fn = L.get_loss(name.split("@")[0])
    got = fn(fast_in, labels, mask, **REFS[name][1])
    want = reference(name, ref_in, labels, mask)
    assert torch.isfinite(got)
    tol = 1e-5 if name.startswith("neural") else 1e-10
    assert got.item() == pytest.approx(want.item(), abs=tol, rel=tol)
    got.backward()
    want.backward()
    grad = fast_in.grad
    assert torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all(), "padding received gradient"
    assert torch.allclose(grad, ref_in.grad, atol=tol * 10, rtol=1e-4)


@pytest.mark.parametrize("name", ["bce", "mse"])
def test_pointwise_losses(name):
    scores, labels, mask = batch()
    x = scores.clone().requires_grad_(True)
    got = L.get_loss(name)(x, labels, mask)
    s, y = scores[mask], labels[mask]
    if name == "bce":
        t = (y > 0).double()
        want = -(t * torch.log(torch.sigmoid(s)) + (1 - t) * torch.log(1 - torch.sigmoid(s))).mean()
    else:
        want = ((s - y) ** 2).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    got.backward()
    assert (x.grad[~mask] == 0).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_all_padding_and_no_signal_give_zero_loss_and_zero_grad(name):
    scores = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    loss = L.get_loss(name)(scores, torch.zeros(2, 5, dtype=torch.float64), mask)
    loss.backward()
    assert loss.item() == 0.0 and (scores.grad == 0).all()
    if name not in ("bce", "mse"):  # ranking losses: no relevant item -> nothing to learn
        s2 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
        loss = L.get_loss(name)(s2, torch.zeros(2, 5, dtype=torch.float64))
        loss.backward()
        assert loss.item() == 0.0 and (s2.grad == 0).all()


# pgrank is left out: its value is a policy-gradient surrogate, not a measure of the order (tests/test_pgrank.py)
@pytest.mark.parametrize("name", sorted(n for n in L.LOSSES if n not in ("bce", "mse", "hinge", "pgrank")))
def test_ranking_losses_prefer_the_right_order(name):
    labels = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    good, bad = torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    fn = L.get_loss(name)
    assert fn(good, labels).item() < fn(bad, labels).item()


def test_ties_in_scores_and_labels_are_finite():
    scores = torch.zeros(1, 6, requires_grad=True)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    for name, fn in L.LOSSES.items():
        loss = fn(scores, labels)
        (grad,) = torch.autograd.grad(loss, scores)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


def test_listmle_random_ties_average_over_orders():
    # two tied relevant items: the random tie-break must visit both orders
    scores = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    seen = {round(L.listmle(scores, labels, generator=gen).item(), 6) for _ in range(40)}
    assert len(seen) == 2


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels shape"):
        L.ranknet(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels must be >= 0"):
        L.listnet(torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 0.0]]))
    with pytest.raises(ValueError, match="unknown loss"):
        L.get_loss("lambdamart")
    with pytest.raises(ValueError, match="weighting"):
        L.lambdaloss(torch.zeros(1, 3), torch.zeros(1, 3), weighting="ndcg3")


def test_softmax_loss_weights_lists_by_label_mass():
    # the click learners' loss: Σ_lists Σ_i y_i · -log softmax(s)_i / Σ y (not a mean of per-list losses)
    scores, labels, mask = batch()
    x = scores.clone().requires_grad_(True)
    got = L.get_loss("softmax")(x, labels, mask)
    num, den = 0.0, 0.0
    for b in range(scores.shape[0]):
        n = int(mask[b].sum())
        if n == 0:
            continue
        s = scores[b, :n]
        logp = s - torch.logsumexp(s, dim=0)
        num = num - (labels[b, :n] * logp).sum()
        den = den + labels[b, :n].sum()
    assert got.item() == pytest.approx((num / den).item(), rel=1e-10)
    got.backward()
    assert (x.grad[~mask] == 0).all() and torch.isfinite(x.grad).all()
