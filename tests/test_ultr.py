"""Unbiased LTR from clicks: click logs (ours and the real Yandex sample), click simulators
against their analytic click rates, IPW weights, DLA recovering known propensities, and the CLI."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rerank.cli import main
from rerank.errors import DataError
from rerank.train.features import FeatureRanker, LetorData, letor_ndcg
from rerank.train.losses import softmax
from rerank.train.trainer import TrainConfig
from rerank.ultr.learn import (
    ClickModelPair,
    ClickTask,
    FeatureScorer,
    TableScorer,
    load_propensity,
    pbm_em_propensities,
    propensity_error,
    randomization_propensities,
    train_from_clicks,
)
from rerank.ultr.log import (
    ClickGroup,
    ClickSession,
    ClickStats,
    aggregate,
    fold_ranks,
    iter_sessions,
    read_click_log,
    read_yandex,
    write_click_log,
)
from rerank.ultr.simulate import ShownList, load_click_model, position_propensities, simulate

ULTRA = "clicks/ultra/example/ClickModel"


def cfg(**kw) -> TrainConfig:
    base = {"loss": "softmax", "epochs": 20, "batch_size": 16, "lr": 1e-3, "warmup": 0.0, "weight_decay": 0.0,
            "precision": "fp32", "checkpoint_every": 10**9}
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- simulators
@pytest.mark.parametrize("name, file", [("pbm", "pbm_0.1_1.0_4_1.0.json"), ("cascade", "cascade_0.1_1.0_4_1.0.json"),
                                        ("ubm", "ubm_0.1_1_4_1.0.json")])
def test_simulated_click_rates_converge_to_the_analytic_ones(shared, name, file):
    model = load_click_model(str(shared / ULTRA / file))
    assert model.name == name
    assert model.to_json() == load_click_model(name).to_json()  # the named defaults are ULTRA's files
    # 12 ranks: two beyond the parameter tables; labels 0..4 and one above the top grade
    labels = (4, 0, 2, 1, 0, 3, 0, 5, 1, 0, 2, 4)
    docs = tuple(f"d{i}" for i in range(len(labels)))
    n = 200_000
    stats = aggregate(simulate([ShownList("q", docs, labels)], model, n, seed=3), list_size=12)
    assert stats.sessions == n and len(stats.groups) == 1
    empirical = stats.groups[0].clicks / n
    analytic = model.click_rates(labels)
    se = np.sqrt(analytic * (1 - analytic) / n)
    assert np.all(np.abs(empirical - analytic) <= 4.5 * se + 1e-9), (empirical, analytic)
    if name == "cascade":  # at most one click, and nothing after a sure click (label 4 at rank 1)
        assert analytic[1:].sum() == 0 and empirical[1:].sum() == 0
    if name == "pbm":
        theta = position_propensities(model, 12)
        assert theta[10:] == [theta[9]] * 2  # ranks beyond the table take its last entry
        attract = np.asarray([0.1, 0.16, 0.28, 0.52, 1.0])[np.minimum(labels, 4)]
        assert np.allclose(analytic, np.asarray(theta) * attract)


def test_ubm_examination_matches_brute_force_enumeration():
    model = load_click_model("ubm")
    labels = [2, 0, 4, 1, 3]
    rel = model.relevance(np.asarray(labels))
    exam = np.zeros(len(labels))
    for pattern in range(2 ** len(labels)):  # every click pattern, with its probability
        clicks = [(pattern >> r) & 1 for r in range(len(labels))]
        p, last, seen = 1.0, -1, []
        for r, c in enumerate(clicks):
            g = model.gamma(r, last)
            seen.append(g)
            p *= g * rel[r] if c else 1 - g * rel[r]
            last = r if c else last
        exam += p * np.asarray(seen)
    assert np.allclose(model.examination(labels), exam, atol=1e-12)


def test_simulation_is_seeded_and_randomization_permutes(shared):
    lists = [ShownList("a", ("1", "2", "3"), (1, 0, 2)), ShownList("b", ("7", "8"), (0, 3))]
    pbm = load_click_model("pbm")
    one = [s.to_json() for s in simulate(lists, pbm, 500, seed=1)]
    assert one == [s.to_json() for s in simulate(lists, pbm, 500, seed=1)]
    assert one != [s.to_json() for s in simulate(lists, pbm, 500, seed=2)]
    shuffled = list(simulate(lists, pbm, 2000, seed=1, randomize=True))
    orders = {s.docs for s in shuffled if s.qid == "a"}
    assert len(orders) == 6 and all(sorted(s.docs) == sorted(lists[s.qid == "b"].docs) for s in shuffled)
    with pytest.raises(DataError, match="integer labels"):
        list(simulate([ShownList("a", ("1",), (0.5,))], pbm, 10))
    with pytest.raises(DataError, match="no propensity per rank"):
        position_propensities(load_click_model("cascade"))
    with pytest.raises(DataError, match="trust_biased_model.*not supported"):
        load_click_model(str(shared / ULTRA / "trust_bias.json"))


# ----------------------------------------------------------------------------- logs
def test_click_log_round_trip_and_edge_cases(tmp_path):
    sessions = [ClickSession("q1", ("a", "b", "c"), (0, 1, 0), "s1"),
                ClickSession("q1", ("a", "b", "c"), (0, 0, 0), "s2"),  # no click at all
                ClickSession("q2", tuple(f"d{i}" for i in range(12)), (1,) + (0,) * 10 + (1,), "s3", query="x")]
    for name in ("log.jsonl", "log.jsonl.gz"):
        assert write_click_log(iter(sessions), tmp_path / name) == 3
        assert list(iter_sessions(tmp_path / name)) == sessions
    with gzip.open(tmp_path / "log.jsonl.gz") as f:
        assert f.read().count(b"\n") == 3
    stats = aggregate(read_click_log(tmp_path / "log.jsonl"), list_size=10)
    assert (stats.sessions, len(stats.groups), stats.clicks, stats.zero_click_sessions) == (3, 2, 2, 1)
    # the 12-result session is cut to the propensity model's 10 ranks; its click at rank 12 is counted as dropped
    assert stats.truncated_sessions == 1 and stats.dropped_clicks == 1
    assert stats.groups[0].sessions == 2 and stats.groups[0].clicks.tolist() == [0, 1, 0]
    assert len(stats.groups[1].docs) == 10
    # and the learners take such a log: the zero-click session adds nothing, the cut list trains at 10 ranks
    r = train_from_clicks(stats, TableScorer(stats.groups), tmp_path / "dla", cfg(epochs=2), algorithm="dla")
    assert len(r["propensity"]) == 10 and r["steps"] == 2


@pytest.mark.parametrize("line, message", [
    ('{"qid": "q", "docs": ["a"], "clicks": [1]', "not a JSON object"),
    ('{"qid": "q", "docs": ["a", "b"], "clicks": [1]}', "as long as 'docs'"),
    ('{"qid": "q", "docs": ["a"], "clicks": [2]}', "clicks must be 0 or 1"),
    ('{"docs": ["a"], "clicks": [1]}', "no 'qid'"),
    ('{"qid": "q", "docs": [], "clicks": []}', "non-empty"),
    ('{"qid": "q", "docs": ["a", "a"], "clicks": [0, 1]}', "shown twice"),
    ('[1, 2]', "JSON object"),
])
def test_malformed_log_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"qid": "q", "docs": ["a"], "clicks": [0]}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:3: .*{message}"):
        list(read_click_log(path))


def test_yandex_sample_reads_and_malformed_sessions_are_named(shared, tmp_path):
    stats = aggregate(read_yandex(shared / "clicks/yandex-wscd2012-sample/trainSample"), 10)
    assert stats.sessions == 35_064 and len({g.qid for g in stats.groups}) == 20
    assert stats.truncated_sessions == 0 and 0 < stats.zero_click_sessions < stats.sessions
    assert stats.unshown_clicks > 0  # the real log clicks results that were not shown: left out, counted
    first = next(read_yandex(shared / "clicks/yandex-wscd2012-sample/oneQueryTrain"))
    assert first.qid == "98435_1" and len(first.docs) == 10 and first.clicks == (1, 1, 0, 1, 0, 0, 0, 0, 0, 0)
    bad = tmp_path / "y"
    bad.write_text("q1\ta,b : a; q1\ta,b : b\nq2 a,b : a\n")
    with pytest.raises(DataError, match=r"y:2 \(session 1 of the line\): expected 'QUERY<TAB>"):
        list(read_yandex(bad))


# ----------------------------------------------------------------------------- logging policies
def _policy_lists(order: list[int], scores: tuple[float, ...] | None = None) -> list[ShownList]:
    docs = tuple(f"d{j}" for j in order)
    return [ShownList("q", docs, tuple(float(j % 3) for j in order), "the query", scores)]


def test_logging_policies_share_the_sessions_and_are_recorded(tmp_path):
    from rerank.ultr.simulate import LoggingPolicy

    a, b = _policy_lists([0, 1, 2, 3]), _policy_lists([3, 2, 1, 0])
    pols = [LoggingPolicy("bm25", a, 0.7), LoggingPolicy("dense:m", b, 0.3),
            LoggingPolicy("other", [ShownList("r", ("x", "y"), (1.0, 0.0))], 1.0)]  # the only policy for query r
    sessions = list(simulate(pols, load_click_model("pbm"), 20_000, seed=0))
    by = {"bm25": a[0].docs, "dense:m": b[0].docs, "other": ("x", "y")}
    assert all(s.docs == by[s.policy] for s in sessions)
    on_q = [s.policy for s in sessions if s.qid == "q"]
    assert {s.policy for s in sessions if s.qid == "r"} == {"other"}
    assert on_q.count("bm25") / len(on_q) == pytest.approx(0.7, abs=0.02)  # ~10,000 draws: se 0.005
    assert len(on_q) / len(sessions) == pytest.approx(0.5, abs=0.02)  # queries uniformly
    write_click_log(sessions[:5], tmp_path / "log.jsonl")
    assert [s.policy for s in read_click_log(tmp_path / "log.jsonl")] == [s.policy for s in sessions[:5]]
    with pytest.raises(ValueError, match="share must be > 0"):
        list(simulate([LoggingPolicy("x", a, 0.0)], load_click_model("pbm"), 10))


def test_plackett_luce_logging_samples_by_softmax_of_standardised_scores():
    from rerank.ultr.simulate import LoggingPolicy

    scores = (3.0, 2.0, 1.0, 0.0)
    pol = LoggingPolicy("pl", _policy_lists([0, 1, 2, 3], scores), 1.0, temperature=0.5)
    sessions = list(simulate([pol], load_click_model("pbm"), 20_000, seed=1, top=2))
    assert {len(s.docs) for s in sessions} == {2} and {s.policy for s in sessions} == {"pl"}
    z = (np.asarray(scores) - np.mean(scores)) / np.std(scores)
    want = np.exp(z / 0.5) / np.exp(z / 0.5).sum()
    first = np.asarray([sum(s.docs[0] == f"d{j}" for s in sessions) for j in range(4)]) / len(sessions)
    assert np.abs(first - want).max() < 0.015  # 20,000 draws: se <= 0.0035
    # the second result: P(j second) = Σ_i p_i p_j / (1 - p_i)
    second = np.asarray([sum(s.docs[1] == f"d{j}" for s in sessions) for j in range(4)]) / len(sessions)
    want2 = [sum(want[i] * want[j] / (1 - want[i]) for i in range(4) if i != j) for j in range(4)]
    assert np.abs(second - want2).max() < 0.015
    with pytest.raises(DataError, match="no score per candidate"):
        list(simulate([LoggingPolicy("pl", _policy_lists([0, 1]), 1.0, 1.0)], load_click_model("pbm"), 10))


def test_randpair_swaps_one_adjacent_pair_in_a_fraction_of_sessions():
    lists = _policy_lists([0, 1, 2, 3, 4])
    sessions = list(simulate(lists, load_click_model("pbm"), 10_000, seed=2, randpair=0.3))
    ranked = lists[0].docs
    swapped = [s for s in sessions if s.policy == "randpair"]
    assert len(swapped) / len(sessions) == pytest.approx(0.3, abs=0.02)  # se 0.0046
    assert all(s.docs == ranked for s in sessions if s.policy is None)
    at = []
    for s in swapped:
        diff = [i for i in range(5) if s.docs[i] != ranked[i]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1 and s.docs[diff[0]] == ranked[diff[1]]
        at.append(diff[0])
    assert np.bincount(at, minlength=4) / len(at) == pytest.approx([0.25] * 4, abs=0.04)  # uniformly chosen pair


def test_clicks_cli_simulate_with_several_logging_rankers(scifact_dir, tmp_path):
    from rerank import load_dataset

    ds = load_dataset(str(scifact_dir), split="train")
    qrels = ds.require_qrels()
    run = tmp_path / "other.run"  # a second logging ranker over some queries: their judged documents first
    with run.open("w") as f:
        for q in ds.queries[:100]:
            for r, d in enumerate(list(qrels.get(q.qid, {})) + ["4983", "5836", "7912", "18670", "19238"]):
                f.write(f"{q.qid} Q0 {d} {r + 1} {10.0 - r} other\n")
    log = tmp_path / "mixed.jsonl"
    res = CliRunner().invoke(main, ["clicks", "simulate", "-d", str(scifact_dir), "--logging", f"bm25:0.5,run:{run}:0.5",
                                    "--randpair", "0.2", "--sessions", "3000", "-o", str(log)])
    assert res.exit_code == 0, res.output
    assert "logged by bm25 50%" in res.output and "20% RandPair" in res.output
    policies = [s.policy for s in read_click_log(log)]
    assert {p.split("+")[0] for p in policies} == {"bm25", f"run:{run}"}
    share = sum(p.endswith("+randpair") for p in policies) / len(policies)
    assert share == pytest.approx(0.2, abs=0.03)
    bad = CliRunner().invoke(main, ["clicks", "simulate", "-d", str(scifact_dir), "--logging", "bm25:0.5,nosuch:0.5",
                                    "-o", str(tmp_path / "x.jsonl")])
    assert bad.exit_code == 2 and "unknown --logging ranker 'nosuch'" in bad.output


# ----------------------------------------------------------------------------- θ where the log identifies it
def _mixed_log(tmp_path, sessions: int):
    """Three logging rankers (the weak logging score plus noise) sharing the sessions, 10% RandPair,
    ULTRA's PBM, 100 queries of 20 documents: documents move between ranks across policies."""
    from rerank.ultr.simulate import LoggingPolicy, letor_lists

    data, logging = synthetic(100, 20)
    rng = np.random.default_rng(5)
    policies = [LoggingPolicy(f"r{i}", letor_lists(data, logging + rng.normal(scale=1.5, size=len(logging)), 10))
                for i in range(3)]
    path = tmp_path / "mixed.jsonl.gz"
    write_click_log(simulate(policies, load_click_model("pbm"), sessions, seed=1, randpair=0.1), path)
    return path, policies


