"""PG-Rank: policy-gradient training of rankers (Gao et al., "Policy-Gradient Training of
Language Models for Ranking").

A list's scores ``s`` define a Plackett-Luce policy ``π`` over its rankings. For each list we
draw ``N`` rankings of the top ``k`` with Gumbel-top-k (sort ``s / τ + Gumbel(0, 1)``: exact PL
samples), score each with its utility ``U_n = nDCG@k`` against the labels, and follow
REINFORCE with the leave-one-out baseline ``b_n = (Σ_m U_m − U_n) / (N − 1)``::

    loss = −(1/N) Σ_n (U_n − b_n) · log π(r_n)

``log π(r_n) = Σ_{t<k} (s_{r_t} − logsumexp_{j ∉ r_<t} s_j) / τ`` is exact for the sampled
prefix. The baseline of a sample does not depend on it, so the gradient estimate is unbiased
for ``∇ E_π[nDCG@k]`` (tested against the enumerated gradient on a small list). Lists with no
relevant item are left out, as in :mod:`rerank.train.losses`. ``last_stats`` holds the mean and
variance of the sampled utilities of the latest call, which the trainer logs per step.
"""

from __future__ import annotations

import torch

from .losses import prepare_lists

Tensor = torch.Tensor


def gumbel_top_k(scores: Tensor, mask: Tensor, k: int, samples: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """[B, N, k] item indices of ``samples`` Plackett-Luce rankings per list (top ``k``; a list
    with fewer than ``k`` real items is padded with -1)."""
    b, length = scores.shape
    u = torch.rand((b, samples, length), generator=generator, dtype=torch.float64, device=scores.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-12)))
    keys = (scores.detach().double() / temperature)[:, None, :] + gumbel
    keys = torch.where(mask[:, None, :], keys, torch.full_like(keys, -torch.inf))
    top = keys.topk(min(k, length), dim=2)
    return torch.where(torch.isfinite(top.values), top.indices, torch.full_like(top.indices, -1))


def plackett_luce_log_prob(scores: Tensor, rankings: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """[B, N] ``log π(prefix)`` of each sampled prefix (-1 entries end it)."""
    s = (scores / temperature)[:, None, :].expand(-1, rankings.shape[1], -1)
    available = mask[:, None, :].expand_as(s).clone()
    total = torch.zeros(rankings.shape[:2], dtype=scores.dtype, device=scores.device)
    for t in range(rankings.shape[2]):
        pick = rankings[:, :, t]
        real = pick >= 0
        norm = torch.logsumexp(torch.where(available, s, torch.full_like(s, -torch.inf)), dim=2)
        chosen = s.gather(2, pick.clamp_min(0)[:, :, None])[:, :, 0]
        total = total + torch.where(real, chosen - norm, torch.zeros_like(total))
        available = available & ~(torch.nn.functional.one_hot(pick.clamp_min(0), s.shape[2]).bool() & real[:, :, None])
    return total


def ranking_ndcg(rankings: Tensor, labels: Tensor, mask: Tensor, k: int) -> Tensor:
    """[B, N] nDCG@k of each sampled prefix (gains ``2^y − 1``, discount ``log2(rank + 1)``)."""
    gains = torch.where(mask, torch.pow(2.0, labels.double()) - 1.0, torch.zeros_like(labels, dtype=torch.float64))
    disc = 1.0 / torch.log2(torch.arange(2, rankings.shape[2] + 2, device=labels.device, dtype=torch.float64))
    got = gains[:, None, :].expand(-1, rankings.shape[1], -1).gather(2, rankings.clamp_min(0))
    dcg = (torch.where(rankings >= 0, got, torch.zeros_like(got)) * disc).sum(dim=2)
    ideal = (gains.sort(dim=1, descending=True).values[:, :k] * disc[: min(k, gains.shape[1])]).sum(dim=1)
    return torch.where(ideal[:, None] > 0, dcg / ideal.clamp_min(1e-12)[:, None], torch.zeros_like(dcg))


class PGRankLoss:
    """The PG-Rank surrogate loss as a callable ``loss(scores, labels, mask, **options)`` (the
    trainer's loss interface). Options: ``samples`` (N, default 8), ``k`` (10), ``temperature``
    (τ, 1.0). Sampling uses torch's global generator, whose state the trainer checkpoints."""

    __name__ = "pgrank"

    def __init__(self) -> None:
        self.last_stats: dict[str, float] = {}

    def __call__(self, scores: Tensor, labels: Tensor, mask: Tensor | None = None, *, samples: int = 8, k: int = 10,
                 temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        if samples < 2:
            raise ValueError(f"PG-Rank needs at least 2 samples per list for its leave-one-out baseline, got {samples}")
        if k < 1 or not temperature > 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        s, y, m = prepare_lists(scores, labels, mask)
        keep = ((y > 0) & m).any(dim=1)
        if not bool(keep.any()):
            self.last_stats = {}
            return (s * 0.0).sum()
        s, y, m = s[keep], y[keep], m[keep]
        with torch.no_grad():
            rankings = gumbel_top_k(s, m, k, samples, temperature, generator)
            utility = ranking_ndcg(rankings, y, m, k)
            baseline = (utility.sum(dim=1, keepdim=True) - utility) / (samples - 1)
            advantage = (utility - baseline).to(s.dtype)
        logp = plackett_luce_log_prob(s, rankings, m, temperature)
        self.last_stats = {"mean_utility": float(utility.mean()), "utility_variance": float(utility.var(dim=1).mean())}
        return -(advantage * logp).mean(dim=1).mean()

    def __repr__(self) -> str:
        return "PGRankLoss()"


pgrank = PGRankLoss()
