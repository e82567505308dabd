"""Training: LETOR reading, the feature MLP, the trainer's checkpoints and resume, cross-encoder
training on SciFact train with BM25 negatives, and the two CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import offline_model

from rerank.cli import main
from rerank.errors import DataError, TrainingError
from rerank.train.features import (
    FeatureMLP,
    FeatureRanker,
    FeatureTask,
    letor_ndcg,
    read_letor,
    split_queries,
    train_feature_ranker,
)
from rerank.train.trainer import HISTORY, TrainConfig, Trainer


@pytest.fixture(scope="module")
def lgb(shared):
    folder = shared / "ltr" / "lightgbm-lambdarank"
    train = read_letor(folder / "rank.train")
    return train, read_letor(folder / "rank.test", num_features=train.num_features)


def test_read_letor_both_layouts(shared, lgb):
    train, test = lgb
    assert (len(train), train.features.shape) == (201, (3005, 300))  # LightGBM layout: sizes from rank.train.query
    assert (len(test), test.features.shape) == (50, (768, 300))
    mslr = read_letor(shared / "ltr" / "mslr-web10k-sample" / "msn1.fold1.train.5k.txt")
    assert mslr.features.shape == (5000, 136) and len(mslr) == 43 and mslr.qids[0] == "1"
    assert set(np.unique(mslr.labels)) <= {0, 1, 2, 3, 4}
    with open(shared / "ltr" / "mslr-web10k-sample" / "msn1.fold1.train.5k.txt") as f:
        first = f.readline().split()
    assert mslr.labels[0] == float(first[0]) and mslr.features[0, 0] == pytest.approx(float(first[2].split(":")[1]))


def test_read_letor_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 qid:1 1:0.5 2:0.1\n0 qid:1 1:zero\n")
    with pytest.raises(DataError, match=r"bad.txt:2: bad feature '1:zero'"):
        read_letor(bad)
    bad.write_text("1 qid:1 1:0.5\n0 qid:2 1:0.1\n2 qid:1 1:0.3\n")
    with pytest.raises(DataError, match=r"bad.txt:3: rows of qid 1 are not contiguous"):
        read_letor(bad)
    bad.write_text("1 1:0.5\n0 1:0.1\n")
    with pytest.raises(DataError, match="no query file"):
        read_letor(bad)
    (tmp_path / "bad.txt.query").write_text("3\n")
    with pytest.raises(DataError, match="add up to 3"):
        read_letor(bad)
    bad.write_text("1 qid:1 1:0.5 7:1\n")
    with pytest.raises(DataError, match="feature 7 beyond the 5 features"):
        read_letor(bad, num_features=5)


def _ranker_params(folder):
    return FeatureRanker.load(folder).model.state_dict()


def test_resumed_run_equals_uninterrupted_one(lgb, tmp_path):
    train, _ = lgb
    fit, dev = split_queries(train.subset(range(60)), 0.2, 0)
    cfg = {"loss": "lambdaloss", "epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 3, "precision": "fp32"}
    whole = train_feature_ranker(fit, tmp_path / "whole", TrainConfig(**cfg), dev=dev, dropout=0.2)
    # the same run, stopped twice (mid-epoch 1, mid-epoch 2) and resumed from its checkpoint
    stopped = train_feature_ranker(fit, tmp_path / "parts", TrainConfig(**cfg, max_steps=5), dev=dev, dropout=0.2)
    assert stopped["stopped_at"] == 5 and (tmp_path / "parts" / "checkpoint.pt").is_file()
    train_feature_ranker(fit, tmp_path / "parts", TrainConfig(**cfg, max_steps=17), dev=dev, dropout=0.2)
    resumed = train_feature_ranker(fit, tmp_path / "parts", TrainConfig(**cfg), dev=dev, dropout=0.2)
    a, b = _ranker_params(tmp_path / "whole"), _ranker_params(tmp_path / "parts")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"] == whole["history"] and resumed["steps"] == whole["steps"] == 24
    assert [s["loss"] for s in resumed["loss_per_step"]] == [s["loss"] for s in whole["loss_per_step"]]
    assert not (tmp_path / "parts" / "checkpoint.pt").exists()
    with pytest.raises(TrainingError, match="already holds a finished training run"):
        train_feature_ranker(fit, tmp_path / "parts", TrainConfig(**cfg), dev=dev)
    # a checkpoint of another configuration is refused, not silently mixed in
    train_feature_ranker(fit, tmp_path / "other", TrainConfig(**cfg, max_steps=2), dev=dev)
    with pytest.raises(TrainingError, match=r"different training run \(differs in: lr\)"):
        train_feature_ranker(fit, tmp_path / "other", TrainConfig(**{**cfg, "lr": 2e-3}), dev=dev)


def test_feature_mlp_learns_to_rank(lgb, tmp_path):
    train, test = lgb
    rng = np.random.default_rng(0)
    chance = np.mean([letor_ndcg(test, rng.random(len(test.labels)))["nDCG@10"] for _ in range(5)])
    fit, dev = split_queries(train, 0.2, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP trains fastest on one thread
    try:
        out = train_feature_ranker(fit, tmp_path / "m", TrainConfig(loss="listnet", epochs=8, batch_size=8, lr=1e-3), dev=dev)
    finally:
        torch.set_num_threads(threads)
    got = letor_ndcg(test, FeatureRanker.load(tmp_path / "m").predict(test))["nDCG@10"]
    assert got > chance + 0.1, (got, chance)  # chance is high here: lists hold ~15 documents
    assert out["history"][-1]["dev nDCG@10"] > out["history"][0]["dev nDCG@10"]  # epoch 0 = untrained


def test_feature_lists_are_sampled_down_keeping_relevant_rows(lgb):
    train, _ = lgb
    task = FeatureTask(train, max_list=4, seed=1)
    longest = max(range(len(train)), key=lambda i: train.offsets[i + 1] - train.offsets[i])
    x, labels, mask = task.batch([longest], epoch=0)
    rel = int((train.labels[train.rows(longest)] > 0).sum())
    assert x.shape[1] == 4 and mask.all() and int((labels > 0).sum()) >= min(rel, 2)
    again, _, _ = task.batch([longest], epoch=0)
    assert torch.equal(x, again)  # seeded per (seed, epoch, list)


def test_feature_ranker_refuses_other_width(lgb, tmp_path):
    train, _ = lgb
    m = FeatureMLP(train.num_features)
    m.save(tmp_path)
    with pytest.raises(DataError, match="takes 300 features"):
        FeatureRanker.load(tmp_path).predict(np.zeros((2, 10), dtype=np.float32))


def test_cross_encoder_training_improves_dev_and_loads_by_path(scifact_dir, tmp_path):
    from rerank import load_dataset
    from rerank.rerankers import make_reranker
    from rerank.retrieve.bm25 import BM25
    from rerank.train.crossencoder import CrossEncoderTask, load_cross_encoder_body, split_dev

    ds = load_dataset(str(scifact_dir), split="train")
    train_q, dev_q = split_dev(ds.queries, ds.qrels, 16, 0)
    train_q = train_q[:80]
    candidates = BM25(ds, k=10)(train_q + dev_q)
    model, tok = load_cross_encoder_body(offline_model("all-MiniLM-L6-v2"))
    task = CrossEncoderTask("minilm", tok, train_q, ds.qrels, candidates, ds.docs, group_size=4, max_length=64,
                            dev_queries=dev_q, dev_depth=10)
    _x, labels, mask = task.batch([0, 1], epoch=0)
    assert labels.shape == (2, 4) and (labels[:, 0] == 1).all() and (labels[:, 1:] == 0).all() and mask.all()
    multi = next(i for i, (_, pos, _) in enumerate(task.lists) if len(pos) >= 2)
    two = CrossEncoderTask("minilm", tok, train_q, ds.qrels, candidates, ds.docs, group_size=4, positives=2, max_length=96)
    _, labels, _ = two.batch([multi], epoch=0)
    assert labels[0].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="positives must be between 1 and group_size - 1"):
        CrossEncoderTask("minilm", tok, train_q, ds.qrels, candidates, ds.docs, group_size=4, positives=4)
    cfg = TrainConfig(loss="listnet", epochs=2, batch_size=4, lr=2e-4, warmup=0.1)
    torch.manual_seed(0)
    result = Trainer(model, task, cfg, tmp_path / "ce").train()
    dev = [h["dev nDCG@10"] for h in result["history"]]
    # a fresh head ranks BM25's top 10 about at chance (0.46 here); 40 steps at 64 tokens lift it to 0.60
    assert max(dev[1:]) > dev[0] + 0.05, dev
    losses = [s["loss"] for s in result["loss_per_step"]]
    assert sum(losses[-10:]) < sum(losses[:10])
    # loads like any other cross-encoder, with the training window, and scores like the trained model
    loaded = make_reranker(f"cross-encoder:{tmp_path / 'ce'}", dtype="float32")
    assert loaded.window == 64
    pairs = [(q.text, h.text) for q in dev_q[:2] for h in candidates[q.qid][:3]]
    model.eval()
    mem = task.reranker(model).score(pairs)
    assert np.allclose(loaded.score(pairs), 1 / (1 + np.exp(-np.array(mem))), atol=1e-4)
    saved = json.loads((tmp_path / "ce" / HISTORY).read_text())
    assert saved["finished"] and saved["saved_epoch"] in (1, 2)


def test_train_ltr_cli(shared, tmp_path):
    folder = shared / "ltr" / "lightgbm-lambdarank"
    args = ["train-ltr", "--features", str(folder / "rank.train"), "--test", str(folder / "rank.test"), "--loss", "ranknet",
            "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "-o", str(tmp_path / "m")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "test nDCG@10 0." in res.output and "saved epoch" in res.output
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "already holds a finished training run" in res.output
    res = CliRunner().invoke(main, [*args[:-2], "--loss", "nope", "-o", str(tmp_path / "n")])
    assert res.exit_code == 2 and "unknown loss 'nope'" in res.output


def test_train_cli(scifact_dir, tiny_bert, tmp_path):
    base = ["train", "-m", tiny_bert, "-d", str(scifact_dir)]
    res = CliRunner().invoke(main, [*base, "--negatives", "bm25", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "RETRIEVER:DEPTH" in res.output
    # a short real run: SciFact train, BM25 top-20 negatives, queries longer than the window included
    res = CliRunner().invoke(main, [*base, "--negatives", "bm25:20", "--loss", "ranknet", "--group-size", "2",
                                    "--max-length", "48", "--batch-size", "64", "--dev-queries", "4", "-o", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "saved epoch 1" in res.output and "cross-encoder:" in res.output
    saved = json.loads((tmp_path / "m" / HISTORY).read_text())
    assert saved["finished"] and saved["steps"] == 13 and saved["task"]["lists"] == 805
    assert (tmp_path / "m" / "config.json").is_file() and not (tmp_path / "m" / "checkpoint.pt").exists()
