"""Full ranking (every candidate in one prompt), complete listwise labels and the importance-aware
loss (Liu et al. 2024), on a tiny Llama with SmolLM2's real tokenizer."""

from __future__ import annotations

import json
import logging
import math
import random

import pytest
import torch
from click.testing import CliRunner

from rerank.errors import DataError
from rerank.rerankers.listwise import First, FullRankingCost, ListwiseGenerate, numbered, parse_permutation, windows
from rerank.train.first import Window, add_lora
from rerank.train.full_ranking import FullRankTask, complete_labels, label_lists, read_labels, write_labels
from rerank.train.losses import importance_weights, weighted_token_loss
from rerank.train.trainer import TrainConfig, Trainer
from rerank.types import Hit, Query

WORDS = "cat dog fish meat sky blue night bark food river stone tree rain sun moon star road city car book".split()


def passages(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) + f" ({i})" for i in range(n)]


def test_a_permutation_parses_from_a_full_length_output():
    order = list(range(100))
    random.Random(1).shuffle(order)
    text = " > ".join(f"[{i + 1}]" for i in order)
    assert parse_permutation(text, 100, numbered(100)) == (order, False)
    # a repeat, an unknown number and two missing ones: dropped, dropped, appended in incoming order
    broken = " > ".join(f"[{i + 1}]" for i in order[:97]) + f" > [{order[0] + 1}] > [101]"
    perm, repaired = parse_permutation(broken, 100, numbered(100))
    assert repaired and perm == order[:97] + sorted(order[97:])
    assert parse_permutation("[B] > [A] > [C]", 3) == ([1, 0, 2], False)  # the window form is unchanged


@pytest.fixture(scope="module")
def gen(tiny_smol):
    return ListwiseGenerate(tiny_smol, window="all", dtype="float32", max_passage_tokens=16)


def test_full_ranking_is_one_prompt_per_query_and_counts_what_windows_would_cost(gen, monkeypatch):
    n = 30
    want = list(range(n))
    random.Random(2).shuffle(want)
    calls = []

    def fake_generate(prompts, max_new_tokens, stop=()):
        calls.append((len(prompts), max_new_tokens, [len(p) for p in prompts]))
        gen.llm._account(len(prompts), sum(map(len, prompts)), 0.0)
        return [" > ".join(f"[{i + 1}]" for i in want)] * len(prompts)

    monkeypatch.setattr(gen.llm, "generate", fake_generate)
    before = gen.cost.as_dict()
    ranked = gen.rank("cats and dogs", passages(n))
    assert [r.index for r in ranked] == want
    (count, max_new, _), = calls
    assert count == 1
    assert max_new >= len(gen.llm.tokens([" > ".join(f"[{i + 1}]" for i in range(n))])[0])  # room for all 30 numbers
    prompt = gen.window_prompt("cats and dogs", passages(n))
    assert "[30]" in gen.llm.tokenizer.decode(prompt) and "numerical identifier" in gen.llm.tokenizer.decode(prompt)
    after = gen.cost
    assert isinstance(after, FullRankingCost) and after is gen.llm.cost  # the model's own counter: one live object
    saved = after.as_dict()
    assert saved["full_ranked_lists"] - before["full_ranked_lists"] == 1 and saved["model_calls"] - before["model_calls"] == 1
    assert saved["sliding_window_prompts"] - before["sliding_window_prompts"] == len(windows(n, 20, 10)) == 2
    assert saved["prompts_saved"] == after.sliding_prompts - after.full_prompts
    assert saved["prompt_tokens_saved"] > 0  # two windows re-read the middle ten passages
    assert "saved" in after.summary()


def test_first_full_ranking_orders_all_candidates_by_the_first_identifier_logits(tiny_smol):
    first = First(tiny_smol, window="all", dtype="float32", max_passage_tokens=16)
    assert first.max_full == 52 and first.labels_for(40)[26:28] == "ab"  # A-Z then a-z: single tokens in SmolLM2
    docs = passages(40, seed=3)
    prompt = first.window_prompt("rivers and stones", docs)
    z = first.llm.next_token_logits([prompt], first.identifier_ids[:40])[0]
    want = sorted(range(40), key=lambda i: (-z[i], i))
    calls = first.cost.calls
    assert [r.index for r in first.rank("rivers and stones", docs)] == want
    assert first.cost.calls - calls == 1