def test_harvest_and_em_recover_theta_on_a_multi_policy_log_and_refuse_a_deterministic_one(tmp_path):
    from rerank.ultr.harvest import Cells, bootstrap, harvest_propensities

    path, policies = _mixed_log(tmp_path, 60_000)
    theta = np.asarray(position_propensities(load_click_model("pbm"), 10))
    truth = theta / theta[0]
    cells = Cells.of(fold_ranks(iter_sessions(path), 10))
    harvest = harvest_propensities(cells)
    # 60,000 sessions: each (query, document) at a rank ~100-600 times; the bootstrap band measured
    # here is 0.02-0.08 wide, so 0.05 is about two of its half-widths at the worst rank
    assert np.abs(harvest - truth).max() < 0.05
    assert np.abs(pbm_em_propensities(cells) - truth).max() < 0.05
    low, high = bootstrap(cells, harvest_propensities, 60)
    assert (low <= harvest).all() and (harvest <= high).all()
    # ten 95% bands from 60 resamplings of 100 queries: the truth may sit just outside one or two
    assert ((low - 0.02 <= truth) & (truth <= high + 0.02)).all() and ((low <= truth) & (truth <= high)).sum() >= 7
    assert (high - low)[1:].max() < 0.2
    # one deterministic ranker: no document moves, nothing identifies θ
    det = tmp_path / "det.jsonl"
    write_click_log(simulate(policies[0].lists, load_click_model("pbm"), 5000, seed=1), det)
    with pytest.raises(DataError, match="does not identify θ"):
        harvest_propensities(Cells.of(fold_ranks(iter_sessions(det), 10)))
    # swaps of ranks 1-2 only: rank 2 is linked to rank 1, the others are not
    only = [ClickSession("q", ("a", "b", "c"), (1, 0, 0)), ClickSession("q", ("b", "a", "c"), (1, 1, 0)),
            ClickSession("q", ("a", "b", "c"), (0, 1, 1))]
    partial = harvest_propensities(Cells.of(fold_ranks(only, 3)))
    assert partial[0] == 1.0 and np.isfinite(partial[1]) and np.isnan(partial[2])
    for method in ("harvest", "em"):
        res = CliRunner().invoke(main, ["clicks", "propensity", "--clicks", str(det), "--method", method])
        assert res.exit_code == 2 and "does not identify θ" in res.output


