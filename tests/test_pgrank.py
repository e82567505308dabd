"""PG-Rank: Gumbel-top-k draws Plackett-Luce rankings, and the REINFORCE estimator with the
leave-one-out baseline is unbiased for the gradient of the expected nDCG (enumerated exactly)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rerank.train.losses import get_loss
from rerank.train.pgrank import gumbel_top_k, plackett_luce_log_prob, ranking_ndcg


def pl_prob(scores: list[float], prefix: tuple[int, ...], tau: float = 1.0) -> float:
    left, p = list(range(len(scores))), 1.0
    for i in prefix:
        z = sum(math.exp(scores[j] / tau) for j in left)
        p *= math.exp(scores[i] / tau) / z
        left.remove(i)
    return p


def ndcg_at(labels: list[float], prefix: tuple[int, ...], k: int) -> float:
    dcg = sum((2 ** labels[i] - 1) / math.log2(r + 2) for r, i in enumerate(prefix[:k]))
    ideal = sum((2**g - 1) / math.log2(r + 2) for r, g in enumerate(sorted(labels, reverse=True)[:k]))
    return dcg / ideal


def test_gumbel_top_k_samples_plackett_luce():
    scores = [1.0, 0.3, -0.5, 0.2]
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    s = torch.tensor([scores])
    mask = torch.ones(1, 4, dtype=torch.bool)
    for k, tau in ((4, 1.0), (2, 0.5)):
        draws = gumbel_top_k(s, mask, k, n, tau, gen)[0]
        counts: dict[tuple[int, ...], int] = {}
        for row in draws.tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        for prefix in itertools.permutations(range(4), k):
            p = pl_prob(scores, prefix, tau)
            assert abs(counts.get(prefix, 0) / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9, (prefix, p)
        # log π of each drawn prefix is the exact PL probability
        logp = plackett_luce_log_prob(s, draws[None, :50], mask, tau)[0]
        want = torch.tensor([math.log(pl_prob(scores, tuple(r), tau)) for r in draws[:50].tolist()])
        assert torch.allclose(logp, want, atol=1e-5)


def test_padding_and_short_lists():
    s = torch.tensor([[0.5, 0.1, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False, False]])
    draws = gumbel_top_k(s, mask, 3, 100, 1.0, torch.Generator().manual_seed(1))
    assert set(draws[0, :, 2].tolist()) == {-1} and set(draws[0, :, :2].flatten().tolist()) == {0, 1}
    labels = torch.tensor([[1.0, 0.0, 5.0, 5.0]])
    u = ranking_ndcg(draws, labels, mask, 3)
    assert set(torch.round(u, decimals=6).flatten().tolist()) == {1.0, round(1 / math.log2(3), 6)}


def test_pgrank_gradient_is_unbiased_for_expected_ndcg():
    labels_list, k, tau = [2.0, 0.0, 1.0, 0.0], 2, 0.7
    theta = torch.tensor([0.2, 0.9, -0.3, 0.1], dtype=torch.float64, requires_grad=True)
    # exact: E[nDCG@2] = Σ over the 12 ordered top-2 prefixes of π(prefix) nDCG@2(prefix)
    expected = torch.zeros((), dtype=torch.float64)
    for prefix in itertools.permutations(range(4), k):
        logp = torch.zeros((), dtype=torch.float64)
        left = list(range(4))
        for i in prefix:
            logp = logp + theta[i] / tau - torch.logsumexp(theta[left] / tau, dim=0)
            left.remove(i)
        expected = expected + logp.exp() * ndcg_at(labels_list, prefix, k)
    (exact,) = torch.autograd.grad(expected, theta)
    loss_fn = get_loss("pgrank")
    labels = torch.tensor([labels_list], dtype=torch.float64)
    torch.manual_seed(0)
    chunks = []
    for _ in range(20):  # 20 independent estimates, each the mean over 2,000 lists of 4 samples
        copies = theta.expand(2000, 4)
        loss = loss_fn(copies, labels.expand(2000, 4), samples=4, k=k, temperature=tau)
        (g,) = torch.autograd.grad(-loss, theta)
        chunks.append(g)
    est = torch.stack(chunks)
    mean, se = est.mean(dim=0), est.std(dim=0) / math.sqrt(len(chunks))
    assert torch.all((mean - exact).abs() <= 4.5 * se + 1e-6), (mean, exact, se)
    assert exact.abs().max() > 10 * se.max()  # the test can tell a wrong gradient apart
    assert 0 < loss_fn.last_stats["mean_utility"] < 1 and loss_fn.last_stats["utility_variance"] > 0


def test_pgrank_loss_skips_lists_without_relevant_items_and_checks_options():
    loss_fn = get_loss("pgrank")
    s = torch.randn(2, 5, requires_grad=True)
    loss = loss_fn(s, torch.zeros(2, 5))
    loss.backward()
    assert loss.item() == 0.0 and (s.grad == 0).all()
    with pytest.raises(ValueError, match="at least 2 samples"):
        loss_fn(s, torch.ones(2, 5), samples=1)


def test_pgrank_trains_a_bi_encoder_and_a_cross_encoder(scifact_dir, tmp_path):
    """PG-Rank on 8 SciFact train lists (BM25 negatives): the policy's mean sampled nDCG is logged
    per step, nDCG@10 on those queries goes up, and the bi-encoder saves as a dense model."""
    import numpy as np
    from conftest import offline_model

    from rerank.data import load_dataset
    from rerank.models.encoder import Encoder
    from rerank.retrieve.bm25 import BM25
    from rerank.train.biencoder import BiEncoderTask, load_bi_encoder
    from rerank.train.crossencoder import CrossEncoderTask, load_cross_encoder_body
    from rerank.train.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    ds = load_dataset(str(scifact_dir), split="train")
    qrels = ds.require_qrels()
    queries = [q for q in ds.queries if q.qid in qrels][:8]
    candidates = BM25(ds, k=20)(queries)
    cfg = TrainConfig(loss="pgrank", loss_options={"samples": 8, "k": 10}, epochs=3, batch_size=8, lr=1e-4, warmup=0.0,
                      checkpoint_every=10**9)
    name = offline_model("all-MiniLM-L6-v2")
    body = load_bi_encoder(name, max_length=48)
    task = BiEncoderTask(name, body, queries, qrels, candidates, ds.docs, group_size=8, max_length=48, dev_queries=queries,
                         dev_depth=10)
    result = Trainer(body, task, cfg, tmp_path / "bi").train()
    dev = [h["dev nDCG@10"] for h in result["history"]]
    assert max(dev[1:]) > dev[0] + 0.05, dev  # 0.516 -> 0.75 after one step here
    steps = result["loss_per_step"]
    assert len(steps) == 3 and all(0 <= s["mean_utility"] <= 1 and s["utility_variance"] >= 0 for s in steps)
    loaded = Encoder(str(tmp_path / "bi"), max_length=48)  # loads as a dense retriever's model
    texts = [queries[0].text, "another sentence"]
    mine = task._embed(body.eval(), texts).detach().numpy()
    assert np.allclose(loaded.encode_queries(texts) / np.linalg.norm(loaded.encode_queries(texts), axis=1, keepdims=True),
                       mine, atol=2e-2)
    # the same objective on a cross-encoder: it runs and logs the utility
    ce, tok = load_cross_encoder_body(name)
    ce_task = CrossEncoderTask(name, tok, queries, qrels, candidates, ds.docs, group_size=8, max_length=48)
    cfg.epochs, cfg.max_steps = 1, 1
    out = Trainer(ce, ce_task, cfg, tmp_path / "ce").train()
    assert out["stopped_at"] == 1


def test_train_cli_objective_options_are_checked(scifact_dir, tmp_path):
    from click.testing import CliRunner
    from conftest import offline_model

    from rerank.cli import main

    base = ["train", "-m", offline_model("all-MiniLM-L6-v2"), "-d", str(scifact_dir), "-o", str(tmp_path / "m")]
    res = CliRunner().invoke(main, [*base, "--objective", "pgrank", "--loss", "ranknet"])
    assert res.exit_code == 2 and "--objective pgrank sets the loss" in res.output
    res = CliRunner().invoke(main, [*base, "--objective", "pgrank", "--pg-samples", "1"])
    assert res.exit_code == 2 and "--pg-samples" in res.output
    res = CliRunner().invoke(main, [*base, "--objective", "first", "--window", "40"])
    assert res.exit_code == 2 and "--window" in res.output