@pytest.mark.parametrize("kind", ["listwise-gen", "first"])
def test_a_list_that_does_not_fit_falls_back_to_sliding_windows_with_a_warning(kind, tiny_smol, caplog):
    cls = ListwiseGenerate if kind == "listwise-gen" else First
    # listwise-gen: a 700-token context holds no prompt of 30 passages; FIRST: 60 candidates, 52 identifiers
    n, options = (30, {"max_length": 700}) if kind == "listwise-gen" else (60, {})
    full = cls(tiny_smol, window="all", dtype="float32", max_passage_tokens=16, **options)
    windowed = cls(tiny_smol, window=20, dtype="float32", max_passage_tokens=16, **options)
    docs = passages(n, seed=4)
    with caplog.at_level(logging.WARNING, logger="rerank"):
        got = [r.index for r in full.rank("sun and moon", docs)]
    warning = [r.getMessage() for r in caplog.records if "full ranking" in r.getMessage()]
    assert len(warning) == 1 and "1 of 1 lists ranked with sliding windows of 20 (stride 10)" in warning[0]
    assert ("over the model's 700-token context" in warning[0]) if kind == "listwise-gen" else (
        "up to 60 candidates, over the 52 single-token identifiers" in warning[0])
    assert got == [r.index for r in windowed.rank("sun and moon", docs)]
    assert full.cost.fallback_lists == 1 and full.cost.full_lists == 0


def test_full_ranking_is_refused_where_it_does_not_apply():
    from rerank.rerankers.listwise import _Listwise

    with pytest.raises(ValueError, match="full ranking"):
        _Listwise.__init__(object.__new__(_Listwise), "m", window="all")  # e.g. LiT5: windows only
    with pytest.raises(ValueError, match="or 'all'"):
        ListwiseGenerate.__init__(object.__new__(ListwiseGenerate), "m", window="most")


def test_importance_weights_follow_the_paper():
    # "[3] > [1] <eos>" as tokens: "[", "3", "]", " >", " [", "1", "]", eos
    sep = [False, False, False, True, False, False, False, False]
    w1, w2 = 1 + 1 / math.log2(2), 1 + 1 / math.log2(3)
    assert importance_weights(sep) == pytest.approx([w1, w1, w1, 1.0, w2, w2, w2, w2])


def test_the_importance_aware_loss_equals_a_direct_computation(gen):
    w = Window("what do cats eat", ("Cats eat fish.", "The sky is blue.", "Cat food is meat."), (2, 0, 1))
    model = gen.llm.model.eval()
    lm_task = FullRankTask(gen, [w], loss="lm")
    imp_task = FullRankTask(gen, [w], loss="importance")
    inputs, ranks, mask = imp_task.batch([0], 0)
    (prompt, target), = inputs
    tok = gen.llm.tokenizer
    assert tok.decode(target).startswith("[C] > [A] > [B]")  # letters while they suffice, as in a window
    with torch.no_grad():
        lm = lm_task.loss(model, inputs, ranks, mask).item()
        imp = imp_task.loss(model, inputs, ranks, mask).item()
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0].float()
    n = len(prompt)
    ce = torch.nn.functional.cross_entropy(logits[n - 1 : n - 1 + len(target)], torch.tensor(target), reduction="none")
    weights, rank = [], 1
    for t in target:  # the paper: separators weigh 1, the rest 1 + 1/log2(rank + 1)
        if tok.decode([t]) == " >":
            weights.append(1.0)
            rank += 1
        else:
            weights.append(1 + 1 / math.log2(rank + 1))
    assert rank == 3 and weights[0] == 2.0
    assert lm == pytest.approx(ce.mean().item(), rel=1e-4)
    assert imp == pytest.approx(sum(c * x for c, x in zip(ce.tolist(), weights, strict=True)) / len(target), rel=1e-4)
    assert weighted_token_loss(logits[n - 1 : n - 1 + len(target)], torch.tensor(target)).item() == pytest.approx(lm, rel=1e-4)
    with pytest.raises(ValueError, match="lm, importance"):
        FullRankTask(gen, [w], loss="ranknet")