def test_clicks_cli_propensity_harvest_prints_a_band(tmp_path):
    path, _ = _mixed_log(tmp_path, 20_000)
    out = tmp_path / "h.json"
    res = CliRunner().invoke(main, ["clicks", "propensity", "--clicks", str(path), "--method", "harvest", "--bootstrap",
                                    "30", "--truth", "pbm", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "95% band (bootstrap over queries)" in res.output and "max relative error" in res.output
    got = json.loads(out.read_text())
    assert got["bootstrap_rounds"] == 30 and len(got["band_95"]) == 10
    assert all(lo <= v <= hi for v, (lo, hi) in zip(got["propensity"], got["band_95"], strict=True))
    assert got["error"]["max_relative_error"] < 0.3


# ----------------------------------------------------------------------------- learners
def synthetic(n_queries: int = 300, n_docs: int = 20, seed: int = 0) -> tuple[LetorData, np.ndarray]:
    """Queries of documents whose label is a noisy function of 5 features; the second array is
    a weak logging score that leans on feature 4, which has nothing to do with relevance (so
    position bias makes it look relevant to a naive learner)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_queries * n_docs, 5)).astype(np.float32)
    signal = x @ np.array([1.2, -0.8, 0.6, 0.0, 0.3])
    y = np.clip(np.round(signal + 0.3 * rng.normal(size=len(x)) + 0.8), 0, 4).astype(np.float32)
    offsets = np.arange(0, n_queries * n_docs + 1, n_docs)
    data = LetorData(x, y, [f"q{i}" for i in range(n_queries)], offsets, "synthetic")
    return data, 0.5 * signal + 2.0 * x[:, 3] + rng.normal(size=len(x))


def test_ipw_weights_and_loss(tmp_path):
    data, logging = synthetic(20, 12)
    from rerank.ultr.simulate import letor_lists

    pbm = load_click_model("pbm")
    stats = aggregate(simulate(letor_lists(data, logging, 10), pbm, 3000, seed=0), 10)
    theta = position_propensities(pbm, 10)
    task = ClickTask(stats, FeatureScorer(data, stats.groups), "ipw", propensities=theta, max_weight=8.0)
    (feats, w, sessions), counts, mask = task.batch([0, 1], 0)
    assert sessions.tolist() == [task.groups[0].sessions, task.groups[1].sessions]
    assert torch.allclose(w[0], torch.tensor(theta[0] / np.asarray(theta), dtype=w.dtype))
    model = ClickModelPair(FeatureScorer(data, stats.groups).make_ranker(), None, None).eval()
    s = model.ranker(feats).double()
    want = softmax(s, counts * w.clamp(max=8.0), mask)  # θ1/θ10 = 11.3: clipped at 8
    assert task.loss(model, (feats, w, sessions), counts, mask).item() == pytest.approx(want.item(), rel=1e-5)
    manual = -(counts * w.clamp(max=8.0) * torch.log_softmax(s, dim=1)).sum() / (counts * w.clamp(max=8.0)).sum()
    assert want.item() == pytest.approx(manual.item(), rel=1e-9)
    with pytest.raises(DataError, match="3 propensities given, but the log shows 10"):
        ClickTask(stats, FeatureScorer(data, stats.groups), "ipw", propensities=[1.0, 0.5, 0.2])
    with pytest.raises(DataError, match="wherever a click happened"):
        ClickTask(stats, FeatureScorer(data, stats.groups), "ipw", propensities=[1.0] + [0.0] * 9)
    with pytest.raises(ValueError, match="ipw needs propensities"):
        ClickTask(stats, FeatureScorer(data, stats.groups), "ipw")
    with pytest.raises(DataError, match="not in synthetic"):
        FeatureScorer(data.subset([0]), stats.groups)


@pytest.mark.parametrize("algorithm, browsing", [("naive", "position"), ("ipw", "position"), ("dla", "position"),
                                                 ("naive", "cascade"), ("dla", "cascade")])
def test_training_on_folded_lists_is_training_on_the_sessions_one_by_one(algorithm, browsing):
    """The learners see a log folded per (query, shown list) with click counts: its loss and every
    gradient (ranker and DLA's propensity model) equal those of the same sessions as lists of their own
    (under cascade browsing too, where the ranks a session reached come from the folded clicks)."""
    from rerank.ultr.log import ClickGroup, ClickStats
    from rerank.ultr.simulate import letor_lists

    data, logging = synthetic(6, 5)
    users = load_click_model("pbm" if browsing == "position" else "cascade")
    sessions = list(simulate(letor_lists(data, logging, 4), users, 3000, seed=0, randomize=True))
    folded = aggregate(sessions, 4)
    single = ClickStats([ClickGroup(s.qid, s.docs, 1, np.asarray(s.clicks, dtype=np.float64)) for s in sessions], 4,
                        sessions=len(sessions))
    assert len(folded.groups) < len(sessions) / 4  # what the learners train on: distinct lists, not sessions
    theta = position_propensities(load_click_model("pbm"), 4) if algorithm == "ipw" else None
    grads, losses = [], []
    for stats in (folded, single):
        task = ClickTask(stats, FeatureScorer(data, stats.groups), algorithm, propensities=theta, browsing=browsing)
        torch.manual_seed(0)
        model = ClickModelPair(FeatureScorer(data, stats.groups).make_ranker(), None, None)
        if algorithm == "dla":
            from rerank.ultr.learn import PropensityModel

            model.propensity = PropensityModel(4)
            with torch.no_grad():
                model.propensity.logits.copy_(torch.tensor([0.0, -0.3, -0.6, -0.9]))
        model.eval()  # no dropout: the two passes see the same ranker
        inputs, counts, mask = task.batch(list(range(len(task))), 0)
        loss = task.loss(model, inputs, counts, mask)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert len(grads[0]) == len(grads[1]) >= (3 if algorithm == "dla" else 2)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_cascade_browsing_learns_from_the_ranks_each_session_reached(tmp_path):
    """Users who scan top-down and stop at a click: the softmax loss reads the unseen ranks below a
    click as skipped, the cascade likelihood does not. Classic cascade (a reached rank is always
    examined): naive on the reached ranks beats naive by the softmax. Examination of a reached rank
    decaying with it: DLA's θ̂ recovers that decay and beats naive on the reached ranks."""
    from rerank.ultr.log import ClickStats
    from rerank.ultr.simulate import letor_lists

    torch.set_num_threads(1)
    data, logging = synthetic()
    train, test = data.subset(range(240)), data.subset(range(240, 300))
    lists = letor_lists(train, logging[: len(train.labels)], 10)
    grades = [0.05, 0.2, 0.4, 0.7, 1.0]

    def learn(users: dict, algorithm: str, browsing: str) -> tuple[float, list[float]]:
        stats = aggregate(simulate(lists, load_click_model({"click_prob": grades, **users}), 200_000, seed=0), 10)
        out = tmp_path / f"{algorithm}-{browsing}-{len(users['exam_prob'])}"
        got = train_from_clicks(stats, FeatureScorer(train, stats.groups, hidden=(64, 32)), out, cfg(epochs=40),
                                algorithm=algorithm, browsing=browsing)
        return letor_ndcg(test, FeatureRanker.load(out).predict(test))["nDCG@10"], got.get("propensity", [])

    classic = {"model_name": "cascade_model", "exam_prob": [1.0]}
    softmax_naive, _ = learn(classic, "naive", "position")
    cascade_naive, _ = learn(classic, "naive", "cascade")
    assert cascade_naive > softmax_naive + 0.05, (cascade_naive, softmax_naive)  # 0.979 vs 0.882

    theta = [1.0 / (1 + r) ** 0.7 for r in range(10)]
    decaying = {"model_name": "cascade_model", "exam_prob": theta}
    naive, _ = learn(decaying, "naive", "cascade")
    dla, estimate = learn(decaying, "dla", "cascade")
    assert max(abs(e - t) for e, t in zip(estimate, theta, strict=True)) < 0.06, estimate  # 0.04 at rank 10
    assert propensity_error(estimate, theta)["pearson"] > 0.99
    assert dla > naive + 0.02, (dla, naive)  # 0.974 vs 0.928
    with pytest.raises(ValueError, match="ipw"):
        ClickTask(ClickStats([], 10), FeatureScorer(train, []), "ipw", propensities=theta, browsing="cascade")


def test_dla_starts_from_given_propensities(tmp_path):
    """DLA can begin from a click-model-free θ̂ (a log that identifies θ) instead of flat: with the
    propensity model frozen (learning rate ~0) it ends where it started, and the ranker learnt with
    those weights (the IPW loss), not the naive one."""
    from rerank.ultr.simulate import letor_lists

    data, logging = synthetic(20, 12)
    stats = aggregate(simulate(letor_lists(data, logging, 10), load_click_model("pbm"), 2000, seed=0), 10)
    start = [0.9 / (1 + r) for r in range(10)]  # absolute: it is the shape that counts
    res = train_from_clicks(stats, FeatureScorer(data, stats.groups), tmp_path / "d", cfg(epochs=2),
                            algorithm="dla", propensity_lr=1e-12, propensity_start=start, ranker_first=0.5)
    assert res["propensity"] == pytest.approx([1 / (1 + r) for r in range(10)], rel=1e-5)
    ipw = train_from_clicks(stats, FeatureScorer(data, stats.groups), tmp_path / "i", cfg(epochs=2),
                            algorithm="ipw", propensities=start)
    naive = train_from_clicks(stats, FeatureScorer(data, stats.groups), tmp_path / "n", cfg(epochs=2), algorithm="naive")
    scores = {k: FeatureRanker.load(tmp_path / k).predict(data) for k in ("d", "i", "n")}
    to_ipw, to_naive = np.abs(scores["d"] - scores["i"]).max(), np.abs(scores["d"] - scores["n"]).max()
    assert to_ipw < 0.1 * to_naive, (to_ipw, to_naive)  # not equal: the trainer clips the gradient norm of both models
    assert res["history"] and ipw and naive
    with pytest.raises(DataError, match="10 positive numbers"):
        train_from_clicks(stats, FeatureScorer(data, stats.groups), tmp_path / "x", cfg(epochs=2), algorithm="dla",
                          propensity_start=[1.0, 0.0] + [0.5] * 8)
    with pytest.raises(ValueError, match="no propensity model"):
        train_from_clicks(stats, FeatureScorer(data, stats.groups), tmp_path / "y", cfg(epochs=2), algorithm="naive",
                          propensity_start=start)


def test_dla_anchor_keeps_the_propensities_near_their_start(tmp_path):
    """``propensity_anchor`` adds λ Σ (log θ̂_r/θ̂_1 − log θ⁰_r/θ⁰_1)² to the propensity loss: the
    penalty equals that formula, and with it θ̂ stays near the start where joint training alone
    moves it; an anchor without a start, or below 0, is refused."""
    from rerank.ultr.learn import PropensityModel
    from rerank.ultr.simulate import letor_lists

    start = [1 / (1 + r) for r in range(10)]
    m = PropensityModel(10, start)
    with torch.no_grad():
        m.logits.add_(torch.linspace(0, 0.9, 10) + 0.3)  # a shift of every logit alike does not count
    direct = sum((np.log(np.exp(0.1 * r) * start[r]) - np.log(start[r])) ** 2 for r in range(10))
    assert m.anchor_penalty().item() == pytest.approx(direct, rel=1e-5)
    data, logging = synthetic(20, 12)
    stats = aggregate(simulate(letor_lists(data, logging, 10), load_click_model("pbm"), 5000, seed=0), 10)
    moved = {}
    for lam in (0.0, 10.0):  # start flat, far from the PBM's θ (θ_10/θ_1 = 0.09)
        r = train_from_clicks(stats, FeatureScorer(data, stats.groups), tmp_path / str(lam), cfg(epochs=15),
                              algorithm="dla", propensity_start=[1.0] * 10, propensity_anchor=lam, ranker_first=0.5)
        moved[lam] = np.abs(np.log(r["propensity"])).max()
    assert moved[0.0] > 0.5 and moved[10.0] < 0.2 * moved[0.0], moved
    with pytest.raises(ValueError, match="give the start"):
        train_from_clicks(stats, FeatureScorer(data, stats.groups), tmp_path / "x", cfg(), propensity_anchor=1.0)
    with pytest.raises(ValueError, match="strength >= 0"):
        ClickTask(stats, FeatureScorer(data, stats.groups), "dla", anchor=-1.0)


def test_dla_recovers_known_propensities_and_beats_naive(tmp_path):
    torch.set_num_threads(1)
    data, logging = synthetic()
    from rerank.ultr.simulate import letor_lists

    train, test = data.subset(range(240)), data.subset(range(240, 300))
    theta = [1.0 / (1 + r) ** 0.9 for r in range(10)]  # a PBM unlike the default one
    pbm = load_click_model({"model_name": "position_biased_model", "click_prob": [0.05, 0.2, 0.4, 0.7, 1.0],
                            "exam_prob": theta})
    stats = aggregate(simulate(letor_lists(train, logging[: len(train.labels)], 10), pbm, 200_000, seed=0), 10)
    scores = {}
    for alg in ("naive", "dla"):
        train_from_clicks(stats, FeatureScorer(train, stats.groups, hidden=(64, 32)), tmp_path / alg, cfg(epochs=40),
                          algorithm=alg)
        scores[alg] = letor_ndcg(test, FeatureRanker.load(tmp_path / alg).predict(test))["nDCG@10"]
    err = propensity_error(load_propensity(tmp_path / "dla"), theta)
    assert err["max_relative_error"] < 0.15 and err["pearson"] > 0.998, err  # ranks 8-10 see few clicks
    assert scores["dla"] > scores["naive"] + 0.02, scores
    with pytest.raises(DataError, match="only dla does"):
        load_propensity(tmp_path / "naive")


GRADES = ("awful", "poor", "fair", "good", "excellent")
FILLER = "the study cell protein patients results method data analysis effect level group model time rate".split()


def text_problem(n_queries: int, seed: int) -> tuple[list[ShownList], dict[str, str], dict[str, str]]:
    """Lists of 10 documents whose label (0-4) is written in their text as a grade word among filler
    words; 30% also say "sponsored", which has nothing to do with relevance but which the logging
    ranker puts on top (so position bias makes it look relevant to a naive learner)."""
    rng = np.random.default_rng(seed)
    lists, docs, queries = [], {}, {}
    for i in range(n_queries):
        qid = f"{seed}-{i}"
        queries[qid] = f"question number {i}"
        y, bait = rng.integers(0, 5, 10), rng.random(10) < 0.3
        ids = []
        for j in range(10):
            words = [*rng.choice(FILLER, 5), GRADES[y[j]], *(["sponsored"] if bait[j] else [])]
            rng.shuffle(words)
            docs[f"{qid}-{j}"] = " ".join(words)
            ids.append(f"{qid}-{j}")
        order = np.argsort(-(0.4 * y + 3.0 * bait + rng.normal(size=10)))
        lists.append(ShownList(qid, tuple(ids[k] for k in order), tuple(float(y[k]) for k in order), queries[qid]))
    return lists, docs, queries


def test_dla_with_a_cross_encoder_recovers_a_pbm_and_beats_naive(tiny_bert, tmp_path):
    """A cross-encoder (the tiny BERT, from scratch) learns from 100,000 simulated sessions over texts:
    DLA recovers a non-default PBM at every rank and ranks held-out lists better than naive."""
    from rerank.rerankers.pointwise import CrossEncoder
    from rerank.ultr.learn import TextScorer

    torch.set_num_threads(1)
    lists, docs, queries = text_problem(160, 0)
    test, test_docs, _ = text_problem(100, 1)
    theta = [1.0 / (1 + r) ** 0.9 for r in range(10)]
    pbm = load_click_model({"model_name": "position_biased_model", "click_prob": [0.05, 0.2, 0.4, 0.7, 1.0],
                            "exam_prob": theta})
    stats = aggregate(simulate(lists, pbm, 100_000, seed=0), 10)
    truth = np.asarray(theta) / theta[0]
    ctr = np.asarray(stats.summary()["ctr_by_rank"])
    assert np.max(np.abs(ctr / ctr[0] - truth)[1:]) > 0.05  # the click rates alone are not θ
    labels = LetorData(np.zeros((1000, 1), np.float32), np.asarray([y for t in test for y in t.labels], np.float32),
                       [t.qid for t in test], np.arange(0, 1001, 10), "text test")
    ndcg, found = {}, {}
    for alg in ("naive", "dla"):
        r = train_from_clicks(stats, TextScorer(tiny_bert, stats.groups, queries, docs, max_length=24), tmp_path / alg,
                              TrainConfig(loss="softmax", epochs=15, batch_size=16, lr=1e-3, precision="fp32",
                                          checkpoint_every=10**9), algorithm=alg)
        found[alg] = r.get("propensity")
        ce = CrossEncoder(str(tmp_path / alg), max_length=24)
        scores = np.asarray(ce.score([(t.query, test_docs[d]) for t in test for d in t.docs]))
        ndcg[alg] = letor_ndcg(labels, scores)["nDCG@10"]
    err = np.abs(np.asarray(found["dla"]) - truth)
    assert err.max() < 0.05 and propensity_error(found["dla"], theta)["pearson"] > 0.995, found["dla"]
    assert ndcg["dla"] > 0.99 and ndcg["dla"] > ndcg["naive"] + 0.015, ndcg  # naive ranks "sponsored" up


def test_text_scorer_encodes_a_shared_pair_once_and_batches_a_querys_lists_together(tiny_bert):
    """Lists of one query shown by different rankers share documents: a batch encodes each
    (query, document) pair once, with the same scores as encoding every shown slot, and an
    epoch keeps a query's lists together (blocks shuffled by seed and epoch)."""
    from rerank.train.crossencoder import CrossEncoderTask
    from rerank.train.trainer import epoch_order
    from rerank.ultr.learn import TextScorer

    docs = {f"d{i}": f"passage number {i} about topic {i % 3}" for i in range(8)}
    queries = {"a": "topic one", "b": "topic two", "c": "topic zero"}
    one = np.ones(4)
    groups = [ClickGroup("a", ("d0", "d1", "d2", "d3"), 5, one), ClickGroup("b", ("d4", "d5", "d6", "d7"), 5, one),
              ClickGroup("a", ("d2", "d0", "d4", "d5"), 5, one), ClickGroup("c", ("d1", "d2", "d3", "d4"), 5, one),
              ClickGroup("a", ("d3", "d2", "d1", "d0"), 5, one)]
    scorer = TextScorer(tiny_bert, groups, queries, docs, max_length=32)
    enc, where, shape, row = inputs = scorer.inputs(groups, 4)
    assert len(where) == 20 and enc["input_ids"].shape[0] == 14 == len(set(row))  # distinct: a 6, b 4, c 4
    ranker = scorer.make_ranker().eval()
    with torch.no_grad():
        deduped = scorer.scores(ranker, inputs)
        from rerank.rerankers.pointwise import tokenize_pairs

        full = tokenize_pairs(scorer.tokenizer, [queries[g.qid] for g in groups for _ in g.docs],
                              [docs[d] for g in groups for d in g.docs], 32, "test", padding=True, return_tensors="pt")
        each = CrossEncoderTask.scores(scorer.ce, ranker, (full, where, shape))
    assert torch.allclose(deduped, each, atol=1e-5) and deduped.shape == (5, 4)
    task = ClickTask(ClickStats(groups, 4), scorer, "naive")
    assert task.blocks == [[0, 2, 4], [1], [3]]
    for epoch in (0, 1, 2):
        order = epoch_order(len(task), 7, epoch, task.blocks)
        assert sorted(order) == list(range(5))
        at = order.index(0)
        assert order[at : at + 3] == [0, 2, 4], order
    assert {tuple(epoch_order(5, s, 0, task.blocks)) for s in range(20)} != {tuple(epoch_order(5, 0, 0, task.blocks))}
    assert epoch_order(5, 3, 1) == epoch_order(5, 3, 1, [[i] for i in range(5)])  # one list a query: the plain order


def test_a_fresh_cross_encoder_head_is_drawn_from_the_seed(tiny_bert):
    """Learners compared at one seed start from the same head, whatever ran before in the process,
    and loading leaves the caller's random state alone."""
    from rerank.train.crossencoder import load_cross_encoder_body

    def head(seed):
        model, _ = load_cross_encoder_body(tiny_bert, seed=seed)
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "classifier" in n])

    a = head(3)
    torch.rand(5)
    state = torch.random.get_rng_state()
    b, c = head(3), head(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.numel() > 0 and torch.equal(a, b) and not torch.equal(a, c)


def test_dla_ranker_learns_alone_first(tmp_path):
    """For its first ``ranker_first`` epochs the ranker learns as the naive learner does and θ̂ stays
    flat (the count is in the model's state, so a resumed run knows it); a warm-up as long as the
    training is refused."""
    from rerank.ultr.learn import PropensityModel

    data, logging = synthetic(40, 12)
    from rerank.ultr.simulate import letor_lists

    stats = aggregate(simulate(letor_lists(data, logging, 10), load_click_model("pbm"), 5000, seed=0), 10)
    scorer = FeatureScorer(data, stats.groups, hidden=(16,), dropout=0.0)
    task = ClickTask(stats, scorer, "dla", warmup_batches=2)
    model = ClickModelPair(scorer.make_ranker(), PropensityModel(10), 0.05).train()
    inputs, counts, mask = task.batch([0, 1, 2], 0)
    naive = softmax(model.ranker(inputs[0]).float(), counts.float(), mask)
    for batch in (1, 2, 3):
        model.zero_grad()
        loss = task.loss(model, inputs, counts, mask)
        loss.backward()
        learns = model.propensity.logits.grad is not None
        assert (loss.item() == pytest.approx(naive.item(), rel=1e-6)) == (not learns) == (batch <= 2), batch
    assert int(model.state_dict()["seen"]) == 3
    with pytest.raises(ValueError, match="must be >= 0 and below the 3 epochs"):
        train_from_clicks(stats, scorer, tmp_path / "x", cfg(epochs=3), ranker_first=3)


def test_randomization_and_table_dla_recover_propensities(tmp_path):
    rng = np.random.default_rng(1)
    lists = [ShownList(f"q{i}", tuple(str(j) for j in range(10)), tuple(rng.integers(0, 5, 10).tolist())) for i in range(30)]
    pbm = load_click_model("pbm")
    theta = position_propensities(pbm)
    stats = aggregate(simulate(lists, pbm, 60_000, seed=0, randomize=True), 10)
    est, se = randomization_propensities(stats)
    assert np.all(np.abs(est - np.asarray(theta) / theta[0]) <= 4.5 * se + 1e-12) and se[0] == 0
    # DLA with one score per query-document: identifiable here because each document is seen at every rank
    r = train_from_clicks(stats, TableScorer(stats.groups), tmp_path, cfg(lr=0.05, epochs=3, batch_size=64), algorithm="dla")
    err = propensity_error(r["propensity"], theta)
    assert err["max_relative_error"] < 0.15 and err["pearson"] > 0.998, err
    em = propensity_error(pbm_em_propensities(stats), theta)  # the classic estimator agrees
    assert em["max_relative_error"] < 0.1 and em["pearson"] > 0.999, em


def test_rank_statistics_stream_in_memory_flat_in_the_sessions():
    """Randomization and EM from counts folded as the log streams by: the same estimates as from
    the per-list groups, in memory bounded by the (query, document, rank) triples, while the groups
    grow with the distinct lists (a randomized log shows a new list almost every session)."""
    rng = np.random.default_rng(3)
    lists = [ShownList(f"q{i}", tuple(str(j) for j in range(10)), tuple(rng.integers(0, 5, 10).tolist())) for i in range(20)]
    pbm = load_click_model("pbm")
    theta = np.asarray(position_propensities(pbm))
    grouped = aggregate(simulate(lists, pbm, 30_000, seed=4, randomize=True), 10)
    streamed = fold_ranks(simulate(lists, pbm, 30_000, seed=4, randomize=True), 10)
    assert streamed.sessions == grouped.sessions == 30_000 and len(grouped.groups) > 29_000
    assert len(streamed.counts) == 20 * 10 * 10  # every (query, document, rank): all that is kept
    for a, b in zip(randomization_propensities(grouped), randomization_propensities(streamed), strict=True):
        assert np.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert np.allclose(pbm_em_propensities(grouped), pbm_em_propensities(streamed), rtol=1e-9)
    big = fold_ranks(simulate(lists, pbm, 300_000, seed=5, randomize=True), 10)
    assert len(big.counts) == len(streamed.counts)  # ten times the sessions, the same memory
    est, se = randomization_propensities(big)
    assert np.all(np.abs(est - theta / theta[0]) <= 4.5 * se + 1e-12)
    assert propensity_error(pbm_em_propensities(big), theta)["max_relative_error"] < 0.05


# ----------------------------------------------------------------------------- CLI
def test_clicks_cli_simulate_stats_train_propensity(shared, tmp_path):
    lgb = shared / "ltr" / "lightgbm-lambdarank"
    run = CliRunner().invoke
    log = tmp_path / "clicks.jsonl.gz"
    res = run(main, ["clicks", "simulate", "--features", str(lgb / "rank.train"), "--model", "pbm", "--sessions", "20000",
                     "--seed", "1", "-o", str(log)])
    assert res.exit_code == 0, res.output
    assert "wrote 20000 sessions over 201 queries" in res.output
    res = run(main, ["clicks", "stats", str(log)])
    summary = json.loads(res.output)
    assert summary["sessions"] == 20000 and summary["lists"] == 201
    assert summary["ctr_by_rank"][0] > summary["ctr_by_rank"][9]
    res = run(
        main,
        ["train", "--clicks", str(log), "--algorithm", "ipw", "--features", str(lgb / "rank.train"), "-o", str(tmp_path / "m")],
    )
    assert res.exit_code == 2 and "needs --propensities" in res.output
    res = run(main, ["train", "--clicks", str(log), "--algorithm", "ipw", "--propensities", "cascade",
                     "--features", str(lgb / "rank.train"), "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and "no propensity per rank" in res.output
    res = run(main, ["train", "--clicks", str(log), "--algorithm", "ipw", "--propensities", "pbm", "--browsing", "cascade",
                     "--features", str(lgb / "rank.train"), "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and "--browsing cascade learns from the ranks each session reached" in res.output
    res = run(main, ["train", "--clicks", str(log), "--algorithm", "naive", "--browsing", "cascade", "--features",
                     str(lgb / "rank.train"), "--epochs", "2", "-o", str(tmp_path / "cascade")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cascade" / "training.json").read_text())["task"]["browsing"] == "cascade"
    res = run(main, ["train", "--clicks", str(log), "--features", str(lgb / "rank.train"), "--epochs", "1", "--ranker-first", "1",
                     "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and "ranker_first (1.0 epochs of the ranker alone) must be >= 0 and below the 1 epochs" \
        in res.output, res.output
    res = run(main, ["train", "--clicks", str(log), "--algorithm", "dla", "--features", str(lgb / "rank.train"),
                     "--test", str(lgb / "rank.test"), "--epochs", "15", "-o", str(tmp_path / "dla")])
    assert res.exit_code == 0, res.output
    assert "shown lists of dev queries left out of training" in res.output
    assert "estimated propensity (rank: θ/θ1): 1:1.000 2:0." in res.output and "test nDCG@10 0." in res.output
    # the guard: every query was always shown the same list, so no click-model-free estimate; the naive baseline's dev
    assert "the log shows no documents at more than one rank" in res.output
    assert re.search(r"dev nDCG@10: dla 0\.\d{4}, naive baseline 0\.\d{4}", res.output), res.output
    assert FeatureRanker.load(tmp_path / "dla").num_features == 300  # the LightGBM example set's width
    kept = tmp_path / "dla" / "naive-baseline"  # the baseline is kept beside the result, a model of its own
    assert FeatureRanker.load(kept).num_features == 300 and json.loads((kept / "clicks.json").read_text())["algorithm"] == "naive"
    # IPW with propensities that weight every click below rank 1 a thousand times less: worse than naive, and said so
    res = run(main, ["train", "--clicks", str(log), "--algorithm", "ipw", "--propensities", ",".join(["1"] + ["1000"] * 9),
                     "--features", str(lgb / "rank.train"), "--epochs", "15", "-o", str(tmp_path / "bad")])
    assert res.exit_code == 0, res.output
    mine, naive = map(float, re.search(r"dev nDCG@10: ipw (0\.\d+), naive baseline (0\.\d+)", res.output).groups())
    assert mine < naive and "is below the naive baseline's" in res.output
    assert f"use the naive baseline ({tmp_path / 'bad' / 'naive-baseline'})" in res.output
    res = run(main, ["clicks", "simulate", "--features", str(lgb / "rank.train"), "--randomize", "--sessions", "30000",
                     "-o", str(tmp_path / "rand.jsonl")])
    assert res.exit_code == 0, res.output
    res = run(main, ["clicks", "propensity", "--clicks", str(tmp_path / "rand.jsonl"), "--method", "randomization",
                     "--truth", "pbm", "-o", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["error"]["pearson"] > 0.99 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_clicks_cli_real_yandex_propensities(shared, tmp_path):
    res = CliRunner().invoke(main, ["clicks", "propensity", "--clicks", str(shared / "clicks/yandex-wscd2012-sample/trainSample"),
                                    "--epochs", "30", "-o", str(tmp_path / "y.json")])
    assert res.exit_code == 0, res.output
    est = json.loads((tmp_path / "y.json").read_text())["propensity"]
    assert est[0] == 1.0 and est[1] < 0.9 and est[9] < est[1] and all(0 < v <= 1.0 for v in est)


def test_clicks_on_text_train_a_cross_encoder(scifact_dir, tiny_bert, tmp_path):
    """A click log over SciFact train (BM25 top 10 logged), learnt by DLA with a cross-encoder."""
    run = CliRunner().invoke
    log = tmp_path / "sf.jsonl"
    res = run(main, ["clicks", "simulate", "-d", str(scifact_dir), "--sessions", "400", "-o", str(log)])
    assert res.exit_code == 0, res.output
    first = json.loads(log.read_text().splitlines()[0])
    assert first["query"] and len(first["docs"]) == 10
    res = run(main, ["train", "--clicks", str(log), "-m", tiny_bert, "-d", str(scifact_dir),
                     "--dev-queries", "0", "--max-length", "64", "--batch-size", "16", "-o", str(tmp_path / "ce")])
    assert res.exit_code == 0, res.output
    assert "estimated propensity" in res.output and "cross-encoder:" in res.output
    from rerank.rerankers.pointwise import CrossEncoder

    ce = CrossEncoder(str(tmp_path / "ce"))
    assert len(ce.score([("a query", "a passage"), ("another", "text")])) == 2


def test_clicks_cli_train_dla_starts_from_the_logs_own_estimate(shared, tmp_path):
    lgb = shared / "ltr" / "lightgbm-lambdarank"
    run = CliRunner().invoke
    truth = position_propensities(load_click_model("pbm"))
    moved, fixed = tmp_path / "moved.jsonl.gz", tmp_path / "fixed.jsonl.gz"
    for log, extra in ((moved, ["--randpair", "0.5"]), (fixed, [])):
        res = run(main, ["clicks", "simulate", "--features", str(lgb / "rank.train"), "--model", "pbm", "--sessions", "20000",
                         "--seed", "3", *extra, "-o", str(log)])
        assert res.exit_code == 0, res.output
    res = run(main, ["train", "--clicks", str(moved), "--features", str(lgb / "rank.train"), "--dla-start", "harvest",
                     "--epochs", "2", "--no-baseline", "-o", str(tmp_path / "dla")])
    assert res.exit_code == 0, res.output
    start = [float(v) for v in re.search(r"DLA starts from θ̂ \(harvest\): (.*)", res.output).group(1).split(", ")]
    assert len(start) == 10 and start[0] == 1.0
    # RandPair links ranks 1-3 well
    assert max(abs(a - b / truth[0]) for a, b in zip(start[:3], truth[:3], strict=True)) < 0.1, start
    res = run(main, ["train", "--clicks", str(fixed), "--features", str(lgb / "rank.train"), "--dla-start", "em",
                     "-o", str(tmp_path / "none")])
    assert res.exit_code == 2 and "does not identify" in res.output, res.output
    res = run(main, ["train", "--clicks", str(moved), "--algorithm", "naive", "--features", str(lgb / "rank.train"),
                     "--dla-start", "em", "-o", str(tmp_path / "naive")])
    assert res.exit_code == 2 and "--dla-start is DLA's" in res.output, res.output
    res = run(main, ["train", "--clicks", str(moved), "--features", str(lgb / "rank.train"), "--dla-anchor", "5",
                     "-o", str(tmp_path / "anchor")])
    assert res.exit_code == 2 and "add --dla-start harvest or em" in res.output, res.output
