"""Classic click models (rerank.ultr.click_models): each fit recovers the parameters a log was
simulated with, the measures are those of the book, and `rerank clicks fit` on the real sample."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

from rerank.cli import main
from rerank.cli.clicks import FITTED_MODELS
from rerank.errors import DataError
from rerank.ultr.click_models import FITTED, MODELS, FittedClickModel, fit_click_model, fold_sessions
from rerank.ultr.log import ClickSession
from rerank.ultr.simulate import ShownList, load_click_model, simulate

YANDEX = "clicks/yandex-wscd2012-sample"
QUERIES, DOCS, WIDTH = 4, 6, 6
# The book's maximum-likelihood DCM and SDBN take a session's last click as the end of examination
# (the user was satisfied). That is exact when a user who goes on after a click always clicks again:
# their logs are simulated in a fixed order with a last document every user clicks (attractiveness
# 1). On other logs the shortcut is biased (docs/clicks.md); the sink's own σ and the last rank's λ
# are then not identified.
SIMPLIFIED = ("dcm", "sdbn")


def _lists() -> list[ShownList]:
    return [ShownList(f"q{q}", tuple(f"d{q}.{d}" for d in range(DOCS)), (0.0,) * DOCS) for q in range(QUERIES)]


def _truth(name: str) -> FittedClickModel:
    """Known parameters on the pairs of :func:`_lists`, as a fitted model (the JSON path to the simulator)."""
    keys = {(s.qid, d): i for i, s in enumerate(_lists()) for d in s.docs}
    keys = {k: i for i, k in enumerate(keys)}
    rng = np.random.default_rng(7)
    m = FittedClickModel(name, keys, WIDTH)
    m.attractiveness = rng.uniform(0.2, 0.8, len(keys))
    m.satisfaction = rng.uniform(0.2, 0.8, len(keys))
    m.rank = np.asarray([1.0, 0.8, 0.65, 0.5, 0.4, 0.3]) if name == "pbm" else np.asarray([0.7, 0.6, 0.55, 0.5, 0.45, 0.4])
    m.ubm = np.asarray([[0.9 - 0.1 * r + 0.05 * j for j in range(WIDTH + 1)] for r in range(WIDTH)])
    m.gamma = 0.85 if name == "dbn" else 1.0
    m.pair_clicks = np.ones(len(keys))
    if name in SIMPLIFIED:
        m.attractiveness[DOCS - 1 :: DOCS] = 1.0  # each list's last document: a sink, see SIMPLIFIED
    return m


def _simulated(name: str, sessions: int = 20_000, seed: int = 0) -> list[ClickSession]:
    model = load_click_model(_truth(name).to_json())
    return list(simulate(_lists(), model, sessions, seed=seed, randomize=name not in SIMPLIFIED))


# Sample sizes: 20,000 sessions over 4 queries shown in random order, so each of the 24 pairs is
# shown ~5,000 times and each rank 20,000 times. A click rate from n Bernoulli draws has a standard
# error <= 0.5/sqrt(n): 0.007 for a pair, 0.0035 for a rank; parameters that are seen only when a
# rank is examined (cascade models: ranks below a click, σ from clicks only) rest on ~1,000-2,000
# draws (se <= 0.016). EM's latent examination inflates the error about twofold. The tolerances
# (0.05 for pair parameters, 0.03 for rank parameters) are 3 or more of those standard errors,
# and far below what a wrong update gives (the CTR of a pair, what a broken E-step returns, is
# off by 0.1-0.5 here).
@pytest.mark.parametrize("name", FITTED)
def test_fit_recovers_the_parameters_it_was_simulated_with(name):
    truth = _truth(name)
    rows = fold_sessions(_simulated(name), WIDTH)
    fit = fit_click_model(name, rows, iterations=500)
    order = [rows.keys[k] for k in truth.keys]  # the truth's pairs in the fit's indexing
    a = fit.attractiveness[order]
    if name == "pbm":  # α θ is identified, not its scale: compare θ/θ1 and α θ1
        assert np.abs(fit.rank / fit.rank[0] - truth.rank).max() < 0.03
        assert np.abs(a * fit.rank[0] - truth.attractiveness).max() < 0.05
        return
    if name == "ubm":  # γ[r, r'] with enough sessions (>= 1,500): rank 1 with no click above, ...
        prev = rows.previous_click()
        w = rows.weight[:, None] * rows.mask
        count = np.zeros((WIDTH, WIDTH + 1))
        np.add.at(count, (np.broadcast_to(np.arange(WIDTH), prev.shape), prev + 1), w)
        scale = fit.ubm[0, 0]  # γ[1, none] = 0.9 in the truth: again only α γ is identified
        well = count >= 1500
        assert well.sum() >= 12
        # a ratio of two estimates: their errors add (0.05: 3 standard errors of 1,500 draws, twice)
        assert np.abs(fit.ubm[well] / scale * truth.ubm[0, 0] - truth.ubm[well]).max() < 0.05
        assert np.abs(a * scale / truth.ubm[0, 0] - truth.attractiveness).max() < 0.05
        return
    real = np.ones(len(a), dtype=bool)
    if name in SIMPLIFIED:
        real[DOCS - 1 :: DOCS] = False  # the sinks
    assert np.abs(a - truth.attractiveness)[real].max() < 0.05
    if name == "dcm":
        assert np.abs(fit.rank[:-1] - truth.rank[:-1]).max() < 0.03  # λ at the last rank: nothing below to see
    if name in ("sdbn", "dbn"):
        assert np.abs(fit.satisfaction[order] - truth.satisfaction)[real].max() < 0.06
    if name == "dbn":
        assert abs(fit.gamma - truth.gamma) < 0.02


@pytest.mark.parametrize("name", MODELS)
def test_unconditional_click_probabilities_are_the_marginals_of_the_conditional_ones(name):
    """Σ over all 2^L click vectors of Π_r P(c_r | c_<r) is 1, and summing it over the vectors with
    a click at r gives P(C_r = 1): the two predictions the measures use agree with each other."""
    sessions = _simulated(name if name in FITTED else "pbm", 3000, seed=1)
    fit = fit_click_model(name, fold_sessions(sessions, WIDTH))
    vectors = list(itertools.product((0, 1), repeat=WIDTH))
    s = _lists()[0]
    rows = fold_sessions([ClickSession(s.qid, s.docs, v) for v in vectors], WIDTH, keys=fit.keys)
    cond, full = fit.probabilities(rows)
    joint = cond.prod(axis=1)
    assert joint.sum() == pytest.approx(1.0, abs=1e-4)
    marginal = (joint[:, None] * rows.clicks).sum(axis=0)
    assert np.allclose(marginal, full[0], atol=1e-4)


def test_measures_by_hand():
    """Two sessions, PBM with known parameters: log-likelihood and perplexity as the book defines them."""
    sessions = [ClickSession("q", ("a", "b"), (1, 0)), ClickSession("q", ("b", "a"), (0, 0))]
    rows = fold_sessions(sessions, 2)
    m = FittedClickModel("pbm", rows.keys, 2)
    m.attractiveness = np.asarray([0.5, 0.2])  # a, b
    m.rank = np.asarray([0.9, 0.4])
    got = m.evaluate(rows)
    p = {"a1": 0.45, "b2": 0.08, "b1": 0.18, "a2": 0.2}  # P(click) of each (document, rank)
    ll = (np.log(p["a1"]) + np.log(1 - p["b2"]) + np.log(1 - p["b1"]) + np.log(1 - p["a2"])) / 4
    assert got["log_likelihood"] == pytest.approx(ll, abs=1e-6)
    r1 = 2 ** (-(np.log2(p["a1"]) + np.log2(1 - p["b1"])) / 2)
    r2 = 2 ** (-(np.log2(1 - p["b2"]) + np.log2(1 - p["a2"])) / 2)
    assert got["perplexity_by_rank"] == pytest.approx([r1, r2], abs=1e-6)
    assert got["perplexity"] == pytest.approx((r1 + r2) / 2, abs=1e-6)


def test_folding_counts_sessions_and_unseen_pairs():
    sessions = [ClickSession("q", ("a", "b"), (1, 0))] * 3 + [ClickSession("r", ("c",), (0,))]
    rows = fold_sessions(sessions, 2)
    assert rows.sessions == 4 and len(rows.weight) == 2 and rows.weight.tolist() == [3.0, 1.0]
    assert rows.mask.tolist() == [[True, True], [True, False]]
    test = fold_sessions([ClickSession("q", ("a", "z"), (0, 1)), ClickSession("x", ("a",), (1,))], 2, keys=rows.keys,
                         queries=rows.queries)
    assert test.sessions == 1 and test.unseen_shown == 1  # query x dropped; (q, z) never shown in training
    fit = fit_click_model("dctr", rows)
    assert fit.probabilities(test)[1][0, 1] == pytest.approx(0.5)  # the prior for a pair never shown
    with pytest.raises(DataError, match="seen in training"):
        fold_sessions([ClickSession("x", ("a",), (1,))], 2, keys=rows.keys, queries=rows.queries)


@pytest.mark.parametrize("name", FITTED)
def test_fitted_json_drives_the_simulator(name, tmp_path):
    """Fitted pairs click with their fitted attractiveness; pairs the fit never saw by their label."""
    truth = _truth(name)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(truth.to_json()))
    model = load_click_model(str(path))
    seen = _lists()[0]
    unseen = ShownList("new", ("x", "y"), (4.0, 0.0))
    clicks = np.asarray([s.clicks for s in simulate([seen, unseen], model, 4000, seed=2) if s.qid == "new"])
    assert clicks[:, 0].mean() > 0.5  # label 4: click_prob 1.0 when examined at rank 1
    assert clicks[:, 1].mean() < 0.13  # label 0: 0.1 when examined (~2,000 draws: se 0.007)
    first = np.asarray([s.clicks[0] for s in simulate([seen], model, 4000, seed=3)])
    top = truth.attractiveness[0] * (truth.rank[0] if name == "pbm" else truth.ubm[0, 0] if name == "ubm" else 1.0)
    assert first.mean() == pytest.approx(top, abs=0.03)  # 4,000 draws: se <= 0.008


def test_cli_names_the_fitted_models():
    assert FITTED_MODELS == FITTED


def test_clicks_fit_cli_on_the_real_sample(shared, tmp_path):
    data = shared / YANDEX
    out, report = tmp_path / "pbm.json", tmp_path / "report.json"
    res = CliRunner().invoke(main, ["clicks", "fit", str(data / "trainSample"), "--test", str(data / "testSample"),
                                    "--model", "pbm", "-o", str(out), "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert "θ by rank" in res.output and "21,413 sessions" in res.output
    got = json.loads(report.read_text())
    assert set(got) == {"gctr", "rctr", "dctr", "pbm"}
    for r in got.values():
        assert len(r["perplexity_by_rank"]) == 10 and r["perplexity"] == pytest.approx(np.mean(r["perplexity_by_rank"]))
    # the model beats every click-rate baseline on both measures
    assert got["pbm"]["perplexity"] < min(got[b]["perplexity"] for b in ("gctr", "rctr", "dctr"))
    assert got["pbm"]["log_likelihood"] > max(got[b]["log_likelihood"] for b in ("gctr", "rctr", "dctr"))
    params = json.loads(out.read_text())
    theta = params["exam_prob"]
    assert len(theta) == 10 and theta[0] > theta[4] > theta[9]  # examination falls with rank
    assert load_click_model(str(out)).pairs  # the simulator reads it back


@pytest.mark.parametrize("content, where", [("q1\td1,d2 : d1;\nq2\td1,d2\n", ":2"),  # no ' : '
                                            ('{"qid": "q", "docs": ["a"], "clicks": [2]}\n', ":1")])
def test_clicks_fit_cli_names_a_malformed_line(tmp_path, content, where):
    log = tmp_path / "log.txt"
    log.write_text(content)
    res = CliRunner().invoke(main, ["clicks", "fit", str(log), "--model", "dbn"])
    assert res.exit_code == 2
    assert f"{log}{where}" in res.output