def test_shuffled_lists_move_the_label_with_the_passages(gen):
    passages = tuple(f"Passage number {i} about cats." for i in range(8))
    w = Window("what do cats eat", passages, (5, 2, 7, 0, 1, 3, 4, 6))
    plain = FullRankTask(gen, [w], loss="lm")
    mixed = FullRankTask(gen, [w], loss="lm", shuffle=True)
    assert plain.shown(0, 0) == (w.query, list(passages), list(w.gold))  # first-stage order: the label as given
    orders = []
    for epoch in range(3):
        query, shown, gold = mixed.shown(0, epoch)
        assert sorted(shown) == sorted(passages) and [shown[s] for s in gold] == [passages[i] for i in w.gold]
        orders.append(shown)
        prompt, target, ranks = mixed._example(0, epoch)
        labels = gen.labels_for(len(shown))
        assert gen.llm.tokenizer.decode(target).startswith(" > ".join(f"[{labels[s]}]" for s in gold))
        assert [ranks[s] for s in gold] == list(range(1, 9))
    assert orders[0] != list(passages) and len({tuple(o) for o in orders}) == 3  # a new order each epoch
    assert mixed.describe()["shuffle"] and not plain.describe()["shuffle"]


def test_complete_labels_from_toy_qrels_and_a_teacher(tmp_path):
    queries = [Query("q1", "cats"), Query("q2", "dogs"), Query("q3", "birds")]
    hits = lambda *ds: [Hit(d, float(-i)) for i, d in enumerate(ds)]  # noqa: E731
    cands = {"q1": hits("a", "b", "c", "d", "e"), "q2": hits("f", "g", "h"), "q3": hits("x", "y")}
    qrels = {"q1": {"c": 1, "d": 2, "e": 1, "z": 2}, "q2": {"g": 0}, "q3": {"y": 1}}
    teacher = {"q1": hits("e", "b", "a", "c"), "q3": hits("y", "x")}  # d is not in the teacher's ranking
    snapshot = json.dumps([cands["q1"][0].docid, list(qrels["q1"]), list(teacher)])
    rows = complete_labels(queries, cands, qrels=qrels, teacher=teacher, depth=5)
    assert [r["qid"] for r in rows] == ["q1", "q3"]  # q2 has no relevant candidate
    # grade 2: d; grade 1: e before c (teacher); grade 0: b before a (teacher)
    assert rows[0]["ranking"] == ["d", "e", "c", "b", "a"] and rows[0]["candidates"] == ["a", "b", "c", "d", "e"]
    assert rows[0]["grades"] == {"c": 1, "d": 2, "e": 1} and rows[0]["source"] == "qrels+teacher"
    only = complete_labels(queries, cands, teacher=teacher, depth=4)
    assert only[0]["ranking"] == ["b", "a", "c", "d"] and only[0]["source"] == "teacher"  # e is past depth 4
    plain = complete_labels(queries, cands, qrels=qrels, depth=5)
    assert plain[0]["ranking"] == ["d", "c", "e", "a", "b"] and plain[0]["source"] == "qrels+first-stage"
    assert json.dumps([cands["q1"][0].docid, list(qrels["q1"]), list(teacher)]) == snapshot  # inputs untouched
    path = tmp_path / "labels.jsonl"
    write_labels(path, rows)
    assert read_labels(path) == rows
    lists = label_lists(rows, {d: f"text {d}" for d in "abcdexy"})
    assert lists[0].passages[0] == "text a" and lists[0].gold == (3, 4, 2, 1, 0)
    path.write_text(path.read_text() + '{"qid": "q9", "query": "q", "candidates": ["a", "b"], "ranking": ["a"]}\n')
    with pytest.raises(DataError, match=r"labels.jsonl:3: 'ranking' must order every candidate exactly once"):
        read_labels(path)
    with pytest.raises(DataError, match="no text here"):
        label_lists(rows, {})


def _toy_lists() -> list[Window]:
    out = []
    for k in range(4):
        docs = passages(6, seed=10 + k)
        gold = list(range(6))
        random.Random(k).shuffle(gold)
        out.append(Window(f"query {k}", tuple(docs), tuple(gold)))
    return out


def test_a_tiny_full_rank_training_run_lowers_the_loss_and_resumes(tiny_smol, tmp_path):
    reranker = ListwiseGenerate(tiny_smol, window="all", dtype="float32", max_passage_tokens=16)
    wrapped = add_lora(reranker.llm.model, rank=4)
    task = FullRankTask(reranker, _toy_lists(), loss="importance", lora=wrapped)
    cfg = TrainConfig(loss="task", epochs=3, batch_size=2, lr=3e-3, warmup=0.0, checkpoint_every=10**9, max_steps=2)
    first = Trainer(reranker.llm.model, task, cfg, tmp_path / "full").train()
    assert first["stopped_at"] == 2
    cfg.max_steps = None
    result = Trainer(reranker.llm.model, task, cfg, tmp_path / "full").train()  # resumes from step 2
    steps = result["loss_per_step"]
    assert len(steps) == 6 and all("lm_loss" in s for s in steps)
    assert sum(s["loss"] for s in steps[-2:]) < sum(s["loss"] for s in steps[:2])
    saved = ListwiseGenerate(str(tmp_path / "full"), window="all", max_passage_tokens=16)
    assert not any("lora" in n for n, _ in saved.llm.model.named_parameters())


def test_train_labels_and_full_rank_training_from_the_cli(tiny_smol, scifact_dir, tmp_path):
    from rerank.cli import main

    labels = tmp_path / "labels.jsonl"
    runner = CliRunner()
    res = runner.invoke(main, ["train-labels", "-d", str(scifact_dir), "--candidates", "bm25:5", "-o", str(labels)])
    assert res.exit_code == 0, res.output
    rows = read_labels(labels)
    assert len(rows) > 500 and all(len(r["ranking"]) == 5 and r["source"] == "qrels+first-stage" for r in rows)
    assert all(r["grades"][r["ranking"][0]] >= 1 for r in rows)  # a relevant candidate heads every label
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    out = tmp_path / "model"
    args = ["train", "-m", tiny_smol, "-d", str(scifact_dir), "--objective", "full-rank", "--loss", "lm", "--labels",
            str(labels), "--negatives", "bm25:5", "--dev-queries", "0", "--batch-size", "2", "--shuffle", "-o", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "listwise-gen:" in res.output and (out / "config.json").is_file()
    task = json.loads((out / "training.json").read_text())["task"]
    assert task["loss"] == "lm" and task["shuffle"] is True
    res = runner.invoke(main, ["train", "-m", tiny_smol, "-d", str(scifact_dir), "--objective", "full-rank", "--loss",
                               "listnet", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "lm or importance" in res.output
    res = runner.invoke(main, ["train", "-m", tiny_smol, "-d", str(scifact_dir), "--shuffle", "-o", str(tmp_path / "y")])
    assert res.exit_code == 2 and "--shuffle is for --objective first or full-rank" in res.output


def test_rerank_run_with_window_all_prints_what_windows_would_have_cost(tiny_smol, dl19, tmp_path):
    import shutil

    from rerank.cli import main

    long = tmp_path / "tiny-8k"  # the tiny Llama with an 8k context (rotary positions: no weights change)
    shutil.copytree(tiny_smol, long)
    config = json.loads((long / "config.json").read_text())
    (long / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    out = tmp_path / "m.json"
    runner = CliRunner()
    r = runner.invoke(main, ["run", "-r", "bm25", "--reranker", f"first:{long}", "--rerank-depth", "40", "--window", "all",
                             "-d", str(dl19), "--metrics-json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    cost = json.loads(out.read_text())["cost"]["rerank"]
    # one prompt of 40 a query where windows of 20 by 10 take 3
    assert cost["model_calls"] == 43 and cost["full_ranked_lists"] == 43 and cost["sliding_window_prompts"] == 3 * 43
    assert cost["prompts_saved"] == 2 * 43 and cost["prompt_tokens_saved"] > 0
    assert "full ranking: 43 lists in 43 prompts" in r.output and "86 prompts and" in r.output
    r = runner.invoke(main, ["run", "-r", "bm25", "--reranker", f"first:{tiny_smol}", "--window", "most", "-d", str(dl19)])
    assert r.exit_code == 2 and "neither a number of passages nor 'all'" in r.output
